//! Queue messages and the SQS publisher (SPEC §7).
//!
//! Every message is versioned JSON carrying the organization, so a worker never has to
//! guess whose records it touches.

use anyhow::Context;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use serde::{Deserialize, Serialize};

use crate::domain::OrgId;

pub const MESSAGE_VERSION: u8 = 1;

/// What a worker is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Job {
    /// Send these email records (one SendGrid call for up to 1,000 of them).
    #[serde(rename = "email.send")]
    EmailSend { ids: Vec<String> },
    /// Fan a bulk email send out into send jobs.
    #[serde(rename = "email.bulk")]
    EmailBulk { bulk_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u8,
    pub org: OrgId,
    #[serde(flatten)]
    pub job: Job,
}

impl Envelope {
    pub fn new(org: OrgId, job: Job) -> Self {
        Self {
            v: MESSAGE_VERSION,
            org,
            job,
        }
    }

    /// # Errors
    /// When the body is not a message of a version this code understands.
    pub fn parse(body: &str) -> anyhow::Result<Self> {
        let envelope: Self = serde_json::from_str(body).context("not a Herald queue message")?;
        anyhow::ensure!(
            envelope.v == MESSAGE_VERSION,
            "unsupported message version {}",
            envelope.v
        );
        Ok(envelope)
    }
}

/// Sends messages to SQS in batches of ten, retrying entries SQS reports as failed.
#[derive(Debug, Clone)]
pub struct QueuePublisher {
    sqs: aws_sdk_sqs::Client,
}

impl QueuePublisher {
    pub fn new(sqs: aws_sdk_sqs::Client) -> Self {
        Self { sqs }
    }

    /// # Errors
    /// When a batch cannot be sent after retries; messages before it were sent.
    pub async fn send_all(&self, queue_url: &str, messages: &[Envelope]) -> anyhow::Result<()> {
        for chunk in messages.chunks(10) {
            let mut entries: Vec<SendMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .map(|(index, message)| {
                    Ok(SendMessageBatchRequestEntry::builder()
                        .id(index.to_string())
                        .message_body(serde_json::to_string(message)?)
                        .build()?)
                })
                .collect::<anyhow::Result<_>>()?;
            for attempt in 0..4 {
                let output = self
                    .sqs
                    .send_message_batch()
                    .queue_url(queue_url)
                    .set_entries(Some(entries.clone()))
                    .send()
                    .await
                    .context("SendMessageBatch")?;
                let failed: Vec<String> = output.failed.iter().map(|f| f.id.clone()).collect();
                if failed.is_empty() {
                    break;
                }
                anyhow::ensure!(attempt < 3, "SQS refused {} messages", failed.len());
                entries.retain(|entry| failed.contains(&entry.id));
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_versioned_and_carry_the_org() {
        let message = Envelope::new(
            OrgId::parse("acme").unwrap(),
            Job::EmailSend {
                ids: vec!["a".into()],
            },
        );
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"v": 1, "org": "acme", "kind": "email.send", "ids": ["a"]})
        );
        assert_eq!(Envelope::parse(&json.to_string()).unwrap(), message);
        assert!(Envelope::parse(r#"{"v":2,"org":"acme","kind":"email.send","ids":[]}"#).is_err());
        assert!(Envelope::parse(r#"{"v":1,"org":"a#b","kind":"email.send","ids":[]}"#).is_err());
    }
}
