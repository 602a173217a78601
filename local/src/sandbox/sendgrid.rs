//! A SendGrid stand-in: v3 Mail Send (Bearer key, personalizations, substitutions,
//! `custom_args`), the Email Activity lookup, and the Signed Event Webhook posting
//! `processed` and `delivered` events (or `bounce`/`dropped` for `@bounce.test` and
//! `@drop.test` recipients, and `deferred` for `@deferred.test` ones, whose receiving server
//! keeps answering "try again later", so the Email Activity API says `processed` and never
//! more) back to Herald, signed with ECDSA P-256 like SendGrid.
//!
//! Test hooks: `GET /sandbox/sendgrid/_inbox` lists what was "sent";
//! `POST /sandbox/sendgrid/_faults` makes the next calls fail (see [`super::faults`]:
//! `{"status": 429, "count": 2}`, `{"delay_ms": 5000}`, `{"connection": "accept_then_drop"}`,
//! `{"chaos": {"share": 0.3, "seed": 7}}`); `GET` on it reports what was injected.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use shared::providers::sendgrid::{MailSend, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSigner};

use super::faults::{self, ConnectionFault, Fault, Faults};

/// Messages kept for inspection; older ones are forgotten.
const INBOX_LIMIT: usize = 20_000;

pub struct SendGridSandbox {
    /// The key Mail Send accepts; [`Self::rotate_key`] replaces it, as revoking a key does.
    api_key: Mutex<String>,
    signer: WebhookSigner,
    webhook_url: String,
    /// Where Inbound Parse posts the emails sent to the `List-Unsubscribe` `mailto:`.
    inbound_parse_url: String,
    http: reqwest::Client,
    state: Mutex<SandboxState>,
}

#[derive(Default)]
struct SandboxState {
    calls: u64,
    /// Bytes of the Mail Send requests accepted.
    bytes: u64,
    inbox: VecDeque<Value>,
    /// Each recipient's message (`sg_message_id`) → its address and Activity status.
    statuses: HashMap<String, (String, &'static str)>,
    faults: Faults,
    /// Recipients of sends that were carried out but never answered (the caller cannot
    /// know they went out): the bound on duplicates a retry may cause.
    unanswered_recipients: u64,
    /// Off: accept sends but never post events (a lost webhook, for the status check).
    webhooks_off: bool,
    /// Requests refused for breaking a Mail Send rule ([`check_mail_send`]).
    refusals: u64,
    /// When the Email Activity requests of the last minute came ([`activity_gate`]).
    activity_window: VecDeque<std::time::Instant>,
    /// Email Activity requests answered, and refused for the rate limit.
    activity_lookups: u64,
    activity_throttled: u64,
}

/// The Email Activity API's rate limit: "The current limit is 6 requests per minute. If your
/// integration exceeds this limit, the API returns an HTTP 429" (Twilio SendGrid API
/// reference, Email Activity, "Rate limits"; since 2025-12-09). Held here over any 60 s.
const ACTIVITY_REQUESTS_PER_MINUTE: usize = 6;

impl SendGridSandbox {
    pub fn new(webhook_url: String, inbound_parse_url: String) -> Arc<Self> {
        Arc::new(Self {
            api_key: Mutex::new(new_api_key()),
            signer: WebhookSigner::generate(),
            webhook_url,
            inbound_parse_url,
            http: reqwest::Client::new(),
            state: Mutex::new(SandboxState::default()),
        })
    }

