//! Lambda entry point: the email delivery-status check (every 5 minutes).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::email_status_check::EmailStatusCheck::new(&aws, &env)?;
    functions::runtime::serve_scheduled(function).await
}
