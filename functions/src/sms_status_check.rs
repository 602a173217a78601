//! The hourly SMS status check (SPEC §8): messages Twilio accepted a while ago that never
//! reached a final status (a lost or late callback) are looked up in Twilio
//! (`GET …/Messages/{Sid}.json`) and their status applied forward-only.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use serde_json::json;

use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::domain::OrgId;
use shared::events::{Event, EventKind, EventPublisher};
use shared::queue::{Job, QueuePublisher};
use shared::store::{SmsStore, StatusApplied, StuckInSent, TwilioReport};

use crate::runtime::{BoxFuture, ScheduledFunction};
use crate::sweep::Sweep;
use shared::providers::twilio::TwilioSettings;
use shared::queue::SMS_SEND_JOB_IDS;

/// Messages looked up per run; the rest wait for the next run.
const MAX_PER_RUN: usize = 2_000;

/// Lookups of one SMS that settle nothing before it is left `sent` for good (a callback
/// may still settle it); hourly, that is a day of lookups.
const MAX_LOOKUPS: u32 = 24;

pub struct SmsStatusCheck {
    sms: SmsStore,
    /// `None` when Twilio is not configured.
    twilio: OnFirstUse<Option<TwilioSettings>>,
    events: EventPublisher,
    min_age: chrono::Duration,
    sweep: Sweep,
}

impl ScheduledFunction for SmsStatusCheck {
    fn call(&self, _event: EventBridgeEvent) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move {
            shared::logging::invocation("sms-status-check", "", self.run())
                .await
                .map_err(|e| format!("{e:#}"))
        })
    }
}

impl SmsStatusCheck {
    /// Notes a lookup that settled nothing (back of the line); `true` when it was the last
    /// allowed one and the record is left `sent` for good.
    async fn unsettled(&self, org: &OrgId, id: &str, now: chrono::DateTime<chrono::Utc>) -> bool {
        let noted = self.sms.unsettled_check(org, id, now, MAX_LOOKUPS).await;
        crate::sweep::gave_up(noted, "sms", id, MAX_LOOKUPS)
    }

    /// No I/O: the Twilio credentials are read by the first run.
    ///
    /// # Errors
    /// When a required variable is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let events = EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL"));
        let sweep = Sweep::new(
            "sms",
            QueuePublisher::new(aws.sqs.clone()),
            events.clone(),
            env,
            "SMS_SEND_QUEUE_URL",
            SMS_SEND_JOB_IDS,
            |ids| Job::SmsSend { ids },
        )?;
        Ok(Self {
            sweep,
            sms: SmsStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            twilio: TwilioSettings::on_first_use(aws, env)?,
            events,
            // Younger messages still have their callbacks on the way.
            min_age: chrono::Duration::seconds(
                env.number("SMS_STATUS_CHECK_MIN_AGE_SECONDS", 300)?,
            ),
        })
    }

    /// # Errors
    /// When the Twilio settings or the records cannot be read; single lookups that fail are
    /// counted and skipped.
    pub async fn run(&self) -> anyhow::Result<serde_json::Value> {
        // First, whatever Twilio's state: records that never reached it need no lookup.
        let swept = self.sweep.run(&self.sms).await?;
        let Some(twilio) = self.twilio.get().await? else {
            tracing::warn!("Twilio is not configured: nothing to check");
            return Ok(
                json!({"checked": 0, "updated": 0, "skipped": "Twilio is not configured", "swept": swept}),
            );
        };
        let now = chrono::Utc::now();
        let stuck = self
            .sms
            .stuck_in_sent(now - self.min_age, MAX_PER_RUN)
            .await?;
        let (mut updated, mut failed, mut gave_up) = (0, 0, 0);
        for StuckInSent {
            org_id: org,
            id,
            provider_message_id,
            ..
        } in &stuck
        {
            let Some(sid) = provider_message_id else {
                continue;
            };
            let message = match twilio.client.fetch(sid).await {
                Ok(Some(message)) => message,
                Ok(None) => {
                    gave_up += usize::from(self.unsettled(org, id, now).await);
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, sid, "Twilio lookup failed");
                    failed += 1;
                    continue;
                }
            };
            let key = format!(
                "poll:{}:{}",
                message.status,
                message.error_code.unwrap_or(0)
            );
            let applied = self
                .sms
                .apply_status(
                    org,
                    id,
                    &TwilioReport {
                        status: &message.status,
                        sid: Some(&message.sid),
                        error_code: message.error_code,
                    },
                    &key,
                    chrono::Utc::now(),
                )
                .await?;
            let settled =
                matches!(&applied, StatusApplied::Recorded(Some(status)) if status.is_final());
            if !settled {
                gave_up += usize::from(self.unsettled(org, id, now).await);
            }
            if let StatusApplied::Recorded(Some(status)) = applied {
                updated += 1;
                self.events
                    .publish(vec![
                        Event::new(org, EventKind::Provider, "twilio.messages.fetch")
                            .with_detail(json!({"sid": sid, "status": message.status})),
                        Event::delivery(org, "sms", format!("sms/{id}"), status.as_str()),
                    ])
                    .await;
            }
        }
        tracing::info!(
            checked = stuck.len(),
            updated,
            failed,
            "SMS status check done"
        );
        Ok(
            json!({"checked": stuck.len(), "updated": updated, "failed": failed, "gave_up": gave_up, "swept": swept}),
        )
    }
}
