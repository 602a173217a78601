//! The bulk fan-out worker (SPEC §7): turns one `email.bulk` job into `email.send` jobs of
//! up to 1,000 emails each, so the API answers a 10,000-recipient send with one message.
//! It also writes the chunks of large contact imports (`phonebook.import`).
//! A duplicate job enqueues the same ids again; the send worker's claims make that harmless.
//!
//! The records are found by a consistent read of the table over the bulk's id range (the
//! job carries it, [`BulkSpan`]), never through an index: the job runs a moment after the
//! API wrote the records, and DynamoDB's indexes may not have them yet (issue 15).
//!
//! A send to a phonebook (`sms.phonebook`) has no records yet: this worker makes them, a
//! page of contacts at a time, in an order that survives a job killed anywhere (issue 20):
//! the page's records are put on the condition that their ids ([`RecordId::derived`]: bulk
//! and number) are free, their send jobs enqueued, and only then the page's last number
//! checkpointed on the bulk. A redelivered job resumes from the checkpoint and redoes at most
//! one page, whose records it finds made (and leaves as they are) and whose send jobs it
//! enqueues again (the send worker's claims make that harmless). After
//! `FANOUT_CONTACTS_PER_JOB` contacts a job hands the rest to a new job, so no phonebook is
//! too large for the function's Timeout.

use std::collections::HashMap;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::Instrument;

use shared::aws::AwsClients;
use shared::bulk::{BulkChannel, FanOutState};
use shared::config::Env;
use shared::domain::OrgId;
use shared::domain::sms_message::{SmsRecord, SmsStatus};
use shared::events::{Event, EventPublisher};
use shared::metrics::JobOutcome;
use shared::queue::{
    BulkSpan, EMAIL_SEND_JOB_IDS, Envelope, Job, QueuePublisher, RetryDelay, SMS_SEND_JOB_IDS,
    send_job_names,
};
use shared::render::{Compiled, Escape};
use shared::store::{BulkStore, EmailStore, PhonebookStore, SmsStore, StoreError};

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
    bulks: BulkStore,
    phonebooks: PhonebookStore,
    events: EventPublisher,
    /// Where a phonebook fan-out hands on what it has not reached.
    sms_bulk_queue: Option<String>,
    /// How many contacts one `sms.phonebook` job makes records for before handing on.
    contacts_per_job: usize,
}

