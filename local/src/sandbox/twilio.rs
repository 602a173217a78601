//! A Twilio stand-in: the Messages API (`POST …/Messages.json` with Basic auth and form
//! fields, `GET …/Messages/{Sid}.json`), `GET …/Balance.json`, and status callbacks
//! (`queued`, `sent`, `delivered`) posted to each message's `StatusCallback`, signed with
//! `X-Twilio-Signature` like Twilio.
//!
//! Test hooks: `GET /sandbox/twilio/_inbox` lists what was "sent" (with the time each
//! request arrived); `POST /sandbox/twilio/_faults` makes the next calls fail
//! (see [`super::faults`]: `{"status": 429, "count": 2}`, `{"status": 400, "code": 21610}`,
//! `{"delay_ms": 5000}` for a timeout, `{"connection": "accept_then_drop"}`, chaos;
//! `{"webhooks": false}` stops callbacks); `POST /sandbox/twilio/_inbound`
//! with `{"from", "to", "body"}` posts a signed inbound message to the Twilio webhook.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use shared::domain::sms::measure;
use shared::domain::sms_message::PhoneNumber;
use shared::providers::twilio::{SIGNATURE_HEADER, sign};

use super::faults::{self, ConnectionFault, Fault, Faults};

const INBOX_LIMIT: usize = 20_000;
/// The sandbox's own number: the default sender, and where inbound messages arrive.
pub const SANDBOX_NUMBER: &str = "+15005550006";

pub struct TwilioSandbox {
    account_sid: String,
    auth_token: String,
    webhook_url: String,
    http: reqwest::Client,
    state: Mutex<SandboxState>,
}

#[derive(Default)]
struct SandboxState {
    calls: u64,
    inbox: VecDeque<Value>,
    statuses: HashMap<String, &'static str>,
    faults: Faults,
    webhooks_off: bool,
    /// Messages carried out but never answered (the caller cannot know they went out):
    /// the bound on duplicates a retry may cause.
    unanswered: u64,
}

#[derive(Debug, Deserialize)]
struct Inbound {
    from: String,
    #[serde(default)]
    to: Option<String>,
    body: String,
}

fn new_sid(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

impl TwilioSandbox {
    /// `webhook_url`: where inbound messages are posted (the runner's Twilio webhook).
    pub fn new(webhook_url: String) -> Arc<Self> {
        Arc::new(Self {
            account_sid: new_sid("AC"),
            auth_token: uuid::Uuid::new_v4().simple().to_string(),
            webhook_url,
            http: reqwest::Client::new(),
            state: Mutex::new(SandboxState::default()),
        })
    }

    /// What Herald's Twilio secret holds in sandbox mode.
    pub fn secret_values(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("TWILIO_ACCOUNT_SID".to_owned(), self.account_sid.clone()),
            ("TWILIO_AUTH_TOKEN".to_owned(), self.auth_token.clone()),
            ("TWILIO_FROM".to_owned(), SANDBOX_NUMBER.to_owned()),
        ])
    }

    pub fn auth_token(&self) -> &str {
        &self.auth_token
    }

    pub fn calls(&self) -> u64 {
        self.state.lock().map(|s| s.calls).unwrap_or(0)
    }

    /// The faults injected so far by kind, and the messages carried out but never answered
    /// (`unanswered`).
    pub fn fault_report(&self) -> Value {
        self.state
            .lock()
            .map(|s| json!({"injected": s.faults.injected(), "unanswered": s.unanswered}))
            .unwrap_or_default()
    }

    /// The messages accepted so far, oldest first.
    pub fn inbox(&self) -> Vec<Value> {
        self.state
            .lock()
            .map(|s| s.inbox.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route(
                "/sandbox/twilio/2010-04-01/Accounts/{account}/Messages.json",
                post(create_message),
            )
            .route(
                "/sandbox/twilio/2010-04-01/Accounts/{account}/Messages/{file}",
                get(fetch_message),
            )
            .route(
                "/sandbox/twilio/2010-04-01/Accounts/{account}/Balance.json",
                get(balance),
            )
            .route("/sandbox/twilio/_inbox", get(inbox))
            .route("/sandbox/twilio/_faults", post(add_fault))
            .route("/sandbox/twilio/_inbound", post(inbound))
            .with_state(Arc::clone(self))
    }

    /// Posts `params` to `url` signed as Twilio signs; returns the answer's status and body.
    pub async fn post_signed(
        &self,
        url: &str,
        params: &[(String, String)],
    ) -> Result<(u16, String), String> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .finish();
        let response = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header(SIGNATURE_HEADER, sign(&self.auth_token, url, params))
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.unwrap_or_default()))
    }

    fn authorized(&self, headers: &HeaderMap, account: &str) -> bool {
        let expected = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.account_sid, self.auth_token));
        account == self.account_sid
            && headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == format!("Basic {expected}"))
    }
}

