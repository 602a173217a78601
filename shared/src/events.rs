//! Events (SPEC §10): audit entries for every mutation, provider calls and their results,
//! delivery status changes and webhook events — one type for all of them. Functions publish
//! them to the events queue; the event recorder writes them to MongoDB. Going through a queue
//! caps MongoDB connections at the recorder's concurrency and loses nothing while MongoDB is
//! down.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Caller;
use crate::aws::SqsClient;
use crate::domain::email::FailureKind;
use crate::domain::{OrgId, RecordId};

/// Events per queue message at most (the recorder writes a message's events in one insert).
pub const EVENTS_PER_MESSAGE: usize = 100;

/// The largest events message: the events queue's `MaximumMessageSize` in `template.yaml`
/// (set there explicitly to this value; `bundle_shape` holds the two together). SQS
/// refuses a larger message, and a `SendMessageBatch` whose messages total more ("The
/// maximum allowed individual message size and the maximum total payload size (the sum of
/// the individual lengths of all of the batched messages) are both 256 KiB", Amazon SQS API
/// Reference, `SendMessageBatch`).
pub const MAX_MESSAGE_BYTES: usize = 262_144;

/// The detail member of a `failed` delivery event naming its [`FailureKind`].
const FAILURE_KIND: &str = "failure_kind";

/// Attempts at publishing one batch before its events are logged as lost.
const PUBLISH_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A mutating API call.
    Audit,
    /// A call to a provider and its result.
    Provider,
    /// A record changed status (feeds analytics).
    Delivery,
    /// A webhook event a provider sent.
    Webhook,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique; the MongoDB `_id`, so recording an event twice stores it once.
    pub id: String,
    pub org_id: OrgId,
    pub kind: EventKind,
    /// What happened, dotted: `template.create`, `email.status`, `sendgrid.mail_send`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// What it happened to: `template/email/<id>`, `email/<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default)]
    pub detail: Value,
    pub created_at: DateTime<Utc>,
}

impl Event {
    pub fn new(org: &OrgId, kind: EventKind, action: impl Into<String>) -> Self {
        Self {
            id: RecordId::new().to_string(),
            org_id: org.clone(),
            kind,
            action: action.into(),
            actor: None,
            resource: None,
            request_id: None,
            channel: None,
            status: None,
            detail: Value::Null,
            created_at: Utc::now(),
        }
    }

    /// An audit entry for a caller's mutating request.
    pub fn audit(
        caller: &Caller,
        request_id: &str,
        action: impl Into<String>,
        resource: impl Into<String>,
    ) -> Self {
        Self {
            actor: Some(caller.user.clone()),
            resource: Some(resource.into()),
            request_id: Some(request_id.to_owned()).filter(|r| !r.is_empty()),
            ..Self::new(&caller.org, EventKind::Audit, action)
        }
    }

    /// A record of `channel` reaching `status` (what analytics counts).
    pub fn delivery(org: &OrgId, channel: &str, resource: impl Into<String>, status: &str) -> Self {
        Self {
            resource: Some(resource.into()),
            channel: Some(channel.to_owned()),
            status: Some(status.to_owned()),
            ..Self::new(org, EventKind::Delivery, format!("{channel}.status"))
        }
    }

    /// A record of `channel` reaching `failed`, naming why: a `transient` failure Herald gave
    /// up on (which `resend-failed` may retry) or a `permanent` one.
    pub fn failed(
        org: &OrgId,
        channel: &str,
        resource: impl Into<String>,
        kind: FailureKind,
    ) -> Self {
        Self::delivery(org, channel, resource, "failed")
            .with_detail(serde_json::json!({ FAILURE_KIND: kind }))
    }

    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// Every status change of a message or a payment is a delivery event, so counting them as
/// they are published is the one place the `Messages` funnel (`Outcome` is the status
/// reached: `queued` is accepted) and `Charges` are measured.
fn count_status_change(event: &Event) {
    use crate::metrics::{CHARGES, MESSAGES};
    let (EventKind::Delivery, Some(channel), Some(status)) = (
        &event.kind,
        event.channel.as_deref(),
        event.status.as_deref(),
    ) else {
        return;
    };
    let org = Some(event.org_id.as_str());
    match channel {
        "email" | "sms" => {
            let outcome = match status {
                // A `failed` that names no kind is the provider's word (a webhook, a status
                // check): final.
                "failed" => match event.detail[FAILURE_KIND].as_str() {
                    Some("transient") => "failed_transient",
                    _ => "failed_permanent",
                },
                status => status,
            };
            crate::metrics::count(&MESSAGES, &[channel, outcome], 1, org);
        }
        "payment" => crate::metrics::count(&CHARGES, &[status], 1, org),
        _ => {}
    }
}

/// Publishes events to the events queue, many per message and ten messages per call.
#[derive(Debug, Clone)]
pub struct EventPublisher {
    sqs: SqsClient,
    queue_url: Option<String>,
}

impl EventPublisher {
    /// `queue_url: None` publishes nothing (a function deployed without the events queue).
    pub fn new(sqs: SqsClient, queue_url: Option<String>) -> Self {
        Self { sqs, queue_url }
    }

    /// Publishes the audit entry of a change `caller` made in the request `request_id`
    /// (see [`Self::publish`]).
    pub async fn audit(
        &self,
        caller: &Caller,
        request_id: &str,
        action: &str,
        resource: String,
        detail: Value,
    ) {
        let event = Event::audit(caller, request_id, action, resource).with_detail(detail);
        self.publish(vec![event]).await;
    }

