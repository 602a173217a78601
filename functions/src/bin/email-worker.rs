//! Lambda entry point: the email send worker (email send queue).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::email_worker::EmailWorker::new(&aws, &env)?;
    functions::runtime::serve_sqs(function).await
}
