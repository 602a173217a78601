//! A SendGrid stand-in: v3 Mail Send (Bearer key, personalizations, substitutions,
//! `custom_args`), the Email Activity lookup, and the Signed Event Webhook posting
//! `processed` and `delivered` events (or `bounce`/`dropped` for `@bounce.test` and
//! `@drop.test` recipients) back to Herald, signed with ECDSA P-256 like SendGrid.
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
    api_key: String,
    signer: WebhookSigner,
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
    /// Recipients of sends that were carried out but never answered (the caller cannot
    /// know they went out): the bound on duplicates a retry may cause.
    unanswered_recipients: u64,
    /// Off: accept sends but never post events (a lost webhook, for the status check).
    webhooks_off: bool,
}

impl SendGridSandbox {
    pub fn new(webhook_url: String) -> Arc<Self> {
        Arc::new(Self {
            api_key: format!("SG.sandbox.{}", uuid::Uuid::new_v4().simple()),
            signer: WebhookSigner::generate(),
            webhook_url,
            http: reqwest::Client::new(),
            state: Mutex::new(SandboxState::default()),
        })
    }

    /// What Herald's SendGrid secret holds in sandbox mode.
    pub fn secret_values(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("SENDGRID_API_KEY".to_owned(), self.api_key.clone()),
            (
                "SENDGRID_WEBHOOK_PUBLIC_KEY".to_owned(),
                self.signer.public_key_base64(),
            ),
        ])
    }

    pub fn calls(&self) -> u64 {
        self.state.lock().map(|s| s.calls).unwrap_or(0)
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

    /// The messages received so far (each recipient once), oldest first.
    pub fn inbox(&self) -> Vec<Value> {
        self.state
            .lock()
            .map(|s| s.inbox.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/sandbox/sendgrid/v3/mail/send", post(mail_send))
            .route("/sandbox/sendgrid/v3/messages/{id}", get(activity))
            .route("/sandbox/sendgrid/_inbox", get(inbox))
            .route(
                "/sandbox/sendgrid/_faults",
                post(add_fault).get(injected_faults),
            )
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

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"errors": [{"message": message, "field": null, "help": null}]})),
    )
        .into_response()
}

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
        .is_some_and(|v| v == format!("Bearer {}", sandbox.api_key));
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
    if mail.personalizations.is_empty() || mail.personalizations.len() > 1000 {
        return error(
            StatusCode::BAD_REQUEST,
            "The personalizations field is required and must have at least one personalization (and at most 1000).",
        );
    }
    if mail.content.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "Unless a valid template_id is provided, the content parameter is required.",
        );
    }
    if mail.personalizations.iter().any(|p| p.subject.is_none()) && mail.subject.is_none() {
        return error(StatusCode::BAD_REQUEST, "The subject is required.");
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
        for (index, personalization) in mail.personalizations.iter().enumerate() {
            let mut args = mail.custom_args.clone().unwrap_or_default();
            args.extend(personalization.custom_args.clone());
            let subject = personalization
                .subject
                .clone()
                .or_else(|| mail.subject.clone())
                .unwrap_or_default();
            let content: Vec<Value> = mail
                .content
                .iter()
                .map(|c| json!({"type": c.content_type, "value": substitute(&c.value, &personalization.substitutions)}))
                .collect();
            for to in &personalization.to {
                state.inbox.push_back(json!({
                    "message_id": message_id, "to": to.email, "from": mail.from.email,
                    "subject": subject, "content": content, "custom_args": args,
                }));
                if state.inbox.len() > INBOX_LIMIT {
                    state.inbox.pop_front();
                }
                let sg_message_id = format!("{message_id}.filterdrecv-sandbox-{index}");
                let final_event = if to.email.ends_with("@bounce.test") {
                    json!({"event": "bounce", "type": "bounce", "reason": "550 5.1.1 The email account does not exist", "status": "5.1.1"})
                } else if to.email.ends_with("@drop.test") {
                    json!({"event": "dropped", "reason": "Invalid"})
                } else {
                    json!({"event": "delivered", "response": "250 OK"})
                };
                state.statuses.insert(
                    message_id.clone(),
                    if final_event["event"] == "delivered" {
                        "delivered"
                    } else {
                        "not_delivered"
                    },
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
    let poster = Arc::clone(&sandbox);
    tokio::spawn(async move {
        if webhooks_off {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        poster.post_events(&events).await;
    });
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

async fn activity(State(sandbox): State<Arc<SendGridSandbox>>, Path(id): Path<String>) -> Response {
    let status = sandbox
        .state
        .lock()
        .ok()
        .and_then(|state| state.statuses.get(&id).copied());
    match status {
        Some(status) => Json(json!({"msg_id": id, "status": status})).into_response(),
        None => error(StatusCode::NOT_FOUND, "message not found"),
    }
}

async fn inbox(State(sandbox): State<Arc<SendGridSandbox>>) -> Response {
    let Ok(state) = sandbox.state.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    Json(json!({"calls": state.calls, "count": state.inbox.len(), "messages": state.inbox}))
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