fn twilio_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        Json(json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })),
    )
        .into_response()
}

fn unauthorized() -> Response {
    twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate")
}

/// Twilio's limit on a message body: "the concatenated message body exceeds the 1600
/// character limit" (error 21617).
const MAX_BODY_CHARS: usize = 1600;

/// One message's status callbacks, signed like Twilio's. Twilio sends none for a message's
/// initial status — `queued`, or `accepted` when sent through a Messaging Service — only
/// for the changes after it ("Outbound Message Status in Status Callbacks",
/// <https://www.twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks>):
/// `sent` then `delivered` direct, `queued`, `sent`, `delivered` through a service.
struct StatusCallbacks {
    url: String,
    through_service: bool,
    account: String,
    sid: String,
    from: String,
    to: String,
}

impl StatusCallbacks {
    /// Posts each status `pause` after the one before. As Twilio does by default, an
    /// answer of any status is final — a 4xx or 5xx is not retried — and only a
    /// connection that fails is tried once more (Twilio, "Webhooks connection overrides":
    /// retry count `rc` 1 and retry policy `rp` `ct`, connection timeout, by default).
    async fn post(&self, sandbox: &TwilioSandbox, pause: Duration) {
        let statuses: &[&str] = if self.through_service {
            &["queued", "sent", "delivered"]
        } else {
            &["sent", "delivered"]
        };
        for &status in statuses {
            tokio::time::sleep(pause).await;
            let params: Vec<(String, String)> = [
                ("AccountSid", self.account.as_str()),
                ("ApiVersion", "2010-04-01"),
                ("From", self.from.as_str()),
                ("MessageSid", self.sid.as_str()),
                ("MessageStatus", status),
                ("SmsSid", self.sid.as_str()),
                ("SmsStatus", status),
                ("To", self.to.as_str()),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
            for attempt in 0..2u32 {
                match sandbox.post_signed(&self.url, &params).await {
                    Ok((code, _)) if (200..300).contains(&code) => {}
                    Ok((code, body)) => tracing::warn!(code, body, "status callback refused"),
                    Err(error) => {
                        tracing::warn!(error, attempt, "status callback failed");
                        continue;
                    }
                }
                break;
            }
        }
    }
}

/// The Messages API rules the sandbox enforces beyond `To` (21211) and a sender (21603),
/// each with Twilio's error code (Twilio error dictionary, `twilio.com/docs/api/errors`;
/// Messages resource, "Create a Message resource"):
/// - 21602: a `Body` is required (Herald sends no media);
/// - 21617: the body is at most 1,600 characters;
/// - 21212: `From` is an E.164 number, a short code (5–6 digits) or an alphanumeric sender
///   ID (1–11 letters, digits and spaces, at least one letter);
/// - 21266: `To` and `From` differ;
/// - 21609: `StatusCallback`, when given, is an absolute http(s) URL;
/// - `MessagingServiceSid` is `MG` and 32 hex digits (21701 otherwise).
fn check_message(
    to: &str,
    from: Option<&str>,
    service: Option<&str>,
    body: &str,
    status_callback: Option<&str>,
) -> Result<(), (i64, String)> {
    if body.is_empty() {
        return Err((21602, "Message body is required.".to_owned()));
    }
    let chars = body.chars().count();
    if chars > MAX_BODY_CHARS {
        return Err((
            21617,
            format!("The concatenated message body exceeds the 1600 character limit ({chars})."),
        ));
    }
    if let Some(from) = from {
        let e164 = PhoneNumber::parse(from).is_ok() && from.starts_with('+');
        let short_code = (5..=6).contains(&from.len()) && from.bytes().all(|b| b.is_ascii_digit());
        let alphanumeric = (1..=11).contains(&from.len())
            && from.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
            && from.bytes().any(|b| b.is_ascii_alphabetic());
        if !(e164 || short_code || alphanumeric) {
            return Err((
                21212,
                format!(
                    "The 'From' number {from} is not a valid phone number, shortcode, or alphanumeric sender ID."
                ),
            ));
        }
        if from == to {
            return Err((
                21266,
                "'To' and 'From' number cannot be the same".to_owned(),
            ));
        }
    }
    if let Some(service) = service {
        let valid = service.len() == 34
            && service.starts_with("MG")
            && service[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err((
                21701,
                format!("The Messaging Service Sid {service} is invalid."),
            ));
        }
    }
    if let Some(callback) = status_callback {
        let valid = url::Url::parse(callback)
            .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host());
        if !valid {
            return Err((
                21609,
                format!("The StatusCallback URL {callback} is not a valid URL."),
            ));
        }
    }
    Ok(())
}

