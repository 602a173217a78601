//! The Stripe API client: form-encoded requests with bracket nesting, a pinned
//! `Stripe-Version`, the secret key as a Bearer token, `Idempotency-Key` on creating calls,
//! and list pagination (`starting_after` / `has_more`).
//!
//! The base URL, key and timeout are injected, so the same client talks to
//! `https://api.stripe.com`, the local sandbox or a wiremock server. Errors say whether a
//! retry can help: [`StripeError::Card`] (402, the card was declined: final),
//! [`StripeError::Transient`] (timeouts, connection failures, 409 idempotency races, 429,
//! 5xx), [`StripeError::Rejected`] (any other 4xx: the request itself is wrong).

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use super::form;

/// The API version Herald's code is written against; Stripe answers in this shape whatever
/// the account's default version is.
pub const API_VERSION: &str = "2024-06-20";
pub const DEFAULT_BASE_URL: &str = "https://api.stripe.com";
/// One attempt's limit unless `STRIPE_TIMEOUT_MS` says otherwise (milliseconds, as for
/// SendGrid and Twilio). Callers that retry
/// plan their attempts inside their own deadline (see the payments API's Stripe budget).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(6);
/// Stripe's largest list page.
pub const MAX_PAGE_SIZE: u32 = 100;

const MAX_ERROR_MESSAGE_CHARS: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeError {
    /// The card was declined (HTTP 402). `payment_intent` is the failed intent Stripe
    /// returns with the error, when there is one.
    #[error("card declined: {message}")]
    Card {
        code: Option<String>,
        decline_code: Option<String>,
        message: String,
        payment_intent: Option<Box<Value>>,
    },
    /// Worth retrying with the same idempotency key.
    #[error("Stripe is temporarily unavailable ({status:?}): {message}")]
    Transient {
        status: Option<u16>,
        message: String,
    },
    /// Stripe refused the request; sending it again fails the same way.
    #[error("Stripe rejected the request (HTTP {status}): {message}")]
    Rejected {
        status: u16,
        code: Option<String>,
        message: String,
    },
}

impl StripeError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// Stripe answered with success but Herald cannot use the answer (not a JSON object,
    /// not the documented shape).
    /// Stripe refused an `Idempotency-Key` it already holds for another request
    /// (`idempotency_error`): the key's first request ran, so its outcome is not this
    /// answer.
    pub fn is_idempotency_conflict(&self) -> bool {
        matches!(self, Self::Rejected { code: Some(code), .. } if code == "idempotency_error")
    }

    pub fn is_unexpected_answer(&self) -> bool {
        matches!(self, Self::Rejected { status, .. } if (200..300).contains(status))
    }

    fn unexpected(status: u16, message: String) -> Self {
        Self::Rejected {
            status,
            code: None,
            message: format!("unexpected Stripe response: {message}"),
        }
    }

    /// A short reason for a record or a log line.
    pub fn reason(&self) -> String {
        match self {
            Self::Card {
                decline_code,
                code,
                message,
                ..
            } => match decline_code.as_ref().or(code.as_ref()) {
                Some(code) => format!("{code}: {message}"),
                None => message.clone(),
            },
            Self::Transient { message, .. } | Self::Rejected { message, .. } => message.clone(),
        }
    }
}

/// How the API answers a failed Stripe call that is not a charge outcome: an outage is a
/// retryable 503, an unusable answer a 502 `provider-error` (never a 500: the failure is
/// Stripe's), and a refusal a 422 (the request was Stripe-valid in shape but not in
/// substance, e.g. an unknown price).
impl From<StripeError> for crate::http::ApiError {
    fn from(error: StripeError) -> Self {
        if error.is_transient() {
            Self::Unavailable(format!("Stripe is unavailable: {}", error.reason()))
        } else if error.is_unexpected_answer() {
            Self::Provider(error.reason())
        } else {
            Self::Unprocessable(format!("Stripe refused the request: {}", error.reason()))
        }
    }
}

/// One page of a list endpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct ListPage {
    pub data: Vec<Value>,
    #[serde(default)]
    pub has_more: bool,
}

