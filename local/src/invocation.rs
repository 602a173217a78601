//! One invocation as Lambda runs it: a request id for its log lines, a deadline the
//! handler can read from its context, and the function's `Timeout`, at which Lambda stops
//! the invocation whatever it is doing.
//!
//! Lambda: "the maximum time that a function can run before Lambda stops it" is the
//! function's timeout, 3 seconds unless set (docs.aws.amazon.com/lambda/latest/dg/
//! configuration-timeout.html); the invocation then fails with "Task timed out after N
//! seconds". What the caller sees then is the caller's own rule: an SQS event source
//! mapping deletes nothing, so the batch comes back after the visibility timeout; an HTTP
//! API answers 500 `{"message":"Internal Server Error"}` (docs.aws.amazon.com/apigateway/
//! latest/developerguide/http-api-troubleshooting-lambda.html); a function URL answers 502;
//! EventBridge Scheduler retries the target.
//!
//! Stopping here drops the handler's future at its next await: the work in it ends there,
//! as it ends when Lambda freezes the execution environment.

use std::future::Future;
use std::time::Duration;

/// Lambda's timeout when a function sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// An invocation Lambda stopped at its function's timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut(pub Duration);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Lambda's own words, so a log search for them finds local runs too.
        write!(
            f,
            "Task timed out after {:.2} seconds",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for TimedOut {}

/// The context an invocation starts with.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub request_id: String,
    /// When Lambda stops the invocation, in unix milliseconds (the context's `deadline`).
    pub deadline_ms: u64,
}

impl Invocation {
    /// The `lambda_http` context that carries the deadline to an HTTP handler.
    pub fn lambda_context(&self) -> lambda_http::Context {
        let mut context = lambda_http::Context::default();
        context.request_id.clone_from(&self.request_id);
        context.deadline = self.deadline_ms;
        context
    }
}

/// Runs `work` as one invocation of `function` stopped at `timeout`.
///
/// # Errors
/// [`TimedOut`] when `work` has not ended by then.
pub async fn run<W, F>(function: &str, timeout: Duration, work: W) -> Result<F::Output, TimedOut>
where
    W: FnOnce(&Invocation) -> F,
    F: Future,
{
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let invocation = Invocation {
        request_id: uuid::Uuid::new_v4().to_string(),
        deadline_ms: now_ms + u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let id = invocation.request_id.clone();
    let bounded = tokio::time::timeout(timeout, work(&invocation));
    match shared::logging::with_lambda_request_id(id.clone(), bounded).await {
        Ok(output) => Ok(output),
        Err(_) => {
            let error = TimedOut(timeout);
            tracing::error!(function, lambda_request_id = id, "{error}");
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_that_outlives_the_timeout_is_stopped_with_lambdas_message() {
        let stopped = run("slow", Duration::from_millis(50), |_| {
            tokio::time::sleep(Duration::from_secs(5))
        })
        .await;
        assert_eq!(stopped, Err(TimedOut(Duration::from_millis(50))));
        assert_eq!(
            stopped.unwrap_err().to_string(),
            "Task timed out after 0.05 seconds"
        );
    }

    #[tokio::test]
    async fn work_that_ends_in_time_keeps_its_output_and_sees_its_deadline() {
        let before = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        let deadline = run("quick", Duration::from_secs(29), |invocation| {
            let deadline = invocation.lambda_context().deadline;
            async move { deadline }
        })
        .await;
        let deadline = deadline.unwrap_or_default();
        assert!(deadline >= before + 29_000 && deadline < before + 31_000);
    }
}