async fn create_message(
    State(sandbox): State<Arc<TwilioSandbox>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let received_at = chrono::Utc::now();
    if !sandbox.authorized(&headers, &account) {
        return unauthorized();
    }
    let fault = sandbox
        .state
        .lock()
        .ok()
        .and_then(|mut state| state.faults.for_this_call());
    let fault = fault.unwrap_or_default();
    if let Some(delay) = fault.delay_ms {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(status) = fault.status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = fault.code.unwrap_or(match status {
            StatusCode::TOO_MANY_REQUESTS => 20429,
            StatusCode::UNAUTHORIZED => 20003,
            _ => 20500,
        });
        return twilio_error(status, code, "sandbox fault");
    }
    if fault.connection == Some(ConnectionFault::Drop) {
        faults::drop_connection();
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let to = form.get("To").cloned().unwrap_or_default();
    if PhoneNumber::parse(&to).is_err() {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("Invalid 'To' Phone Number: {to}"),
        );
    }
    let from = form.get("From").cloned();
    let service = form.get("MessagingServiceSid").cloned();
    if from.is_none() && service.is_none() {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' or 'MessagingServiceSid' parameter is required to send a message",
        );
    }
    let text = form.get("Body").cloned().unwrap_or_default();
    if let Err((code, message)) = check_message(
        &to,
        from.as_deref(),
        service.as_deref(),
        &text,
        form.get("StatusCallback").map(String::as_str),
    ) {
        return twilio_error(StatusCode::BAD_REQUEST, code, &message);
    }
    let sid = new_sid("SM");
    let callback = form.get("StatusCallback").cloned();
    let segments = measure(&text).segments;
    let webhooks_off = {
        let Ok(mut state) = sandbox.state.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        state.calls += 1;
        state.inbox.push_back(json!({
            "sid": sid, "account_sid": account, "to": to, "from": from,
            "messaging_service_sid": service, "body": text, "status_callback": callback,
            "num_segments": segments,
            "received_at": received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }));
        if state.inbox.len() > INBOX_LIMIT {
            state.inbox.pop_front();
        }
        state.statuses.insert(sid.clone(), "delivered");
        state.webhooks_off
    };
    let sender = from.clone().unwrap_or_else(|| SANDBOX_NUMBER.to_owned());
    if let (Some(url), false) = (callback, webhooks_off) {
        let callbacks = StatusCallbacks {
            url,
            through_service: service.is_some(),
            account: account.clone(),
            sid: sid.clone(),
            from: sender,
            to: to.clone(),
        };
        if fault.callbacks_first {
            callbacks.post(&sandbox, Duration::ZERO).await;
        } else {
            let poster = Arc::clone(&sandbox);
            tokio::spawn(async move { callbacks.post(&poster, Duration::from_millis(100)).await });
        }
    }
    if matches!(
        fault.connection,
        Some(ConnectionFault::AcceptThenHold | ConnectionFault::AcceptThenDrop)
    ) && let Ok(mut state) = sandbox.state.lock()
    {
        state.unanswered += 1;
    }
    match fault.connection {
        Some(ConnectionFault::AcceptThenHold) => faults::hold_forever().await,
        Some(ConnectionFault::AcceptThenDrop) => faults::drop_connection(),
        _ => {}
    }
    let now = received_at.to_rfc2822();
    (
        StatusCode::CREATED,
        Json(json!({
            "sid": sid, "account_sid": account, "to": to, "from": from,
            "messaging_service_sid": service, "body": text,
            "status": if service.is_some() { "accepted" } else { "queued" },
            "num_segments": segments.to_string(), "direction": "outbound-api",
            "api_version": "2010-04-01", "date_created": now, "date_updated": now,
            "error_code": null, "error_message": null,
            "uri": format!("/2010-04-01/Accounts/{account}/Messages/{sid}.json"),
        })),
    )
        .into_response()
}

