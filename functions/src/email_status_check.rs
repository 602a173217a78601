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
use shared::providers::sendgrid::{ActivityStatus, RecipientStatus, SendError, SendGridClient};
use shared::queue::{Job, QueuePublisher};
use shared::store::{EmailStore, EventEffect, EventInput, StuckInSent};

use crate::runtime::{BoxFuture, ScheduledFunction};
use crate::sweep::Sweep;
use shared::queue::EMAIL_SEND_JOB_IDS;

/// Per run, so one run stays well inside the function timeout.
const MAX_PER_RUN: usize = 500;

/// Email Activity calls per run. SendGrid allows 6 requests a minute ("Rate limits",
/// Twilio SendGrid API reference, Email Activity; more get 429) and the check runs every 5
/// minutes: 5 keeps one of the minute's requests for anyone else using the account. Each
/// call covers every stuck recipient of one Mail Send request (up to 1,000).
const LOOKUPS_PER_RUN: usize = 5;

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
            EMAIL_SEND_JOB_IDS,
            |ids| Job::EmailSend { ids },
        )?;
        Ok(Self {
            sweep,
            emails: EmailStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            events,
            sendgrid: shared::providers::sendgrid::SendGridClient::on_first_use(aws, env)?,
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
            let (mut updated, mut gave_up, mut looked_up) = (0, 0, 0);
            for (message_id, emails) in by_request(&stuck) {
                let statuses = match sendgrid.request_statuses(message_id).await {
                    Ok(statuses) => statuses,
                    Err(SendError::Transient { status: Some(429), .. }) => {
                        // Someone else spent the minute's lookups: the rest wait their turn.
                        tracing::warn!("Email Activity rate limit reached: the rest wait for the next run");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, request = message_id, "activity lookup failed");
                        continue;
                    }
                };
                looked_up += 1;
                for email in emails {
                    let status = match RecipientStatus::of(&statuses, email.to.as_deref().unwrap_or_default()) {
                        Some(ActivityStatus::Delivered) => EmailStatus::Delivered,
                        Some(ActivityStatus::NotDelivered) => EmailStatus::Bounced,
                        // Not listed yet, or not final: back of the line, and after
                        // MAX_LOOKUPS it stays `sent` and is no longer looked up.
                        _ => {
                            let noted = self
                                .emails
                                .unsettled_check(&email.org_id, &email.id, now, MAX_LOOKUPS)
                                .await;
                            gave_up += usize::from(crate::sweep::gave_up(
                                noted, "email", &email.id, MAX_LOOKUPS,
                            ));
                            continue;
                        }
                    };
                    updated += usize::from(self.apply_found(email, message_id, status, now).await);
                }
            }
            tracing::info!(checked = stuck.len(), looked_up, updated, "email status check");
            Ok(json!({"checked": stuck.len(), "looked_up": looked_up, "updated": updated, "gave_up": gave_up, "swept": swept}))
        })
        .await
    }
    /// Applies a status the Email Activity API reported, once and forward only, as a
    /// webhook event would be; `true` when it moved the email on.
    async fn apply_found(
        &self,
        email: &StuckInSent,
        message_id: &str,
        status: EmailStatus,
        now: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        let (org, id) = (&email.org_id, &email.id);
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
        let input = [EventInput {
            key,
            suppress: None,
        }];
        match self
            .emails
            .apply_events(org, Some(id), None, &input, now, effect)
            .await
        {
            Ok(outcome) => {
                let Some(status) = outcome.new_status else {
                    return false;
                };
                let event = Event::delivery(org, "email", format!("email/{id}"), status.as_str());
                self.events.publish(vec![event]).await;
                true
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    email = id,
                    "status update failed"
                );
                false
            }
        }
    }
}

/// The stuck emails that can be looked up, by the Mail Send request that carried them
/// (one Email Activity call each), oldest request first, at most [`LOOKUPS_PER_RUN`].
fn by_request(stuck: &[StuckInSent]) -> Vec<(&str, Vec<&StuckInSent>)> {
    let mut requests: Vec<(&str, Vec<&StuckInSent>)> = Vec::new();
    for email in stuck {
        let (Some(message_id), Some(_)) = (email.provider_message_id.as_deref(), &email.to) else {
            continue;
        };
        if let Some((_, emails)) = requests.iter_mut().find(|(id, _)| *id == message_id) {
            emails.push(email);
        } else if requests.len() < LOOKUPS_PER_RUN {
            requests.push((message_id, vec![email]));
        }
    }
    requests
}
