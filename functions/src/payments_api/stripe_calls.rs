//! What every payments operation shares with Stripe: the client (built on first use), the
//! request's Stripe budget, the calls with their provider events, and creating a Stripe
//! object once per client request.

use std::time::Duration;

use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use shared::auth::Caller;
use shared::config::Env;
use shared::domain::{OrgId, RecordId};
use shared::events::{Event, EventKind};
use shared::http::idempotency;
use shared::http::{self, ApiError};
use shared::providers::stripe::{Attempted, Deadline, StripeClient, StripeError};
use shared::store::{PaymentEntity, RequestClaim, StoreError};

use super::PaymentsApi;

/// How long all of one request's Stripe calls may take unless `STRIPE_BUDGET_SECONDS` says
/// otherwise: three attempts of the default 6 s with their backoff (18.6 s) fit, and the
/// function's 29 s timeout keeps [`RECORD_RESERVE`] beyond it.
const DEFAULT_STRIPE_BUDGET: Duration = Duration::from_secs(20);
/// Time kept after the Stripe calls to record the outcome (DynamoDB writes, events).
const RECORD_RESERVE: Duration = Duration::from_secs(5);

/// `STRIPE_BUDGET_SECONDS`, read at init so a malformed value fails the function's start.
pub(super) fn budget_from_env(env: &Env) -> anyhow::Result<Duration> {
    let default = DEFAULT_STRIPE_BUDGET.as_secs();
    Ok(Duration::from_secs(
        env.number("STRIPE_BUDGET_SECONDS", default)?,
    ))
}

/// A Stripe object to create for a Herald record of `kind` (`customer`, `subscription`);
/// `params` are its parameters for the record id given.
pub(super) struct NewStripeObject<P: Fn(&str) -> Value> {
    pub kind: &'static str,
    pub path: &'static str,
    pub params: P,
}

/// A create request of `kind` by the caller's organization: its identity (the same for
/// every retry) and its content.
pub(super) struct CreateRequest {
    /// Hash of the organization, kind and request key.
    pub name: String,
    /// Hash of the request's method, path and body.
    pub content: String,
}

impl CreateRequest {
    pub fn of(request: &Request, org: &OrgId, kind: &str) -> Self {
        let key = request_key(request);
        Self {
            name: digest(&[org.as_str().as_bytes(), kind.as_bytes(), key.as_bytes()]),
            content: digest(&[
                request.method().as_str().as_bytes(),
                request.uri().path().trim_end_matches('/').as_bytes(),
                http::body_bytes(request),
            ]),
        }
    }

    /// Stripe's `Idempotency-Key` for this request's create of `kind` (Stripe takes up to
    /// 255 characters).
    pub fn stripe_key(&self, kind: &str) -> String {
        format!("herald-{kind}-{}", self.name)
    }
}

/// SHA-256 of `parts` (NUL-separated), hex.
fn digest(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
        hasher.update([0]);
    }
    format!("{:x}", hasher.finalize())
}

/// What names one client request: its `Idempotency-Key`, else API Gateway's request id
/// (see the module docs of the payments API for why that is safe).
fn request_key(request: &Request) -> String {
    match request
        .headers()
        .get(idempotency::HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some(key) => format!("client:{key}"),
        None => match http::request_id(request) {
            id if !id.is_empty() => format!("request:{id}"),
            // No request id (not API Gateway): a key no other request has.
            _ => format!("fresh:{}", RecordId::new()),
        },
    }
}

/// The answer to a create request whose key was used for a different request.
pub(super) fn reused_key() -> ApiError {
    ApiError::Unprocessable("this Idempotency-Key was used with a different request".to_owned())
}

/// Whether Stripe may have acted on a call that gave no usable answer: a timeout, an outage,
/// an answer Herald cannot read, or a key Stripe holds for an earlier run of the request.
pub(super) fn outcome_unknown(error: &StripeError) -> bool {
    error.is_transient() || error.is_unexpected_answer() || error.is_idempotency_conflict()
}

/// Stripe refused the key this environment holds (rolled in the Dashboard).
fn key_refused(result: &Result<Value, StripeError>) -> bool {
    matches!(result, Err(StripeError::Rejected { status: 401, .. }))
}

