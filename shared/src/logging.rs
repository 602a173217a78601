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

/// The span every invocation runs in; `org` is recorded once the caller is known.
pub fn invocation_span(function: &'static str, request_id: &str) -> tracing::Span {
    tracing::info_span!(
        "invocation",
        function,
        request_id,
        cold_start = take_cold_start(),
        org = tracing::field::Empty
    )
}