    /// What Herald's SendGrid secret holds in sandbox mode.
    pub fn secret_values(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("SENDGRID_API_KEY".to_owned(), self.api_key()),
            (
                "SENDGRID_WEBHOOK_PUBLIC_KEY".to_owned(),
                self.signer.public_key_base64(),
            ),
        ])
    }

    /// The key Mail Send accepts now.
    pub fn api_key(&self) -> String {
        self.api_key.lock().map(|k| k.clone()).unwrap_or_default()
    }

    /// Revokes the key and issues a new one (a key rotation): calls with the old key are
    /// refused with SendGrid's 401 from now on. Returns the new key.
    pub fn rotate_key(&self) -> String {
        let key = new_api_key();
        if let Ok(mut current) = self.api_key.lock() {
            current.clone_from(&key);
        }
        key
    }

    pub fn calls(&self) -> u64 {
        self.state.lock().map(|s| s.calls).unwrap_or(0)
    }

    /// Bytes of the Mail Send requests accepted so far.
    pub fn bytes_received(&self) -> u64 {
        self.state.lock().map(|s| s.bytes).unwrap_or(0)
    }

    /// Requests refused for breaking a Mail Send rule.
    pub fn refusals(&self) -> u64 {
        self.state.lock().map(|s| s.refusals).unwrap_or(0)
    }

    /// The faults injected so far by kind, and the recipients of sends carried out but never
    /// answered (`unanswered_recipients`).
    pub fn fault_report(&self) -> Value {
        self.state
            .lock()
            .map(|s| {
                json!({
                    "injected": s.faults.injected(),
                    "unanswered_recipients": s.unanswered_recipients,
                })
            })
            .unwrap_or_default()
    }

    /// Signs a body as SendGrid would at `timestamp` (for tests of the webhook itself).
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        self.signer.sign(timestamp, body)
    }

    /// Email Activity requests answered so far.
    pub fn activity_lookups(&self) -> u64 {
        self.state.lock().map(|s| s.activity_lookups).unwrap_or(0)
    }

    /// Email Activity requests refused with 429 for the rate limit.
    pub fn activity_throttled(&self) -> u64 {
        self.state.lock().map(|s| s.activity_throttled).unwrap_or(0)
    }

    /// Forgets the Email Activity requests made so far, as if a minute had passed (the
    /// status check runs every five minutes on AWS, and many times a second in tests).
    pub fn let_a_minute_pass(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.activity_window.clear();
        }
    }

    /// The messages received so far (each recipient once), oldest first.
    pub fn inbox(&self) -> Vec<Value> {
        self.state
            .lock()
            .map(|s| s.inbox.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The inbox's copy of Herald's email `email_id` (kept in its `custom_args`).
    fn received_copy(&self, email_id: &str) -> Option<Value> {
        self.state.lock().ok().and_then(|state| {
            state
                .inbox
                .iter()
                .find(|m| m["custom_args"]["email_id"] == email_id)
                .cloned()
        })
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/sandbox/sendgrid/v3/mail/send", post(mail_send))
            .route("/sandbox/sendgrid/v3/messages", get(filter_messages))
            .route("/sandbox/sendgrid/v3/messages/{id}", get(activity))
            .route("/sandbox/sendgrid/_inbox", get(inbox))
            .route("/sandbox/sendgrid/_engagement", post(engagement))
            .route("/sandbox/sendgrid/_mail_reply", post(mail_reply))
            .route(
                "/sandbox/sendgrid/_faults",
                post(add_fault).get(injected_faults),
            )
            // Room for SendGrid's own 30 MB limit, which `check_mail_send` applies.
            .layer(axum::extract::DefaultBodyLimit::max(
                MAX_REQUEST_BYTES + 1024 * 1024,
            ))
            .with_state(Arc::clone(self))
    }

    /// Signs and posts events to Herald's webhook, retrying like SendGrid (a few times here).
    pub async fn post_events(&self, events: &[Value]) {
        for batch in events.chunks(1000) {
            let body = serde_json::to_vec(batch).unwrap_or_default();
            for attempt in 0..5u32 {
                let timestamp = chrono::Utc::now().timestamp().to_string();
                let signature = self.signer.sign(&timestamp, &body);
                let result = self
                    .http
                    .post(&self.webhook_url)
                    .header("content-type", "application/json")
                    .header(SIGNATURE_HEADER, signature)
                    .header(TIMESTAMP_HEADER, timestamp)
                    .body(body.clone())
                    .send()
                    .await;
                match result {
                    Ok(response) if response.status().is_success() => break,
                    Ok(response) => tracing::warn!(
                        status = response.status().as_u16(),
                        attempt,
                        "webhook refused sandbox events"
                    ),
                    Err(error) => tracing::warn!(%error, attempt, "webhook unreachable"),
                }
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
}

fn new_api_key() -> String {
    format!("SG.sandbox.{}", uuid::Uuid::new_v4().simple())
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"errors": [{"message": message, "field": null, "help": null}]})),
    )
        .into_response()
}