/// Contacts read per page of a phonebook fan-out (one Query; about 100 KB of contacts).
const CONTACTS_PER_PAGE: usize = 500;

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
            bulks: BulkStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            phonebooks: PhonebookStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            sms_bulk_queue: env.optional("SMS_BULK_QUEUE_URL"),
            contacts_per_job: env.number("FANOUT_CONTACTS_PER_JOB", 10_000)?,
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
            Job::SmsPhonebook { bulk_id, after } => {
                return self
                    .fan_out_phonebook(&envelope, bulk_id, after.as_deref())
                    .await;
            }
            Job::PhonebookImport {
                phonebook_id,
                import_id,
                chunk,
                contacts,
            } => {
                self.phonebooks
                    .import_chunk(&envelope.org, import_id, *chunk, phonebook_id, contacts)
                    .await?;
                tracing::info!(
                    import_id,
                    chunk,
                    contacts = contacts.len(),
                    "import chunk written"
                );
                return Ok(());
            }
            _ => anyhow::bail!("not a bulk job"),
        };
        let queued = self
            .emails
            .queued_in_bulk(&envelope.org, bulk_id, span)
            .await?;
        let ids: Vec<&String> = queued.iter().map(|(id, _)| id).collect();
        let jobs = send_jobs(&envelope.org, &queued, EMAIL_SEND_JOB_IDS, |ids| {
            Job::EmailSend { ids }
        });
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
        let jobs = send_jobs(&envelope.org, &ids, SMS_SEND_JOB_IDS, |ids| Job::SmsSend {
            ids,
        });
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

    /// `sms.phonebook`: the phonebook's contacts after `after` into records and send jobs,
    /// page by page (see the module's comment for why in this order).
    async fn fan_out_phonebook(
        &self,
        envelope: &Envelope,
        bulk_id: &str,
        after: Option<&str>,
    ) -> anyhow::Result<()> {
        let (Some(send_queue), Some(bulk_queue)) = (&self.sms_send_queue, &self.sms_bulk_queue)
        else {
            anyhow::bail!("SMS_SEND_QUEUE_URL and SMS_BULK_QUEUE_URL must be set");
        };
        let bulk = match self
            .bulks
            .get(&envelope.org, BulkChannel::Sms, bulk_id)
            .await
        {
            Ok(bulk) => bulk,
            Err(StoreError::NotFound) => {
                tracing::warn!(bulk_id, "no such SMS bulk; job dropped");
                return Ok(());
            }
            Err(other) => return Err(other.into()),
        };
        let Some(send) = bulk.phonebook.clone() else {
            anyhow::bail!("SMS bulk {bulk_id} names no phonebook");
        };
        if bulk.state == FanOutState::Created {
            return Ok(());
        }
        // A job's `after` was checkpointed before the job was sent, so the bulk's
        // checkpoint is never behind it; it is ahead when this job was redelivered.
        let mut position = bulk.done_through.clone().max(after.map(str::to_owned));
        let mut created = bulk.created;
        let text = Compiled::new(&send.text, Escape::None)
            .map_err(|error| anyhow::anyhow!("SMS bulk {bulk_id}: {error:?}"))?;
        let shared_variables = send.shared_variables();
        let mut handled = 0;
        loop {
            let (contacts, more) = self
                .phonebooks
                .contacts_after(
                    &envelope.org,
                    &send.phonebook_id,
                    position.as_deref(),
                    CONTACTS_PER_PAGE.min(self.contacts_per_job.max(1)),
                )
                .await?;
            if let Some(last) = contacts.last() {
                let records: Vec<SmsRecord> = contacts
                    .iter()
                    .map(|contact| send.record_for(&bulk, &text, contact, &shared_variables))
                    .collect();
                self.make_and_enqueue(envelope, send_queue, &records)
                    .await?;
                created += records.len() as u64;
                handled += records.len();
                let number = last.phone.as_str();
                if !self
                    .bulks
                    .checkpoint(&bulk, number, created, chrono::Utc::now())
                    .await?
                {
                    tracing::info!(bulk_id, "a job ahead of this one carries the fan-out on");
                    return Ok(());
                }
                position = Some(number.to_owned());
            }
            if contacts.is_empty() || !more {
                self.bulks
                    .finish(&bulk, created, chrono::Utc::now())
                    .await?;
                tracing::info!(bulk_id, created, "phonebook fan-out done");
                return Ok(());
            }
            if handled >= self.contacts_per_job {
                let next = Job::SmsPhonebook {
                    bulk_id: bulk_id.to_owned(),
                    after: position,
                };
                self.queue
                    .send_all(bulk_queue, &[Envelope::new(envelope.org.clone(), next)])
                    .await?;
                tracing::info!(bulk_id, created, "phonebook fan-out handed on");
                return Ok(());
            }
        }
    }

    /// Puts a page's records (those made before stay as they are), enqueues the send jobs
    /// of its `queued` ones and publishes each record's first status.
    async fn make_and_enqueue(
        &self,
        envelope: &Envelope,
        send_queue: &str,
        records: &[SmsRecord],
    ) -> anyhow::Result<()> {
        // The page's `queued` records, each in its send job (named after its lowest id, so a
        // page made again names its jobs again the same; a record made before keeps its own).
        let mut records = records.to_vec();
        let queued: Vec<&str> = records
            .iter()
            .filter(|r| r.status == SmsStatus::Queued)
            .map(|r| r.id.as_str())
            .collect();
        let names: HashMap<String, String> = queued
            .iter()
            .map(|id| (*id).to_owned())
            .zip(send_job_names(&queued, SMS_SEND_JOB_IDS))
            .collect();
        for record in &mut records {
            record.send_job = names.get(&record.id).cloned();
        }
        let made: std::collections::HashSet<String> =
            self.sms.create_new(&records).await?.into_iter().collect();
        let queued: Vec<(String, Option<String>)> = records
            .iter()
            .filter(|r| r.status == SmsStatus::Queued)
            .map(|r| (r.id.clone(), r.send_job.clone()))
            .collect();
        let mut queued = queued;
        queued.sort();
        let jobs = send_jobs(&envelope.org, &queued, SMS_SEND_JOB_IDS, |ids| {
            Job::SmsSend { ids }
        });
        self.queue.send_all(send_queue, &jobs).await?;
        let events: Vec<Event> = records
            .iter()
            .filter(|r| made.contains(&r.id))
            .map(|r| Event::delivery(&r.org_id, "sms", format!("sms/{}", r.id), r.status.as_str()))
            .collect();
        self.events.publish(events).await;
        Ok(())
    }
}

/// The send jobs of a bulk's `queued` records (in id order): those created in a send job go
/// in that job's message, claimed once by its delivery; the others (enqueued again since)
/// in messages of their own, of up to `per_job`, claimed one by one.
fn send_jobs(
    org: &OrgId,
    queued: &[(String, Option<String>)],
    per_job: usize,
    job_of: impl Fn(Vec<String>) -> Job,
) -> Vec<Envelope> {
    let mut jobs = Vec::new();
    for group in queued.chunk_by(|(_, a), (_, b)| a == b) {
        let ids: Vec<String> = group.iter().map(|(id, _)| id.clone()).collect();
        for chunk in ids.chunks(per_job) {
            let envelope = Envelope::new(org.clone(), job_of(chunk.to_vec()));
            jobs.push(match &group[0].1 {
                Some(job) => envelope.of_send_job(job.clone()),
                None => envelope,
            });
        }
    }
    jobs
}
