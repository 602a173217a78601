//! Lambda entry point: the SMS send worker (SMS send queue).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::sms_worker::SmsWorker::new(&aws, &env)?;
    functions::runtime::serve_sqs(function).await
}
