//! The SendGrid v3 API client: Mail Send (`POST /v3/mail/send`) and Email Activity
//! (`GET /v3/messages/{msg_id}`).
//!
//! The base URL is injected so the same client talks to `https://api.sendgrid.com`, the local
//! provider sandbox or a wiremock server in tests. The API key lives in a [`SecretString`]:
//! it never appears in `Debug` output, and error messages have it redacted in case an
//! intermediary ever echoes request headers back.
//!
//! Errors are classified for the worker that sends: [`SendError::Transient`] (timeouts,
//! connection failures, 408, 429, 5xx) is worth retrying, [`SendError::Permanent`] (any other
//! rejection) is not.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// SendGrid accepts at most this many personalizations in one Mail Send request.
pub const MAX_PERSONALIZATIONS: usize = 1000;

/// SendGrid's limit on the collective size of one personalization's substitutions.
pub const MAX_SUBSTITUTION_BYTES: usize = 10_000;

/// How much of SendGrid's error text an error carries: enough to diagnose, short enough for a
/// log line or a stored delivery attempt.
const MAX_ERROR_MESSAGE_CHARS: usize = 500;

/// Error bodies are read only this far; anything larger is not a SendGrid error document.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// A v3 Mail Send request body, serialized exactly as SendGrid documents it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailSend {
    pub personalizations: Vec<Personalization>,
    pub from: Address,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Address>,
    /// The default subject; a personalization's own `subject` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Serialized with `text/plain` first and `text/html` second whatever the order here,
    /// because SendGrid rejects any other order.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "serialize_content"
    )]
    pub content: Vec<Content>,
    /// Echoed back as top-level fields of every webhook event for this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_args: Option<BTreeMap<String, String>>,
}

/// One envelope of a Mail Send request: its recipients and what differs for them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Personalization {
    pub to: Vec<Address>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Address>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub substitutions: BTreeMap<String, String>,
    /// Merged over the message's `custom_args` for these recipients' events.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_args: BTreeMap<String, String>,
    /// Headers of these recipients' copy (Herald's per-recipient `List-Unsubscribe`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One body of the message, by MIME type (`text/plain`, `text/html`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    #[serde(rename = "type")]
    pub content_type: String,
    pub value: String,
}

/// SendGrid accepted the message for delivery; what happens next arrives by webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The `X-Message-Id` header: the prefix of every event's `sg_message_id` for this send.
    pub message_id: Option<String>,
}

/// A message's status in the Email Activity API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityStatus {
    /// `processed`, or a status this code does not know yet: not final either way.
    Processing,
    Delivered,
    NotDelivered,
}

/// A Mail Send request that breaks one of SendGrid's documented limits; sending it would
/// only earn a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("a message needs at least one personalization")]
    NoPersonalizations,
    #[error(
        "{count} personalizations in one request; SendGrid accepts at most {MAX_PERSONALIZATIONS}"
    )]
    TooManyPersonalizations { count: usize },
    #[error(
        "personalization {index} has {bytes} bytes of substitutions; SendGrid accepts at most {MAX_SUBSTITUTION_BYTES}"
    )]
    SubstitutionsTooLarge { index: usize, bytes: usize },
}

/// The client could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid SendGrid base URL {url:?}: {reason}")]
    InvalidBaseUrl { url: String, reason: String },
    /// Deliberately says nothing about the key's value.
    #[error("the SendGrid API key is empty or has characters an HTTP header cannot carry")]
    InvalidApiKey,
    #[error("could not build the HTTP client: {0}")]
    Http(String),
}

/// A failed call to SendGrid, classified by whether retrying can help.
///
/// Messages never contain the API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Timeouts, connection failures, 408, 429 and 5xx: retry later, no sooner than
    /// `retry_after` when SendGrid said so.
    #[error("SendGrid is temporarily unavailable ({}): {message}", describe_status(*.status))]
    Transient {
        status: Option<u16>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// SendGrid rejected the request itself (bad payload, bad key, no permission): sending it
    /// again will fail the same way.
    #[error("SendGrid rejected the request (HTTP {status}): {message}")]
    Permanent { status: u16, message: String },
}

/// A client for one SendGrid account. Cheap to share: it holds one connection pool.
#[derive(Clone)]
pub struct SendGridClient {
    http: reqwest::Client,
    base_url: Url,
    api_key: SecretString,
    timeout: Duration,
}

