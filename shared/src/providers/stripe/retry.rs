//! Retrying a Stripe create within a deadline.
//!
//! A create sent again under the same `Idempotency-Key` is safe: Stripe replays the first
//! answer instead of acting twice (Stripe API reference, "Idempotent requests"). So a
//! transient failure (a timeout, a 5xx, a 429) is retried with the same key for as many
//! attempts as fit before the request's [`Deadline`].

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{StripeClient, StripeError};

/// Attempts at one Stripe call that fails transiently, as many as fit before the deadline.
pub const ATTEMPTS: u32 = 3;
/// An attempt with less time than this left is not started.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// The wait before attempt `n + 1`.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 * u64::from(attempt))
}

/// When a request's Stripe calls must be over.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn at(instant: Instant) -> Self {
        Self(instant)
    }

    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// What a retried call came to, and how many attempts it took.
#[derive(Debug)]
pub struct Attempted {
    pub result: Result<Value, StripeError>,
    pub attempts: u32,
}

impl StripeClient {
    /// `POST path` under `idempotency_key`, retried while it fails transiently, up to
    /// [`ATTEMPTS`] and never past `deadline` (each attempt's timeout is cut to what is
    /// left). Out of time before an attempt: a transient error, since Stripe may have acted
    /// on an earlier one.
    pub async fn post_retrying(
        &self,
        path: &str,
        params: &Value,
        idempotency_key: &str,
        deadline: Deadline,
    ) -> Attempted {
        let mut attempts = 0;
        loop {
            let left = deadline.remaining();
            if left < MIN_ATTEMPT {
                let result = Err(StripeError::Transient {
                    status: None,
                    message: "no time left in the Stripe budget".to_owned(),
                });
                return Attempted { result, attempts };
            }
            attempts += 1;
            let result = self
                .post_within(
                    path,
                    params,
                    Some(idempotency_key),
                    self.timeout().min(left),
                )
                .await;
            let retry = matches!(&result, Err(error) if error.is_transient())
                && attempts < ATTEMPTS
                && deadline.remaining() >= backoff(attempts) + MIN_ATTEMPT;
            if !retry {
                return Attempted { result, attempts };
            }
            tokio::time::sleep(backoff(attempts)).await;
        }
    }

    /// `GET path`, within `deadline` when there is one.
    ///
    /// # Errors
    /// A classified [`StripeError`].
    pub async fn read(&self, path: &str, deadline: Option<Deadline>) -> Result<Value, StripeError> {
        let timeout = deadline.map_or(self.timeout(), |d| self.timeout().min(d.remaining()));
        self.get_within(path, &serde_json::json!({}), timeout).await
    }
}
