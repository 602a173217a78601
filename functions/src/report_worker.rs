//! The report worker (SPEC §7, §9), on two queues:
//!
//! - report generate (max 2 receives): `report.generate` claims the report
//!   (`queued → generating`, conditional, so a duplicate delivery finds nothing to do),
//!   aggregates its data and streams the file to `s3://<bucket>/reports/<org>/<id>.<ext>`
//!   (multipart, AES256), marks it `generated` and enqueues `report.export`.
//!   `report.schedule_run` (sent by EventBridge Scheduler) first creates the run's report
//!   covering the schedule's last `period_days`.
//! - report export (max 3 receives): `report.export` finalises: checks the object is there
//!   and encrypted, marks the report `ready`, and for a scheduled run emails the download
//!   link to the schedule's recipients (email records and an `email.send` job, exactly as
//!   the email API does; claimed once on the report, so a link is never mailed twice).
//!
//! Failures are retried with backoff; the last attempt records `failed` on the report
//! before SQS moves the message to the DLQ.

use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::Utc;
use serde_json::json;
use tracing::Instrument;

use shared::aws::{AwsClients, S3Client};
use shared::config::{ConfigError, Env, OnFirstUse};
use shared::domain::email::{EmailAddress, EmailContent, EmailRecord, SendShared};
use shared::domain::{OrgId, RecordId};
use shared::events::{Event, EventPublisher};
use shared::metrics::JobOutcome;
use shared::queue::{Envelope, Job, QueuePublisher, RetryDelay};
use shared::reports::{Report, ReportSpec, ReportStatus, content, file};
use shared::store::{EmailStore, EventStore, ReportStore, StoreError};

use crate::runtime::{BoxFuture, SqsFunction, batch_response};

/// How long a generation claim holds before another delivery may take over; longer than
/// the function's timeout.
const CLAIM_LEASE: chrono::Duration = chrono::Duration::minutes(16);

pub struct ReportWorker {
    reports: ReportStore,
    emails: EmailStore,
    event_store: OnFirstUse<EventStore>,
    queue: QueuePublisher,
    events: EventPublisher,
    s3: S3Client,
    bucket: String,
    export_queue: String,
    email_send_queue: String,
    email_from: Option<String>,
    link_lifetime: Duration,
    generate_retry: RetryDelay,
    export_retry: RetryDelay,
    generate_max_receives: u32,
    export_max_receives: u32,
}

impl SqsFunction for ReportWorker {
    fn call(&self, event: SqsEvent) -> BoxFuture<'_, SqsBatchResponse> {
        Box::pin(self.handle(event))
    }
}

fn max_receives(env: &Env, name: &str, default: u32) -> Result<u32, ConfigError> {
    env.number(name, default)
}

