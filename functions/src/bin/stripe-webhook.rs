//! Lambda entry point: the Stripe webhook (function URL).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::stripe_webhook::StripeWebhook::new(&aws, &env)?;
    functions::runtime::serve_http(function).await
}
