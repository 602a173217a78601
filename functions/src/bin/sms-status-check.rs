//! Lambda entry point: the SMS delivery-status check (hourly).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::sms_status_check::SmsStatusCheck::new(&aws, &env)?;
    functions::runtime::serve_scheduled(function).await
}