impl PaymentsApi {
    /// The Stripe client, or 503 when Stripe is not configured.
    pub(super) async fn stripe(&self) -> Result<&StripeClient, ApiError> {
        // Checked before anything is stored: nothing is recorded for a charge that cannot happen.
        // A key that cannot be read answers 500, and the next request reads it again.
        self.stripe
            .get()
            .await
            .map_err(ApiError::internal)?
            .as_ref()
            .ok_or(ApiError::ProviderNotConfigured("Stripe"))
    }

    /// Reads the Stripe secret again after a 401, once per call.
    async fn reread_key(&self) -> Result<&StripeClient, ApiError> {
        tracing::error!(
            alarm = "provider-credentials",
            "Stripe refused Herald's key: re-reading the secret"
        );
        self.stripe.rebuild_once();
        self.stripe().await
    }

    /// The deadline of this request's Stripe calls: its Stripe budget from now, and never
    /// later than the invocation's own deadline less [`RECORD_RESERVE`].
    pub(super) fn deadline(&self, request: &Request) -> Deadline {
        let started = Instant::now();
        let mut deadline = started + self.stripe_budget;
        // In Lambda the invocation's own deadline (unix ms) bounds it too.
        if let Some(context) = request.lambda_context_ref()
            && context.deadline > 0
        {
            let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
            let left = Duration::from_millis(context.deadline.saturating_sub(now_ms));
            deadline = deadline.min(started + left.saturating_sub(RECORD_RESERVE));
        }
        Deadline::at(deadline)
    }

    /// A read-only Stripe call (`GET path`), within `deadline` when the request has one.
    /// A 401 reads the secret again, once, and repeats the call.
    pub(super) async fn read_stripe(
        &self,
        path: &str,
        deadline: Option<Deadline>,
    ) -> Result<Value, ApiError> {
        let mut result = self.stripe().await?.read(path, deadline).await;
        if key_refused(&result) {
            result = self.reread_key().await?.read(path, deadline).await;
        }
        result.map_err(ApiError::from)
    }

    /// A create at Stripe under `idempotency_key`, retried by the client within `deadline`;
    /// a 401 reads the secret again, once, and repeats the call with the same key (nothing
    /// was created with the refused key). Publishes the call's provider event.
    pub(super) async fn call_stripe(
        &self,
        caller: &Caller,
        action: &str,
        path: &str,
        params: &Value,
        idempotency_key: &str,
        deadline: Deadline,
    ) -> Result<Value, StripeError> {
        let Ok(stripe) = self.stripe().await else {
            return Err(StripeError::Rejected {
                status: 0,
                code: None,
                message: "Stripe is not configured".to_owned(),
            });
        };
        let mut attempted = stripe
            .post_retrying(path, params, idempotency_key, deadline)
            .await;
        if key_refused(&attempted.result)
            && let Ok(fresh) = self.reread_key().await
        {
            let again = fresh
                .post_retrying(path, params, idempotency_key, deadline)
                .await;
            attempted = Attempted {
                attempts: attempted.attempts + again.attempts,
                ..again
            };
        }
        self.publish_call(caller, action, &attempted).await;
        attempted.result
    }

    /// The provider event of one Stripe call (the audit trail's and analytics' record of it).
    async fn publish_call(&self, caller: &Caller, action: &str, attempted: &Attempted) {
        let attempts = attempted.attempts;
        let (status, detail) = match &attempted.result {
            Ok(object) => (
                "ok",
                json!({"stripe_id": object["id"], "attempts": attempts}),
            ),
            Err(error) => (
                if error.is_transient() {
                    "transient_error"
                } else {
                    "error"
                },
                json!({"reason": error.reason(), "attempts": attempts}),
            ),
        };
        tracing::info!(action, status, attempts, "Stripe call");
        self.events
            .publish(vec![Event {
                status: Some(status.to_owned()),
                channel: Some("payment".to_owned()),
                ..Event::new(&caller.org, EventKind::Provider, format!("stripe.{action}"))
                    .with_detail(detail)
            }])
            .await;
    }

