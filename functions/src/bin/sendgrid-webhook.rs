//! Lambda entry point: the SendGrid Event Webhook (function URL).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::sendgrid_webhook::SendGridWebhook::new(&aws, &env)?;
    functions::runtime::serve_http(function).await
}