/// A Mail Send rule broken: SendGrid's 400 (or 413) body names the message and the field.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
    pub field: Option<String>,
}

impl Refusal {
    fn bad_request(message: impl Into<String>, field: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body =
            json!({"errors": [{"message": self.message, "field": self.field, "help": null}]});
        (status, Json(body)).into_response()
    }
}

/// SendGrid refuses a request body over 30 MB ("The total size of your email, including
/// attachments, must be less than 30MB", Mail Send API reference, "Limitations").
pub const MAX_REQUEST_BYTES: usize = 30 * 1000 * 1000;
/// Recipients (to + cc + bcc over every personalization) of one request.
const MAX_RECIPIENTS: usize = 1000;
/// The byte limits on one personalization's substitutions and on a message's custom_args.
const MAX_SUBSTITUTION_BYTES: usize = 10_000;
const MAX_CUSTOM_ARGS_BYTES: usize = 10_000;
/// Headers a personalization may not set (rule 10), lowercase.
const RESERVED_HEADERS: &[&str] = &[
    "x-sg-id",
    "x-sg-eid",
    "received",
    "dkim-signature",
    "content-type",
    "content-transfer-encoding",
    "to",
    "from",
    "subject",
    "reply-to",
    "cc",
    "bcc",
];

/// The Mail Send rules the sandbox enforces, each as SendGrid documents it. Sources: the
/// Mail Send API reference (`twilio.com/docs/sendgrid/api-reference/mail-send/mail-send`,
/// "Limitations") and its error list (`…/mail-send/errors`), whose messages these are.
///
/// 1. 1 to 1,000 personalizations.
/// 2. At most 1,000 recipients, to + cc + bcc, over all personalizations.
/// 3. Every personalization has at least one `to`.
/// 4. Each address appears once in the personalizations array (any of to/cc/bcc, any
///    personalization; compared case-insensitively).
/// 5. A personalization's substitutions total at most 10,000 bytes.
/// 6. custom_args (message-level plus a personalization's) total at most 10,000 bytes.
/// 7. A subject, at the top level or in every personalization.
/// 8. Content: at least one entry, each value at least one character, `text/plain` first.
/// 9. The request body under 30 MB (413).
/// 10. No personalization header overwrites one SendGrid reserves ("You may not overwrite
///     the following headers: x-sg-id, x-sg-eid, received, dkim-signature, Content-Type,
///     Content-Transfer-Encoding, To, From, Subject, Reply-To, CC, BCC", Mail Send API
///     reference, `personalizations[].headers`; the refusal's wording is the sandbox's).
pub fn check_mail_send(mail: &MailSend, body_bytes: usize) -> Result<(), Refusal> {
    if body_bytes > MAX_REQUEST_BYTES {
        return Err(Refusal {
            status: 413,
            message: "The JSON payload you have included in your request is too large.".to_owned(),
            field: None,
        });
    }
    let count = mail.personalizations.len();
    if count == 0 {
        return Err(Refusal::bad_request(
            "You must have at least one personalization.",
            "personalizations",
        ));
    }
    if count > 1000 {
        return Err(Refusal::bad_request(
            format!(
                "The personalization block is limited to 1000 personalizations per API request. You have provided {count} personalizations. Please consider splitting this into multiple requests and resending your request."
            ),
            "personalizations",
        ));
    }
    let recipients: usize = mail
        .personalizations
        .iter()
        .map(|p| p.to.len() + p.cc.len() + p.bcc.len())
        .sum();
    if recipients > MAX_RECIPIENTS {
        return Err(Refusal::bad_request(
            "There is a limit of 1000 total recipients (to + cc + bcc) per request.",
            "personalizations",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (index, personalization) in mail.personalizations.iter().enumerate() {
        if personalization.to.is_empty() {
            return Err(Refusal::bad_request(
                "The to parameter is required for all personalization objects, and must have at least one email object with a valid email address.",
                format!("personalizations.{index}.to"),
            ));
        }
        for (list, addresses) in [
            ("to", &personalization.to),
            ("cc", &personalization.cc),
            ("bcc", &personalization.bcc),
        ] {
            for address in addresses {
                if !seen.insert(address.email.to_lowercase()) {
                    return Err(Refusal::bad_request(
                        format!(
                            "Each unique email address in the personalizations array should only be included once. You have included {} more than once.",
                            address.email
                        ),
                        format!("personalizations.{index}.{list}"),
                    ));
                }
            }
        }
        if personalization.substitution_bytes() > MAX_SUBSTITUTION_BYTES {
            return Err(Refusal::bad_request(
                "The maximum number of substitution bytes per personalization is 10000.",
                format!("personalizations.{index}.substitutions"),
            ));
        }
        if let Some(name) = personalization
            .headers
            .keys()
            .find(|name| RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()))
        {
            return Err(Refusal::bad_request(
                format!("The header {name} is reserved and cannot be overwritten."),
                format!("personalizations.{index}.headers"),
            ));
        }
        let mut args = mail.custom_args.clone().unwrap_or_default();
        args.extend(personalization.custom_args.clone());
        let arg_bytes: usize = args.iter().map(|(k, v)| k.len() + v.len()).sum();
        if arg_bytes > MAX_CUSTOM_ARGS_BYTES {
            return Err(Refusal::bad_request(
                "The maximum size of custom_args is 10,000 bytes.",
                format!("personalizations.{index}.custom_args"),
            ));
        }
    }
    if mail.personalizations.iter().any(|p| p.subject.is_none()) && mail.subject.is_none() {
        return Err(Refusal::bad_request(
            "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.",
            "subject",
        ));
    }
    if mail.content.is_empty() {
        return Err(Refusal::bad_request(
            "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block. We typically suggest both text/plain and text/html blocks are included, but only one block is required.",
            "content",
        ));
    }
    for (index, content) in mail.content.iter().enumerate() {
        if content.value.is_empty() {
            return Err(Refusal::bad_request(
                "The content value must be a string at least one character in length.",
                format!("content.{index}.value"),
            ));
        }
        if index > 0 && content.content_type == "text/plain" {
            return Err(Refusal::bad_request(
                "If present, text/plain content must be first, followed by any other content.",
                format!("content.{index}.type"),
            ));
        }
    }
    Ok(())
}

/// 11. A `template_id` names a template of the account. The sandbox has no Transactional
///     Templates API, so it holds none and refuses every one (the refusal's wording is the
///     sandbox's). Herald sends no `template_id`: SendGrid allows "up to 300 versions across
///     all templates" per account (Transactional Templates Versions API reference), too few
///     for every organization's templates, and Mail Send always uses a template's active
///     version, so an edit would reach emails queued before it.
fn check_template_id(body: &[u8]) -> Result<(), Refusal> {
    let raw: Value = serde_json::from_slice(body).unwrap_or_default();
    match raw.get("template_id") {
        None | Some(Value::Null) => Ok(()),
        Some(id) => Err(Refusal::bad_request(
            format!("The template_id {id} does not name a template of this account."),
            "template_id",
        )),
    }
}

/// SendGrid's substitution: each key replaced by its value wherever it occurs ("Substitutions
/// will apply to the text and html content of the body of your email, in addition to the
/// subject and reply-to parameters", Mail Send API reference,
/// `personalizations[].substitutions`).
fn substitute(text: &str, substitutions: &BTreeMap<String, String>) -> String {
    substitutions
        .iter()
        .fold(text.to_owned(), |acc, (token, value)| {
            acc.replace(token, value)
        })
}

async fn mail_send(
    State(sandbox): State<Arc<SendGridSandbox>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", sandbox.api_key()));
    if !authorized {
        return error(
            StatusCode::UNAUTHORIZED,
            "The provided authorization grant is invalid, expired, or revoked",
        );
    }
    let fault = sandbox
        .state
        .lock()
        .ok()
        .and_then(|mut state| state.faults.for_this_call())
        .unwrap_or_default();
    if let Some(delay) = fault.delay_ms {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(status) = fault.status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = error(status, "sandbox fault");
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        return response;
    }
    if fault.connection == Some(ConnectionFault::Drop) {
        faults::drop_connection();
    }
    let mail: MailSend = match serde_json::from_slice(&body) {
        Ok(mail) => mail,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("Bad Request: {e}")),
    };
    let checked = check_template_id(&body).and_then(|()| check_mail_send(&mail, body.len()));
    if let Err(refusal) = checked {
        if let Ok(mut state) = sandbox.state.lock() {
            state.refusals += 1;
        }
        return refusal.into_response();
    }
    let message_id = ulid::Ulid::new().to_string().to_lowercase();
    let now = chrono::Utc::now().timestamp();
    let recipients: u64 = mail
        .personalizations
        .iter()
        .map(|p| u64::try_from(p.to.len()).unwrap_or(u64::MAX))
        .sum();
    let mut events = Vec::new();
    {
        let Ok(mut state) = sandbox.state.lock() else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "sandbox state poisoned");
        };
        state.calls += 1;
        state.bytes += u64::try_from(body.len()).unwrap_or(u64::MAX);
        for (index, personalization) in mail.personalizations.iter().enumerate() {
            let mut args = mail.custom_args.clone().unwrap_or_default();
            args.extend(personalization.custom_args.clone());
            let subject = personalization
                .subject
                .clone()
                .or_else(|| mail.subject.clone())
                .unwrap_or_default();
            let subject = substitute(&subject, &personalization.substitutions);
            let content: Vec<Value> = mail
                .content
                .iter()
                .map(|c| json!({"type": c.content_type, "value": substitute(&c.value, &personalization.substitutions)}))
                .collect();
            for to in &personalization.to {
                state.inbox.push_back(json!({
                    "message_id": message_id, "to": to.email, "from": mail.from.email,
                    "subject": subject, "content": content, "custom_args": args,
                    "headers": personalization.headers,
                }));
                if state.inbox.len() > INBOX_LIMIT {
                    state.inbox.pop_front();
                }
                let sg_message_id = format!("{message_id}.filterdrecv-sandbox-{index}");
                let final_event = if to.email.ends_with("@bounce.test") {
                    json!({"event": "bounce", "type": "bounce", "reason": "550 5.1.1 The email account does not exist", "status": "5.1.1"})
                } else if to.email.ends_with("@drop.test") {
                    json!({"event": "dropped", "reason": "Invalid"})
                } else if to.email.ends_with("@deferred.test") {
                    json!({"event": "deferred", "response": "451 4.7.1 Try again later", "attempt": "1"})
                } else {
                    json!({"event": "delivered", "response": "250 OK"})
                };
                state.statuses.insert(
                    sg_message_id.clone(),
                    (
                        to.email.clone(),
                        match final_event["event"].as_str() {
                            Some("delivered") => "delivered",
                            Some("deferred") => "processed",
                            _ => "not_delivered",
                        },
                    ),
                );
                for (offset, event) in [json!({"event": "processed"}), final_event]
                    .into_iter()
                    .enumerate()
                {
                    let mut event = event;
                    if let Value::Object(map) = &mut event {
                        map.insert("email".into(), json!(to.email));
                        map.insert("timestamp".into(), json!(now + offset as i64));
                        map.insert(
                            "sg_event_id".into(),
                            json!(uuid::Uuid::new_v4().simple().to_string()),
                        );
                        map.insert("sg_message_id".into(), json!(sg_message_id));
                        for (key, value) in &args {
                            map.insert(key.clone(), json!(value));
                        }
                    }
                    events.push(event);
                }
            }
        }
    }
    let webhooks_off = sandbox
        .state
        .lock()
        .map(|s| s.webhooks_off)
        .unwrap_or(false);
    if fault.callbacks_first && !webhooks_off {
        sandbox.post_events(&events).await;
    } else {
        let poster = Arc::clone(&sandbox);
        tokio::spawn(async move {
            if webhooks_off {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            poster.post_events(&events).await;
        });
    }
    if let Some(connection) = fault.connection {
        if let Ok(mut state) = sandbox.state.lock() {
            state.unanswered_recipients += recipients;
        }
        match connection {
            ConnectionFault::AcceptThenHold => faults::hold_forever().await,
            ConnectionFault::AcceptThenDrop | ConnectionFault::Drop => faults::drop_connection(),
        }
    }
    let mut response = StatusCode::ACCEPTED.into_response();
    if let Ok(value) = axum::http::HeaderValue::from_str(&message_id) {
        response.headers_mut().insert("x-message-id", value);
    }
    response
}

