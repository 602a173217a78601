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
use crate::domain::{OrgId, RecordId};

/// Events per queue message: well under SQS's message size at typical event sizes.
pub const EVENTS_PER_MESSAGE: usize = 100;

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

    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
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

    /// Publishes `events`. A failure is logged, not returned: the change the events
    /// describe has already happened and must not be reported as failed.
    pub async fn publish(&self, events: Vec<Event>) {
        let Some(queue_url) = &self.queue_url else {
            return;
        };
        if events.is_empty() {
            return;
        }
        let count = events.len();
        let result = async {
            for group in events.chunks(EVENTS_PER_MESSAGE * 10) {
                let mut request = self.sqs.send_message_batch().queue_url(queue_url);
                for (index, chunk) in group.chunks(EVENTS_PER_MESSAGE).enumerate() {
                    request = request.entries(
                        aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                            .id(index.to_string())
                            .message_body(serde_json::to_string(chunk)?)
                            .build()?,
                    );
                }
                let output = request.send().await?;
                anyhow::ensure!(
                    output.failed.is_empty(),
                    "SQS refused {} event messages",
                    output.failed.len()
                );
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(error) = result {
            tracing::error!(
                error = format!("{error:#}"),
                events = count,
                "could not publish events"
            );
        }
    }
}

/// Reads one queue message of events.
///
/// # Errors
/// When the body is not a JSON array of events.
pub fn parse_message(body: &str) -> Result<Vec<Event>, serde_json::Error> {
    serde_json::from_str(body)
}
