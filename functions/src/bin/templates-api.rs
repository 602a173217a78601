//! Lambda entry point: the template admin API.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::templates_api::TemplatesApi::new(&aws, &env)?;
    functions::runtime::serve_http(function).await
}
