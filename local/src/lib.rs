//! The local runner: the whole bundle on one local address, without Docker (SPEC §14).
//!
//! It reads `template.yaml`, creates the declared resources on the local AWS endpoint
//! (moto), builds every function with the environment the template gives it, and serves the
//! HTTP API routes with a local JWT authorizer. Handlers are the code Lambda runs, called
//! in-process with the same event payloads. Queue pollers, schedules, function URLs and the
//! provider sandbox plug in beside [`http_api`] as further event sources.

pub mod auth;
pub mod http_api;
pub mod resources;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::routing::get;
use functions::registry::{self, Handler};
use shared::aws::AwsClients;
use shared::config::Env;

use crate::auth::LocalAuth;
use crate::http_api::{HttpApi, HttpRoute};
use crate::resources::ResourceNames;
use crate::template::{BundleTemplate, resolve};

#[derive(Debug, Clone)]
pub struct BundleOptions {
    pub template: PathBuf,
    /// Prefix of every local resource name, so bundles can share one moto server.
    pub prefix: String,
    pub bind: SocketAddr,
    pub jwt_secret: String,
    /// Variables every function gets on top of the template's (endpoints, provider keys).
    pub env: BTreeMap<String, String>,
}

impl BundleOptions {
    /// Options for `template` with the current process environment as the base.
    pub fn new(template: impl Into<PathBuf>, prefix: impl Into<String>) -> Self {
        Self {
            template: template.into(),
            prefix: prefix.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            jwt_secret: auth::DEFAULT_SECRET.to_owned(),
            env: std::env::vars().collect(),
        }
    }
}

/// A running bundle: its address, its resources' local names and its token minter.
pub struct RunningBundle {
    pub addr: SocketAddr,
    pub names: ResourceNames,
    pub auth: LocalAuth,
    pub aws: AwsClients,
    server: tokio::task::JoinHandle<()>,
}

impl RunningBundle {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until the server stops (it does not on its own).
    pub async fn wait(mut self) {
        let _ = (&mut self.server).await;
    }
}

impl Drop for RunningBundle {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Starts the bundle: resources, functions, HTTP server.
///
/// # Errors
/// When the template cannot be read, a resource cannot be created, a function cannot be
/// built or the address cannot be bound.
pub async fn start(options: BundleOptions) -> anyhow::Result<RunningBundle> {
    let template = BundleTemplate::load(&options.template)?;
    let base_env = Env::from_map(options.env.clone().into_iter().collect());
    base_env
        .required("AWS_ENDPOINT_URL")
        .context("the local runner needs AWS_ENDPOINT_URL (the moto server)")?;
    let aws = AwsClients::load(&base_env).await;
    let names = resources::create_all(&template, &aws, &options.prefix).await?;

    let org_claim = template
        .parameter_defaults
        .get("OrgClaim")
        .cloned()
        .unwrap_or_else(|| "org_id".to_owned());
    let auth = LocalAuth::new(options.jwt_secret.clone(), org_claim);
    let mut routes = Vec::new();
    for function in &template.functions {
        let mut vars: HashMap<String, String> = options.env.clone().into_iter().collect();
        for (name, value) in &function.environment {
            if let Some(value) = resolve(value, &names, &template.parameter_defaults) {
                vars.entry(name.clone()).or_insert(value);
            }
        }
        vars.insert(
            "AWS_LAMBDA_FUNCTION_NAME".to_owned(),
            function.binary.clone(),
        );
        let handler = registry::load(&function.binary, &aws, &Env::from_map(vars))
            .await
            .with_context(|| format!("building {}", function.logical_id))?;
        match handler {
            Handler::Http(http_function) => {
                for route in &function.http_routes {
                    routes.push(HttpRoute {
                        method: route.method.clone(),
                        path: route.path.clone(),
                        authorized: route.authorized,
                        function: Arc::clone(&http_function),
                    });
                }
            }
        }
    }

    let api = Arc::new(HttpApi {
        routes,
        auth: auth.clone(),
    });
    let app = axum::Router::new()
        .route("/local/token", get(mint_token).with_state(auth.clone()))
        .fallback(http_api::serve)
        .with_state(api);
    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .with_context(|| format!("binding {}", options.bind))?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "local HTTP server stopped");
        }
    });
    Ok(RunningBundle {
        addr,
        names,
        auth,
        aws,
        server,
    })
}

#[derive(Debug, serde::Deserialize)]
struct TokenQuery {
    org: Option<String>,
    role: Option<String>,
    sub: Option<String>,
}

/// `GET /local/token?org=acme&role=admin` — a token for local use (there is no such route
/// in AWS: real tokens come from the identity provider).
async fn mint_token(
    State(auth): State<LocalAuth>,
    Query(query): Query<TokenQuery>,
) -> axum::response::Response {
    let roles: Vec<&str> = query
        .role
        .as_deref()
        .unwrap_or("admin")
        .split(',')
        .collect();
    let sub = query.sub.as_deref().unwrap_or("local-user");
    match auth.mint(
        sub,
        Some(query.org.as_deref().unwrap_or("acme")),
        &roles,
        12 * 3600,
    ) {
        Ok(token) => axum::response::IntoResponse::into_response(token),
        Err(error) => http_api::into_axum(shared::http::ApiError::internal(error).into_response()),
    }
}
