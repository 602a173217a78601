//! RFC 9457 problem details: the one HTTP error type of the API.
//!
//! Every expected failure is an [`ApiError`] that becomes an `application/problem+json`
//! response. Internal errors are logged with their cause and answered with a generic body,
//! so a 5xx never leaks internals.

use std::collections::BTreeMap;

use lambda_http::{Body, Response};
use serde::Serialize;

use crate::pagination::{MAX_LIMIT, PageError};
use crate::store::StoreError;

/// Field name → messages, the `errors` member of a validation problem.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Fields a validation problem names at most: a 10,000-recipient bulk with every address
/// wrong answers a readable problem, not megabytes.
pub const MAX_REPORTED_FIELDS: usize = 20;

/// The field errors of one request, gathered while it is checked so the caller hears of
/// every bad field at once: the one collector every API uses.
#[derive(Debug, Default)]
pub struct FieldErrorCollector {
    errors: FieldErrors,
}

impl FieldErrorCollector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes what is wrong with `field` (dropped past [`MAX_REPORTED_FIELDS`] fields).
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let field = field.into();
        if self.errors.len() < MAX_REPORTED_FIELDS || self.errors.contains_key(&field) {
            self.errors.entry(field).or_default().push(message.into());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Whether something is noted for `field` already.
    pub fn has(&self, field: &str) -> bool {
        self.errors.contains_key(field)
    }

    /// `Ok` when nothing was noted, else the 400 naming every field.
    ///
    /// # Errors
    /// [`ApiError::Validation`] with the fields noted.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(self.errors))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{detail}")]
    Validation { detail: String, errors: FieldErrors },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A caller over a rate limit (answered with `Retry-After`).
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0} is not configured")]
    ProviderNotConfigured(&'static str),
    /// A provider answered something Herald cannot use (a body that does not parse, or no
    /// value where Herald needs one): the provider's fault, not the caller's nor Herald's.
    #[error("{0}")]
    Provider(String),
    /// A transient failure, such as storage contention that outlasted Herald's own
    /// retries: the same request may succeed later (answered with `Retry-After`).
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

#[derive(Debug, Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a FieldErrors>,
}