/// What every Email Activity request passes first: SendGrid's key, then its rate limit.
fn activity_gate(sandbox: &SendGridSandbox, headers: &HeaderMap) -> Option<Response> {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", sandbox.api_key()));
    if !authorized {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "The provided authorization grant is invalid, expired, or revoked",
        ));
    }
    let mut state = sandbox.state.lock().ok()?;
    let now = std::time::Instant::now();
    while state
        .activity_window
        .front()
        .is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(60))
    {
        state.activity_window.pop_front();
    }
    if state.activity_window.len() >= ACTIVITY_REQUESTS_PER_MINUTE {
        state.activity_throttled += 1;
        return Some(error(StatusCode::TOO_MANY_REQUESTS, "too many requests"));
    }
    state.activity_window.push_back(now);
    state.activity_lookups += 1;
    None
}

async fn activity(
    State(sandbox): State<Arc<SendGridSandbox>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = activity_gate(&sandbox, &headers) {
        return refused;
    }
    let found = sandbox
        .state
        .lock()
        .ok()
        .and_then(|state| state.statuses.get(&id).cloned());
    match found {
        Some((to, status)) => {
            Json(json!({"msg_id": id, "to_email": to, "status": status})).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "message not found"),
    }
}

/// `GET /v3/messages?query=…&limit=…` (Email Activity, "Filter all messages"): the sandbox
/// understands the two filters Herald sends, `msg_id LIKE "<prefix>%"` and
/// `to_email="<address>"`, joined by `AND`; other terms are refused with a 400.
async fn filter_messages(
    State(sandbox): State<Arc<SendGridSandbox>>,
    headers: HeaderMap,
    axum::extract::Query(params): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = activity_gate(&sandbox, &headers) {
        return refused;
    }
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(10)
        .min(1000);
    let (mut prefix, mut to_email) = (None, None);
    for term in params
        .get("query")
        .map(String::as_str)
        .unwrap_or("")
        .split(" AND ")
    {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        if let Some(value) = term.strip_prefix("msg_id LIKE ") {
            prefix = Some(value.trim_matches('"').trim_end_matches('%').to_owned());
        } else if let Some(value) = term.strip_prefix("to_email=") {
            to_email = Some(value.trim_matches('"').to_lowercase());
        } else {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid query term: {term}"),
            );
        }
    }
    let Ok(state) = sandbox.state.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let messages: Vec<Value> = state
        .statuses
        .iter()
        .filter(|(id, _)| prefix.as_ref().is_none_or(|p| id.starts_with(p.as_str())))
        .filter(|(_, (to, _))| to_email.as_ref().is_none_or(|t| to.to_lowercase() == *t))
        .take(limit)
        .map(|(id, (to, status))| json!({"msg_id": id, "to_email": to, "status": status}))
        .collect();
    Json(json!({"messages": messages})).into_response()
}

