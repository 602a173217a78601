//! Lambda entry point: event-recorder.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::event_recorder::EventRecorder::new(&aws, &env)?;
    functions::runtime::serve_sqs(function).await
}
