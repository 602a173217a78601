//! The report cleanup (daily 02:00 UTC, SPEC §8): deletes reports older than
//! `REPORT_RETENTION_DAYS` (default 90) — the S3 object, then the record — across every
//! organization, paging through the reports-by-age index. The bucket's lifecycle rule
//! expires `reports/` objects as a backstop should a run fail.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use serde_json::json;

use shared::aws::{AwsClients, S3Client};
use shared::config::Env;
use shared::domain::OrgId;
use shared::events::{Event, EventKind, EventPublisher};
use shared::store::ReportStore;

use crate::runtime::{BoxFuture, ScheduledFunction};

pub struct ReportCleanup {
    reports: ReportStore,
    events: EventPublisher,
    s3: S3Client,
    bucket: String,
    retention_days: i64,
}

impl ScheduledFunction for ReportCleanup {
    fn call(&self, event: EventBridgeEvent) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(self.handle(event))
    }
}

impl ReportCleanup {
    /// # Errors
    /// When a required variable is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        Ok(Self {
            reports: ReportStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            s3: aws.s3.clone(),
            bucket: env.required("BUCKET_NAME")?,
            retention_days: env.number("REPORT_RETENTION_DAYS", 90)?,
        })
    }

    /// # Errors
    /// When the reports cannot be listed or an object or record cannot be deleted (the
    /// next run picks up where this one stopped).
    pub async fn handle(&self, _event: EventBridgeEvent) -> Result<serde_json::Value, String> {
        shared::logging::invocation("report-cleanup", "", async {
            let cutoff = chrono::Utc::now() - chrono::Duration::days(self.retention_days);
            let mut deleted = 0;
            let mut position = None;
            loop {
                let (expired, next) = self
                    .reports
                    .created_before(cutoff, position)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                for report in &expired {
                    if !report.key.is_empty() {
                        self.s3
                            .delete_object()
                            .bucket(&self.bucket)
                            .key(&report.key)
                            .send()
                            .await
                            .map_err(|e| {
                                format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e))
                            })?;
                    }
                    self.reports
                        .purge(&report.org, &report.id)
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    deleted += 1;
                    if let Ok(org) = OrgId::parse(&report.org) {
                        let mut event = Event::new(&org, EventKind::Audit, "report.expire");
                        event.actor = Some("report-cleanup".to_owned());
                        event.resource = Some(format!("report/{}", report.id));
                        self.events.publish(vec![event]).await;
                    }
                }
                match next {
                    Some(key) => position = Some(key),
                    None => break,
                }
            }
            tracing::info!(
                deleted,
                retention_days = self.retention_days,
                "report cleanup done"
            );
            Ok(json!({"deleted": deleted, "cutoff": cutoff}))
        })
        .await
    }
}
