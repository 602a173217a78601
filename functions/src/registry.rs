//! Every function of the bundle by binary name, so the local runner can build and call the
//! same handlers Lambda runs, and the tests can check the template against the code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use lambda_http::{Body, Request, Response};
use shared::aws::AwsClients;
use shared::config::Env;
use shared::http::Route;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A function behind HTTP API routes: a request in, a response out (errors are responses).
pub trait HttpFunction: Send + Sync {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>>;
}

/// What kind of event a function takes.
#[derive(Clone)]
pub enum Handler {
    Http(Arc<dyn HttpFunction>),
}

/// A function's binary name and the routes its own router answers.
#[derive(Debug, Clone, Copy)]
pub struct FunctionInfo {
    pub binary: &'static str,
    pub routes: &'static [Route],
}

/// Every function binary of the bundle.
pub const FUNCTIONS: &[FunctionInfo] = &[FunctionInfo {
    binary: "templates-api",
    routes: crate::templates_api::ROUTES,
}];

/// Builds the handler for `binary` with its own environment, as its `main` would.
///
/// # Errors
/// When the binary is unknown or its configuration is incomplete.
pub async fn load(binary: &str, aws: &AwsClients, env: &Env) -> anyhow::Result<Handler> {
    match binary {
        "templates-api" => Ok(Handler::Http(Arc::new(
            crate::templates_api::TemplatesApi::new(aws, env)?,
        ))),
        other => anyhow::bail!("no function binary named {other}"),
    }
}