async fn fetch_message(
    State(sandbox): State<Arc<TwilioSandbox>>,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !sandbox.authorized(&headers, &account) {
        return unauthorized();
    }
    let sid = file.trim_end_matches(".json");
    let status = sandbox
        .state
        .lock()
        .ok()
        .and_then(|state| state.statuses.get(sid).copied());
    match status {
        Some(status) => Json(json!({"sid": sid, "account_sid": account, "status": status, "error_code": null, "error_message": null})).into_response(),
        None => twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            &format!("The requested resource /2010-04-01/Accounts/{account}/Messages/{sid}.json was not found"),
        ),
    }
}

async fn balance(
    State(sandbox): State<Arc<TwilioSandbox>>,
    Path(account): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !sandbox.authorized(&headers, &account) {
        return unauthorized();
    }
    Json(json!({"account_sid": account, "balance": "20.00", "currency": "USD"})).into_response()
}

async fn inbox(State(sandbox): State<Arc<TwilioSandbox>>) -> Response {
    let Ok(state) = sandbox.state.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    Json(json!({"calls": state.calls, "count": state.inbox.len(), "messages": state.inbox}))
        .into_response()
}

async fn add_fault(
    State(sandbox): State<Arc<TwilioSandbox>>,
    Json(fault): Json<Fault>,
) -> Response {
    if let Ok(mut state) = sandbox.state.lock() {
        match fault.webhooks {
            Some(on) => state.webhooks_off = !on,
            None => state.faults.add(fault),
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Simulates a person texting the sandbox number: a signed inbound webhook POST.
async fn inbound(
    State(sandbox): State<Arc<TwilioSandbox>>,
    Json(message): Json<Inbound>,
) -> Response {
    let sid = new_sid("SM");
    let to = message.to.unwrap_or_else(|| SANDBOX_NUMBER.to_owned());
    let params: Vec<(String, String)> = [
        ("AccountSid", sandbox.account_sid.as_str()),
        ("ApiVersion", "2010-04-01"),
        ("Body", message.body.as_str()),
        ("From", message.from.as_str()),
        ("MessageSid", sid.as_str()),
        ("NumMedia", "0"),
        ("NumSegments", "1"),
        ("SmsMessageSid", sid.as_str()),
        ("SmsSid", sid.as_str()),
        ("SmsStatus", "received"),
        ("To", to.as_str()),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    match sandbox.post_signed(&sandbox.webhook_url, &params).await {
        Ok((status, body)) => {
            Json(json!({"sid": sid, "webhook_status": status, "webhook_body": body}))
                .into_response()
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error).into_response(),
    }
}

#[cfg(test)]
mod rule_tests {
    use super::check_message;

    fn code(result: Result<(), (i64, String)>) -> Option<i64> {
        result.err().map(|(code, _)| code)
    }

    #[test]
    fn the_messages_api_rules() {
        let to = "+14155552671";
        let hook = Some("https://hooks.example.com/twilio");
        assert_eq!(
            code(check_message(to, Some("+14155550100"), None, "Hi", hook)),
            None
        );
        assert_eq!(
            code(check_message(to, Some("Herald"), None, "Hi", None)),
            None
        );
        assert_eq!(
            code(check_message(to, Some("12345"), None, "Hi", None)),
            None
        );
        assert_eq!(
            code(check_message(to, Some("+14155550100"), None, "", None)),
            Some(21602)
        );
        let long = "x".repeat(1601);
        assert_eq!(
            code(check_message(to, Some("+14155550100"), None, &long, None)),
            Some(21617)
        );
        let unicode = "é".repeat(1600);
        assert_eq!(
            code(check_message(
                to,
                Some("+14155550100"),
                None,
                &unicode,
                None
            )),
            None,
            "characters, not bytes"
        );
        assert_eq!(
            code(check_message(to, Some("not a number!"), None, "Hi", None)),
            Some(21212)
        );
        assert_eq!(
            code(check_message(to, Some("TwelveLetters"), None, "Hi", None)),
            Some(21212)
        );
        assert_eq!(
            code(check_message(to, Some(to), None, "Hi", None)),
            Some(21266)
        );
        assert_eq!(
            code(check_message(to, None, Some("MG123"), "Hi", None)),
            Some(21701)
        );
        assert_eq!(
            code(check_message(
                to,
                Some("+14155550100"),
                None,
                "Hi",
                Some("/relative")
            )),
            Some(21609)
        );
    }
}
