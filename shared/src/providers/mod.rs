//! Adapters for the outside services Herald sends through.
//!
//! Each provider owns its client, its webhook signature check and its webhook event types,
//! and its own error types: what counts as retryable differs from one provider to the next,
//! so there is no shared provider error to flatten them into.

pub mod sendgrid;
pub mod stripe;
pub mod twilio;

/// Sends one provider API request, counting it by outcome and timing it (issue 18): the
/// `ProviderCalls` and `ProviderLatency` metrics. The outcome is read from the status alone,
/// so each provider's own error types stay its own: `ok` (2xx), `credentials` (401, 403:
/// a rotated or revoked key), `not_found` (404: a lookup of a message the provider does not
/// know, which is an answer, not a failure), `throttled` (429), `transient` (5xx, no
/// answer), `permanent` (any other refusal).
///
/// # Errors
/// The transport error, as `reqwest` gives it.
pub async fn send(
    provider: &'static str,
    request: reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    use crate::metrics::{PROVIDER_CALLS, PROVIDER_LATENCY};
    let started = std::time::Instant::now();
    let result = request.send().await;
    let outcome = match &result {
        Ok(response) => match response.status().as_u16() {
            200..=299 => "ok",
            401 | 403 => "credentials",
            404 => "not_found",
            429 => "throttled",
            500.. => "transient",
            _ => "permanent",
        },
        Err(_) => "transient",
    };
    crate::metrics::count(&PROVIDER_CALLS, &[provider, outcome], 1, None);
    crate::metrics::milliseconds(&PROVIDER_LATENCY, &[provider], started.elapsed());
    result
}
