//! Serves the template's HTTP API routes: matches the route like API Gateway, checks the
//! token like the JWT authorizer, builds the same payload-v2 event Lambda would receive and
//! calls the function's handler in-process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body as AxumBody, to_bytes};
use axum::extract::State;
use axum::response::Response as AxumResponse;
use base64::Engine;
use functions::runtime::HttpFunction;
use lambda_http::Body;
use serde_json::{Value, json};
use shared::http::{ApiError, match_path};

use crate::auth::LocalAuth;

/// The largest request API Gateway accepts (10 MiB).
const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;

/// The largest event Lambda takes in a synchronous invocation: "6 MB each for request and
/// response" (Lambda Developer Guide, "Lambda quotas"). A request API Gateway accepts can
/// still make a larger event (headers and all); Lambda refuses to invoke with it, and the
/// HTTP API answers as for any failed integration.
const MAX_LAMBDA_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

pub struct HttpRoute {
    pub method: String,
    pub path: String,
    pub authorized: bool,
    pub function: Arc<dyn HttpFunction>,
    /// The function's `Timeout`.
    pub timeout: Duration,
}

/// A function URL's function.
pub struct FunctionUrl {
    pub function: Arc<dyn HttpFunction>,
    /// The function's `Timeout`.
    pub timeout: Duration,
}

pub struct HttpApi {
    pub routes: Vec<HttpRoute>,
    /// Function URLs, served at `/hooks/<binary>/…` (no authorizer: the function checks
    /// the provider's signature).
    pub function_urls: HashMap<String, FunctionUrl>,
    pub auth: LocalAuth,
}

impl HttpApi {
    /// API Gateway's choice: an exact method beats `ANY`, a literal path beats a greedy one.
    fn route_for(&self, method: &str, path: &str) -> Option<(&HttpRoute, HashMap<String, String>)> {
        // Rank: (exact method, literal path); the highest rank wins.
        type Candidate<'a> = (&'a HttpRoute, HashMap<String, String>, (bool, bool));
        let mut best: Option<Candidate<'_>> = None;
        for route in &self.routes {
            if route.method != "ANY" && !route.method.eq_ignore_ascii_case(method) {
                continue;
            }
            let Some(params) = match_path(&route.path, path) else {
                continue;
            };
            let rank = (route.method != "ANY", !route.path.contains("+}"));
            if best.as_ref().is_none_or(|(_, _, current)| rank > *current) {
                best = Some((route, params.into_iter().collect(), rank));
            }
        }
        best.map(|(route, params, _)| (route, params))
    }
}

pub async fn serve(
    State(api): State<Arc<HttpApi>>,
    request: axum::extract::Request,
) -> AxumResponse {
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    if let Some(rest) = path.strip_prefix("/hooks/") {
        let (binary, inner_path) = rest
            .split_once('/')
            .map_or((rest, "/".to_owned()), |(b, p)| (b, format!("/{p}")));
        let Some(function) = api.function_urls.get(binary) else {
            return into_axum(ApiError::NotFound.into_response());
        };
        let Ok(bytes) = to_bytes(body, MAX_REQUEST_BYTES).await else {
            return into_axum(
                ApiError::PayloadTooLarge("the request is over 10 MiB".to_owned()).into_response(),
            );
        };
        let event = lambda_event(
            &parts,
            &inner_path,
            "$default",
            HashMap::new(),
            None,
            &bytes,
        );
        return match lambda_http::request::from_str(&event.to_string()) {
            Ok(request) => invoke(binary, &function.function, function.timeout, request)
                .await
                .unwrap_or_else(|_| {
                    // A function URL answers a function error with 502 and this body.
                    plain(http::StatusCode::BAD_GATEWAY, "Internal Server Error")
                }),
            Err(error) => into_axum(ApiError::internal(error).into_response()),
        };
    }
    let Some((route, path_params)) = api.route_for(&method, &path) else {
        return into_axum(ApiError::NotFound.into_response());
    };
    let claims = if route.authorized {
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        match header.map(|h| api.auth.verify(h)) {
            Some(Ok(claims)) => Some(claims),
            // API Gateway answers these itself (`{"message":"Unauthorized"}`); locally the
            // answer is a problem document like every other error.
            Some(Err(_)) => {
                return into_axum(
                    ApiError::Unauthenticated("the token is invalid or expired".to_owned())
                        .into_response(),
                );
            }
            None => {
                return into_axum(
                    ApiError::Unauthenticated(
                        "an Authorization: Bearer token is required".to_owned(),
                    )
                    .into_response(),
                );
            }
        }
    } else {
        None
    };
    let Ok(bytes) = to_bytes(body, MAX_REQUEST_BYTES).await else {
        return into_axum(
            ApiError::PayloadTooLarge("the request is over 10 MiB".to_owned()).into_response(),
        );
    };
    let route_key = format!("{} {}", route.method, route.path);
    let event = lambda_event(
        &parts,
        parts.uri.path(),
        &route_key,
        path_params,
        claims,
        &bytes,
    );
    let event = event.to_string();
    if event.len() > MAX_LAMBDA_PAYLOAD_BYTES {
        return json_message(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
        );
    }
    let request = match lambda_http::request::from_str(&event) {
        Ok(request) => request,
        Err(error) => return into_axum(ApiError::internal(error).into_response()),
    };
    invoke(&route_key, &route.function, route.timeout, request)
        .await
        .unwrap_or_else(|_| {
            // What an HTTP API answers when its Lambda integration fails (the AWS guide,
            // "Troubleshooting issues with HTTP API Lambda integrations").
            json_message(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
            )
        })
}

