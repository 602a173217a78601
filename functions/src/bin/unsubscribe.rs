//! Lambda entry point: one-click unsubscribe links (function URL, RFC 8058).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::unsubscribe::Unsubscribe::new(&aws, &env)?;
    functions::runtime::serve_http(function).await
}