impl ReportWorker {
    /// # Errors
    /// When a required variable is missing. MongoDB's URI is read on first use (no I/O here):
    /// a report that cannot reach it fails and is retried.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let table = env.required("TABLE_NAME")?;
        let generate_queue = env.required("REPORT_GENERATE_QUEUE_URL")?;
        let export_queue = env.required("REPORT_EXPORT_QUEUE_URL")?;
        let hours: u64 = env.number("REPORT_EMAIL_LINK_HOURS", 24)?;
        Ok(Self {
            reports: ReportStore::new(aws.dynamodb.clone(), &table),
            emails: EmailStore::new(aws.dynamodb.clone(), &table),
            event_store: env.on_first_use(&aws.secrets, |env, secrets| async move {
                EventStore::from_env(&env, &secrets).await
            }),
            queue: QueuePublisher::new(aws.sqs.clone()),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            s3: aws.s3.clone(),
            bucket: env.required("BUCKET_NAME")?,
            email_send_queue: env.required("EMAIL_SEND_QUEUE_URL")?,
            email_from: env.optional("EMAIL_DEFAULT_FROM"),
            // SigV4 presigned URLs live at most 7 days.
            link_lifetime: Duration::from_secs(hours.clamp(1, 168) * 3600),
            generate_retry: RetryDelay::from_env(aws.sqs.clone(), generate_queue, env)?,
            export_retry: RetryDelay::from_env(aws.sqs.clone(), &export_queue, env)?,
            export_queue,
            generate_max_receives: max_receives(env, "GENERATE_MAX_RECEIVES", 2)?,
            export_max_receives: max_receives(env, "EXPORT_MAX_RECEIVES", 3)?,
        })
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        shared::logging::invocation("report-worker", "", async {
            let mut failed = Vec::new();
            let mut outcomes = Vec::new();
            for message in &event.records {
                let id = message.message_id.as_deref().unwrap_or_default();
                let job = shared::logging::job_span("report-worker", id);
                let result = self.process(message).instrument(job).await;
                let receives = RetryDelay::receives(message);
                let max_receives = self.max_receives_of(message);
                outcomes.push(JobOutcome::of(result.is_err(), receives, max_receives));
                if let Err(reason) = result {
                    tracing::warn!(
                        message_id = id,
                        reason = format!("{reason:#}"),
                        receives,
                        "report job failed"
                    );
                    failed.push(id.to_owned());
                }
            }
            shared::metrics::jobs("report-worker", outcomes);
            batch_response(failed)
        })
        .await
    }

    /// How a job is retried and after how many receives its queue dead-letters it: exports
    /// come from the export queue, everything else from the generate queue.
    fn policy_of(&self, job: &Job) -> (&RetryDelay, u32) {
        match job {
            Job::ReportExport { .. } => (&self.export_retry, self.export_max_receives),
            _ => (&self.generate_retry, self.generate_max_receives),
        }
    }

    /// The dead-letter receive count of `message`'s queue (the generate queue's for a
    /// message that cannot be read).
    fn max_receives_of(&self, message: &SqsMessage) -> u32 {
        let body = message.body.as_deref().unwrap_or_default();
        match Envelope::parse(body) {
            Ok(envelope) => self.policy_of(&envelope.job).1,
            Err(_) => self.generate_max_receives,
        }
    }

    async fn process(&self, message: &SqsMessage) -> anyhow::Result<()> {
        let envelope = Envelope::parse(message.body.as_deref().unwrap_or_default())?;
        let org = envelope.org;
        tracing::Span::current().record("org", org.as_str());
        let (retry, max_receives) = self.policy_of(&envelope.job);
        let last = RetryDelay::receives(message) >= max_receives;
        let (report_id, result) = match envelope.job {
            Job::ReportGenerate { report_id } => {
                let result = self.generate(&org, &report_id).await;
                (Some(report_id), result)
            }
            Job::ReportScheduleRun { schedule_id } => {
                let message_id = message.message_id.clone().unwrap_or_default();
                match self
                    .start_scheduled_run(&org, &schedule_id, &message_id)
                    .await
                {
                    Ok(Some(report_id)) => {
                        let result = self.generate(&org, &report_id).await;
                        (Some(report_id), result)
                    }
                    Ok(None) => return Ok(()),
                    Err(error) => (None, Err(error)),
                }
            }
            Job::ReportExport { report_id } => {
                let result = self.export(&org, &report_id).await;
                (Some(report_id), result)
            }
            other => anyhow::bail!("not a report job: {other:?}"),
        };
        let Err(error) = result else {
            return Ok(());
        };
        if last && let Some(id) = &report_id {
            tracing::error!(report = id, error = format!("{error:#}"), "report failed");
            let failed = self
                .reports
                .mark_failed(&org, id, "the report could not be generated", Utc::now())
                .await?;
            if failed.is_some() {
                self.events
                    .publish(vec![Event::delivery(
                        &org,
                        "report",
                        format!("report/{id}"),
                        "failed",
                    )])
                    .await;
            }
        }
        // After the last attempt too: SQS then moves the message to the DLQ at its next
        // receive instead of after the queue's long visibility timeout.
        retry.delay(message).await;
        Err(error)
    }

    /// Creates the report of one schedule run (its id derived from the message, so a
    /// duplicate delivery of the same run finds it instead of making a second one).
    /// `None` when the schedule no longer exists.
    async fn start_scheduled_run(
        &self,
        org: &OrgId,
        schedule_id: &str,
        message_id: &str,
    ) -> anyhow::Result<Option<String>> {
        let schedule = match self.reports.get_schedule(org, schedule_id).await {
            Ok(schedule) => schedule,
            Err(StoreError::NotFound) => {
                tracing::warn!(schedule_id, "a deleted schedule fired; nothing to do");
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        };
        let now = Utc::now();
        let id = run_report_id(now, message_id);
        match self
            .reports
            .get(org, RecordId::parse(&id).unwrap_or_default())
            .await
        {
            Ok(_) => return Ok(Some(id)),
            Err(StoreError::NotFound) => {}
            Err(error) => return Err(error.into()),
        }
        let to = now;
        let spec = ReportSpec {
            kind: schedule.kind,
            format: schedule.format,
            from: to - chrono::Duration::days(i64::from(schedule.period_days)),
            to,
        };
        let requested_by = format!("schedule/{}", schedule.id);
        let schedule_id = Some(schedule.id.clone());
        let report = Report::queued(
            id.clone(),
            org.clone(),
            spec,
            requested_by,
            schedule_id,
            now,
        );
        self.reports.create(&report).await?;
        Ok(Some(id))
    }

    async fn generate(&self, org: &OrgId, id: &str) -> anyhow::Result<()> {
        let Some(report) = self
            .reports
            .claim_generation(org, id, Utc::now(), CLAIM_LEASE)
            .await?
        else {
            // A duplicate delivery, deleted, or already generated. A retry after the file was
            // written but before the export job was queued queues it now (export is
            // idempotent).
            let record = self
                .reports
                .get(org, RecordId::parse(id).unwrap_or_default())
                .await;
            if record.is_ok_and(|r| r.status == ReportStatus::Generated) {
                self.enqueue_export(org, id).await?;
            }
            return Ok(());
        };
        let started = std::time::Instant::now();
        let written = async {
            let event_store = self.event_store.get().await?;
            let content = content::build(&report, &self.emails, event_store).await?;
            file::upload(&self.s3, &self.bucket, &report, &content).await
        }
        .await;
        let (rows, bytes) = match written {
            Ok(written) => written,
            Err(error) => {
                self.reports.release_generation(org, id).await?;
                return Err(error);
            }
        };
        tracing::info!(report = id, rows, bytes, "report file written");
        let format = [report.format.extension()];
        shared::metrics::milliseconds(
            &shared::metrics::REPORT_DURATION,
            &format,
            started.elapsed(),
        );
        shared::metrics::count(
            &shared::metrics::REPORT_ROWS,
            &format,
            rows,
            Some(org.as_str()),
        );
        if self
            .reports
            .mark_generated(org, id, rows, bytes, Utc::now())
            .await?
            .is_some()
        {
            self.enqueue_export(org, id).await?;
        }
        Ok(())
    }

    async fn enqueue_export(&self, org: &OrgId, id: &str) -> anyhow::Result<()> {
        let job = Envelope::new(
            org.clone(),
            Job::ReportExport {
                report_id: id.to_owned(),
            },
        );
        self.queue.send_all(&self.export_queue, &[job]).await
    }

    async fn export(&self, org: &OrgId, id: &str) -> anyhow::Result<()> {
        let report = match self
            .reports
            .get(org, RecordId::parse(id).unwrap_or_default())
            .await
        {
            Ok(report) => report,
            Err(StoreError::NotFound) => return Ok(()), // deleted meanwhile
            Err(error) => return Err(error.into()),
        };
        let head = self
            .s3
            .head_object()
            .bucket(&self.bucket)
            .key(&report.key)
            .send()
            .await?;
        anyhow::ensure!(
            head.server_side_encryption() == Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256),
            "the report object is not AES256-encrypted"
        );
        let Some(report) = self.reports.mark_ready(org, id, Utc::now()).await? else {
            return Ok(());
        };
        if report.ready_at == Some(report.updated_at) {
            self.events
                .publish(vec![
                    Event::delivery(org, "report", format!("report/{id}"), "ready").with_detail(
                        json!({"type": report.kind, "format": report.format, "rows": report.rows}),
                    ),
                ])
                .await;
        }
        if let Some(schedule_id) = &report.schedule_id {
            self.notify(&report, schedule_id).await?;
        }
        Ok(())
    }

    /// Emails a scheduled report's link to its schedule's recipients, once.
    async fn notify(&self, report: &Report, schedule_id: &str) -> anyhow::Result<()> {
        let org = &report.org_id;
        let schedule = match self.reports.get_schedule(org, schedule_id).await {
            Ok(schedule) => schedule,
            Err(StoreError::NotFound) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        let Some(from) = self.email_from.as_deref() else {
            tracing::warn!("EMAIL_DEFAULT_FROM is not set; scheduled reports cannot be emailed");
            return Ok(());
        };
        let from = EmailAddress::parse(from).map_err(anyhow::Error::msg)?;
        if !self
            .reports
            .claim_notification(org, &report.id, Utc::now())
            .await?
        {
            return Ok(());
        }
        let result = async {
            let url = shared::reports::download::presigned_download(
                &self.s3,
                &self.bucket,
                report,
                self.link_lifetime,
            )
            .await?;
            let records = link_emails(report, &schedule.recipients, &from, &url);
            self.emails.create_all(&records).await?;
            let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
            let job = Envelope::new(org.clone(), Job::EmailSend { ids: ids.clone() });
            self.queue.send_all(&self.email_send_queue, &[job]).await?;
            let mut events = vec![
                Event::new(org, shared::events::EventKind::Audit, "report.email")
                    .with_detail(json!({"report": report.id, "emails": ids.len()})),
            ];
            events[0].actor = Some(format!("schedule/{schedule_id}"));
            events[0].resource = Some(format!("report/{}", report.id));
            events.extend(
                ids.iter()
                    .map(|id| Event::delivery(org, "email", format!("email/{id}"), "queued")),
            );
            self.events.publish(events).await;
            anyhow::Ok(())
        }
        .await;
        if result.is_err() {
            self.reports.release_notification(org, &report.id).await?;
        }
        result
    }
}

