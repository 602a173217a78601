//! The platform operator's dead-letter queues (issue 18): `GET /services/admin/dead-letters/`
//! lists every DLQ with its depth and its oldest messages, decoded; `POST
//! /services/admin/dead-letters/{queue}/redrive/` moves a DLQ's messages back to the queue
//! they failed from. Superusers only (of the platform organization), and every redrive is
//! audited.
//!
//! A redrive is SQS's own message move task (`StartMessageMoveTask`): asynchronous, one at
//! a time per queue, and done by SQS under this function's role, which therefore holds
//! `sqs:ReceiveMessage`, `sqs:DeleteMessage` and `sqs:GetQueueAttributes` on the DLQ and
//! `sqs:SendMessage` on the queue it returns to (SQS Developer Guide, "Configure queue
//! permissions for dead-letter queue redrive"). Looking at the messages receives them with
//! a visibility timeout of 0, so they stay where they are and visible to the redrive.

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};

use shared::auth::{Caller, ClaimNames};
use shared::aws::{AwsClients, SqsClient};
use shared::config::Env;
use shared::events::{Event, EventPublisher};
use shared::http::{self, ApiError, Route};

use crate::runtime::{BoxFuture, HttpFunction};

shared::operations! {
    /// Every operation of the operations API: platform superusers only.
    pub enum OperationsOperation {
        ListDeadLetters = "GET" "/services/admin/dead-letters" Superuser,
        Redrive = "POST" "/services/admin/dead-letters/{queue}/redrive" Superuser,
    }
}

pub const ROUTES: &[Route] = OperationsOperation::ROUTES;
/// How many of a DLQ's messages a listing shows (one ReceiveMessage call's maximum).
const SHOWN_MESSAGES: i32 = 10;

/// One dead-letter queue and the queue its messages came from.
#[derive(Debug, Clone)]
struct DeadLetterQueue {
    /// The name the API uses: `email-send`, `events`, …
    key: String,
    url: String,
    source_arn: String,
}

/// `DEAD_LETTER_QUEUES`: `key=<DLQ URL>|<source queue ARN>`, comma-separated (the template
/// builds it from the queues it declares).
fn parse_queues(value: &str) -> anyhow::Result<Vec<DeadLetterQueue>> {
    value
        .split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            let (key, rest) = entry
                .trim()
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("{entry}: expected key=<DLQ URL>|<source ARN>"))?;
            let (url, source_arn) = rest
                .split_once('|')
                .ok_or_else(|| anyhow::anyhow!("{entry}: expected key=<DLQ URL>|<source ARN>"))?;
            Ok(DeadLetterQueue {
                key: key.to_owned(),
                url: url.to_owned(),
                source_arn: source_arn.to_owned(),
            })
        })
        .collect()
}

pub struct OperationsApi {
    sqs: SqsClient,
    queues: Vec<DeadLetterQueue>,
    events: EventPublisher,
    claims: ClaimNames,
}

