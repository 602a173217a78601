//! Lambda entry point: the payments API.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::payments_api::PaymentsApi::new(&aws, &env)?;
    functions::runtime::serve_http(function).await
}
