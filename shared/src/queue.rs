//! Queue messages and the SQS publisher (SPEC §7).
//!
//! Every message is versioned JSON carrying the organization, so a worker never has to
//! guess whose records it touches.

use anyhow::Context;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use serde::{Deserialize, Serialize};

use crate::aws::SqsClient;
use crate::domain::OrgId;

pub const MESSAGE_VERSION: u8 = 1;

/// Ids per `email.send` job: one SendGrid call carries up to 1,000 personalizations.
pub const EMAIL_SEND_JOB_IDS: usize = 1_000;

/// Ids per `sms.send` job: one Twilio call each, so a job stays well inside the worker's
/// timeout even at a low per-organization rate.
pub const SMS_SEND_JOB_IDS: usize = 25;

/// What a worker is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Job {
    /// Send these email records (one SendGrid call for up to 1,000 of them).
    #[serde(rename = "email.send")]
    EmailSend { ids: Vec<String> },
    /// Fan a bulk email send out into send jobs.
    #[serde(rename = "email.bulk")]
    EmailBulk {
        bulk_id: String,
        #[serde(flatten)]
        span: BulkSpan,
    },
    /// Aggregate a report's data and stream its file to S3 (report generate queue).
    #[serde(rename = "report.generate")]
    ReportGenerate { report_id: String },
    /// A report schedule fired: create its report and generate it (report generate queue;
    /// EventBridge Scheduler sends this message).
    #[serde(rename = "report.schedule_run")]
    ReportScheduleRun { schedule_id: String },
    /// Finalise a generated report: check the object, mark it ready, email a scheduled
    /// report's recipients (report export queue).
    #[serde(rename = "report.export")]
    ReportExport { report_id: String },
    /// Send these SMS records (one Twilio call each, under the organization's rate cap).
    #[serde(rename = "sms.send")]
    SmsSend { ids: Vec<String> },
    /// Fan a bulk SMS send out into send jobs.
    #[serde(rename = "sms.bulk")]
    SmsBulk {
        bulk_id: String,
        #[serde(flatten)]
        span: BulkSpan,
    },
    /// Make the records of a send to a phonebook, from the contact after `after` on, and
    /// enqueue their send jobs (SMS bulk queue; a job hands what it has not reached to the
    /// next one).
    #[serde(rename = "sms.phonebook")]
    SmsPhonebook {
        bulk_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
    /// Write one chunk of a large contact import (SMS bulk queue).
    #[serde(rename = "phonebook.import")]
    PhonebookImport {
        phonebook_id: String,
        import_id: String,
        chunk: u32,
        contacts: Vec<crate::store::Contact>,
    },
}

/// The lowest and highest record id of a bulk send. The API makes every id of a bulk
/// (ULIDs) in the one call that writes them, so they all sort between these two: the fan-out
/// reads that sort-key range of the table with `ConsistentRead` and finds every record the
/// API wrote, where an index (eventually consistent on DynamoDB) could still miss some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkSpan {
    pub lowest_id: String,
    pub highest_id: String,
}

