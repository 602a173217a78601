//! JSON logs with request id, organization, function name and cold-start flag (SPEC §13).

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

static COLD_START: AtomicBool = AtomicBool::new(true);

/// Starts JSON logging for a Lambda function. The level comes from `RUST_LOG` (or Lambda's
/// `AWS_LAMBDA_LOG_LEVEL`), `info` by default. Lambda adds its own timestamp, so ours is off.
pub fn init_lambda() {
    let filter = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL"))
        .map(|level| EnvFilter::new(level.to_ascii_lowercase()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .try_init();
}

/// Whether this is the first invocation in this process (read once per invocation).
pub fn take_cold_start() -> bool {
    COLD_START.swap(false, Ordering::Relaxed)
}

tokio::task_local! {
    /// The Lambda request id of the invocation running in this task, for event types whose
    /// handlers are not handed the Lambda context (queues, schedules).
    static LAMBDA_REQUEST_ID: String;
}

/// Runs `work` as the invocation Lambda (or the local runner) identifies by `id`.
pub async fn with_lambda_request_id<F: std::future::Future>(id: String, work: F) -> F::Output {
    LAMBDA_REQUEST_ID.scope(id, work).await
}

/// The Lambda request id of the running invocation ("" outside one).
pub fn lambda_request_id() -> String {
    LAMBDA_REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// Runs one invocation of `function`: every log line in it carries the function, the
/// request id (API Gateway's for HTTP; workers name each job's SQS message id in its
/// [`job_span`]) and the Lambda request id; its metrics are written once it ends.
pub async fn invocation<F: std::future::Future>(
    function: &'static str,
    request_id: &str,
    work: F,
) -> F::Output {
    use tracing::Instrument;
    let lambda_request_id = lambda_request_id();
    let span = tracing::info_span!(
        "invocation",
        function,
        request_id,
        lambda_request_id,
        cold_start = take_cold_start(),
        org = tracing::field::Empty
    );
    crate::metrics::Recorder::new(function, &lambda_request_id)
        .scope(work.instrument(span))
        .await
}

/// The span of one queue message's job: the message id is its request id, and the
/// organization is recorded once the envelope is read. Jobs of one batch run concurrently,
/// so each needs its own span (the invocation's `org` would be overwritten).
pub fn job_span(function: &'static str, message_id: &str) -> tracing::Span {
    tracing::info_span!(
        "job",
        function,
        request_id = message_id,
        lambda_request_id = lambda_request_id(),
        org = tracing::field::Empty
    )
}
