//! The bulk fan-out worker (SPEC §7): turns one `email.bulk` job into `email.send` jobs of
//! up to 1,000 emails each, so the API answers a 10,000-recipient send with one message.
//! A duplicate job enqueues the same ids again; the send worker's claims make that harmless.
//!
//! The records are found by a consistent read of the table over the bulk's id range (the
//! job carries it, [`BulkSpan`]), never through an index: the job runs a moment after the
//! API wrote the records, and DynamoDB's indexes may not have them yet (issue 15).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::Instrument;

use shared::aws::AwsClients;
use shared::config::Env;
use shared::metrics::JobOutcome;
use shared::queue::{
    BulkSpan, EMAIL_SEND_JOB_IDS, Envelope, Job, QueuePublisher, RetryDelay, SMS_SEND_JOB_IDS,
};
use shared::store::{EmailStore, SmsStore};

use crate::runtime::{BoxFuture, SqsFunction, batch_response};

pub struct BulkWorker {
    emails: EmailStore,
    queue: QueuePublisher,
    email_send_queue: String,
    sms: SmsStore,
    /// Set where the SMS bulk queue is also an event source of this function.
    sms_send_queue: Option<String>,
    /// The bulk queues' `maxReceiveCount`: a job failing on that receive goes to the DLQ.
    max_receives: u32,
}

impl SqsFunction for BulkWorker {
    fn call(&self, event: SqsEvent) -> BoxFuture<'_, SqsBatchResponse> {
        Box::pin(self.handle(event))
    }
}

impl BulkWorker {
    /// # Errors
    /// When a required variable is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        Ok(Self {
            emails: EmailStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            queue: QueuePublisher::new(aws.sqs.clone()),
            email_send_queue: env.required("EMAIL_SEND_QUEUE_URL")?,
            sms: SmsStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            sms_send_queue: env.optional("SMS_SEND_QUEUE_URL"),
            max_receives: env.number("MAX_RECEIVES", 2)?,
        })
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        shared::logging::invocation("bulk-worker", "", async {
            let mut failed = Vec::new();
            let mut outcomes = Vec::new();
            for message in &event.records {
                let id = message.message_id.as_deref().unwrap_or_default();
                let job = shared::logging::job_span("bulk-worker", id);
                let result = self.process(message).instrument(job).await;
                let receives = RetryDelay::receives(message);
                outcomes.push(JobOutcome::of(result.is_err(), receives, self.max_receives));
                if let Err(error) = result {
                    tracing::warn!(error = format!("{error:#}"), receives, "bulk job failed");
                    failed.push(id.to_owned());
                }
            }
            shared::metrics::jobs("bulk-worker", outcomes);
            batch_response(failed)
        })
        .await
    }

    async fn process(&self, message: &SqsMessage) -> anyhow::Result<()> {
        let envelope = Envelope::parse(message.body.as_deref().unwrap_or_default())?;
        let (bulk_id, span) = match &envelope.job {
            Job::EmailBulk { bulk_id, span } => (bulk_id, span),
            Job::SmsBulk { bulk_id, span } => {
                return self.fan_out_sms(&envelope, bulk_id, span).await;
            }
            _ => anyhow::bail!("not a bulk job"),
        };
        let ids = self
            .emails
            .queued_in_bulk(&envelope.org, bulk_id, span)
            .await?;
        let jobs: Vec<Envelope> = ids
            .chunks(EMAIL_SEND_JOB_IDS)
            .map(|chunk| {
                Envelope::new(
                    envelope.org.clone(),
                    Job::EmailSend {
                        ids: chunk.to_vec(),
                    },
                )
            })
            .collect();
        self.queue.send_all(&self.email_send_queue, &jobs).await?;
        tracing::info!(
            org = envelope.org.as_str(),
            bulk_id,
            emails = ids.len(),
            jobs = jobs.len(),
            "bulk email fanned out"
        );
        Ok(())
    }

    /// `sms.bulk`: the bulk's `queued` SMS records into `sms.send` jobs.
    async fn fan_out_sms(
        &self,
        envelope: &Envelope,
        bulk_id: &str,
        span: &BulkSpan,
    ) -> anyhow::Result<()> {
        let Some(queue) = &self.sms_send_queue else {
            anyhow::bail!("SMS_SEND_QUEUE_URL is not set");
        };
        let ids = self
            .sms
            .queued_in_bulk(&envelope.org, bulk_id, span)
            .await?;
        let jobs: Vec<Envelope> = ids
            .chunks(SMS_SEND_JOB_IDS)
            .map(|chunk| {
                Envelope::new(
                    envelope.org.clone(),
                    Job::SmsSend {
                        ids: chunk.to_vec(),
                    },
                )
            })
            .collect();
        self.queue.send_all(queue, &jobs).await?;
        tracing::info!(
            org = envelope.org.as_str(),
            bulk_id,
            messages = ids.len(),
            jobs = jobs.len(),
            "bulk SMS fanned out"
        );
        Ok(())
    }
}
