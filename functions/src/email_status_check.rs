//! The email delivery-status check (every 5 minutes, SPEC §8): emails that have sat in
//! `sent` longer than expected are looked up in SendGrid's Email Activity API, in case the
//! webhook event was lost. Each correction is applied like a webhook event (once, forward
//! only), keyed by the message and the status found.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use serde_json::json;

use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::domain::email::{EmailStatus, TimelineEntry};
use shared::events::{Event, EventPublisher};
use shared::providers::sendgrid::{ActivityStatus, SendGridClient};
use shared::queue::{Job, QueuePublisher};
use shared::store::{EmailStore, EventEffect, EventInput, StuckInSent, Unsettled};

use crate::email_api::SEND_CHUNK;
use crate::registry::{BoxFuture, ScheduledFunction};
use crate::sweep::Sweep;

/// Per run, so one run stays well inside the function timeout.
const MAX_PER_RUN: usize = 500;

/// Lookups of one email without an answer before it is left `sent` for good (the webhook
/// may still settle it). A looked-up email waits `EMAIL_STUCK_AFTER_MINUTES` for its next
/// turn, so 24 lookups span six hours at the default 15 minutes.
const MAX_LOOKUPS: u32 = 24;

pub struct EmailStatusCheck {
    emails: EmailStore,
    events: EventPublisher,
    /// `None` when SendGrid is not configured.
    sendgrid: OnFirstUse<Option<SendGridClient>>,
    stuck_after: chrono::Duration,
    sweep: Sweep,
}

impl ScheduledFunction for EmailStatusCheck {
    fn call(&self, event: EventBridgeEvent) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(self.handle(event))
    }
}

impl EmailStatusCheck {
    /// No I/O: the SendGrid key is read by the first run.
    ///
    /// # Errors
    /// When a required variable is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let minutes = env.number("EMAIL_STUCK_AFTER_MINUTES", 15)?;
        let events = EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL"));
        let sweep = Sweep::new(
            "email",
            QueuePublisher::new(aws.sqs.clone()),
            events.clone(),
            env,
            "EMAIL_SEND_QUEUE_URL",
            SEND_CHUNK,
            |ids| Job::EmailSend { ids },
        )?;
        Ok(Self {
            sweep,
            emails: EmailStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            events,
            sendgrid: crate::email_worker::sendgrid_on_first_use(aws, env)?,
            stuck_after: chrono::Duration::minutes(minutes),
        })
    }

    /// # Errors
    /// When the SendGrid settings cannot be read or the stuck emails cannot be listed (a
    /// lookup that fails is skipped until the next run).
    pub async fn handle(&self, _event: EventBridgeEvent) -> Result<serde_json::Value, String> {
        shared::logging::invocation("email-status-check", "", async {
            // First, whatever SendGrid's state: emails that never reached it need no lookup.
            let swept = self
                .sweep
                .run(&self.emails)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let Some(sendgrid) = self.sendgrid.get().await.map_err(|e| format!("{e:#}"))? else {
                tracing::warn!("SendGrid is not configured; nothing to check");
                return Ok(json!({"checked": 0, "updated": 0, "swept": swept}));
            };
            let now = chrono::Utc::now();
            let stuck = self
                .emails
                .stuck_in_sent(now - self.stuck_after, MAX_PER_RUN)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let (mut updated, mut gave_up) = (0, 0);
            for StuckInSent {
                org_id: org,
                id,
                provider_message_id,
                to,
            } in &stuck
            {
                let (Some(message_id), Some(to)) = (provider_message_id, to) else {
                    continue;
                };
                let status = match sendgrid.recipient_status(message_id, to).await {
                    Ok(Some(ActivityStatus::Delivered)) => EmailStatus::Delivered,
                    Ok(Some(ActivityStatus::NotDelivered)) => EmailStatus::Bounced,
                    Ok(_) => {
                        // Not known, or not final yet: back of the line, and after
                        // MAX_LOOKUPS it stays `sent` and is no longer looked up.
                        match self.emails.unsettled_check(org, id, now, MAX_LOOKUPS).await {
                            Ok(Some(Unsettled::GaveUp)) => {
                                gave_up += 1;
                                tracing::warn!(email = id, "no final status after {MAX_LOOKUPS} lookups: left sent");
                            }
                            Ok(_) => {}
                            Err(error) => tracing::warn!(error = format!("{error:#}"), email = id, "could not note the lookup"),
                        }
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, email = id, "activity lookup failed");
                        continue;
                    }
                };
                let key = format!("sendgrid-activity#{message_id}#{}", status.as_str());
                let effect = |current: &shared::domain::email::EmailRecord, _: usize| EventEffect {
                    status: Some(status).filter(|s| current.status.can_become(*s)),
                    engagement: None,
                    timeline: Some(TimelineEntry::new(
                        now,
                        "status_check",
                        Some(format!("Email Activity: {}", status.as_str())),
                    )),
                    failure_reason: (status == EmailStatus::Bounced)
                        .then(|| "not delivered (Email Activity)".to_owned()),
                };
                match self
                    .emails
                    .apply_events(
                        org,
                        Some(id),
                        None,
                        &[EventInput {
                            key,
                            suppress: None,
                        }],
                        now,
                        effect,
                    )
                    .await
                {
                    Ok(outcome) => {
                        if let Some(status) = outcome.new_status {
                            updated += 1;
                            let event = Event::delivery(
                                org,
                                "email",
                                format!("email/{id}"),
                                status.as_str(),
                            );
                            self.events.publish(vec![event]).await;
                        }
                    }
                    Err(error) => tracing::warn!(
                        error = format!("{error:#}"),
                        email = id,
                        "status update failed"
                    ),
                }
            }
            tracing::info!(checked = stuck.len(), updated, "email status check");
            Ok(json!({"checked": stuck.len(), "updated": updated, "gave_up": gave_up, "swept": swept}))
        })
        .await
    }
}
