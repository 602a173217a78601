//! The `Idempotency-Key` header around a handler (SPEC §3).

use std::future::Future;

use lambda_http::{Body, Request, Response};
use sha2::{Digest, Sha256};

use super::{ApiError, body_bytes};
use crate::domain::OrgId;
use crate::store::{IdempotencyStart, IdempotencyStore};

pub const HEADER: &str = "idempotency-key";
const MAX_KEY_LEN: usize = 255;

/// Runs `handler` at most once per `Idempotency-Key` (per organization and `scope`): a repeat
/// with the same body replays the first response, with another body answers 422, and while
/// the first is still running answers 409. 5xx answers, and answers marked [`unsettled`],
/// are not kept, so a retry runs again.
///
/// # Errors
/// 400 for a malformed key, 409/422 as above, storage failures.
pub async fn run_once<F, Fut>(
    store: &IdempotencyStore,
    org: &OrgId,
    scope: &str,
    request: &Request,
    handler: F,
) -> Result<Response<Body>, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Response<Body>, ApiError>>,
{
    let Some(key) = request.headers().get(HEADER) else {
        return handler().await;
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_KEY_LEN && k.chars().all(|c| c.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))
        })?
        .to_owned();
    let mut hasher = Sha256::new();
    hasher.update(request.method().as_str());
    hasher.update([0]);
    hasher.update(request.uri().path().trim_end_matches('/'));
    hasher.update([0]);
    hasher.update(body_bytes(request));
    let hash = hex::encode(hasher.finalize());

    match store
        .begin(org, scope, &key, &hash, chrono::Utc::now())
        .await?
    {
        IdempotencyStart::New => {}
        IdempotencyStart::Replay { status, body } => {
            let content_type = if status >= 400 {
                "application/problem+json"
            } else {
                "application/json"
            };
            let mut response = Response::new(Body::Text(body));
            *response.status_mut() =
                http::StatusCode::from_u16(status).map_err(ApiError::internal)?;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            response.headers_mut().insert(
                "idempotent-replayed",
                http::HeaderValue::from_static("true"),
            );
            return Ok(response);
        }
        IdempotencyStart::InProgress => {
            return Err(ApiError::Conflict(
                "a request with this Idempotency-Key is still in progress".to_owned(),
            ));
        }
        IdempotencyStart::Mismatch => {
            return Err(ApiError::Unprocessable(
                "this Idempotency-Key was used with a different request".to_owned(),
            ));
        }
    }
    let response = match handler().await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    let status = response.status().as_u16();
    let mut response = response;
    let unsettled = response.headers_mut().remove(UNSETTLED_HEADER).is_some();
    if status >= 500 || unsettled {
        store.abandon(org, scope, &key).await?;
    } else {
        let body = match response.body() {
            Body::Text(text) => text.clone(),
            Body::Binary(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            _ => String::new(),
        };
        store.complete(org, scope, &key, status, &body).await?;
    }
    Ok(response)
}

/// Marks an answer whose outcome is not known yet (a provider call that may or may not have
/// happened: a payment's 202 `pending`). Like a 5xx it is not kept, so a retry with the same
/// key runs again and can settle it; the handler makes that rerun safe (for payments, the same
/// Stripe idempotency key). The header never leaves the function.
pub fn unsettled(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(UNSETTLED_HEADER, http::HeaderValue::from_static("1"));
    response
}

const UNSETTLED_HEADER: &str = "x-herald-unsettled";

/// Decodes a percent-encoded path segment (such as an email address in a path).
pub fn decode_segment(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}