/// `POST /sandbox/sendgrid/_engagement` with `{"email_id": "<Herald's id>", "event":
/// "group_unsubscribe"}` (or `unsubscribe`, `group_resubscribe`, `spamreport`, `open`,
/// `click`): what the recipient of that copy did, posted to the webhook as SendGrid posts
/// it — signed, with the copy's `custom_args`, a fresh `sg_event_id` (and `asm_group_id` 1
/// for the group events). Answers with the event once the webhook accepted it.
async fn engagement(
    State(sandbox): State<Arc<SendGridSandbox>>,
    Json(request): Json<Value>,
) -> Response {
    let (Some(email_id), Some(kind)) = (request["email_id"].as_str(), request["event"].as_str())
    else {
        return error(StatusCode::BAD_REQUEST, "email_id and event are required");
    };
    if !matches!(
        kind,
        "group_unsubscribe" | "group_resubscribe" | "unsubscribe" | "spamreport" | "open" | "click"
    ) {
        return error(StatusCode::BAD_REQUEST, "not an engagement event");
    }
    let Some(copy) = sandbox.received_copy(email_id) else {
        return error(StatusCode::NOT_FOUND, "no copy of that email in the inbox");
    };
    let mut event = json!({
        "event": kind,
        "email": copy["to"],
        "timestamp": chrono::Utc::now().timestamp(),
        "sg_event_id": uuid::Uuid::new_v4().simple().to_string(),
        "sg_message_id": format!("{}.filterdrecv-sandbox-0", copy["message_id"].as_str().unwrap_or_default()),
    });
    if kind.starts_with("group_") {
        event["asm_group_id"] = json!(1);
    }
    if let (Value::Object(map), Value::Object(args)) = (&mut event, &copy["custom_args"]) {
        for (key, value) in args {
            map.insert(key.clone(), value.clone());
        }
    }
    sandbox.post_events(std::slice::from_ref(&event)).await;
    (StatusCode::OK, Json(event)).into_response()
}

