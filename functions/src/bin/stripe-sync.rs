//! Lambda entry point: the daily Stripe sync.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::stripe_sync::StripeSync::new(&aws, &env)?;
    functions::runtime::serve_scheduled(function).await
}
