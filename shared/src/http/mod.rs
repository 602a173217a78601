//! The HTTP API conventions every endpoint function follows (SPEC §3).

mod form;
pub mod idempotency;
mod problem;
mod router;

pub use crate::pagination::{Cursor, DEFAULT_LIMIT, MAX_LIMIT, PageRequest};
pub use form::{escape_markup, multipart_fields};
pub use problem::{ApiError, FieldErrorCollector, FieldErrors, MAX_REPORTED_FIELDS};
pub use router::{Route, RouteMatch, Router, match_path};

use std::collections::BTreeMap;

use lambda_http::{Body, Request, RequestExt, Response};
use serde::{Serialize, de::DeserializeOwned};

/// Largest JSON body the API accepts. API Gateway caps payloads at 10 MiB; Herald's
/// own resources are far smaller, so anything bigger is a mistake or an attack.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Runs an endpoint function's dispatcher as one invocation ([`crate::logging::invocation`]),
/// turns its error into a problem response, logs the outcome and counts it: what every
/// HTTP function's `handle` does. A 5xx is a response, not a Lambda error, so the
/// `ApiRequests` metric (not Lambda's `Errors`) is what the 5xx alarm watches.
pub async fn respond<F, Fut>(
    function: &'static str,
    request: &Request,
    dispatch: F,
) -> Response<Body>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Response<Body>, ApiError>>,
{
    use crate::metrics::{API_LATENCY, API_REQUESTS};
    let started = std::time::Instant::now();
    let work = async {
        // Boxed: a handler's future (every route's arm) lives on the heap, not in each
        // frame that polls it; unoptimized builds otherwise overflow a 2 MiB stack.
        let response = Box::pin(dispatch())
            .await
            .unwrap_or_else(ApiError::into_response);
        let status = response.status().as_u16();
        tracing::info!(
            method = %request.method(),
            path = request.uri().path(),
            status,
            "request"
        );
        let class = format!("{}xx", status / 100);
        crate::metrics::count(&API_REQUESTS, &[function, &class], 1, None);
        crate::metrics::milliseconds(&API_LATENCY, &[function], started.elapsed());
        response
    };
    let id = request_id(request);
    let invocation = crate::logging::invocation(function, &id, work);
    match request.lambda_context_ref() {
        Some(context) => {
            crate::logging::with_lambda_request_id(context.request_id.clone(), invocation).await
        }
        None => invocation.await,
    }
}

/// What every provider webhook's `handle` does: [`respond`], with contention that outlasts
/// the store's retries answered 503 so the provider retries ([`ApiError::retryable`]), and
/// every refusal counted by reason in `WebhookRejections` (a burst of `signature` usually
/// means a rotated secret).
pub async fn respond_webhook<F, Fut>(
    function: &'static str,
    provider: &'static str,
    request: &Request,
    receive: F,
) -> Response<Body>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Response<Body>, ApiError>>,
{
    respond(function, request, || async {
        receive().await.map_err(|error| {
            let error = ApiError::retryable(error);
            if let Some(reason) = rejection_reason(&error) {
                let metric = &crate::metrics::WEBHOOK_REJECTIONS;
                crate::metrics::count(metric, &[provider, reason], 1, None);
            }
            error
        })
    })
    .await
}

/// Why a webhook request was refused, or `None` for an answer that asks the provider to
/// retry (5xx): that is not a rejection of the request.
fn rejection_reason(error: &ApiError) -> Option<&'static str> {
    Some(match error {
        ApiError::Unauthenticated(_) | ApiError::Forbidden(_) => "signature",
        ApiError::PayloadTooLarge(_) => "too_large",
        ApiError::UnsupportedMediaType(_) => "content_type",
        ApiError::MethodNotAllowed => "method",
        ApiError::ProviderNotConfigured(_) => "not_configured",
        ApiError::TooManyRequests(_) => "rate_limited",
        ApiError::Validation { .. }
        | ApiError::BadRequest(_)
        | ApiError::Unprocessable(_)
        | ApiError::NotFound
        | ApiError::Conflict(_) => "malformed",
        ApiError::Provider(_) | ApiError::Unavailable(_) | ApiError::Internal(_) => return None,
    })
}

/// A JSON response with the given status.
pub fn json<T: Serialize>(status: u16, value: &T) -> Result<Response<Body>, ApiError> {
    let text = serde_json::to_string(value).map_err(ApiError::internal)?;
    let mut response = Response::new(Body::Text(text));
    *response.status_mut() = http::StatusCode::from_u16(status).map_err(ApiError::internal)?;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// A 200 list page (SPEC §3): `items`, and `next_cursor` when the list goes on after them.
///
/// # Errors
/// When `items` cannot be serialised.
pub fn page<T: Serialize>(
    page: &PageRequest,
    items: &T,
    next: Option<Cursor>,
) -> Result<Response<Body>, ApiError> {
    let next_cursor = next.map(|position| page.next_cursor(position));
    json(
        200,
        &serde_json::json!({"items": items, "next_cursor": next_cursor}),
    )
}

/// An empty 204 response.
pub fn no_content() -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = http::StatusCode::NO_CONTENT;
    response
}

