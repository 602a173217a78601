//! The event recorder (SPEC §10): reads the events queue and writes the events to MongoDB in
//! batches. Event ids are the documents' `_id`, so a message delivered twice records its
//! events once. When MongoDB is unreachable the batch fails and SQS redelivers it later
//! (backoff, then the DLQ after five receives): events wait, none are lost.

use std::collections::HashSet;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};

use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::events::{Event, parse_message};
use shared::queue::RetryDelay;
use shared::store::EventStore;

use crate::runtime::{BoxFuture, SqsFunction, batch_response};

pub struct EventRecorder {
    /// Connected and indexed by the first batch: its URI is a secret, its indexes need
    /// MongoDB up. Until that succeeds every batch fails and waits in the queue.
    store: OnFirstUse<EventStore>,
    retry: RetryDelay,
}

impl SqsFunction for EventRecorder {
    fn call(&self, event: SqsEvent) -> BoxFuture<'_, SqsBatchResponse> {
        Box::pin(self.handle(event))
    }
}

impl EventRecorder {
    /// No I/O: the store is made ready by the first batch.
    ///
    /// # Errors
    /// When a required variable is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        Ok(Self {
            store: env.on_first_use(&aws.secrets, |env, secrets| async move {
                let store = EventStore::from_env(&env, &secrets).await?;
                store.ensure_indexes().await?;
                Ok(store)
            }),
            retry: RetryDelay::from_env(aws.sqs.clone(), env.required("EVENTS_QUEUE_URL")?, env)?,
        })
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        shared::logging::invocation("event-recorder", "", async {
            let mut failed = Vec::new();
            let mut batch: Vec<Event> = Vec::new();
            let mut owners: Vec<(usize, usize)> = Vec::new(); // message index → event range
            for (index, message) in event.records.iter().enumerate() {
                match parse_message(message.body.as_deref().unwrap_or_default()) {
                    Ok(events) => {
                        owners.push((index, events.len()));
                        batch.extend(events);
                    }
                    Err(error) => {
                        tracing::error!(%error, "unreadable events message");
                        failed.push(index);
                    }
                }
            }
            let failed_ids: Result<HashSet<String>, String> = match self.store.get().await {
                Err(error) => Err(format!("{error:#}")),
                Ok(store) => store
                    .record(&batch)
                    .await
                    .map(|ids| ids.into_iter().collect())
                    .map_err(|e| format!("{e:#}")),
            };
            let mut start = 0;
            for (index, count) in owners {
                let events = &batch[start..start + count];
                start += count;
                let ok = match &failed_ids {
                    Ok(ids) => events.iter().all(|e| !ids.contains(&e.id)),
                    Err(_) => false,
                };
                if !ok {
                    failed.push(index);
                }
            }
            match &failed_ids {
                Ok(_) => tracing::info!(
                    events = batch.len(),
                    failed_messages = failed.len(),
                    "events recorded"
                ),
                Err(error) => tracing::warn!(
                    error,
                    events = batch.len(),
                    "MongoDB unavailable; events will be retried"
                ),
            }
            for &index in &failed {
                self.retry.delay(&event.records[index]).await;
            }
            batch_response(
                failed
                    .into_iter()
                    .map(|i| event.records[i].message_id.clone().unwrap_or_default())
                    .collect(),
            )
        })
        .await
    }
}