impl ApiError {
    /// A validation problem about one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        errors.insert(field.to_owned(), vec![message.into()]);
        Self::invalid(errors)
    }

    /// A validation problem listing every field that failed.
    pub fn invalid(errors: FieldErrors) -> Self {
        let fields: Vec<&str> = errors.keys().map(String::as_str).collect();
        Self::Validation {
            detail: format!("invalid value for: {}", fields.join(", ")),
            errors,
        }
    }

    /// Herald's own failure (a 500), unless the cause is a provider's error carried in
    /// `anyhow`: that is answered as the provider's failure (502/503, see each provider's
    /// `From` impl), so a provider's unusable answer never reads as Herald's bug.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        use crate::providers::{sendgrid::SendError, stripe::StripeError, twilio::TwilioError};
        let cause = cause.into();
        for error in cause.chain() {
            if let Some(error) = error.downcast_ref::<TwilioError>() {
                return error.clone().into();
            }
            if let Some(error) = error.downcast_ref::<StripeError>() {
                return error.clone().into();
            }
            if let Some(error) = error.downcast_ref::<SendError>() {
                return error.clone().into();
            }
        }
        Self::Internal(cause)
    }

    /// The error as a webhook answers it (SPEC §6): a provider retries only on 5xx, so
    /// contention that outlasted Herald's own retries ([`ApiError::Conflict`]) becomes
    /// [`ApiError::Unavailable`], a 503 the provider retries, instead of a 409 it takes as
    /// final. Anything else is unchanged.
    #[must_use]
    pub fn retryable(self) -> Self {
        match self {
            Self::Conflict(detail) => Self::Unavailable(detail),
            other => other,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::Unauthenticated(_) => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Validation { .. } | Self::BadRequest(_) => 400,
            Self::Conflict(_) => 409,
            Self::PayloadTooLarge(_) => 413,
            Self::TooManyRequests(_) => 429,
            Self::UnsupportedMediaType(_) => 415,
            Self::Unprocessable(_) => 422,
            Self::ProviderNotConfigured(_) | Self::Unavailable(_) => 503,
            Self::Provider(_) => 502,
            Self::Internal(_) => 500,
        }
    }

    /// The problem `type` slug; documented in docs/guides/conventions.md under "Errors".
    pub fn slug(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Validation { .. } => "validation-error",
            Self::BadRequest(_) => "bad-request",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge(_) => "payload-too-large",
            Self::TooManyRequests(_) => "too-many-requests",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::Unprocessable(_) => "unprocessable",
            Self::ProviderNotConfigured(_) => "provider-not-configured",
            Self::Provider(_) => "provider-error",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal-error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "Authentication required",
            Self::Forbidden(_) => "Forbidden",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Validation { .. } => "Validation failed",
            Self::BadRequest(_) => "Bad request",
            Self::Conflict(_) => "Conflict",
            Self::PayloadTooLarge(_) => "Payload too large",
            Self::TooManyRequests(_) => "Too many requests",
            Self::UnsupportedMediaType(_) => "Unsupported media type",
            Self::Unprocessable(_) => "Unprocessable request",
            Self::ProviderNotConfigured(_) => "Provider not configured",
            Self::Provider(_) => "Provider error",
            Self::Unavailable(_) => "Temporarily unavailable",
            Self::Internal(_) => "Internal server error",
        }
    }

    /// The problem+json response. Internal causes are logged here and never sent.
    pub fn into_response(self) -> Response<Body> {
        let detail = match &self {
            Self::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                "The server could not complete the request.".to_owned()
            }
            Self::NotFound => "No such resource.".to_owned(),
            other => other.to_string(),
        };
        let errors = match &self {
            Self::Validation { errors, .. } => Some(errors),
            _ => None,
        };
        let retry_later = matches!(self, Self::Unavailable(_) | Self::TooManyRequests(_));
        let body = ProblemBody {
            kind: format!("/problems/{}", self.slug()),
            title: self.title(),
            status: self.status(),
            detail,
            errors,
        };
        let json = serde_json::to_string(&body).unwrap_or_else(|_| "{}".to_owned());
        let mut response = Response::new(Body::Text(json));
        *response.status_mut() = http::StatusCode::from_u16(self.status())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/problem+json"),
        );
        if retry_later {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::InvalidCursor => ApiError::field("cursor", "is not a cursor for this list"),
            StoreError::Other(cause) => ApiError::Internal(cause),
        }
    }
}

impl From<PageError> for ApiError {
    fn from(error: PageError) -> Self {
        match error {
            PageError::Limit => {
                ApiError::field("limit", format!("must be between 1 and {}", MAX_LIMIT))
            }
            PageError::Cursor => ApiError::field("cursor", "is not a cursor for this list"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_json(response: &Response<Body>) -> serde_json::Value {
        match response.body() {
            Body::Text(text) => serde_json::from_str(text).unwrap(),
            other => panic!("unexpected body {other:?}"),
        }
    }

    #[test]
    fn validation_problem_lists_fields() {
        let response = ApiError::field("name", "is required").into_response();
        assert_eq!(response.status(), 400);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let body = body_json(&response);
        assert_eq!(body["type"], "/problems/validation-error");
        assert_eq!(body["errors"]["name"][0], "is required");
        assert_eq!(body["status"], 400);
    }

    #[test]
    fn a_webhook_answers_contention_with_a_retryable_503() {
        let response = ApiError::Conflict("the email kept changing".to_owned())
            .retryable()
            .into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(body_json(&response)["type"], "/problems/unavailable");
        let other = ApiError::Forbidden("bad signature".to_owned()).retryable();
        assert_eq!(other.status(), 403);
    }

    #[test]
    fn an_unusable_provider_answer_is_a_502() {
        let response = ApiError::Provider("Twilio sent no balance".to_owned()).into_response();
        assert_eq!(response.status(), 502);
        assert_eq!(body_json(&response)["type"], "/problems/provider-error");
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let response =
            ApiError::internal(anyhow::anyhow!("table secret-name unreachable")).into_response();
        assert_eq!(response.status(), 500);
        let text = serde_json::to_string(&body_json(&response)).unwrap();
        assert!(!text.contains("secret-name"), "{text}");
    }
}
