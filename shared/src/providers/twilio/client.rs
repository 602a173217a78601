//! The Twilio REST client: Messages (`POST /2010-04-01/Accounts/{Sid}/Messages.json`,
//! `GET …/Messages/{Sid}.json`) and Balance (`GET …/Balance.json`), Basic auth with the
//! account SID and auth token.
//!
//! Errors are classified for the worker: [`TwilioError::Transient`] (timeouts, connection
//! failures, HTTP 429 and 5xx, Twilio error 20429 "too many requests") is worth retrying;
//! [`TwilioError::Permanent`] (any other rejection, e.g. 21211 invalid `To`, 21610 the
//! recipient replied STOP) is not.

use std::fmt;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Twilio's "too many requests" error code, sometimes sent with a non-429 status.
pub const TOO_MANY_REQUESTS: i64 = 20429;
const MAX_ERROR_CHARS: usize = 500;

/// Who a message is from: a number, or a Messaging Service that picks one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    From(String),
    MessagingService(String),
}

impl Sender {
    /// `MG…` SIDs are Messaging Services; anything else is a number or alphanumeric sender.
    pub fn parse(value: &str) -> Self {
        let value = value.trim();
        if value.len() == 34 && value.starts_with("MG") {
            Self::MessagingService(value.to_owned())
        } else {
            Self::From(value.to_owned())
        }
    }
}

/// One outbound SMS as the Messages API takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundSms {
    pub to: String,
    pub sender: Sender,
    pub body: String,
    pub status_callback: Option<String>,
}

impl OutboundSms {
    /// The form fields Twilio documents, in a stable order.
    pub fn form(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![("To", self.to.clone())];
        match &self.sender {
            Sender::From(from) => fields.push(("From", from.clone())),
            Sender::MessagingService(sid) => fields.push(("MessagingServiceSid", sid.clone())),
        }
        fields.push(("Body", self.body.clone()));
        if let Some(callback) = &self.status_callback {
            fields.push(("StatusCallback", callback.clone()));
        }
        fields
    }
}

/// The part of Twilio's Message resource Herald uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageResource {
    pub sid: String,
    pub status: String,
    #[serde(default)]
    pub error_code: Option<i64>,
    #[serde(default)]
    pub error_message: Option<String>,
}

/// The account balance as Twilio reports it (a decimal string, e.g. `"12.34"`).
///
/// Every field is nullable in Twilio's own API description: `api.v2010.account.balance` in
/// `spec/json/twilio_api_v2010.json` of github.com/twilio/twilio-oai marks `account_sid`,
/// `balance` and `currency` `nullable: true` ("Child accounts do not contain balance
/// information"). [`TwilioClient::balance`] parses that shape and refuses an answer without
/// a balance or currency as [`TwilioError::is_unexpected_answer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    #[serde(default)]
    pub balance: Option<String>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub account_sid: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid Twilio base URL {url}: {reason}")]
    InvalidBaseUrl { url: String, reason: String },
    #[error("the Twilio account SID or auth token is empty")]
    MissingCredentials,
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwilioError {
    #[error("Twilio {}: {message}", describe(*status, *code))]
    Transient {
        status: Option<u16>,
        code: Option<i64>,
        message: String,
    },
    #[error("Twilio {}: {message}", describe(Some(*status), *code))]
    Permanent {
        status: u16,
        code: Option<i64>,
        message: String,
    },
}

fn describe(status: Option<u16>, code: Option<i64>) -> String {
    match (status, code) {
        (Some(s), Some(c)) => format!("HTTP {s}, error {c}"),
        (Some(s), None) => format!("HTTP {s}"),
        (None, _) => "unreachable".to_owned(),
    }
}

impl TwilioError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Transient { code, .. } | Self::Permanent { code, .. } => *code,
        }
    }

    /// Twilio answered with success but Herald cannot use the answer (a body that does not
    /// parse, or no value where Herald needs one). Permanent: asking again returns the same.
    pub fn is_unexpected_answer(&self) -> bool {
        matches!(self, Self::Permanent { status, .. } if (200..300).contains(status))
    }

    fn unexpected(status: u16, message: String) -> Self {
        Self::Permanent {
            status,
            code: None,
            message: format!("unexpected Twilio response: {message}"),
        }
    }
}

/// How the API answers a failed Twilio call: the provider's failure, never Herald's own
/// (not a 500). A Twilio outage is a retryable 503; anything else, an unusable answer
/// included, is a 502 `provider-error`.
impl From<TwilioError> for crate::http::ApiError {
    fn from(error: TwilioError) -> Self {
        if error.is_retryable() {
            Self::Unavailable(error.to_string())
        } else {
            Self::Provider(error.to_string())
        }
    }
}

#[derive(Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
    base_url: Url,
    account_sid: String,
    auth_token: SecretString,
    timeout: Duration,
}

impl fmt::Debug for TwilioClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioClient")
            .field("base_url", &self.base_url.as_str())
            .field("account_sid", &self.account_sid)
            .finish_non_exhaustive()
    }
}

