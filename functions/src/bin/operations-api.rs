//! Lambda entry point: the operations API (dead-letter queues, for platform superusers).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::operations_api::OperationsApi::new(&aws, &env)?;
    functions::runtime::serve_http(function).await
}
