//! The SendGrid Event Webhook (function URL, SPEC §6): verifies the signature over the raw
//! body, then applies each event exactly once (dedupe by `sg_event_id`): forward-only
//! status, engagement flags, suppression on bounce, drop, spam report and unsubscribe.
//! It answers 2xx only after every effect is stored, else 5xx so SendGrid retries.

use std::collections::BTreeMap;

use futures::StreamExt;
use lambda_http::{Body, Request, Response};
use serde_json::json;

use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::consent::{ALL_TOPICS, Channel, ConsentSource, ConsentState};
use shared::domain::OrgId;
use shared::domain::email::{EmailAddress, EmailRecord, EmailStatus, Engagement, TimelineEntry};
use shared::events::{Event, EventKind as LogKind, EventPublisher};
use shared::http::{self, ApiError, MAX_BODY_BYTES};
use shared::metrics;
use shared::providers::sendgrid::{
    DEFAULT_TOLERANCE, EventKind, SIGNATURE_HEADER, SendGridEvent, SignatureError,
    TIMESTAMP_HEADER, WebhookVerifier, parse_batch,
};
use shared::store::{
    ConsentChange, ConsentStore, EmailStore, EventEffect, EventInput, EventsApplied, StoreError,
};

use crate::runtime::{BoxFuture, HttpFunction};

pub struct SendGridWebhook {
    emails: EmailStore,
    consent: ConsentStore,
    events: EventPublisher,
    /// `None` when no verification key is configured.
    verifier: OnFirstUse<Option<WebhookVerifier>>,
}

impl HttpFunction for SendGridWebhook {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

/// What an event does: its status, its engagement, and whether it suppresses the address.
pub fn effect_of(event: &SendGridEvent, current: &EmailRecord) -> EventEffect {
    let at = event.occurred_at().unwrap_or_else(chrono::Utc::now);
    let detail = event
        .reason
        .clone()
        .or_else(|| event.response.clone())
        .or_else(|| event.url.clone());
    let (status, engagement) = match &event.event {
        EventKind::Processed => (Some(EmailStatus::Sent), None),
        EventKind::Delivered => (Some(EmailStatus::Delivered), None),
        EventKind::Deferred => (Some(EmailStatus::Deferred), None),
        EventKind::Dropped => (Some(EmailStatus::Dropped), None),
        EventKind::Bounce => (Some(EmailStatus::Bounced), None),
        // Opening or clicking proves delivery, even when `delivered` arrives late or never.
        EventKind::Open => (Some(EmailStatus::Delivered), Some(Engagement::Opened)),
        EventKind::Click => (Some(EmailStatus::Delivered), Some(Engagement::Clicked)),
        EventKind::SpamReport => (None, Some(Engagement::SpamReported)),
        EventKind::Unsubscribe | EventKind::GroupUnsubscribe => {
            (None, Some(Engagement::Unsubscribed))
        }
        EventKind::GroupResubscribe | EventKind::Other(_) => (None, None),
    };
    let status = status.filter(|next| current.accepts_provider_status(*next));
    let failure_reason = matches!(status, Some(EmailStatus::Bounced | EmailStatus::Dropped))
        .then(|| detail.clone())
        .flatten();
    EventEffect {
        status,
        engagement,
        timeline: Some(TimelineEntry::new(at, event.event.as_str(), detail)),
        failure_reason,
    }
}

/// Why an event puts its address on the suppression list, if it does.
pub fn suppression_reason(kind: &EventKind) -> Option<&'static str> {
    match kind {
        EventKind::Bounce => Some("bounce"),
        EventKind::Dropped => Some("dropped"),
        EventKind::SpamReport => Some("spam_report"),
        EventKind::Unsubscribe | EventKind::GroupUnsubscribe => Some("unsubscribe"),
        _ => None,
    }
}

/// What an event means for the consent ledger (issue 19): a bounce, a spam report or
/// SendGrid's global unsubscribe opt the address out of everything; a group unsubscribe
/// (or resubscribe) changes the email's own topic. `None` for every other event.
pub fn consent_change(
    event: &SendGridEvent,
    topic: Option<&str>,
    email_id: &str,
) -> Option<ConsentChange> {
    let own_topic = topic.unwrap_or(ALL_TOPICS).to_owned();
    let (topic, state, source) = match event.event {
        EventKind::Bounce => (
            ALL_TOPICS.to_owned(),
            ConsentState::OptedOut,
            ConsentSource::Bounce,
        ),
        EventKind::SpamReport => (
            ALL_TOPICS.to_owned(),
            ConsentState::OptedOut,
            ConsentSource::SpamReport,
        ),
        EventKind::Unsubscribe => (
            ALL_TOPICS.to_owned(),
            ConsentState::OptedOut,
            ConsentSource::ProviderUnsubscribe,
        ),
        EventKind::GroupUnsubscribe => (
            own_topic,
            ConsentState::OptedOut,
            ConsentSource::ProviderUnsubscribe,
        ),
        EventKind::GroupResubscribe => (
            own_topic,
            ConsentState::OptedIn,
            ConsentSource::ProviderUnsubscribe,
        ),
        _ => return None,
    };
    Some(ConsentChange {
        channel: Channel::Email,
        subject: EmailAddress::parse(&event.email).ok()?.suppression_key(),
        topic,
        state,
        source,
        actor: "sendgrid".to_owned(),
        evidence: BTreeMap::from([
            ("sg_event_id".to_owned(), event.sg_event_id.clone()),
            ("email_id".to_owned(), email_id.to_owned()),
        ]),
        at: event.occurred_at().unwrap_or_else(chrono::Utc::now),
    })
}

