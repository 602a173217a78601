//! Lambda entry point for the template admin API.

use functions::templates_api::TemplatesApi;
use lambda_http::{Error, service_fn};
use shared::aws::AwsClients;
use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::logging::init_lambda();
    let env = Env::from_process();
    let aws = AwsClients::load(&env).await;
    let api = TemplatesApi::new(&aws, &env)?;
    let api = &api;
    lambda_http::run(service_fn(move |request| async move {
        Ok::<_, Error>(api.handle(request).await)
    }))
    .await
}