impl HttpFunction for OperationsApi {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

impl OperationsApi {
    /// # Errors
    /// When `DEAD_LETTER_QUEUES` is missing or malformed.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        Ok(Self {
            sqs: aws.sqs.clone(),
            queues: parse_queues(&env.required("DEAD_LETTER_QUEUES")?)?,
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            claims: ClaimNames::from_env(env),
        })
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond("operations-api", &request, || self.dispatch(&request)).await
    }

    async fn dispatch(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        use OperationsOperation as Op;
        let (operation, found, caller) = OperationsOperation::authorize(request, &self.claims)?;
        match operation {
            Op::ListDeadLetters => {
                let mut queues = Vec::new();
                for queue in &self.queues {
                    queues.push(self.describe(queue).await?);
                }
                http::json(200, &json!({ "items": queues }))
            }
            Op::Redrive => {
                let key = found.param("queue");
                let queue = self
                    .queues
                    .iter()
                    .find(|q| q.key == key)
                    .ok_or(ApiError::NotFound)?;
                self.redrive(request, &caller, queue).await
            }
        }
    }

    /// A DLQ's depth and its first messages.
    async fn describe(&self, queue: &DeadLetterQueue) -> Result<Value, ApiError> {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&queue.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| ApiError::internal(anyhow::anyhow!("GetQueueAttributes: {e:?}")))?;
        let count = |name: QueueAttributeName| {
            attributes
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let depth = count(QueueAttributeName::ApproximateNumberOfMessages);
        let messages = if depth == 0 {
            Vec::new()
        } else {
            self.peek(queue).await?
        };
        Ok(json!({
            "queue": queue.key,
            "depth": depth,
            "in_flight": count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            "messages": messages,
        }))
    }

    async fn peek(&self, queue: &DeadLetterQueue) -> Result<Vec<Value>, ApiError> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&queue.url)
            .max_number_of_messages(SHOWN_MESSAGES)
            .visibility_timeout(0)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| ApiError::internal(anyhow::anyhow!("ReceiveMessage: {e:?}")))?;
        let mut messages: Vec<Value> = received
            .messages()
            .iter()
            .map(|message| {
                let attribute = |name| {
                    message
                        .attributes()
                        .and_then(|a| a.get(&name))
                        .and_then(|v| v.parse::<i64>().ok())
                };
                let sent_at = attribute(MessageSystemAttributeName::SentTimestamp)
                    .and_then(chrono::DateTime::from_timestamp_millis);
                decoded(
                    message.message_id().unwrap_or_default(),
                    message.body().unwrap_or_default(),
                    sent_at,
                    attribute(MessageSystemAttributeName::ApproximateReceiveCount),
                )
            })
            .collect();
        messages.sort_by(|a, b| a["sent_at"].as_str().cmp(&b["sent_at"].as_str()));
        Ok(messages)
    }

    async fn redrive(
        &self,
        request: &Request,
        caller: &Caller,
        queue: &DeadLetterQueue,
    ) -> Result<Response<Body>, ApiError> {
        let arn = self.queue_arn(queue).await?;
        let started = self
            .sqs
            .start_message_move_task()
            .source_arn(&arn)
            .destination_arn(&queue.source_arn)
            .send()
            .await;
        let handle = match started {
            Ok(output) => output.task_handle().unwrap_or_default().to_owned(),
            Err(error) => {
                let service = error.into_service_error();
                // One task per queue at a time (SQS): a second redrive waits for the first.
                if service.meta().code() == Some("UnsupportedOperation") {
                    return Err(ApiError::Conflict(
                        "a redrive of this queue is already running".to_owned(),
                    ));
                }
                return Err(ApiError::internal(anyhow::anyhow!(
                    "StartMessageMoveTask: {service:?}"
                )));
            }
        };
        let event = Event::audit(
            caller,
            &http::request_id(request),
            "dead_letters.redrive",
            format!("dead-letters/{}", queue.key),
        )
        .with_detail(json!({"task": handle, "to": queue.source_arn}));
        self.events.publish(vec![event]).await;
        tracing::info!(queue = queue.key, task = handle, "dead letters redriven");
        http::json(
            202,
            &json!({"queue": queue.key, "task": handle, "status": "running"}),
        )
    }

    async fn queue_arn(&self, queue: &DeadLetterQueue) -> Result<String, ApiError> {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&queue.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| ApiError::internal(anyhow::anyhow!("GetQueueAttributes: {e:?}")))?;
        attributes
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the DLQ has no QueueArn")))
    }
}

/// A dead letter as an operator reads it: the job's kind, organization and ids from its
/// envelope (or the events of an events message). Its last error is in the worker's log,
/// under `request_id` = the message id (each job's span).
fn decoded(
    message_id: &str,
    body: &str,
    sent_at: Option<chrono::DateTime<chrono::Utc>>,
    receive_count: Option<i64>,
) -> Value {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let (kind, organization) = match &parsed {
        Value::Object(envelope) if envelope.contains_key("kind") => {
            (envelope["kind"].clone(), envelope["org"].clone())
        }
        Value::Array(events) => (
            json!("events"),
            events.first().map_or(Value::Null, |e| e["org_id"].clone()),
        ),
        _ => (json!("unreadable"), Value::Null),
    };
    json!({
        "message_id": message_id,
        "sent_at": sent_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "receive_count": receive_count,
        "kind": kind,
        "organization": organization,
        "job": if parsed.is_null() { json!(body) } else { parsed },
        "log_filter": format!("request_id = \"{message_id}\""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_list_names_each_dlq_and_its_source() {
        let queues = parse_queues(
            "email-send=http://q/EmailSendDLQ|arn:aws:sqs:r:1:EmailSendQueue, events=http://q/E|arn:aws:sqs:r:1:Ev",
        )
        .unwrap();
        assert_eq!(queues.len(), 2);
        assert_eq!(queues[0].key, "email-send");
        assert_eq!(queues[1].source_arn, "arn:aws:sqs:r:1:Ev");
        assert!(parse_queues("email-send=http://q").is_err());
    }

    #[test]
    fn a_dead_letter_is_decoded_from_its_envelope() {
        let letter = decoded(
            "m-1",
            r#"{"v":1,"org":"acme","kind":"email.send","ids":["01J"]}"#,
            None,
            Some(3),
        );
        assert_eq!(letter["kind"], "email.send");
        assert_eq!(letter["organization"], "acme");
        assert_eq!(letter["job"]["ids"][0], "01J");
        assert_eq!(decoded("m-2", "not json", None, None)["kind"], "unreadable");
    }
}