/// `POST /sandbox/sendgrid/_mail_reply` with `{"email_id": "<Herald's id>"}`: the recipient
/// of that copy uses the `mailto:` of its `List-Unsubscribe` (RFC 2369), as a mail client
/// without one-click does: an email to that address with the URI's subject, which SendGrid's
/// Inbound Parse posts to its Destination URL. As Inbound Parse does (Twilio SendGrid docs,
/// "Inbound Email Parse Webhook"): `multipart/form-data` with the parsed fields (`headers`,
/// `to`, `from`, `subject`, `text`, `envelope`, `charsets`, `SPF`), redirects not followed,
/// posted again after a 5xx (a few times here; SendGrid keeps trying for three days) and
/// not after any other status. Answers with the last status Inbound Parse saw.
async fn mail_reply(
    State(sandbox): State<Arc<SendGridSandbox>>,
    Json(request): Json<Value>,
) -> Response {
    let Some(email_id) = request["email_id"].as_str() else {
        return error(StatusCode::BAD_REQUEST, "email_id is required");
    };
    let Some(copy) = sandbox.received_copy(email_id) else {
        return error(StatusCode::NOT_FOUND, "no copy of that email in the inbox");
    };
    let list = copy["headers"]["List-Unsubscribe"]
        .as_str()
        .unwrap_or_default();
    let Some((mailbox, subject)) = mailto_of(list) else {
        return error(
            StatusCode::NOT_FOUND,
            "the copy's List-Unsubscribe has no mailto:",
        );
    };
    let from = copy["to"].as_str().unwrap_or_default().to_owned();
    let fields = [
        (
            "headers",
            format!("From: <{from}>\r\nTo: <{mailbox}>\r\nSubject: {subject}\r\n"),
        ),
        ("dkim", "{@example.com : pass}".to_owned()),
        ("to", mailbox.clone()),
        ("from", from.clone()),
        ("text", "unsubscribe\r\n".to_owned()),
        ("sender_ip", "192.0.2.1".to_owned()),
        (
            "envelope",
            json!({"to": [mailbox], "from": from}).to_string(),
        ),
        ("attachments", "0".to_owned()),
        ("subject", subject),
        (
            "charsets",
            json!({"to": "UTF-8", "from": "UTF-8", "subject": "UTF-8", "text": "UTF-8"})
                .to_string(),
        ),
        ("SPF", "pass".to_owned()),
    ];
    let boundary = format!("xYzZY{}", uuid::Uuid::new_v4().simple());
    let mut body = String::new();
    for (name, value) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let mut last = 0;
    for attempt in 0..4u32 {
        let result = client
            .post(&sandbox.inbound_parse_url)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(response) if !response.status().is_server_error() => {
                last = response.status().as_u16();
                break;
            }
            Ok(response) => last = response.status().as_u16(),
            Err(error) => tracing::warn!(%error, attempt, "Inbound Parse URL unreachable"),
        }
        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
    }
    (StatusCode::OK, Json(json!({"inbound_parse_status": last}))).into_response()
}