/// The raw body bytes, as API Gateway delivered them (already base64-decoded by `lambda_http`).
pub fn body_bytes(request: &Request) -> &[u8] {
    match request.body() {
        Body::Empty => &[],
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
        _ => &[],
    }
}

/// 415 unless the request says its body is of the media type `expected` (parameters such as
/// `charset` aside). Webhooks use it: a provider always names its own format, so any other
/// content type is not the provider talking.
///
/// # Errors
/// [`ApiError::UnsupportedMediaType`] for a missing or different content type.
pub fn require_content_type(request: &Request, expected: &str) -> Result<(), ApiError> {
    let media_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if media_type.as_deref() == Some(expected) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "the body must be {expected}"
        )))
    }
}

/// Parses a JSON body into `T`, answering 415 for another content type and 400 with the
/// failing field for malformed or mistyped JSON.
pub fn parse_json<T: DeserializeOwned>(request: &Request) -> Result<T, ApiError> {
    if let Some(content_type) = request.headers().get(http::header::CONTENT_TYPE) {
        let content_type = content_type
            .to_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !content_type.starts_with("application/json") && !content_type.contains("+json") {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be application/json".to_owned(),
            ));
        }
    }
    let bytes = body_bytes(request);
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge(format!(
            "the body is over {MAX_BODY_BYTES} bytes"
        )));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::field("body", "a JSON body is required"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let inner = error.inner();
        let message = inner.to_string();
        let path = error.path().to_string();
        let field = if inner.is_syntax() || inner.is_eof() {
            "body".to_owned()
        } else if let Some(missing) =
            backticked(&message).filter(|_| message.starts_with("missing field"))
        {
            join_path(&path, missing)
        } else if let Some(unknown) =
            backticked(&message).filter(|_| message.starts_with("unknown field"))
        {
            // The path already ends at an unknown field.
            if path.ends_with(unknown) {
                path
            } else {
                join_path(&path, unknown)
            }
        } else if path == "." {
            "body".to_owned()
        } else {
            path
        };
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_owned();
        ApiError::field(&field, message)
    })
}

fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(&message[start..end])
}

fn join_path(path: &str, field: &str) -> String {
    if path == "." || path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// The query string as a sorted map (the last value wins for repeated names).
pub fn query_map(request: &Request) -> BTreeMap<String, String> {
    let params = request.query_string_parameters();
    params
        .iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// The API Gateway request id, or the Lambda invocation id when there is none.
pub fn request_id(request: &Request) -> String {
    use lambda_http::request::RequestContext;
    if let Some(RequestContext::ApiGatewayV2(context)) = request.request_context_ref()
        && let Some(id) = &context.request_id
    {
        return id.clone();
    }
    request
        .lambda_context_ref()
        .map(|context| context.request_id.clone())
        .unwrap_or_default()
}

/// Parses an optional boolean query parameter (`true`/`false`, `1`/`0`).
pub fn query_bool(params: &BTreeMap<String, String>, name: &str) -> Result<Option<bool>, ApiError> {
    match params.get(name).map(|value| value.to_ascii_lowercase()) {
        None => Ok(None),
        Some(value) if value == "true" || value == "1" => Ok(Some(true)),
        Some(value) if value == "false" || value == "0" => Ok(Some(false)),
        Some(_) => Err(ApiError::field(name, "must be true or false")),
    }
}

/// Parses an optional RFC 3339 timestamp (or a plain `YYYY-MM-DD` date, meaning midnight UTC).
pub fn query_time(
    params: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    let Some(value) = params.get(name) else {
        return Ok(None);
    };
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(Some(time.with_timezone(&chrono::Utc)));
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
        && let Some(midnight) = date.and_hms_opt(0, 0, 0)
    {
        return Ok(Some(midnight.and_utc()));
    }
    Err(ApiError::field(
        name,
        "must be an RFC 3339 time or a YYYY-MM-DD date",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Input {
        name: String,
        count: Option<u32>,
    }

    fn request(body: &str) -> Request {
        let mut request = Request::new(Body::Text(body.to_owned()));
        request.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        request
    }

    fn field_of(body: &str) -> String {
        match parse_json::<Input>(&request(body)) {
            Err(ApiError::Validation { errors, .. }) => errors.keys().next().unwrap().clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(field_of(r#"{"count": 1}"#), "name");
        assert_eq!(field_of(r#"{"name": "a", "colour": 1}"#), "colour");
        assert_eq!(field_of(r#"{"name": "a", "count": "x"}"#), "count");
        assert_eq!(field_of(r#"{"name": "#), "body");
        assert_eq!(field_of(""), "body");
    }
}
