//! Lambda entry point: the report cleanup (daily 02:00 UTC).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::report_cleanup::ReportCleanup::new(&aws, &env)?;
    functions::runtime::serve_scheduled(function).await
}