    /// Publishes `events`. A failure is not returned: the change the events describe has
    /// already happened and must not be reported as failed. Each batch is tried
    /// [`PUBLISH_ATTEMPTS`] times; an event that still could not be published is written to
    /// the log whole (`event not published`), so it can be found and replayed, never dropped
    /// without a trace.
    pub async fn publish(&self, events: Vec<Event>) {
        events.iter().for_each(count_status_change);
        let Some(queue_url) = &self.queue_url else {
            return;
        };
        for batch in crate::queue::batches(pack_messages(events)) {
            if let Err((error, lost)) = self.send_batch(queue_url, batch).await {
                for body in &lost {
                    tracing::error!(
                        error = format!("{error:#}"),
                        message = body.as_str(),
                        "event not published"
                    );
                }
            }
        }
    }

    /// Sends one batch, retrying what SQS refused; the messages still unsent on failure.
    async fn send_batch(
        &self,
        queue_url: &str,
        mut bodies: Vec<String>,
    ) -> Result<(), (anyhow::Error, Vec<String>)> {
        let mut last_error = anyhow::anyhow!("no attempt made");
        for attempt in 0..PUBLISH_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
            let mut request = self.sqs.send_message_batch().queue_url(queue_url);
            for (index, body) in bodies.iter().enumerate() {
                let entry = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .message_body(body)
                    .build();
                match entry {
                    Ok(entry) => request = request.entries(entry),
                    Err(error) => return Err((error.into(), bodies)),
                }
            }
            match request.send().await {
                Ok(output) if output.failed.is_empty() => return Ok(()),
                Ok(output) => {
                    let failed: Vec<usize> = output
                        .failed
                        .iter()
                        .filter_map(|f| f.id.parse().ok())
                        .collect();
                    last_error = anyhow::anyhow!(
                        "SQS refused {} event messages: {}",
                        failed.len(),
                        output
                            .failed
                            .first()
                            .map(|f| f.code.as_str())
                            .unwrap_or_default()
                    );
                    bodies = bodies
                        .into_iter()
                        .enumerate()
                        .filter(|(index, _)| failed.contains(index))
                        .map(|(_, body)| body)
                        .collect();
                }
                Err(error) => {
                    last_error =
                        anyhow::anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(&error));
                }
            }
        }
        Err((last_error, bodies))
    }
}

/// Events as queue messages: JSON arrays of at most [`EVENTS_PER_MESSAGE`] events and
/// [`MAX_MESSAGE_BYTES`] bytes. An event too large for a message on its own keeps its
/// identity but loses its `detail` (marked `{"truncated_bytes": n}`).
pub fn pack_messages(events: Vec<Event>) -> Vec<String> {
    let mut messages = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut current_bytes = 2; // the brackets
    for event in events {
        let json = event_json(event);
        let added = json.len() + usize::from(!current.is_empty());
        if !current.is_empty()
            && (current.len() == EVENTS_PER_MESSAGE || current_bytes + added > MAX_MESSAGE_BYTES)
        {
            messages.push(format!("[{}]", current.join(",")));
            current.clear();
            current_bytes = 2;
        }
        current_bytes += json.len() + usize::from(!current.is_empty());
        current.push(json);
    }
    if !current.is_empty() {
        messages.push(format!("[{}]", current.join(",")));
    }
    messages
}

/// One event as JSON that fits a message by itself.
fn event_json(mut event: Event) -> String {
    let json = serde_json::to_string(&event).unwrap_or_default();
    if json.len() + 2 <= MAX_MESSAGE_BYTES {
        return json;
    }
    event.detail = serde_json::json!({"truncated_bytes": json.len()});
    serde_json::to_string(&event).unwrap_or_default()
}

/// Reads one queue message of events.
///
/// # Errors
/// When the body is not a JSON array of events.
pub fn parse_message(body: &str) -> Result<Vec<Event>, serde_json::Error> {
    serde_json::from_str(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_with_detail(bytes: usize) -> Event {
        Event::new(&OrgId::parse("acme").unwrap(), EventKind::Provider, "x")
            .with_detail(serde_json::json!({"blob": "x".repeat(bytes)}))
    }

    #[test]
    fn messages_are_sized_by_bytes_and_batches_by_total_bytes() {
        // 1,000 events of ~5 KB: 100 a message would be ~500 KB, over SQS's limit.
        let events: Vec<Event> = (0..1000).map(|_| event_with_detail(5_000)).collect();
        let messages = pack_messages(events);
        assert!(messages.iter().all(|m| m.len() <= MAX_MESSAGE_BYTES));
        let recovered: usize = messages
            .iter()
            .map(|m| parse_message(m).unwrap().len())
            .sum();
        assert_eq!(recovered, 1000, "every event in some message");
        for batch in crate::queue::batches(messages) {
            assert!(batch.len() <= crate::queue::BATCH_MAX_MESSAGES);
            assert!(batch.iter().map(String::len).sum::<usize>() <= crate::queue::BATCH_MAX_BYTES);
        }
    }

    #[test]
    fn small_events_go_a_hundred_to_a_message() {
        let events: Vec<Event> = (0..250).map(|_| event_with_detail(10)).collect();
        let sizes: Vec<usize> = pack_messages(events)
            .iter()
            .map(|m| parse_message(m).unwrap().len())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
    }

    #[test]
    fn an_event_too_large_for_any_message_keeps_its_identity_without_its_detail() {
        let big = event_with_detail(MAX_MESSAGE_BYTES);
        let id = big.id.clone();
        let messages = pack_messages(vec![big]);
        let events = parse_message(&messages[0]).unwrap();
        assert_eq!(events[0].id, id);
        assert!(events[0].detail["truncated_bytes"].as_u64().unwrap() > 262_144);
    }
}