/// Events grouped by the email they are about, `(org, email id)`, each group in the order
/// the events happened (they apply in that order; different emails apply in parallel), and
/// how many events carried no Herald `custom_args` (not ours: ignored).
pub fn group_by_email(
    events: &[SendGridEvent],
) -> (BTreeMap<(String, String), Vec<&SendGridEvent>>, usize) {
    let mut by_email: BTreeMap<(String, String), Vec<&SendGridEvent>> = BTreeMap::new();
    let mut ignored = 0usize;
    for event in events {
        match (
            event.custom_args.get("org_id"),
            event.custom_args.get("email_id"),
        ) {
            (Some(org), Some(id)) => by_email
                .entry((org.clone(), id.clone()))
                .or_default()
                .push(event),
            _ => {
                ignored += 1;
                tracing::info!(
                    event = event.event.as_str(),
                    sg_event_id = event.sg_event_id,
                    "event without Herald custom_args ignored"
                );
            }
        }
    }
    for group in by_email.values_mut() {
        group.sort_by_key(|e| e.timestamp);
    }
    (by_email, ignored)
}

impl SendGridWebhook {
    /// No I/O: the verification key is read and parsed by the first request. A key that
    /// cannot be read, or is not a P-256 key, answers 500 until it is fixed.
    ///
    /// # Errors
    /// When `TABLE_NAME` is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let verifier = env.on_first_use(&aws.secrets, |env, secrets| async move {
            match env.secret("SENDGRID_WEBHOOK_PUBLIC_KEY", &secrets).await? {
                Some(key) => Ok(Some(WebhookVerifier::from_base64_spki(
                    secrecy::ExposeSecret::expose_secret(&key),
                )?)),
                None => Ok(None),
            }
        });
        Ok(Self {
            emails: EmailStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            consent: ConsentStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            verifier,
        })
    }

    /// Contention that outlasts the store's retries answers 503, never 409, so the
    /// provider retries (SPEC §6; see [`ApiError::retryable`]).
    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond_webhook("sendgrid-webhook", "sendgrid", &request, || {
            self.receive(&request)
        })
        .await
    }

    async fn receive(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        let events = self.verified_batch(request).await?;
        metrics::webhook_events("sendgrid", "received", events.len() as u64);
        let (by_email, ignored) = group_by_email(&events);
        let mut current = self.current_records(&by_email).await?;
        let per_email: Vec<_> = by_email
            .into_iter()
            .map(|(key, events)| {
                let record = current.remove(&key);
                self.apply_to_email(key, record, events)
            })
            .collect();
        let results: Vec<Result<EmailOutcome, StoreError>> = futures::stream::iter(per_email)
            .buffer_unordered(16)
            .collect()
            .await;
        let (mut applied, mut duplicates) = (0, 0);
        let mut log = Vec::new();
        for result in results {
            let outcome = result.map_err(ApiError::from)?;
            applied += outcome.applied.applied;
            duplicates += outcome.applied.duplicates;
            let deliveries = outcome.deliveries();
            log.extend(outcome.logged);
            log.extend(deliveries);
        }
        self.events.publish(log).await;
        tracing::info!(
            received = events.len(),
            applied,
            duplicates,
            ignored,
            "SendGrid events"
        );
        metrics::webhook_events("sendgrid", "applied", applied as u64);
        metrics::webhook_events("sendgrid", "duplicate", duplicates as u64);
        metrics::webhook_events("sendgrid", "ignored", ignored as u64);
        http::json(
            200,
            &json!({"received": events.len(), "applied": applied, "duplicates": duplicates, "ignored": ignored}),
        )
    }

    /// The batch of a signed `POST` (SendGrid's Signed Event Webhook: ECDSA over the
    /// timestamp and the body), or the 4xx that refuses it.
    async fn verified_batch(&self, request: &Request) -> Result<Vec<SendGridEvent>, ApiError> {
        if request.method() != lambda_http::http::Method::POST {
            return Err(ApiError::MethodNotAllowed);
        }
        http::require_content_type(request, "application/json")?;
        let body = http::body_bytes(request);
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge(
                "webhook bodies are limited to 1 MiB".to_owned(),
            ));
        }
        let Some(verifier) = self.verifier.get().await.map_err(ApiError::internal)? else {
            // Without a key nothing can be trusted: refuse rather than accept unsigned events.
            return Err(ApiError::ProviderNotConfigured(
                "the SendGrid webhook verification key",
            ));
        };
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        let (signature, timestamp) = (header(SIGNATURE_HEADER), header(TIMESTAMP_HEADER));
        let now = chrono::Utc::now();
        verifier
            .verify(signature, timestamp, body, now, DEFAULT_TOLERANCE)
            .map_err(|error| {
                tracing::warn!(%error, "rejected SendGrid webhook");
                match error {
                    SignatureError::MissingSignature => {
                        ApiError::Unauthenticated(error.to_string())
                    }
                    _ => ApiError::Forbidden(error.to_string()),
                }
            })?;
        parse_batch(body)
            .map_err(|e| ApiError::BadRequest(format!("not a SendGrid event batch: {e}")))
    }

    /// The stored emails the batch is about: one read per organization for all of its
    /// emails (then one transaction per email).
    async fn current_records(
        &self,
        by_email: &BTreeMap<(String, String), Vec<&SendGridEvent>>,
    ) -> Result<BTreeMap<(String, String), EmailRecord>, ApiError> {
        let mut ids_by_org: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (org, id) in by_email.keys() {
            ids_by_org.entry(org.as_str()).or_default().push(id.clone());
        }
        let mut current = BTreeMap::new();
        for (org, ids) in ids_by_org {
            let Ok(org) = OrgId::parse(org) else { continue };
            for record in self.emails.get_many(&org, &ids).await? {
                current.insert((org.to_string(), record.id.clone()), record);
            }
        }
        Ok(current)
    }

    /// Applies one email's events in order: its status and engagement (deduplicated by
    /// event id), then the consent ledger, and returns what to log.
    async fn apply_to_email(
        &self,
        (org, id): (String, String),
        record: Option<EmailRecord>,
        events: Vec<&SendGridEvent>,
    ) -> Result<EmailOutcome, StoreError> {
        let Ok(org) = OrgId::parse(&org) else {
            return Ok(EmailOutcome::default());
        };
        let topic = record.as_ref().and_then(|r| r.topic.clone());
        let inputs: Vec<EventInput> = events
            .iter()
            .map(|event| EventInput {
                key: format!("sendgrid#{}", event.sg_event_id),
                suppress: suppression_reason(&event.event).and_then(|reason| {
                    Some((EmailAddress::parse(&event.email).ok()?, reason.to_owned()))
                }),
            })
            .collect();
        let now = chrono::Utc::now();
        let applied = self
            .emails
            .apply_events(&org, Some(&id), record, &inputs, now, |current, index| {
                effect_of(events[index], current)
            })
            .await?;
        // After the email's own effects, so a failure here retries both; the ledger keys
        // each change by the event's id, so a retry records it once.
        for event in &events {
            if let Some(change) = consent_change(event, topic.as_deref(), &id) {
                let key = format!("sendgrid#{}", event.sg_event_id);
                self.consent.record(&org, &change, Some(&key)).await?;
            }
        }
        // The event log's id is the provider's, so a retried batch logs once.
        let logged = events
            .iter()
            .map(|event| Event {
                id: format!("sendgrid:{}", event.sg_event_id),
                resource: Some(format!("email/{id}")),
                channel: Some("email".to_owned()),
                ..Event::new(
                    &org,
                    LogKind::Webhook,
                    format!("sendgrid.{}", event.event.as_str()),
                )
            })
            .collect();
        Ok(EmailOutcome {
            email: Some((org, id)),
            applied,
            logged,
        })
    }
}

/// What one email's events came to.
#[derive(Default)]
struct EmailOutcome {
    email: Option<(OrgId, String)>,
    applied: EventsApplied,
    /// The webhook entries of its events.
    logged: Vec<Event>,
}

impl EmailOutcome {
    /// The delivery events of the status changes the events made (a `sent` they went past
    /// first, so analytics counts it).
    fn deliveries(&self) -> Vec<Event> {
        let (Some((org, id)), Some(status)) = (&self.email, self.applied.new_status) else {
            return Vec::new();
        };
        let resource = format!("email/{id}");
        let mut events = Vec::new();
        if self.applied.overtook_sent {
            events.push(Event::delivery(org, "email", resource.clone(), "sent"));
        }
        events.push(Event::delivery(org, "email", resource, status.as_str()));
        events
    }
}
