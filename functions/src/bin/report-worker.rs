//! Lambda entry point: the report worker (report generate and export queues).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::report_worker::ReportWorker::new(&aws, &env)?;
    functions::runtime::serve_sqs(function).await
}
