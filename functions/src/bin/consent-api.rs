//! Lambda entry point: topics and the consent ledger API.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::consent_api::ConsentApi::new(&aws, &env)?;
    functions::runtime::serve_http(function).await
}