    /// Creates a Stripe object for the Herald record this request names (a new id the first
    /// time, the first attempt's on a retry), stores it through the reconciler as a webhook
    /// would, audits `payment.<kind>.create`, and answers 201 with the record. A retry of a
    /// request whose record exists answers it without calling Stripe; an outcome Stripe did
    /// not make known answers 202 `pending` with the id the record will have.
    pub(super) async fn create_through_stripe<R: PaymentEntity, P: Fn(&str) -> Value>(
        &self,
        request: &Request,
        caller: &Caller,
        new: NewStripeObject<P>,
        to_json: fn(&R) -> Value,
        deadline: Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let NewStripeObject { kind, path, params } = new;
        let create = CreateRequest::of(request, &caller.org, kind);
        let id = match self.claim_create::<R>(caller, kind, &create).await? {
            (_, Some(record)) => return http::json(201, &to_json(&record)),
            (id, None) => id,
        };
        let result = self
            .call_stripe(
                caller,
                &format!("{kind}.create"),
                path,
                &params(&id),
                &create.stripe_key(kind),
                deadline,
            )
            .await;
        let object = match result {
            Ok(object) => object,
            Err(error) if outcome_unknown(&error) => {
                tracing::warn!(
                    kind,
                    record = id,
                    reason = error.reason(),
                    "Stripe's answer is unknown; the record is settled by the webhook or the sync"
                );
                return http::json(202, &json!({"id": id, "status": "pending"}))
                    .map(idempotency::unsettled);
            }
            Err(error) => return Err(error.into()),
        };
        self.reconciler
            .apply(&object, object["created"].as_i64().unwrap_or(0))
            .await?;
        let record: R = self.store.get(&caller.org, &id).await?;
        let detail = json!({"stripe_id": record.stripe_id()});
        let action = format!("payment.{kind}.create");
        self.audit(request, caller, &action, format!("{kind}/{id}"), detail)
            .await;
        http::json(201, &to_json(&record))
    }

    /// The Herald record id this create request names — a new one the first time, the first
    /// attempt's on a retry — and the record when a retry finds it stored.
    pub(super) async fn claim_create<R: PaymentEntity>(
        &self,
        caller: &Caller,
        kind: &str,
        create: &CreateRequest,
    ) -> Result<(String, Option<R>), ApiError> {
        let fresh = RecordId::new().to_string();
        let claim = self
            .store
            .claim_request(
                &caller.org,
                kind,
                &create.name,
                &fresh,
                &create.content,
                chrono::Utc::now(),
            )
            .await?;
        match claim {
            RequestClaim::New => Ok((fresh, None)),
            RequestClaim::Existing(id) => match self.store.get::<R>(&caller.org, &id).await {
                Ok(record) => Ok((id, Some(record))),
                Err(StoreError::NotFound) => Ok((id, None)),
                Err(other) => Err(other.into()),
            },
            RequestClaim::Mismatch => Err(reused_key()),
        }
    }
}

#[cfg(test)]
mod budget {
    use super::*;
    use shared::providers::stripe::retry::{ATTEMPTS, backoff};

    /// The function's `Timeout` in template.yaml.
    fn template_timeout() -> Duration {
        let template = include_str!("../../../template.yaml");
        let at = template
            .find("PaymentsApiFunction:")
            .expect("the payments function");
        let timeout = template[at..]
            .lines()
            .find_map(|line| line.trim().strip_prefix("Timeout:"))
            .expect("its Timeout");
        Duration::from_secs(timeout.trim().parse().expect("whole seconds"))
    }

    /// Every attempt at its full timeout, with the backoff between them, fits the budget;
    /// the budget and the time to record the outcome fit the function's timeout, which API
    /// Gateway's 30 s bounds.
    #[test]
    fn the_stripe_budget_fits_inside_the_function_timeout() {
        let backoffs: Duration = (1..ATTEMPTS).map(backoff).sum();
        let timeout = shared::providers::stripe::DEFAULT_TIMEOUT;
        assert!(timeout * ATTEMPTS + backoffs <= DEFAULT_STRIPE_BUDGET);
        assert!(DEFAULT_STRIPE_BUDGET + RECORD_RESERVE <= template_timeout());
        assert!(template_timeout() < Duration::from_secs(30));
    }
}