/// The address and the (percent-decoded) subject of the `mailto:` in a `List-Unsubscribe`
/// value: `<https://…>, <mailto:a@b?subject=…>`.
fn mailto_of(list: &str) -> Option<(String, String)> {
    let uri = list
        .split(',')
        .map(|entry| entry.trim().trim_start_matches('<').trim_end_matches('>'))
        .find_map(|entry| entry.strip_prefix("mailto:"))?;
    let (mailbox, query) = uri.split_once('?').unwrap_or((uri, ""));
    let subject = url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "subject")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    Some((mailbox.to_owned(), subject))
}

async fn inbox(State(sandbox): State<Arc<SendGridSandbox>>) -> Response {
    let Ok(state) = sandbox.state.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    Json(json!({"calls": state.calls, "refusals": state.refusals, "count": state.inbox.len(), "messages": state.inbox}))
        .into_response()
}

async fn add_fault(
    State(sandbox): State<Arc<SendGridSandbox>>,
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

async fn injected_faults(State(sandbox): State<Arc<SendGridSandbox>>) -> Response {
    Json(sandbox.fault_report()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::providers::sendgrid::{Address, Content, Personalization};

    fn mail(personalizations: Vec<Personalization>) -> MailSend {
        MailSend {
            personalizations,
            from: Address::new("news@acme.test"),
            reply_to: None,
            subject: Some("Hello".to_owned()),
            content: vec![Content::plain("Hi")],
            custom_args: None,
        }
    }

    fn to(address: &str) -> Personalization {
        Personalization::to(vec![Address::new(address)])
    }

    fn refusal_field(mail: &MailSend) -> Option<String> {
        check_mail_send(mail, 100).err().and_then(|r| r.field)
    }

    #[test]
    fn a_valid_request_passes() {
        assert_eq!(
            check_mail_send(&mail(vec![to("a@x.test"), to("b@x.test")]), 100),
            Ok(())
        );
    }

    #[test]
    fn recipients_count_cc_and_bcc_over_every_personalization() {
        let personalizations = (0..500)
            .map(|n| {
                let mut p = to(&format!("u{n}@x.test"));
                p.cc = vec![Address::new(format!("c{n}@x.test"))];
                p
            })
            .collect();
        assert_eq!(
            refusal_field(&mail(personalizations)),
            None,
            "exactly 1,000"
        );
        let personalizations = (0..501)
            .map(|n| {
                let mut p = to(&format!("u{n}@x.test"));
                p.cc = vec![Address::new(format!("c{n}@x.test"))];
                p
            })
            .collect();
        assert_eq!(
            refusal_field(&mail(personalizations)).as_deref(),
            Some("personalizations")
        );
    }

    #[test]
    fn an_address_twice_in_the_request_is_refused_wherever_it_is() {
        let mut same = to("a@x.test");
        same.cc = vec![Address::new("A@x.test")];
        assert_eq!(
            refusal_field(&mail(vec![same])).as_deref(),
            Some("personalizations.0.cc")
        );
        let mut shared_cc = vec![to("a@x.test"), to("b@x.test")];
        for p in &mut shared_cc {
            p.cc = vec![Address::new("boss@x.test")];
        }
        assert_eq!(
            refusal_field(&mail(shared_cc)).as_deref(),
            Some("personalizations.1.cc")
        );
    }

    #[test]
    fn size_subject_and_content_rules() {
        let mut big = to("a@x.test");
        big.substitutions
            .insert("%t%".to_owned(), "x".repeat(10_000));
        assert_eq!(
            refusal_field(&mail(vec![big])).as_deref(),
            Some("personalizations.0.substitutions")
        );
        let mut args = to("a@x.test");
        args.custom_args.insert("k".to_owned(), "x".repeat(10_000));
        assert_eq!(
            refusal_field(&mail(vec![args])).as_deref(),
            Some("personalizations.0.custom_args")
        );
        let mut no_subject = mail(vec![to("a@x.test")]);
        no_subject.subject = None;
        assert_eq!(refusal_field(&no_subject).as_deref(), Some("subject"));
        let mut empty = mail(vec![to("a@x.test")]);
        empty.content = vec![Content::plain("")];
        assert_eq!(refusal_field(&empty).as_deref(), Some("content.0.value"));
        let no_to = Personalization::default();
        assert_eq!(
            refusal_field(&mail(vec![no_to])).as_deref(),
            Some("personalizations.0.to")
        );
        let too_large = check_mail_send(&mail(vec![to("a@x.test")]), MAX_REQUEST_BYTES + 1);
        assert_eq!(too_large.map_err(|r| r.status), Err(413));
    }
}