impl MailSend {
    /// Checks the limits SendGrid documents for one request, so a caller can split or reject
    /// a batch before spending a request on a certain 400.
    ///
    /// # Errors
    /// The first limit broken, as a [`LimitError`].
    pub fn check_limits(&self) -> Result<(), LimitError> {
        let count = self.personalizations.len();
        if count == 0 {
            return Err(LimitError::NoPersonalizations);
        }
        if count > MAX_PERSONALIZATIONS {
            return Err(LimitError::TooManyPersonalizations { count });
        }
        for (index, personalization) in self.personalizations.iter().enumerate() {
            let bytes = personalization.substitution_bytes();
            if bytes > MAX_SUBSTITUTION_BYTES {
                return Err(LimitError::SubstitutionsTooLarge { index, bytes });
            }
        }
        Ok(())
    }
}

impl Personalization {
    pub fn to(recipients: Vec<Address>) -> Self {
        Self {
            to: recipients,
            ..Self::default()
        }
    }

    /// The size SendGrid's substitution limit applies to. SendGrid does not say exactly how
    /// it counts, so this counts every key and value byte, which is never less than its
    /// count.
    pub fn substitution_bytes(&self) -> usize {
        self.substitutions
            .iter()
            .map(|(key, value)| key.len() + value.len())
            .sum()
    }
}

impl Address {
    pub fn new(email: impl Into<String>) -> Self {
        Self {
            email: email.into(),
            name: None,
        }
    }

    pub fn named(email: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            email: email.into(),
            name: Some(name.into()),
        }
    }
}

impl Content {
    pub const TEXT_PLAIN: &str = "text/plain";
    pub const TEXT_HTML: &str = "text/html";

    pub fn plain(value: impl Into<String>) -> Self {
        Self {
            content_type: Self::TEXT_PLAIN.to_owned(),
            value: value.into(),
        }
    }

    pub fn html(value: impl Into<String>) -> Self {
        Self {
            content_type: Self::TEXT_HTML.to_owned(),
            value: value.into(),
        }
    }

    /// Where SendGrid requires this content to stand: plain text, then HTML, then the rest.
    fn position(&self) -> u8 {
        let essence = self
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        if essence.eq_ignore_ascii_case(Self::TEXT_PLAIN) {
            0
        } else if essence.eq_ignore_ascii_case(Self::TEXT_HTML) {
            1
        } else {
            2
        }
    }
}

fn serialize_content<S: Serializer>(content: &[Content], serializer: S) -> Result<S::Ok, S::Error> {
    let mut ordered: Vec<&Content> = content.iter().collect();
    // Stable, so several contents of the same kind keep the caller's order.
    ordered.sort_by_key(|content| content.position());
    serializer.collect_seq(ordered)
}

/// One recipient of a Mail Send request and its Email Activity status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    pub to: String,
    pub status: ActivityStatus,
}

impl RecipientStatus {
    /// The status of `to` among `statuses` (addresses compare without case).
    pub fn of(statuses: &[Self], to: &str) -> Option<ActivityStatus> {
        statuses
            .iter()
            .find(|s| s.to.eq_ignore_ascii_case(to))
            .map(|s| s.status)
    }
}

impl ActivityStatus {
    /// Maps the Email Activity API's `status`; anything unknown is treated as not final.
    pub fn from_sendgrid(status: &str) -> Self {
        match status {
            "delivered" => Self::Delivered,
            "not_delivered" => Self::NotDelivered,
            _ => Self::Processing,
        }
    }

    /// The Email Activity API's spelling (what the local sandbox answers with).
    pub fn as_sendgrid_str(self) -> &'static str {
        match self {
            Self::Processing => "processed",
            Self::Delivered => "delivered",
            Self::NotDelivered => "not_delivered",
        }
    }
}

impl SendError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// SendGrid answered with success but Herald cannot use the answer (a body that is not
    /// the documented shape).
    pub fn is_unexpected_answer(&self) -> bool {
        matches!(self, Self::Permanent { status, .. } if (200..300).contains(status))
    }

    /// The HTTP status SendGrid answered with, when it answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Transient { status, .. } => *status,
            Self::Permanent { status, .. } => Some(*status),
        }
    }
}

