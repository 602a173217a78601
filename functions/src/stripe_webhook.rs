//! The Stripe webhook (function URL, SPEC §6): verifies `Stripe-Signature` over the raw body
//! against every configured endpoint secret, then applies the event's object once (dedupe
//! by event id) through the [`Reconciler`], which never lets an older state overwrite a
//! newer one. It answers 2xx only after the effect and the dedupe mark are stored, else 5xx
//! so Stripe retries.

use lambda_http::{Body, Request, Response};
use serde_json::json;

use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::events::{Event, EventKind, EventPublisher};
use shared::http::{self, ApiError, MAX_BODY_BYTES};
use shared::metrics;
use shared::payments::reconcile::{EventApplied, PaymentChange, Reconciler};
use shared::providers::stripe::{
    DEFAULT_TOLERANCE, SIGNATURE_HEADER, SignatureError, StripeEvent, WebhookVerifier,
};
use shared::store::PaymentStore;

use crate::runtime::{BoxFuture, HttpFunction};

/// The Herald resource kind an object maps to (`payment/<id>`, …).
fn resource_kind(object: &serde_json::Value) -> &'static str {
    match object["object"].as_str().unwrap_or_default() {
        "customer" => "customer",
        "subscription" => "subscription",
        "invoice" => "invoice",
        _ => "payment",
    }
}

pub struct StripeWebhook {
    reconciler: Reconciler,
    events: EventPublisher,
    /// `None` when no signing secret is configured.
    verifier: OnFirstUse<Option<WebhookVerifier>>,
}

impl HttpFunction for StripeWebhook {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

impl StripeWebhook {
    /// No I/O: the signing secrets are read by the first request.
    ///
    /// # Errors
    /// When `TABLE_NAME` is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let verifier = env.on_first_use(&aws.secrets, |env, secrets| async move {
            Ok(env
                .secret("STRIPE_WEBHOOK_SECRETS", &secrets)
                .await?
                .and_then(|list| {
                    WebhookVerifier::from_list(secrecy::ExposeSecret::expose_secret(&list))
                }))
        });
        let store = PaymentStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?);
        Ok(Self {
            reconciler: Reconciler::new(store),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            verifier,
        })
    }

    /// Contention that outlasts the store's retries answers 503, never 409, so the
    /// provider retries (SPEC §6; see [`ApiError::retryable`]).
    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond_webhook("stripe-webhook", "stripe", &request, || {
            self.receive(&request)
        })
        .await
    }

    async fn receive(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        let event = self.verified_event(request).await?;
        metrics::webhook_events("stripe", "received", 1);
        let applied = match self.reconciler.apply_event(&event).await? {
            EventApplied::Duplicate => {
                tracing::info!(
                    event = event.id,
                    kind = event.kind,
                    "duplicate Stripe event"
                );
                metrics::webhook_events("stripe", "duplicate", 1);
                return http::json(200, &json!({"received": true, "duplicate": true}));
            }
            EventApplied::NotHandled => {
                tracing::info!(
                    event = event.id,
                    kind = event.kind,
                    "Stripe event type not handled; acknowledged"
                );
                metrics::webhook_events("stripe", "ignored", 1);
                return http::json(200, &json!({"received": true, "handled": false}));
            }
            EventApplied::Applied(applied) => applied,
        };
        if let Some(reason) = applied.skipped {
            tracing::info!(
                event = event.id,
                kind = event.kind,
                reason,
                "Stripe event not applied; acknowledged"
            );
            metrics::webhook_events("stripe", "ignored", 1);
            return http::json(
                200,
                &json!({"received": true, "applied": false, "reason": reason}),
            );
        }
        let mut log = Vec::new();
        if let Some((org, id)) = &applied.target {
            // The log's id is Stripe's, so a redelivered event is logged once.
            log.push(Event {
                id: format!("stripe:{}", event.id),
                channel: Some("payment".to_owned()),
                resource: Some(format!("{}/{id}", resource_kind(&event.data.object))),
                detail: json!({"stripe_object": event.data.object["id"], "applied": applied.changed}),
                ..Event::new(org, EventKind::Webhook, format!("stripe.{}", event.kind))
            });
        }
        log.extend(applied.payment_changes.iter().map(PaymentChange::delivery));
        self.events.publish(log).await;
        tracing::info!(
            event = event.id,
            kind = event.kind,
            changed = applied.changed,
            "Stripe event"
        );
        metrics::webhook_events("stripe", "applied", 1);
        http::json(200, &json!({"received": true, "applied": applied.changed}))
    }

    /// The event of a signed `POST` (`Stripe-Signature`: HMAC-SHA256 over the timestamp
    /// and the body), or the 4xx that refuses it.
    async fn verified_event(&self, request: &Request) -> Result<StripeEvent, ApiError> {
        if request.method() != lambda_http::http::Method::POST {
            return Err(ApiError::MethodNotAllowed);
        }
        http::require_content_type(request, "application/json")?;
        // `lambda_http` has already decoded a base64 body (`isBase64Encoded`): these are the
        // bytes Stripe signed.
        let body = http::body_bytes(request);
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge(
                "webhook bodies are limited to 1 MiB".to_owned(),
            ));
        }
        let Some(verifier) = self.verifier.get().await.map_err(ApiError::internal)? else {
            return Err(ApiError::ProviderNotConfigured(
                "the Stripe webhook signing secret",
            ));
        };
        let header = request
            .headers()
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        verifier
            .verify(header, body, chrono::Utc::now(), DEFAULT_TOLERANCE)
            .map_err(|error| {
                tracing::warn!(%error, "rejected Stripe webhook");
                match error {
                    SignatureError::Missing => ApiError::Unauthenticated(error.to_string()),
                    _ => ApiError::Forbidden(error.to_string()),
                }
            })?;
        StripeEvent::parse(body)
            .map_err(|e| ApiError::BadRequest(format!("not a Stripe event: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample event arrives base64-encoded, as function URLs deliver it; the bytes the
    /// handler verifies are the decoded body Stripe signed.
    #[test]
    fn base64_bodies_are_verified_as_the_bytes_stripe_signed() {
        let request = lambda_http::request::from_str(include_str!(
            "../../events/stripe-webhook/payment-intent-succeeded.json"
        ))
        .unwrap();
        let body = http::body_bytes(&request);
        assert!(body.starts_with(b"{\"id\":\"evt_"));
        let header = request
            .headers()
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        let signed_at = chrono::DateTime::from_timestamp(1_795_546_803, 0).unwrap();
        let verifier =
            WebhookVerifier::from_list("whsec_rotated_out,whsec_sample_endpoint_secret").unwrap();
        assert_eq!(
            verifier.verify(header, body, signed_at, DEFAULT_TOLERANCE),
            Ok(())
        );
        assert_eq!(
            verifier.verify(header, body, chrono::Utc::now(), DEFAULT_TOLERANCE),
            Err(SignatureError::Stale)
        );
        let event = StripeEvent::parse(body).unwrap();
        assert_eq!(event.kind, "payment_intent.succeeded");
        assert!(shared::payments::reconcile::HANDLED_EVENTS.contains(&event.kind.as_str()));
    }
}