impl TwilioClient {
    /// `base_url` is the API root (`https://api.twilio.com`, or the local sandbox with a
    /// path prefix).
    ///
    /// # Errors
    /// When the URL is not an absolute http(s) URL or a credential is empty.
    pub fn new(
        base_url: &str,
        account_sid: &str,
        auth_token: SecretString,
        timeout: Duration,
    ) -> Result<Self, BuildError> {
        let invalid = |reason: &str| BuildError::InvalidBaseUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let mut url = Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(invalid("expected an http or https URL"));
        }
        url.set_query(None);
        url.set_fragment(None);
        if account_sid.trim().is_empty() || auth_token.expose_secret().is_empty() {
            return Err(BuildError::MissingCredentials);
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::Http(e.to_string()))?;
        Ok(Self {
            http,
            base_url: url,
            account_sid: account_sid.trim().to_owned(),
            auth_token,
            timeout,
        })
    }

    /// Creates (sends) a message.
    ///
    /// # Errors
    /// [`TwilioError`], classified as transient or permanent.
    pub async fn send(&self, sms: &OutboundSms) -> Result<MessageResource, TwilioError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(sms.form())
            .finish();
        let response = crate::providers::send(
            "twilio",
            self.http
                .post(self.endpoint(&["Messages.json"]))
                .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await
        .map_err(|e| self.transport_error(&e))?;
        self.read(response).await
    }

    /// Fetches a message's current state; `Ok(None)` when Twilio does not know it.
    ///
    /// # Errors
    /// [`TwilioError`] as for [`send`](Self::send).
    pub async fn fetch(&self, sid: &str) -> Result<Option<MessageResource>, TwilioError> {
        if sid.is_empty() || !sid.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Ok(None);
        }
        let response = crate::providers::send(
            "twilio",
            self.http
                .get(self.endpoint(&["Messages", &format!("{sid}.json")]))
                .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret())),
        )
        .await
        .map_err(|e| self.transport_error(&e))?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.read(response).await.map(Some)
    }

    /// The account's balance, with its amount and currency present.
    ///
    /// # Errors
    /// [`TwilioError`] as for [`send`](Self::send); an answer without a balance or a
    /// currency (Twilio reports none for subaccounts) is an
    /// [unexpected answer](TwilioError::is_unexpected_answer).
    pub async fn balance(&self) -> Result<Balance, TwilioError> {
        let response = crate::providers::send(
            "twilio",
            self.http
                .get(self.endpoint(&["Balance.json"]))
                .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret())),
        )
        .await
        .map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let balance: Balance = self.read(response).await?;
        if balance.balance.is_none() || balance.currency.is_none() {
            return Err(TwilioError::unexpected(
                status,
                "the balance or its currency is null".to_owned(),
            ));
        }
        Ok(balance)
    }

    fn endpoint(&self, tail: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["2010-04-01", "Accounts", &self.account_sid])
                .extend(tail);
        }
        url
    }

    fn transport_error(&self, error: &reqwest::Error) -> TwilioError {
        let message = if error.is_timeout() {
            format!("no answer within {:?}", self.timeout)
        } else {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        };
        TwilioError::Transient {
            status: None,
            code: None,
            message: self.clean(message),
        }
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, TwilioError> {
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| TwilioError::unexpected(status.as_u16(), e.to_string()));
        }
        #[derive(Deserialize)]
        struct ErrorBody {
            code: Option<i64>,
            message: Option<String>,
        }
        let parsed: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
        let code = parsed.as_ref().and_then(|b| b.code);
        let message = self.clean(
            parsed
                .and_then(|b| b.message)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
        );
        if status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
            || code == Some(TOO_MANY_REQUESTS)
        {
            Err(TwilioError::Transient {
                status: Some(status.as_u16()),
                code,
                message,
            })
        } else {
            Err(TwilioError::Permanent {
                status: status.as_u16(),
                code,
                message,
            })
        }
    }

    /// Redacts the token, then truncates.
    fn clean(&self, message: String) -> String {
        let token = self.auth_token.expose_secret();
        let text = if token.is_empty() {
            message
        } else {
            message.replace(token, "[redacted]")
        };
        let text = text.trim();
        match text.char_indices().nth(MAX_ERROR_CHARS) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.to_owned(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wiremock::matchers::{body_string, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn client(server: &MockServer) -> TwilioClient {
        TwilioClient::new(
            &server.uri(),
            "AC123",
            SecretString::from("tok3n"),
            Duration::from_millis(500),
        )
        .unwrap()
    }

    fn sms() -> OutboundSms {
        OutboundSms {
            to: "+14155552671".into(),
            sender: Sender::parse("+15005550006"),
            body: "Hi & bye ✓".into(),
            status_callback: Some("https://hooks.example/twilio?x=1".into()),
        }
    }

    #[tokio::test]
    async fn send_posts_the_documented_form_with_basic_auth() {
        let server = MockServer::start().await;
        // base64("AC123:tok3n")
        Mock::given(method("POST"))
            .and(path("/2010-04-01/Accounts/AC123/Messages.json"))
            .and(header("authorization", "Basic QUMxMjM6dG9rM24="))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .and(body_string(
                "To=%2B14155552671&From=%2B15005550006&Body=Hi+%26+bye+%E2%9C%93&StatusCallback=https%3A%2F%2Fhooks.example%2Ftwilio%3Fx%3D1",
            ))
            .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
                "sid": "SM0123", "status": "queued", "error_code": null, "error_message": null,
                "account_sid": "AC123", "num_segments": "1"
            })))
            .expect(1)
            .mount(&server)
            .await;
        let message = client(&server).send(&sms()).await.unwrap();
        assert_eq!(message.sid, "SM0123");
        assert_eq!(message.status, "queued");
    }

    #[test]
    fn messaging_service_sids_are_sent_as_such() {
        let mut sms = sms();
        sms.sender = Sender::parse("MG0123456789abcdef0123456789abcdef");
        let form = sms.form();
        assert_eq!(form[1].0, "MessagingServiceSid");
        assert!(form.iter().all(|(k, _)| *k != "From"));
    }

    #[tokio::test]
    async fn errors_are_classified() {
        for (status, code, retryable) in [
            (400, 21211, false),
            (400, 21610, false),
            (401, 20003, false),
            (429, 20429, true),
            (400, 20429, true),
            (500, 20500, true),
            (503, 0, true),
        ] {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .respond_with(ResponseTemplate::new(status).set_body_json(
                    serde_json::json!({"code": code, "message": "nope tok3n", "status": status}),
                ))
                .mount(&server)
                .await;
            let error = client(&server).send(&sms()).await.unwrap_err();
            assert_eq!(error.is_retryable(), retryable, "{status} {code}");
            assert_eq!(error.code(), Some(code));
            assert!(!error.to_string().contains("tok3n"), "{error}");
        }
    }

    #[tokio::test]
    async fn a_timeout_is_transient() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_secs(3)))
            .mount(&server)
            .await;
        let error = client(&server).send(&sms()).await.unwrap_err();
        assert!(error.is_retryable());
    }

    #[tokio::test]
    async fn fetch_and_balance() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/2010-04-01/Accounts/AC123/Messages/SM1.json"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"sid": "SM1", "status": "undelivered", "error_code": 30003}),
            ))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/2010-04-01/Accounts/AC123/Balance.json"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"balance": "12.34", "currency": "USD", "account_sid": "AC123"}),
            ))
            .mount(&server)
            .await;
        let client = client(&server);
        let message = client.fetch("SM1").await.unwrap().unwrap();
        assert_eq!(message.error_code, Some(30003));
        assert!(client.fetch("SM2").await.unwrap().is_none());
        assert!(client.fetch("../x").await.unwrap().is_none());
        let balance = client.balance().await.unwrap();
        assert_eq!(balance.balance.as_deref(), Some("12.34"));
        assert_eq!(balance.currency.as_deref(), Some("USD"));
    }

    /// Twilio's API description lets every Balance field be null (a subaccount has no
    /// balance): that, or a body that is not a Balance at all, is an unexpected answer the
    /// API reports as a 502 `provider-error`, not a 500.
    #[tokio::test]
    async fn a_balance_without_a_value_is_an_unexpected_answer() {
        for body in [
            serde_json::json!({"balance": null, "currency": null, "account_sid": null}),
            serde_json::json!({"balance": "1.00", "currency": null, "account_sid": "AC123"}),
            serde_json::json!({"balance": 12.34}),
        ] {
            let server = MockServer::start().await;
            Mock::given(method("GET"))
                .and(path("/2010-04-01/Accounts/AC123/Balance.json"))
                .respond_with(ResponseTemplate::new(200).set_body_json(body.clone()))
                .mount(&server)
                .await;
            let error = client(&server).balance().await.unwrap_err();
            assert!(error.is_unexpected_answer(), "{body}: {error}");
            assert!(!error.is_retryable(), "{body}");
            let problem = crate::http::ApiError::from(error.clone());
            assert_eq!(
                (problem.status(), problem.slug()),
                (502, "provider-error"),
                "{body}"
            );
            // The balance handler wraps the error in `anyhow`: still the provider's.
            let wrapped = crate::http::ApiError::internal(anyhow::anyhow!(error));
            assert_eq!((wrapped.status(), wrapped.slug()), (502, "provider-error"));
        }
    }

    #[tokio::test]
    async fn a_message_that_does_not_parse_is_an_unexpected_answer() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"))
            .mount(&server)
            .await;
        let error = client(&server).fetch("SM1").await.unwrap_err();
        assert!(error.is_unexpected_answer(), "{error}");
        assert_eq!(crate::http::ApiError::from(error).status(), 502);
    }

    #[tokio::test]
    async fn an_outage_is_a_retryable_503_and_a_rejection_a_502() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let error = client(&server).balance().await.unwrap_err();
        assert!(!error.is_unexpected_answer());
        assert_eq!(crate::http::ApiError::from(error).status(), 503);
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(
                ResponseTemplate::new(401)
                    .set_body_json(serde_json::json!({"code": 20003, "message": "no"})),
            )
            .mount(&server)
            .await;
        let error = client(&server).balance().await.unwrap_err();
        assert_eq!(crate::http::ApiError::from(error).status(), 502);
    }
}
