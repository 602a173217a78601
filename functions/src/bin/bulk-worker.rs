//! Lambda entry point: the bulk fan-out worker (bulk queues).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::bulk_worker::BulkWorker::new(&aws, &env)?;
    functions::runtime::serve_sqs(function).await
}