/// How the API answers a failed SendGrid call: the provider's failure, never Herald's own
/// (not a 500). An outage is a retryable 503; anything else, an unusable answer included,
/// is a 502 `provider-error`.
impl From<SendError> for crate::http::ApiError {
    fn from(error: SendError) -> Self {
        if error.is_retryable() {
            Self::Unavailable(error.to_string())
        } else {
            Self::Provider(error.to_string())
        }
    }
}

fn describe_status(status: Option<u16>) -> String {
    status.map_or_else(|| "no response".to_owned(), |code| format!("HTTP {code}"))
}

impl fmt::Debug for SendGridClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendGridClient")
            .field("base_url", &self.base_url.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SendGridClient {
    /// `base_url` is the API root, e.g. `https://api.sendgrid.com`; a path prefix is kept
    /// (`http://127.0.0.1:4010/sendgrid`). `timeout` bounds each whole request, so a Lambda
    /// never spends its budget waiting on SendGrid.
    ///
    /// # Errors
    /// [`BuildError`] when the URL is not an absolute http(s) URL, the key cannot be sent in
    /// a header, or the HTTP client cannot be built.
    pub fn new(
        base_url: &str,
        api_key: SecretString,
        timeout: Duration,
    ) -> Result<Self, BuildError> {
        let invalid_url = |reason: &str| BuildError::InvalidBaseUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let mut url = Url::parse(base_url).map_err(|err| invalid_url(&err.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(invalid_url("expected an http or https URL"));
        }
        url.set_query(None);
        url.set_fragment(None);

        let key = api_key.expose_secret();
        if key.is_empty()
            || reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).is_err()
        {
            return Err(BuildError::InvalidApiKey);
        }

        let http = reqwest::Client::builder()
            .timeout(timeout)
            // SendGrid's API does not redirect; following one would only carry the request
            // (and its credentials) somewhere it was not configured to go.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| BuildError::Http(err.to_string()))?;

        Ok(Self {
            http,
            base_url: url,
            api_key,
            timeout,
        })
    }

    /// Sends one Mail Send request.
    ///
    /// # Errors
    /// [`SendError::Transient`] when retrying later may succeed, [`SendError::Permanent`]
    /// when SendGrid rejected the request itself.
    pub async fn send(&self, mail: &MailSend) -> Result<Accepted, SendError> {
        let response = crate::providers::send(
            "sendgrid",
            self.http
                .post(self.endpoint(&["v3", "mail", "send"]))
                .bearer_auth(self.api_key.expose_secret())
                .json(mail),
        )
        .await
        .map_err(|err| self.transport_error(&err))?;

        if !response.status().is_success() {
            return Err(self.rejection(response).await);
        }
        let message_id = response
            .headers()
            .get("x-message-id")
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        Ok(Accepted { message_id })
    }

    /// The status of every recipient of one Mail Send request in the Email Activity API. A
    /// request's `X-Message-Id` is only the prefix of each recipient's message id
    /// (`<x-message-id>.<filter…>`), so its messages are found as SendGrid's query language
    /// expects: `msg_id LIKE "<prefix>%"` on `GET /v3/messages` (Email Activity API, "Filter
    /// all messages" and its query reference), with the largest `limit`, 1,000, which is
    /// also the most recipients a request has. One call for a whole request matters: the
    /// API allows 6 requests a minute. A message too new to be indexed is not listed yet.
    /// The Email Activity API is a paid SendGrid add-on.
    ///
    /// # Errors
    /// As for [`send`](Self::send) (a 429 for the rate limit is transient); a success whose
    /// body is not the documented shape is [`SendError::Permanent`], since asking again
    /// returns the same body.
    pub async fn request_statuses(
        &self,
        request_message_id: &str,
    ) -> Result<Vec<RecipientStatus>, SendError> {
        let prefix = request_message_id.replace(['"', '\\', '%'], "");
        let mut url = self.endpoint(&["v3", "messages"]);
        url.query_pairs_mut()
            .append_pair("query", &format!("msg_id LIKE \"{prefix}%\""))
            .append_pair("limit", "1000");
        let response = crate::providers::send(
            "sendgrid",
            self.http.get(url).bearer_auth(self.api_key.expose_secret()),
        )
        .await
        .map_err(|err| self.transport_error(&err))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.rejection(response).await);
        }
        #[derive(Deserialize)]
        struct Listed {
            messages: Vec<Listing>,
        }
        #[derive(Deserialize)]
        struct Listing {
            msg_id: String,
            to_email: String,
            status: String,
        }
        let body = read_capped(response)
            .await
            .map_err(|err| self.transport_error(&err))?;
        let listed: Listed = serde_json::from_slice(&body).map_err(|err| SendError::Permanent {
            status: status.as_u16(),
            message: self.clean(format!("unexpected Email Activity response: {err}")),
        })?;
        Ok(listed
            .messages
            .into_iter()
            // A prefix of another request's id is not this request.
            .filter(|m| m.msg_id.starts_with(&format!("{prefix}.")) || m.msg_id == prefix)
            .map(|m| RecipientStatus {
                to: m.to_email,
                status: ActivityStatus::from_sendgrid(&m.status),
            })
            .collect())
    }

    /// The base URL with `segments` appended, each percent-encoded, so an id from outside
    /// cannot change which endpoint is called.
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        // Never fails: `new` rejected URLs that cannot be a base.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// A request that got no HTTP answer. Every such failure is worth retrying: the request
    /// was built from a validated URL and key, so what failed is the network or SendGrid.
    fn transport_error(&self, err: &reqwest::Error) -> SendError {
        let message = if err.is_timeout() {
            format!("no answer within {:?}", self.timeout)
        } else {
            error_chain(err)
        };
        SendError::Transient {
            status: None,
            message: self.clean(message),
            retry_after: None,
        }
    }

    /// Classifies an answer that is not a success.
    async fn rejection(&self, response: reqwest::Response) -> SendError {
        let status = response.status();
        let retry_after = retry_after(response.headers());
        // A body that cannot be read still leaves the status to go on.
        let body = read_capped(response).await.unwrap_or_default();
        let message = self.clean(error_message(status, &body));

        if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error()
        {
            SendError::Transient {
                status: Some(status.as_u16()),
                message,
                retry_after,
            }
        } else {
            SendError::Permanent {
                status: status.as_u16(),
                message,
            }
        }
    }

    /// Redacts the key, then truncates: in that order, so a cut cannot leave part of the key.
    fn clean(&self, message: String) -> String {
        let key = self.api_key.expose_secret();
        let redacted = if key.is_empty() {
            message
        } else {
            message.replace(key, "[redacted]")
        };
        truncate(redacted.trim(), MAX_ERROR_MESSAGE_CHARS)
    }
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ERROR_BODY_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BODY_BYTES {
            break;
        }
    }
    Ok(body)
}

