//! Event sources besides HTTP: SQS pollers that invoke workers the way Lambda's event
//! source mapping does (batch size, partial batch failures; redrive is the queue's own
//! policy in moto), and schedules, which EventBridge would fire and moto does not.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use functions::runtime::{ScheduledFunction, SqsFunction};
use serde_json::{Value, json};
use shared::aws::SqsClient;

use crate::invocation;

/// One SQS event source mapping.
pub struct QueuePoller {
    pub function: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub batch_size: usize,
    pub report_failures: bool,
    pub handler: Arc<dyn SqsFunction>,
    /// The function's `Timeout`.
    pub timeout: Duration,
    pub sqs: SqsClient,
}

impl QueuePoller {
    /// Receives one batch (long-polling a second), invokes the worker and deletes the
    /// messages it did not report as failed. Returns how many messages it received.
    /// An invocation stopped at the function's timeout deletes nothing: the whole batch
    /// comes back once its visibility timeout ends, as with Lambda's event source mapping.
    ///
    /// # Errors
    /// When SQS cannot be reached.
    pub async fn poll_once(&self) -> anyhow::Result<usize> {
        let output = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(i32::try_from(self.batch_size.clamp(1, 10)).unwrap_or(10))
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .context("ReceiveMessage")?;
        let messages = output.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(0);
        }
        let records: Vec<Value> = messages
            .iter()
            .map(|message| {
                let attributes: serde_json::Map<String, Value> = message
                    .attributes()
                    .map(|attrs| {
                        attrs
                            .iter()
                            .map(|(k, v)| (k.as_str().to_owned(), Value::String(v.clone())))
                            .collect()
                    })
                    .unwrap_or_default();
                json!({
                    "messageId": message.message_id(),
                    "receiptHandle": message.receipt_handle(),
                    "body": message.body(),
                    "attributes": attributes,
                    "messageAttributes": {},
                    "md5OfBody": message.md5_of_body(),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn,
                    "awsRegion": "us-east-1",
                })
            })
            .collect();
        let event: SqsEvent = serde_json::from_value(json!({ "Records": records }))
            .context("building the SQS event")?;
        let Ok(response) =
            invocation::run(&self.function, self.timeout, |_| self.handler.call(event)).await
        else {
            return Ok(messages.len());
        };
        let failed: HashSet<String> = if self.report_failures {
            response
                .batch_item_failures
                .into_iter()
                .map(|f| f.item_identifier)
                .collect()
        } else {
            HashSet::new()
        };
        let done: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .filter(|m| !failed.contains(m.message_id().unwrap_or_default()))
            .enumerate()
            .filter_map(|(index, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .ok()
            })
            .collect();
        if !done.is_empty() {
            self.sqs
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(done))
                .send()
                .await
                .context("DeleteMessageBatch")?;
        }
        Ok(messages.len())
    }
}

/// One schedule of a function.
#[derive(Clone)]
pub struct Schedule {
    pub function: String,
    pub expression: String,
    pub handler: Arc<dyn ScheduledFunction>,
    /// The function's `Timeout`.
    pub timeout: Duration,
}

impl Schedule {
    /// The interval of a `rate(...)` expression; `cron(...)` schedules fire only on demand
    /// locally (`POST /local/schedules/<function>`).
    pub fn interval(&self) -> Option<Duration> {
        let inner = self.expression.strip_prefix("rate(")?.strip_suffix(')')?;
        let (amount, unit) = inner.split_once(' ')?;
        let amount: u64 = amount.parse().ok()?;
        let seconds = match unit.trim_end_matches('s') {
            "minute" => 60,
            "hour" => 3600,
            "day" => 86_400,
            _ => return None,
        };
        Some(Duration::from_secs(amount * seconds))
    }

    /// Fires the schedule now, with the event EventBridge would send.
    ///
    /// # Errors
    /// The function's own error, or Lambda's when the function's timeout stopped it.
    pub async fn fire(&self) -> Result<Value, String> {
        let event: EventBridgeEvent = serde_json::from_value(json!({
            "version": "0",
            "id": uuid::Uuid::new_v4().to_string(),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "region": "us-east-1",
            "resources": [format!("arn:aws:scheduler:us-east-1:123456789012:schedule/default/{}", self.function)],
            "detail": {},
        }))
        .map_err(|e| e.to_string())?;
        invocation::run(&self.function, self.timeout, |_| self.handler.call(event))
            .await
            .map_err(|stopped| stopped.to_string())?
    }

    pub fn spawn(self) -> Option<tokio::task::JoinHandle<()>> {
        let interval = self.interval()?;
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if let Err(error) = self.fire().await {
                    tracing::warn!(function = self.function, error, "scheduled run failed");
                }
            }
        }))
    }
}