impl BulkSpan {
    /// The span of `ids`; `None` when there are none.
    pub fn of<'a>(ids: impl IntoIterator<Item = &'a String>) -> Option<Self> {
        let mut ids = ids.into_iter();
        let first = ids.next()?;
        let (lowest, highest) = ids.fold((first, first), |(low, high), id| {
            (low.min(id), high.max(id))
        });
        Some(Self {
            lowest_id: lowest.clone(),
            highest_id: highest.clone(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u8,
    pub org: OrgId,
    #[serde(flatten)]
    pub job: Job,
    /// The send job an `email.send` message is: the id its emails were created with
    /// (`EmailRecord::send_job`). A delivery claims the job once, in one write, instead of
    /// claiming each email (`shared::store::EmailStore::claim_job`). `None` for messages
    /// that re-enqueue emails (sweeps, retries, resends): those claim each email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_job: Option<String>,
}

impl Envelope {
    pub fn new(org: OrgId, job: Job) -> Self {
        Self {
            v: MESSAGE_VERSION,
            org,
            job,
            send_job: None,
        }
    }

    /// The message of send job `send_job` (see [`Envelope::send_job`]).
    #[must_use]
    pub fn of_send_job(mut self, send_job: impl Into<String>) -> Self {
        self.send_job = Some(send_job.into());
        self
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

/// The send job each of new records `ids` is created in, by index (see
/// [`Envelope::send_job`]): the records in id order, `per_job` to a job — the order and size
/// the send jobs are enqueued in — each job named after its lowest id, so a page made again
/// (a fan-out delivered twice) names its jobs again the same.
pub fn send_job_names(ids: &[&str], per_job: usize) -> Vec<String> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|index| ids[*index]);
    let mut names = vec![String::new(); ids.len()];
    for chunk in order.chunks(per_job.max(1)) {
        let name = ids[chunk[0]].to_owned();
        for index in chunk {
            names[*index].clone_from(&name);
        }
    }
    names
}

/// The most a `SendMessageBatch` may carry: ten messages, and "the maximum total payload
/// size (the sum of the individual lengths of all of the batched messages)" of 256 KiB
/// (Amazon SQS API Reference, `SendMessageBatch`). Ten 1,000-id send jobs are ~290 KB: the
/// bulk fan-out hit this against the runner's limits (issue 15).
pub const BATCH_MAX_MESSAGES: usize = 10;
pub const BATCH_MAX_BYTES: usize = 262_144;

/// Message bodies grouped into `SendMessageBatch` calls within [`BATCH_MAX_MESSAGES`] and
/// [`BATCH_MAX_BYTES`] (a body larger than that alone goes alone, for SQS to refuse).
pub fn batches(bodies: Vec<String>) -> Vec<Vec<String>> {
    let mut batches: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0;
    for body in bodies {
        let full = batches.last().is_none_or(|batch| {
            batch.len() == BATCH_MAX_MESSAGES || bytes + body.len() > BATCH_MAX_BYTES
        });
        if full {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += body.len();
        if let Some(batch) = batches.last_mut() {
            batch.push(body);
        }
    }
    batches
}

/// Sends messages to SQS in batches within SQS's limits ([`batches`]), retrying entries SQS
/// reports as failed.
#[derive(Debug, Clone)]
pub struct QueuePublisher {
    sqs: SqsClient,
}

impl QueuePublisher {
    pub fn new(sqs: SqsClient) -> Self {
        Self { sqs }
    }

    /// # Errors
    /// When a batch cannot be sent after retries; messages before it were sent.
    pub async fn send_all(&self, queue_url: &str, messages: &[Envelope]) -> anyhow::Result<()> {
        let bodies = messages
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        for batch in batches(bodies) {
            let mut entries: Vec<SendMessageBatchRequestEntry> = batch
                .into_iter()
                .enumerate()
                .map(|(index, body)| {
                    Ok(SendMessageBatchRequestEntry::builder()
                        .id(index.to_string())
                        .message_body(body)
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

/// Delays a failed message's next delivery: exponential backoff with jitter, from
/// `base_seconds` doubling per receive, capped at SQS's 15 minutes. Without it a retry
/// would wait for the queue's whole visibility timeout.
#[derive(Debug, Clone)]
pub struct RetryDelay {
    sqs: SqsClient,
    queue_url: String,
    base_seconds: u64,
}

impl RetryDelay {
    pub fn new(sqs: SqsClient, queue_url: impl Into<String>, base_seconds: u64) -> Self {
        Self {
            sqs,
            queue_url: queue_url.into(),
            base_seconds,
        }
    }

    /// The first retry's delay from `RETRY_BASE_SECONDS` (default 10 s).
    pub fn from_env(
        sqs: SqsClient,
        queue_url: impl Into<String>,
        env: &crate::config::Env,
    ) -> Result<Self, crate::config::ConfigError> {
        let base = env.number("RETRY_BASE_SECONDS", 10)?;
        Ok(Self::new(sqs, queue_url, base))
    }

    /// The receive count SQS reports on a message (1 for the first delivery).
    pub fn receives(message: &aws_lambda_events::event::sqs::SqsMessage) -> u32 {
        message
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1)
    }

    pub async fn delay(&self, message: &aws_lambda_events::event::sqs::SqsMessage) {
        use rand_core::RngCore;
        let base = self
            .base_seconds
            .saturating_mul(1 << Self::receives(message).min(6));
        let delay = base / 2 + u64::from(rand_core::OsRng.next_u32()) % (base / 2 + 1);
        self.delay_by(message, delay).await;
    }

    /// Brings the message back after exactly `delay` seconds (at most 15 minutes): for a
    /// retry that waits on something with a known end, such as another delivery's claim.
    pub async fn delay_by(&self, message: &aws_lambda_events::event::sqs::SqsMessage, delay: u64) {
        let Some(receipt) = &message.receipt_handle else {
            return;
        };
        let result = self
            .sqs
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(i32::try_from(delay.min(900)).unwrap_or(900))
            .send()
            .await;
        if let Err(error) = result {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "could not delay the retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_to_ten_messages_and_256_kib() {
        // Ten bulk fan-out jobs of 1,000 ids each: ~29 KB a message, ~290 KB together.
        let job = Envelope::new(
            OrgId::parse("acme").unwrap(),
            Job::EmailSend {
                ids: (0..1000)
                    .map(|n| format!("01JD5Z3Q00000000000000{n:04}"))
                    .collect(),
            },
        );
        let bodies = vec![serde_json::to_string(&job).unwrap(); 25];
        let grouped = batches(bodies);
        assert_eq!(grouped.iter().map(Vec::len).sum::<usize>(), 25);
        for batch in &grouped {
            assert!(batch.len() <= BATCH_MAX_MESSAGES);
            assert!(batch.iter().map(String::len).sum::<usize>() <= BATCH_MAX_BYTES);
        }
        assert!(grouped.len() >= 3, "not ten to a batch: {}", grouped.len());
    }

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