/// The id of a schedule run's report: the run's time with randomness taken from the queue
/// message id, so every delivery of one message names the same report.
fn run_report_id(now: chrono::DateTime<Utc>, message_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(message_id.as_bytes());
    let mut random = [0u8; 16];
    random.copy_from_slice(&digest[..16]);
    // The message's first delivery time would be better still; the id only has to be
    // stable across redeliveries within a run, which the hash gives.
    let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0) / 86_400_000 * 86_400_000;
    ulid::Ulid::from_parts(millis, u128::from_be_bytes(random)).to_string()
}

/// One `queued` email per recipient carrying the download link.
fn link_emails(
    report: &Report,
    recipients: &[EmailAddress],
    from: &EmailAddress,
    url: &str,
) -> Vec<EmailRecord> {
    let now = Utc::now();
    let subject = format!(
        "Your {} report is ready",
        report.kind.title().to_lowercase()
    );
    let text = format!(
        "Your scheduled {} report ({} to {}) is ready.\n\nDownload it: {url}\n\nThe link \
         expires; a fresh one is at GET /services/reports/{}/.",
        report.kind.as_str(),
        report.from.format("%Y-%m-%d"),
        report.to.format("%Y-%m-%d"),
        report.id
    );
    let shared = SendShared {
        from_name: Some("Herald reports".to_owned()),
        metadata: [("report_id".to_owned(), report.id.clone())].into(),
        ..SendShared::default()
    };
    let content = EmailContent {
        subject,
        html: None,
        text: Some(text),
    };
    recipients
        .iter()
        .map(|to| {
            let org = report.org_id.clone();
            EmailRecord::queued(org, from.clone(), to.clone(), &shared, content.clone(), now)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domain::email::EmailStatus;

    #[test]
    fn every_delivery_of_one_run_names_the_same_report() {
        let morning = "2026-11-24T06:00:00Z".parse().unwrap();
        let later = "2026-11-24T06:00:30Z".parse().unwrap();
        assert_eq!(run_report_id(morning, "m-1"), run_report_id(later, "m-1"));
        assert_ne!(run_report_id(morning, "m-1"), run_report_id(morning, "m-2"));
        assert!(RecordId::parse(&run_report_id(morning, "m-1")).is_some());
    }

    #[test]
    fn link_emails_carry_the_link_to_every_recipient() {
        let org = OrgId::parse("acme").unwrap();
        let now = Utc::now();
        let report = Report {
            id: RecordId::new().to_string(),
            key: "reports/acme/x.pdf".into(),
            org_id: org,
            kind: shared::reports::ReportKind::Summary,
            format: shared::reports::ReportFormat::Pdf,
            from: now,
            to: now,
            status: ReportStatus::Ready,
            rows: None,
            bytes: None,
            error: None,
            schedule_id: Some("s".into()),
            requested_by: "schedule/s".into(),
            created_at: now,
            updated_at: now,
            ready_at: Some(now),
        };
        let recipients = [
            EmailAddress::parse("a@example.com").unwrap(),
            EmailAddress::parse("b@example.com").unwrap(),
        ];
        let from = EmailAddress::parse("no-reply@example.com").unwrap();
        let emails = link_emails(&report, &recipients, &from, "https://link");
        assert_eq!(emails.len(), 2);
        assert!(emails.iter().all(|e| e.status == EmailStatus::Queued
            && e.text.as_deref().unwrap().contains("https://link")
            && e.subject == "Your summary report is ready"));
    }
}