impl ListPage {
    /// The id to pass as `starting_after` for the next page, if there is one.
    pub fn next_after(&self) -> Option<String> {
        if !self.has_more {
            return None;
        }
        self.data
            .last()
            .and_then(|o| o["id"].as_str())
            .map(str::to_owned)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid Stripe base URL {0:?}")]
    InvalidBaseUrl(String),
    #[error("could not build the HTTP client: {0}")]
    Http(String),
}

/// A client for the platform Stripe account. Cheap to clone: one connection pool.
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base_url: Url,
    key: SecretString,
    timeout: Duration,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl StripeClient {
    /// # Errors
    /// When the base URL is not an http(s) URL or the HTTP client cannot be built.
    pub fn new(base_url: &str, key: SecretString, timeout: Duration) -> Result<Self, BuildError> {
        let mut base_url =
            Url::parse(base_url).map_err(|_| BuildError::InvalidBaseUrl(base_url.to_owned()))?;
        if !matches!(base_url.scheme(), "http" | "https") {
            return Err(BuildError::InvalidBaseUrl(base_url.to_string()));
        }
        if !base_url.path().ends_with('/') {
            let path = format!("{}/", base_url.path());
            base_url.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| BuildError::Http(e.to_string()))?;
        Ok(Self {
            http,
            base_url,
            key,
            timeout,
        })
    }

    /// One attempt's limit.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `STRIPE_TIMEOUT_MS`, read at init so a malformed value fails the function's start.
    ///
    /// # Errors
    /// [`crate::config::ConfigError::Malformed`] for a value that is not a number.
    fn timeout_from_env(env: &crate::config::Env) -> Result<Duration, crate::config::ConfigError> {
        let default = u64::try_from(DEFAULT_TIMEOUT.as_millis()).unwrap_or(6_000);
        let millis = env.number("STRIPE_TIMEOUT_MS", default)?;
        Ok(Duration::from_millis(millis))
    }

    /// The client, built on first use by [`Self::from_env`]; `STRIPE_TIMEOUT_MS` is read now,
    /// at init, so a malformed value fails the function's start naming the variable. The one
    /// place a Stripe client is built.
    ///
    /// # Errors
    /// [`crate::config::ConfigError::Malformed`] for a timeout that is not a number.
    pub fn on_first_use(
        aws: &crate::aws::AwsClients,
        env: &crate::config::Env,
    ) -> Result<crate::config::OnFirstUse<Option<Self>>, crate::config::ConfigError> {
        let timeout = Self::timeout_from_env(env)?;
        Ok(
            env.on_first_use(&aws.secrets, move |env, secrets| async move {
                Self::from_env(&env, &secrets, timeout).await
            }),
        )
    }

    /// The platform account's client as the environment configures it: `STRIPE_SECRET_KEY`
    /// (a secret), `STRIPE_BASE_URL` (default the real API), and `timeout`
    /// ([`Self::timeout_from_env`]).
    /// `None` when no key is configured: callers answer 503 and record nothing. Functions
    /// build it on first use ([`crate::config::OnFirstUse`]): reading the key is a network call.
    ///
    /// # Errors
    /// When the secret cannot be read or the base URL is invalid.
    pub async fn from_env(
        env: &crate::config::Env,
        secrets: &aws_sdk_secretsmanager::Client,
        timeout: Duration,
    ) -> anyhow::Result<Option<Self>> {
        let Some(key) = env.secret("STRIPE_SECRET_KEY", secrets).await? else {
            return Ok(None);
        };
        let base_url = env
            .optional("STRIPE_BASE_URL")
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        Ok(Some(Self::new(&base_url, key, timeout)?))
    }

    /// `POST /v1/<path>` with form `params`. `idempotency_key` makes a retry replay the first
    /// result instead of acting twice.
    ///
    /// # Errors
    /// A classified [`StripeError`].
    pub async fn post(
        &self,
        path: &str,
        params: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Value, StripeError> {
        self.send(
            Method::POST,
            path,
            Some(form::encode(params)),
            idempotency_key,
            None,
        )
        .await
    }

    /// [`Self::post`] given at most `timeout` (less than the client's own when a deadline
    /// is near). A timeout is [`StripeError::Transient`]: Stripe may have acted.
    ///
    /// # Errors
    /// A classified [`StripeError`].
    pub async fn post_within(
        &self,
        path: &str,
        params: &Value,
        idempotency_key: Option<&str>,
        timeout: Duration,
    ) -> Result<Value, StripeError> {
        self.send(
            Method::POST,
            path,
            Some(form::encode(params)),
            idempotency_key,
            Some(timeout),
        )
        .await
    }

    /// [`Self::get`] given at most `timeout`.
    ///
    /// # Errors
    /// A classified [`StripeError`].
    pub async fn get_within(
        &self,
        path: &str,
        query: &Value,
        timeout: Duration,
    ) -> Result<Value, StripeError> {
        let query = form::encode(query);
        let path = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        self.send(Method::GET, &path, None, None, Some(timeout))
            .await
    }

    /// # Errors
    /// A classified [`StripeError`].
    pub async fn get(&self, path: &str, query: &Value) -> Result<Value, StripeError> {
        let query = form::encode(query);
        let path = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        self.send(Method::GET, &path, None, None, None).await
    }

    /// # Errors
    /// A classified [`StripeError`].
    pub async fn delete(&self, path: &str) -> Result<Value, StripeError> {
        self.send(Method::DELETE, path, None, None, None).await
    }

    /// One page of a list endpoint (`/v1/customers`, …) after `starting_after`.
    ///
    /// # Errors
    /// A classified [`StripeError`].
    pub async fn list(
        &self,
        path: &str,
        filters: &Value,
        limit: u32,
        starting_after: Option<&str>,
    ) -> Result<ListPage, StripeError> {
        let mut query = filters.clone();
        if let Value::Object(map) = &mut query {
            map.insert("limit".into(), limit.clamp(1, MAX_PAGE_SIZE).into());
            if let Some(after) = starting_after {
                map.insert("starting_after".into(), after.into());
            }
        }
        let value = self.get(path, &query).await?;
        serde_json::from_value(value)
            .map_err(|e| StripeError::unexpected(200, format!("not a Stripe list: {e}")))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        idempotency_key: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Value, StripeError> {
        let url = self
            .base_url
            .join(path.trim_start_matches('/'))
            .map_err(|e| StripeError::Rejected {
                status: 0,
                code: None,
                message: format!("bad path {path}: {e}"),
            })?;
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.key.expose_secret())
            .header("stripe-version", API_VERSION);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let response = crate::providers::send("stripe", request)
            .await
            .map_err(|e| StripeError::Transient {
                status: None,
                message: if e.is_timeout() {
                    "timed out".to_owned()
                } else {
                    "connection failed".to_owned()
                },
            })?;
        let status = response.status();
        let text = response.text().await.map_err(|_| StripeError::Transient {
            status: Some(status.as_u16()),
            message: "the response body could not be read".to_owned(),
        })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            // Every Stripe success is a JSON object; anything else is not Stripe's API.
            return if value.is_object() {
                Ok(value)
            } else {
                Err(StripeError::unexpected(
                    status.as_u16(),
                    "the body is not a JSON object".to_owned(),
                ))
            };
        }
        Err(classify(status, &value))
    }
}

fn classify(status: StatusCode, body: &Value) -> StripeError {
    let error = &body["error"];
    let text = |name: &str| error[name].as_str().map(str::to_owned);
    let message: String = text("message")
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()))
        .chars()
        .take(MAX_ERROR_MESSAGE_CHARS)
        .collect();
    let code = status.as_u16();
    if code == 402 || error["type"] == "card_error" {
        return StripeError::Card {
            code: text("code"),
            decline_code: text("decline_code"),
            message,
            payment_intent: error
                .get("payment_intent")
                .filter(|pi| pi.is_object())
                .map(|pi| Box::new(pi.clone())),
        };
    }
    // 409: a concurrent request with the same idempotency key is still running.
    if code == 408 || code == 409 || code == 429 || status.is_server_error() {
        return StripeError::Transient {
            status: Some(code),
            message,
        };
    }
    StripeError::Rejected {
        status: code,
        // An idempotency error has a type and no code (docs.stripe.com/api/errors).
        code: text("code").or_else(|| {
            (error["type"] == "idempotency_error").then(|| "idempotency_error".to_owned())
        }),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wiremock::matchers::{header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn client(server: &MockServer) -> StripeClient {
        StripeClient::new(
            &server.uri(),
            SecretString::from("sk_test_123".to_owned()),
            Duration::from_secs(2),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn posts_bracket_nested_forms_with_version_key_and_idempotency_key() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/subscriptions"))
            .and(header("authorization", "Bearer sk_test_123"))
            .and(header("stripe-version", API_VERSION))
            .and(header("idempotency-key", "herald-subscription-01J"))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .and(|request: &wiremock::Request| {
                let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(&request.body)
                    .into_owned()
                    .collect();
                pairs.sort();
                pairs
                    == [
                        ("customer", "cus_1"),
                        ("items[0][price]", "price_a"),
                        ("items[0][quantity]", "2"),
                        ("metadata[herald_id]", "01J"),
                        ("metadata[org_id]", "acme"),
                    ]
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"id": "sub_1", "status": "active"})),
            )
            .expect(1)
            .mount(&server)
            .await;
        let created = client(&server)
            .post(
                "/v1/subscriptions",
                &json!({"customer": "cus_1", "items": [{"price": "price_a", "quantity": 2}], "metadata": {"org_id": "acme", "herald_id": "01J"}}),
                Some("herald-subscription-01J"),
            )
            .await
            .unwrap();
        assert_eq!(created["id"], "sub_1");
    }

    #[tokio::test]
    async fn classifies_card_errors_rate_limits_and_rejections() {
        let server = MockServer::start().await;
        Mock::given(path("/v1/payment_intents"))
            .respond_with(ResponseTemplate::new(402).set_body_json(json!({"error": {
                "type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
                "message": "Your card was declined.",
                "payment_intent": {"id": "pi_1", "status": "requires_payment_method"}}})))
            .mount(&server)
            .await;
        Mock::given(path("/v1/customers"))
            .respond_with(ResponseTemplate::new(429).set_body_json(
                json!({"error": {"type": "invalid_request_error", "message": "Too many requests"}}),
            ))
            .mount(&server)
            .await;
        Mock::given(path("/v1/refunds"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {"type": "invalid_request_error", "code": "amount_too_large", "message": "Refund amount is greater than unrefunded amount"}})))
            .mount(&server)
            .await;
        Mock::given(path("/v1/invoices"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let stripe = client(&server);
        match stripe
            .post("/v1/payment_intents", &json!({}), Some("k"))
            .await
        {
            Err(error @ StripeError::Card { .. }) => {
                assert_eq!(error.reason(), "generic_decline: Your card was declined.");
                let StripeError::Card { payment_intent, .. } = error else {
                    unreachable!()
                };
                assert_eq!(payment_intent.unwrap()["id"], "pi_1");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            stripe
                .post("/v1/customers", &json!({}), None)
                .await
                .unwrap_err()
                .is_transient()
        );
        assert!(
            stripe
                .get("/v1/invoices", &json!({}))
                .await
                .unwrap_err()
                .is_transient()
        );
        assert!(matches!(
            stripe.post("/v1/refunds", &json!({}), None).await,
            Err(StripeError::Rejected { status: 400, .. })
        ));
    }

    #[tokio::test]
    async fn lists_page_with_starting_after() {
        let server = MockServer::start().await;
        Mock::given(path("/v1/customers"))
            .and(query_param("starting_after", "cus_2"))
            .and(query_param("created[gte]", "100"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"object": "list", "data": [{"id": "cus_3"}], "has_more": false}),
            ))
            .mount(&server)
            .await;
        Mock::given(path("/v1/customers"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": [{"id": "cus_1"}, {"id": "cus_2"}], "has_more": true})))
            .mount(&server)
            .await;
        let stripe = client(&server);
        let filters = json!({"created": {"gte": 100}});
        let first = stripe
            .list("/v1/customers", &filters, 2, None)
            .await
            .unwrap();
        assert_eq!(first.next_after().as_deref(), Some("cus_2"));
        let second = stripe
            .list("/v1/customers", &filters, 2, first.next_after().as_deref())
            .await
            .unwrap();
        assert_eq!(second.data[0]["id"], "cus_3");
        assert_eq!(second.next_after(), None);
    }

    #[tokio::test]
    async fn timeouts_are_transient() {
        let server = MockServer::start().await;
        Mock::given(path("/v1/customers"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
            .mount(&server)
            .await;
        let stripe = StripeClient::new(
            &server.uri(),
            SecretString::from("k".to_owned()),
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(
            stripe
                .get("/v1/customers", &json!({}))
                .await
                .unwrap_err()
                .is_transient()
        );
    }

    /// A success Herald cannot read (here an HTML page from a proxy) is the provider's
    /// failure: a 502 `provider-error`, not a 500 and not `null` handed to the caller.
    #[tokio::test]
    async fn a_success_that_is_not_a_json_object_is_an_unexpected_answer() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_string("<html>ok</html>"))
            .mount(&server)
            .await;
        let error = client(&server)
            .get("/v1/invoices/in_1", &json!({}))
            .await
            .unwrap_err();
        assert!(
            error.is_unexpected_answer() && !error.is_transient(),
            "{error}"
        );
        let problem = crate::http::ApiError::from(error);
        assert_eq!((problem.status(), problem.slug()), (502, "provider-error"));
    }
}