/// Invokes `function` with `request`, its context carrying the invocation's deadline.
async fn invoke(
    name: &str,
    function: &Arc<dyn HttpFunction>,
    timeout: Duration,
    request: lambda_http::Request,
) -> Result<AxumResponse, crate::invocation::TimedOut> {
    use lambda_http::RequestExt;
    // Boxed: the server's future for a request stays small (debug builds poll it on the
    // test thread's stack).
    Box::pin(crate::invocation::run(name, timeout, |invocation| {
        function.call(request.with_lambda_context(invocation.lambda_context()))
    }))
    .await
    .map(into_axum)
}

fn plain(status: http::StatusCode, body: &'static str) -> AxumResponse {
    let mut response = AxumResponse::new(AxumBody::from(body));
    *response.status_mut() = status;
    response
}

fn json_message(status: http::StatusCode, message: &str) -> AxumResponse {
    let mut response = AxumResponse::new(AxumBody::from(json!({ "message": message }).to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The payload format 2.0 event (API Gateway HTTP API and function URLs share it).
fn lambda_event(
    parts: &http::request::Parts,
    path: &str,
    route_key: &str,
    path_params: HashMap<String, String>,
    claims: Option<HashMap<String, String>>,
    body: &[u8],
) -> Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let value = value.to_str().unwrap_or_default();
        let entry = headers
            .entry(name.as_str().to_owned())
            .or_insert_with(|| Value::String(String::new()));
        if let Value::String(existing) = entry {
            if !existing.is_empty() {
                existing.push(',');
            }
            existing.push_str(value);
        }
    }
    let raw_query = parts.uri.query().unwrap_or_default();
    let mut query = serde_json::Map::new();
    for (name, value) in url_pairs(raw_query) {
        let entry = query
            .entry(name)
            .or_insert_with(|| Value::String(String::new()));
        if let Value::String(existing) = entry {
            if !existing.is_empty() {
                existing.push(',');
            }
            existing.push_str(&value);
        }
    }
    let (body, is_base64) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), true),
    };
    let now = chrono::Utc::now();
    let authorizer = claims.map(|claims| json!({ "jwt": { "claims": claims, "scopes": null } }));
    json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": headers,
        "queryStringParameters": if query.is_empty() { Value::Null } else { Value::Object(query) },
        "pathParameters": if path_params.is_empty() { Value::Null } else { json!(path_params) },
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "authorizer": authorizer,
            "domainName": "localhost",
            "domainPrefix": "localhost",
            "http": {
                "method": parts.method.as_str(),
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": parts.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default(),
            },
            "requestId": ulid_like(),
            "routeKey": route_key,
            "stage": "$default",
            "time": now.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
            "timeEpoch": now.timestamp_millis(),
        },
        "body": if body.is_empty() { Value::Null } else { Value::String(body) },
        "isBase64Encoded": is_base64,
    })
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn ulid_like() -> String {
    shared::domain::RecordId::new().to_string()
}

pub(crate) fn into_axum(response: http::Response<Body>) -> AxumResponse {
    let (parts, body) = response.into_parts();
    let body = match body {
        Body::Empty => AxumBody::empty(),
        Body::Text(text) => AxumBody::from(text),
        Body::Binary(bytes) => AxumBody::from(bytes),
        _ => AxumBody::empty(),
    };
    AxumResponse::from_parts(parts, body)
}