/// `Retry-After` in seconds. The HTTP-date form is not used by SendGrid and is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value.parse::<u64>().ok().map(Duration::from_secs)
}

/// SendGrid's own words from its error document (`{"errors":[{"message","field"}]}`), else
/// the raw body, else the status line.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorDocument {
        #[serde(default)]
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        message: Option<String>,
        field: Option<String>,
    }

    if let Ok(document) = serde_json::from_slice::<ErrorDocument>(body) {
        let messages: Vec<String> = document
            .errors
            .into_iter()
            .filter_map(|item| match (item.field, item.message) {
                (Some(field), Some(message)) if !field.is_empty() => {
                    Some(format!("{field}: {message}"))
                }
                (_, Some(message)) => Some(message),
                (_, None) => None,
            })
            .collect();
        if !messages.is_empty() {
            return messages.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    if text.trim().is_empty() {
        status.to_string()
    } else {
        text.into_owned()
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

impl SendGridClient {
    /// The SendGrid client, built on first use by [`Self::from_env`]. `SENDGRID_TIMEOUT_MS`
    /// is read now, at init: a malformed value fails the function's start, naming the
    /// variable. The one place a SendGrid client is built.
    ///
    /// # Errors
    /// [`crate::config::ConfigError::Malformed`] for a timeout that is not a number.
    pub fn on_first_use(
        aws: &crate::aws::AwsClients,
        env: &crate::config::Env,
    ) -> Result<crate::config::OnFirstUse<Option<Self>>, crate::config::ConfigError> {
        let timeout = Duration::from_millis(env.number("SENDGRID_TIMEOUT_MS", 10_000)?);
        Ok(
            env.on_first_use(&aws.secrets, move |env, secrets| async move {
                Self::from_env(&env, &secrets, timeout).await
            }),
        )
    }

    /// Builds the SendGrid client from `SENDGRID_API_KEY` (secret) and `SENDGRID_BASE_URL`;
    /// `None` when no key is configured.
    ///
    /// # Errors
    /// When the secret cannot be read or the base URL is unusable.
    pub async fn from_env(
        env: &crate::config::Env,
        secrets: &crate::aws::SecretsClient,
        timeout: Duration,
    ) -> anyhow::Result<Option<Self>> {
        let Some(key) = env.secret("SENDGRID_API_KEY", secrets).await? else {
            return Ok(None);
        };
        let base = env
            .optional("SENDGRID_BASE_URL")
            .unwrap_or_else(|| "https://api.sendgrid.com".to_owned());
        Ok(Some(Self::new(&base, key, timeout)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;
    use wiremock::matchers::{body_json, header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const KEY: &str = "SG.test-key-0123456789.abcdefghijklmnopqrstuvwxyz";

    fn client(server: &MockServer) -> SendGridClient {
        client_with_timeout(server, Duration::from_secs(5))
    }

    fn client_with_timeout(server: &MockServer, timeout: Duration) -> SendGridClient {
        SendGridClient::new(&server.uri(), SecretString::from(KEY), timeout).unwrap()
    }

    fn mail() -> MailSend {
        let mut personalization =
            Personalization::to(vec![Address::named("ann@example.com", "Ann")]);
        personalization.bcc = vec![Address::new("audit@example.com")];
        personalization
            .substitutions
            .insert("-first_name-".into(), "Ann".into());
        personalization
            .custom_args
            .insert("email_id".into(), "01HZX3K6".into());
        MailSend {
            personalizations: vec![personalization],
            from: Address::named("noreply@acme.example", "Acme"),
            reply_to: None,
            subject: Some("Welcome".into()),
            // Deliberately in the order SendGrid rejects.
            content: vec![
                Content::html("<p>Hi -first_name-</p>"),
                Content::plain("Hi -first_name-"),
            ],
            custom_args: Some(BTreeMap::from([("org_id".to_owned(), "acme".to_owned())])),
        }
    }

    #[tokio::test]
    async fn send_posts_the_documented_request_and_returns_the_message_id() {
        let server = MockServer::start().await;
        let expected = json!({
            "personalizations": [{
                "to": [{"email": "ann@example.com", "name": "Ann"}],
                "bcc": [{"email": "audit@example.com"}],
                "substitutions": {"-first_name-": "Ann"},
                "custom_args": {"email_id": "01HZX3K6"}
            }],
            "from": {"email": "noreply@acme.example", "name": "Acme"},
            "subject": "Welcome",
            "content": [
                {"type": "text/plain", "value": "Hi -first_name-"},
                {"type": "text/html", "value": "<p>Hi -first_name-</p>"}
            ],
            "custom_args": {"org_id": "acme"}
        });
        Mock::given(method("POST"))
            .and(path("/v3/mail/send"))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .and(header("content-type", "application/json"))
            .and(body_json(&expected))
            .respond_with(
                ResponseTemplate::new(202).insert_header("X-Message-Id", "W86EgYT6SQKk0lRflfLRsA"),
            )
            .expect(1)
            .mount(&server)
            .await;

        let accepted = client(&server).send(&mail()).await.unwrap();

        assert_eq!(
            accepted.message_id.as_deref(),
            Some("W86EgYT6SQKk0lRflfLRsA")
        );
    }

    #[tokio::test]
    async fn a_base_url_path_prefix_is_kept() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/sandbox/v3/mail/send"))
            .respond_with(ResponseTemplate::new(202))
            .expect(1)
            .mount(&server)
            .await;
        let client = SendGridClient::new(
            &format!("{}/sandbox/", server.uri()),
            SecretString::from(KEY),
            Duration::from_secs(5),
        )
        .unwrap();

        let accepted = client.send(&mail()).await.unwrap();

        assert_eq!(accepted.message_id, None);
    }

    #[test]
    fn content_order_is_enforced_and_empty_fields_are_omitted() {
        let value = serde_json::to_value(mail()).unwrap();

        assert_eq!(value["content"][0]["type"], "text/plain");
        assert_eq!(value["content"][1]["type"], "text/html");
        let personalization = value["personalizations"][0].as_object().unwrap();
        assert!(!personalization.contains_key("cc"));
        assert!(!personalization.contains_key("subject"));
        assert!(!value.as_object().unwrap().contains_key("reply_to"));
    }

    #[test]
    fn the_request_body_round_trips_for_the_sandbox() {
        let original = mail();
        let parsed: MailSend =
            serde_json::from_value(serde_json::to_value(&original).unwrap()).unwrap();

        assert_eq!(parsed.personalizations, original.personalizations);
        assert_eq!(parsed.content[0], Content::plain("Hi -first_name-"));
        assert_eq!(parsed.custom_args, original.custom_args);
    }

    #[test]
    fn limits_are_checked_before_sending() {
        let mut too_many = mail();
        too_many.personalizations = vec![
            Personalization::to(vec![Address::new("a@example.com")]);
            MAX_PERSONALIZATIONS + 1
        ];
        assert_eq!(
            too_many.check_limits(),
            Err(LimitError::TooManyPersonalizations {
                count: MAX_PERSONALIZATIONS + 1
            })
        );

        let mut too_big = mail();
        too_big.personalizations[0]
            .substitutions
            .insert("-body-".into(), "x".repeat(MAX_SUBSTITUTION_BYTES));
        assert!(matches!(
            too_big.check_limits(),
            Err(LimitError::SubstitutionsTooLarge { index: 0, .. })
        ));

        let mut none = mail();
        none.personalizations.clear();
        assert_eq!(none.check_limits(), Err(LimitError::NoPersonalizations));

        assert_eq!(mail().check_limits(), Ok(()));
    }

    #[tokio::test]
    async fn too_many_requests_is_transient_with_retry_after() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(429)
                    .insert_header("Retry-After", "17")
                    .set_body_json(
                        json!({"errors": [{"field": null, "message": "too many requests"}]}),
                    ),
            )
            .mount(&server)
            .await;

        let err = client(&server).send(&mail()).await.unwrap_err();

        assert!(err.is_retryable());
        assert_eq!(
            err,
            SendError::Transient {
                status: Some(429),
                message: "too many requests".into(),
                retry_after: Some(Duration::from_secs(17)),
            }
        );
    }

    #[tokio::test]
    async fn server_errors_are_transient() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(500).set_body_string("upstream failure"))
            .mount(&server)
            .await;

        let err = client(&server).send(&mail()).await.unwrap_err();

        assert!(err.is_retryable());
        assert_eq!(err.status(), Some(500));
        assert!(err.to_string().contains("upstream failure"), "{err}");
    }

    #[tokio::test]
    async fn bad_requests_are_permanent_with_sendgrid_messages() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({
                "errors": [
                    {"message": "The from address does not match a verified Sender Identity.", "field": "from", "help": null},
                    {"message": "Invalid type. Expected: object, given: string.", "field": "custom_args", "help": "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message.custom_args"}
                ]
            })))
            .mount(&server)
            .await;

        let err = client(&server).send(&mail()).await.unwrap_err();

        assert!(!err.is_retryable());
        assert_eq!(
            err,
            SendError::Permanent {
                status: 400,
                message: "from: The from address does not match a verified Sender Identity.; \
                          custom_args: Invalid type. Expected: object, given: string."
                    .into(),
            }
        );
    }

    #[tokio::test]
    async fn long_error_bodies_are_truncated() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(413).set_body_string("é".repeat(5_000)))
            .mount(&server)
            .await;

        let err = client(&server).send(&mail()).await.unwrap_err();

        let SendError::Permanent {
            status: 413,
            message,
        } = err
        else {
            panic!("expected a permanent 413, got {err:?}");
        };
        assert_eq!(message.chars().count(), MAX_ERROR_MESSAGE_CHARS + 1);
    }

    #[tokio::test]
    async fn a_timeout_is_transient() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(202).set_delay(Duration::from_secs(2)))
            .mount(&server)
            .await;

        let err = client_with_timeout(&server, Duration::from_millis(100))
            .send(&mail())
            .await
            .unwrap_err();

        assert!(err.is_retryable());
        assert_eq!(err.status(), None);
        assert!(err.to_string().contains("no answer within 100ms"), "{err}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient() {
        // A port that was just free: nothing listens there (wiremock servers are pooled,
        // so a dropped one would still answer).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let client =
            SendGridClient::new(&uri, SecretString::from(KEY), Duration::from_secs(2)).unwrap();

        let err = client.send(&mail()).await.unwrap_err();

        assert!(err.is_retryable(), "{err:?}");
    }

    #[tokio::test]
    async fn the_api_key_never_shows_in_debug_or_errors() {
        let server = MockServer::start().await;
        // An intermediary that echoes the request's headers back must not leak the key.
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(401)
                    .set_body_string(format!("bad credentials: Bearer {KEY}")),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .respond_with(
                ResponseTemplate::new(503).set_body_json(json!({"errors": [{"message": KEY}]})),
            )
            .mount(&server)
            .await;
        let client = client(&server);

        let rejected = client.send(&mail()).await.unwrap_err();
        let unavailable = client.request_statuses("abc").await.unwrap_err();
        let timed_out = client_with_timeout(&server, Duration::from_millis(1))
            .send(&mail())
            .await
            .unwrap_err();

        assert!(!format!("{client:?}").contains(KEY));
        for err in [rejected, unavailable, timed_out] {
            assert!(!err.to_string().contains(KEY), "{err}");
            assert!(!format!("{err:?}").contains(KEY), "{err:?}");
        }
        let build_error =
            SendGridClient::new("not a url", SecretString::from(KEY), Duration::from_secs(1))
                .unwrap_err();
        assert!(!build_error.to_string().contains(KEY));
    }

    #[test]
    fn invalid_configuration_is_rejected() {
        let timeout = Duration::from_secs(1);
        assert!(matches!(
            SendGridClient::new("ftp://example.com", SecretString::from(KEY), timeout),
            Err(BuildError::InvalidBaseUrl { .. })
        ));
        assert!(matches!(
            SendGridClient::new("https://api.sendgrid.com", SecretString::from(""), timeout),
            Err(BuildError::InvalidApiKey)
        ));
        assert!(matches!(
            SendGridClient::new(
                "https://api.sendgrid.com",
                SecretString::from("SG.a\nb"),
                timeout
            ),
            Err(BuildError::InvalidApiKey)
        ));
    }

    #[tokio::test]
    async fn request_statuses_lists_every_recipient_under_the_request_prefix() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v3/messages"))
            .and(query_param("query", r#"msg_id LIKE "req1%""#))
            .and(query_param("limit", "1000"))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"messages": [
                {"msg_id": "req1.filter0001.1", "to_email": "Ann@Example.com", "status": "not_delivered"},
                {"msg_id": "req1.filter0001.2", "to_email": "bob@example.com", "status": "delivered"},
                {"msg_id": "req1.filter0001.3", "to_email": "cy@example.com", "status": "processed"},
                {"msg_id": "req1.filter0001.4", "to_email": "di@example.com", "status": "something_new"},
                // Another request whose id merely starts the same is not this one.
                {"msg_id": "req10.filter0001.1", "to_email": "eve@example.com", "status": "delivered"},
            ]})))
            .mount(&server)
            .await;

        let statuses = client(&server).request_statuses("req1").await.unwrap();

        assert_eq!(statuses.len(), 4, "{statuses:?}");
        let of = |to| RecipientStatus::of(&statuses, to);
        assert_eq!(of("ann@example.com"), Some(ActivityStatus::NotDelivered));
        assert_eq!(of("bob@example.com"), Some(ActivityStatus::Delivered));
        assert_eq!(of("cy@example.com"), Some(ActivityStatus::Processing));
        assert_eq!(of("di@example.com"), Some(ActivityStatus::Processing));
        assert_eq!(of("eve@example.com"), None);
    }

    #[tokio::test]
    async fn the_activity_rate_limit_is_transient() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(
                ResponseTemplate::new(429)
                    .set_body_json(json!({"errors": [{"message": "too many requests"}]})),
            )
            .mount(&server)
            .await;

        let refused = client(&server).request_statuses("r").await.unwrap_err();

        assert!(
            matches!(
                refused,
                SendError::Transient {
                    status: Some(429),
                    ..
                }
            ),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_malformed_activity_answer_is_permanent() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_string("<html>"))
            .mount(&server)
            .await;

        let err = client(&server).request_statuses("m1").await.unwrap_err();

        assert!(
            matches!(err, SendError::Permanent { status: 200, .. }),
            "{err:?}"
        );
    }
}
