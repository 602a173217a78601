//! The payments API (SPEC §5): customers, subscriptions, charges (PaymentIntents), refunds,
//! invoices and receipts on the platform Stripe account.
//!
//! Every Stripe object Herald creates carries `metadata[org_id]` and `metadata[herald_id]`.
//! A create (customer, subscription, PaymentIntent) sends Stripe an `Idempotency-Key` that
//! is a function of the organization and the client's request: its `Idempotency-Key`
//! header, or, when it sends none, API Gateway's request id (unique to that one HTTP
//! request, and synchronous invocations are not retried by Lambda, so nothing but Herald's
//! own attempts inside the request can repeat it). The request also names the Herald
//! record through a create-request item, so any retry of the same request (after a
//! timeout, a 5xx, or an invocation killed mid-call) sends Stripe the same parameters under
//! the same key and reaches the same Stripe object: Stripe replays its first answer.
//!
//! All of one request's Stripe calls fit in a budget (`STRIPE_BUDGET_SECONDS`, default 20,
//! less than the function's 29 s timeout and API Gateway's 30 s) that leaves time to record
//! the outcome; an outcome still unknown then answers 202 `pending`, settled by the webhook
//! or the sync, never by a second create. Stripe's answers are applied through the same
//! [`Reconciler`] as webhook events, so whichever arrives first, the newer state wins.

use std::collections::BTreeMap;

use std::time::Duration;

use lambda_http::{Body, Request, RequestExt, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use shared::auth::{Caller, ClaimNames};
use shared::aws::{AwsClients, S3Client};
use shared::config::{Env, OnFirstUse};
use shared::domain::email::EmailAddress;
use shared::domain::{OrgId, RecordId};
use shared::events::{Event, EventKind, EventPublisher};
use shared::http::idempotency::{self, run_once};
use shared::http::{self, ApiError, FieldErrors, PageRequest, Route, RouteMatch};
use shared::payments::reconcile::{Applied, Reconciler, decline_reason};
use shared::payments::{Currency, money};
use shared::payments::{
    CustomerRecord, InvoiceRecord, PaymentRecord, PaymentStatus, SubscriptionRecord, check_amount,
    receipt,
};
use shared::providers::stripe::{StripeClient, StripeError};
use shared::store::{IdempotencyStore, PaymentEntity, PaymentStore, RequestClaim, StoreError};

use crate::registry::{BoxFuture, HttpFunction};

shared::operations! {
    /// Every operation of the payments API, with the role it needs.
    pub enum PaymentOperation {
        Charge = "POST" "/services/payments" Member,
        ListPayments = "GET" "/services/payments" Member,
        CreateCustomer = "POST" "/services/payments/customers" Member,
        ListCustomers = "GET" "/services/payments/customers" Member,
        GetCustomer = "GET" "/services/payments/customers/{id}" Member,
        CreateSubscription = "POST" "/services/payments/subscriptions" Member,
        ListSubscriptions = "GET" "/services/payments/subscriptions" Member,
        GetSubscription = "GET" "/services/payments/subscriptions/{id}" Member,
        CancelSubscription = "DELETE" "/services/payments/subscriptions/{id}" Admin,
        ListInvoices = "GET" "/services/payments/invoices" Member,
        GetPayment = "GET" "/services/payments/{id}" Member,
        Refund = "POST" "/services/payments/{id}/refund" Admin,
        InvoiceLink = "GET" "/services/payments/{id}/invoice" Member,
    }
}

pub const ROUTES: &[Route] = PaymentOperation::ROUTES;

/// Attempts at one Stripe call that fails transiently (same idempotency key each time), as
/// many as fit in the request's Stripe budget.
const STRIPE_ATTEMPTS: u32 = 3;
/// How long all of one request's Stripe calls may take unless `STRIPE_BUDGET_SECONDS` says
/// otherwise: three attempts of the default 6 s with their backoff (18.6 s) fit, and the
/// function's 29 s timeout keeps [`RECORD_RESERVE`] beyond it.
const DEFAULT_STRIPE_BUDGET: Duration = Duration::from_secs(20);
/// Time kept after the Stripe calls to record the outcome (DynamoDB writes, events).
const RECORD_RESERVE: Duration = Duration::from_secs(5);
/// An attempt with less time than this left is not started.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);
/// The wait before attempt `n + 1`.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 * u64::from(attempt))
}
const MAX_METADATA: usize = 20;
const MAX_ITEMS: usize = 20;
const INVOICE_STATUSES: &[&str] = &["draft", "open", "paid", "uncollectible", "void"];
const SUBSCRIPTION_STATUSES: &[&str] = &[
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "canceled",
    "unpaid",
    "paused",
];

pub struct PaymentsApi {
    store: PaymentStore,
    reconciler: Reconciler,
    idempotency: IdempotencyStore,
    events: EventPublisher,
    /// `None` when Stripe is not configured.
    stripe: OnFirstUse<Option<StripeClient>>,
    s3: S3Client,
    bucket: String,
    claims: ClaimNames,
    /// How long one request's Stripe calls may take in all.
    stripe_budget: Duration,
}

/// When a request's Stripe calls must be over: its Stripe budget from the start, and never
/// later than the invocation's own deadline less [`RECORD_RESERVE`].
#[derive(Debug, Clone, Copy)]
struct Deadline(Instant);

impl Deadline {
    fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

impl HttpFunction for PaymentsApi {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerRequest {
    email: Option<String>,
    name: Option<String>,
    description: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionRequest {
    customer_id: String,
    price: Option<String>,
    items: Option<Vec<ItemRequest>>,
    /// The customer's payment method to charge (Stripe `default_payment_method`).
    payment_method: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemRequest {
    price: String,
    quantity: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChargeRequest {
    amount: i64,
    currency: String,
    customer_id: Option<String>,
    payment_method: Option<String>,
    description: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// A charge of a saved method while the customer is away (Stripe `off_session`): a
    /// bank that wants authentication declines it (`authentication_required`) and the
    /// payment waits `requires_action` for the customer to come back.
    #[serde(default)]
    off_session: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundRequest {
    amount: Option<i64>,
    reason: Option<String>,
}

fn add(errors: &mut FieldErrors, field: &str, message: impl Into<String>) {
    errors
        .entry(field.to_owned())
        .or_default()
        .push(message.into());
}

/// Stripe's metadata rules (Stripe API reference, "Metadata"): keys up to 40 characters,
/// values up to 500, and no square brackets in a key (they would break the form encoding
/// `metadata[key]`); Herald allows 20 entries of the caller's own.
fn check_metadata(metadata: &BTreeMap<String, String>, errors: &mut FieldErrors) {
    if metadata.len() > MAX_METADATA
        || metadata
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 40 || v.len() > 500)
    {
        add(
            errors,
            "metadata",
            "at most 20 entries, keys of 1 to 40 and values up to 500 characters",
        );
    }
    if metadata.keys().any(|k| k.contains(['[', ']'])) {
        add(errors, "metadata", "keys cannot contain [ or ]");
    }
    if metadata.contains_key("org_id") || metadata.contains_key("herald_id") {
        add(errors, "metadata", "org_id and herald_id are set by Herald");
    }
}

fn check_text(value: Option<&String>, field: &str, max: usize, errors: &mut FieldErrors) {
    if value.is_some_and(|v| v.trim().is_empty() || v.chars().count() > max) {
        add(errors, field, format!("must be 1 to {max} characters"));
    }
}

/// Stripe-side ids Herald passes through (`price_…`, `pm_…`): plain tokens only.
fn check_token(value: &str, field: &str, errors: &mut FieldErrors) {
    if value.is_empty()
        || value.len() > 255
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        add(errors, field, "must be a Stripe id");
    }
}

/// Stripe metadata: the caller's own keys plus the organization and the record.
fn metadata_for(
    user: &BTreeMap<String, String>,
    caller: &Caller,
    herald_id: &str,
) -> serde_json::Map<String, Value> {
    let mut metadata: serde_json::Map<String, Value> = user
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    metadata.insert("org_id".into(), caller.org.as_str().into());
    metadata.insert("herald_id".into(), herald_id.into());
    metadata
}

fn page_json<T>(
    page: &PageRequest,
    records: &[T],
    next: Option<shared::http::Cursor>,
    to_json: impl Fn(&T) -> Value,
) -> Result<Response<Body>, ApiError> {
    let items: Vec<Value> = records.iter().map(to_json).collect();
    http::json(
        200,
        &json!({"items": items, "next_cursor": next.map(|p| page.next_cursor(p))}),
    )
}

fn path_id(found: &RouteMatch) -> Result<String, ApiError> {
    let id = found.param("id");
    RecordId::parse(id)
        .map(|_| id.to_owned())
        .ok_or(ApiError::NotFound)
}

/// The answer to a create request whose key was used for a different request.
fn reused_key() -> ApiError {
    ApiError::Unprocessable("this Idempotency-Key was used with a different request".to_owned())
}

/// One classification for every Stripe failure the API reports (see `From<StripeError>`).
fn stripe_problem(error: &StripeError) -> ApiError {
    ApiError::from(error.clone())
}

/// A Stripe object to create for a Herald record of `kind` (`customer`, `subscription`);
/// `params` are its parameters for the record id given.
struct NewStripeObject<P: Fn(&str) -> Value> {
    kind: &'static str,
    path: &'static str,
    params: P,
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
/// (see the module docs for why that is safe).
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

/// A create request of `kind` by the caller's organization: its identity (the same for
/// every retry) and its content.
struct CreateRequest {
    /// Hash of the organization, kind and request key.
    name: String,
    /// Hash of the request's method, path and body.
    content: String,
}

impl CreateRequest {
    fn of(request: &Request, org: &OrgId, kind: &str) -> Self {
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
    fn stripe_key(&self, kind: &str) -> String {
        format!("herald-{kind}-{}", self.name)
    }
}

/// Whether Stripe may have acted on a call that gave no usable answer: a timeout, an outage,
/// an answer Herald cannot read, or a key Stripe holds for an earlier run of the request.
fn outcome_unknown(error: &StripeError) -> bool {
    error.is_transient() || error.is_unexpected_answer() || error.is_idempotency_conflict()
}

impl PaymentsApi {
    /// No I/O: the Stripe key is read by the first request that needs it.
    ///
    /// # Errors
    /// When a required variable is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let table = env.required("TABLE_NAME")?;
        let store = PaymentStore::new(aws.dynamodb.clone(), &table);
        let stripe_budget = match env.optional("STRIPE_BUDGET_SECONDS") {
            None => DEFAULT_STRIPE_BUDGET,
            Some(value) => Duration::from_secs(value.parse().map_err(|_| {
                anyhow::anyhow!("STRIPE_BUDGET_SECONDS must be whole seconds, not {value:?}")
            })?),
        };
        Ok(Self {
            stripe_budget,
            reconciler: Reconciler::new(store.clone()),
            store,
            idempotency: IdempotencyStore::new(aws.dynamodb.clone(), &table),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            stripe: {
                let timeout = StripeClient::timeout_from_env(env)?;
                env.on_first_use(&aws.secrets, move |env, secrets| async move {
                    StripeClient::from_env(&env, &secrets, timeout).await
                })
            },
            s3: aws.s3.clone(),
            bucket: env.required("BUCKET_NAME")?,
            claims: ClaimNames::from_env(env),
        })
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond("payments-api", &request, || self.dispatch(&request)).await
    }

    async fn stripe(&self) -> Result<&StripeClient, ApiError> {
        // Checked before anything is stored: nothing is recorded for a charge that cannot happen.
        // A key that cannot be read answers 500, and the next request reads it again.
        self.stripe
            .get()
            .await
            .map_err(ApiError::internal)?
            .as_ref()
            .ok_or(ApiError::ProviderNotConfigured("Stripe"))
    }

    /// The deadline of this request's Stripe calls.
    fn deadline(&self, request: &Request) -> Deadline {
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
        Deadline(deadline)
    }

    async fn dispatch(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        let deadline = self.deadline(request);
        use PaymentOperation as Op;
        let (operation, found) =
            PaymentOperation::find(request.method().as_str(), request.uri().path())?;
        let caller = Caller::from_request(request, &self.claims)?;
        tracing::Span::current().record("org", caller.org.as_str());
        caller.require(operation.role())?;
        match operation {
            Op::Charge => {
                run_once(
                    &self.idempotency,
                    &caller.org,
                    "POST /services/payments",
                    request,
                    || self.charge(request, &caller, deadline),
                )
                .await
            }
            Op::ListPayments => self.list_payments(request, &caller).await,
            Op::CreateCustomer => {
                run_once(
                    &self.idempotency,
                    &caller.org,
                    "POST /services/payments/customers",
                    request,
                    || self.create_customer(request, &caller, deadline),
                )
                .await
            }
            Op::ListCustomers => self.list_customers(request, &caller).await,
            Op::GetCustomer => {
                let record: CustomerRecord = self.store.get(&caller.org, &path_id(&found)?).await?;
                http::json(200, &record.to_json())
            }
            Op::CreateSubscription => {
                run_once(
                    &self.idempotency,
                    &caller.org,
                    "POST /services/payments/subscriptions",
                    request,
                    || self.create_subscription(request, &caller, deadline),
                )
                .await
            }
            Op::ListSubscriptions => self.list_subscriptions(request, &caller).await,
            Op::GetSubscription => {
                let record: SubscriptionRecord =
                    self.store.get(&caller.org, &path_id(&found)?).await?;
                http::json(200, &record.to_json())
            }
            Op::CancelSubscription => {
                self.cancel_subscription(request, &caller, &path_id(&found)?)
                    .await
            }
            Op::ListInvoices => self.list_invoices(request, &caller).await,
            Op::GetPayment => {
                let record: PaymentRecord = self.store.get(&caller.org, &path_id(&found)?).await?;
                http::json(200, &record.to_json())
            }
            Op::Refund => {
                let id = path_id(&found)?;
                run_once(
                    &self.idempotency,
                    &caller.org,
                    "POST /services/payments/{id}/refund",
                    request,
                    || self.refund(request, &caller, &id, deadline),
                )
                .await
            }
            Op::InvoiceLink => self.invoice_link(&caller, &path_id(&found)?).await,
        }
    }

    /// Creates a Stripe object for the Herald record this request names (a new id the first
    /// time, the first attempt's on a retry), stores it through the reconciler as a webhook
    /// would, audits `payment.<kind>.create`, and answers 201 with the record. A retry of a
    /// request whose record exists answers it without calling Stripe; an outcome Stripe did
    /// not make known answers 202 `pending` with the id the record will have.
    async fn create_through_stripe<R: PaymentEntity, P: Fn(&str) -> Value>(
        &self,
        request: &Request,
        caller: &Caller,
        new: NewStripeObject<P>,
        to_json: fn(&R) -> Value,
        deadline: Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let NewStripeObject { kind, path, params } = new;
        let create = CreateRequest::of(request, &caller.org, kind);
        let fresh = RecordId::new().to_string();
        let id = match self
            .store
            .claim_request(
                &caller.org,
                kind,
                &create.name,
                &fresh,
                &create.content,
                chrono::Utc::now(),
            )
            .await?
        {
            RequestClaim::New => fresh,
            RequestClaim::Existing(id) => match self.store.get::<R>(&caller.org, &id).await {
                Ok(record) => return http::json(201, &to_json(&record)),
                Err(StoreError::NotFound) => id,
                Err(other) => return Err(other.into()),
            },
            RequestClaim::Mismatch => return Err(reused_key()),
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
            Err(error) => return Err(stripe_problem(&error)),
        };
        self.reconciler
            .apply(&object, object["created"].as_i64().unwrap_or(0))
            .await?;
        let record: R = self.store.get(&caller.org, &id).await?;
        self.audit(
            request,
            caller,
            &format!("payment.{kind}.create"),
            format!("{kind}/{id}"),
            json!({"stripe_id": record.stripe_id()}),
        )
        .await;
        http::json(201, &to_json(&record))
    }

    /// A read-only Stripe call (`GET path`), within `deadline` when the request has one.
    /// As in [`Self::call_stripe`], a 401 (the key rolled in the Dashboard) reads the secret
    /// again, once, and repeats the call.
    async fn read_stripe(&self, path: &str, deadline: Option<Deadline>) -> Result<Value, ApiError> {
        let no_params = json!({});
        let timeout = |stripe: &StripeClient| {
            deadline.map_or(stripe.timeout(), |d| stripe.timeout().min(d.remaining()))
        };
        let stripe = self.stripe().await?;
        let result = match stripe.get_within(path, &no_params, timeout(stripe)).await {
            Err(StripeError::Rejected { status: 401, .. }) => {
                tracing::error!(
                    alarm = "provider-credentials",
                    "Stripe refused Herald's key: re-reading the secret"
                );
                self.stripe.rebuild_once();
                let stripe = self.stripe().await?;
                stripe.get_within(path, &no_params, timeout(stripe)).await
            }
            other => other,
        };
        result.map_err(|e| stripe_problem(&e))
    }

    async fn call_stripe(
        &self,
        caller: &Caller,
        action: &str,
        path: &str,
        params: &Value,
        idempotency_key: &str,
        deadline: Deadline,
    ) -> Result<Value, StripeError> {
        // Every caller has checked `self.stripe()` first: the client is built by now.
        let Ok(Some(first)) = self.stripe.get().await else {
            return Err(StripeError::Rejected {
                status: 0,
                code: None,
                message: "Stripe is not configured".to_owned(),
            });
        };
        let mut stripe: &StripeClient = first;
        let mut attempt = 1;
        let mut key_reread = false;
        let result = loop {
            let left = deadline.remaining();
            if left < MIN_ATTEMPT {
                break Err(StripeError::Transient {
                    status: None,
                    message: "no time left in the Stripe budget".to_owned(),
                });
            }
            let timeout = stripe.timeout().min(left);
            let result = stripe
                .post_within(path, params, Some(idempotency_key), timeout)
                .await;
            match &result {
                Err(error)
                    if error.is_transient()
                        && attempt < STRIPE_ATTEMPTS
                        && deadline.remaining() >= backoff(attempt) + MIN_ATTEMPT =>
                {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                // 401: Stripe refuses the key this environment holds (rolled in the
                // Dashboard). Read the secret again, once, and repeat the call with the same
                // idempotency key: nothing was created with the refused key.
                Err(StripeError::Rejected { status: 401, .. }) if !key_reread => {
                    tracing::error!(
                        alarm = "provider-credentials",
                        "Stripe refused Herald's key: re-reading the secret"
                    );
                    key_reread = true;
                    self.stripe.rebuild_once();
                    match self.stripe.get().await {
                        Ok(Some(fresh)) => stripe = fresh,
                        _ => break result,
                    }
                    attempt += 1;
                }
                _ => break result,
            }
        };
        let (status, detail) = match &result {
            Ok(object) => (
                "ok",
                json!({"stripe_id": object["id"], "attempts": attempt}),
            ),
            Err(error) => (
                if error.is_transient() {
                    "transient_error"
                } else {
                    "error"
                },
                json!({"reason": error.reason(), "attempts": attempt}),
            ),
        };
        tracing::info!(action, status, attempts = attempt, "Stripe call");
        self.events
            .publish(vec![Event {
                status: Some(status.to_owned()),
                channel: Some("payment".to_owned()),
                ..Event::new(&caller.org, EventKind::Provider, format!("stripe.{action}"))
                    .with_detail(detail)
            }])
            .await;
        result
    }

    async fn audit(
        &self,
        request: &Request,
        caller: &Caller,
        action: &str,
        resource: String,
        detail: Value,
    ) {
        self.events
            .publish(vec![
                Event::audit(caller, &http::request_id(request), action, resource)
                    .with_detail(detail),
            ])
            .await;
    }

    /// Publishes `Event::delivery` for each payment status change.
    async fn deliveries(&self, applied: &Applied) {
        let events = applied
            .payment_changes
            .iter()
            .map(shared::payments::reconcile::PaymentChange::delivery)
            .collect();
        self.events.publish(events).await;
    }

    async fn create_customer(
        &self,
        request: &Request,
        caller: &Caller,
        deadline: Deadline,
    ) -> Result<Response<Body>, ApiError> {
        self.stripe().await?;
        let body: CustomerRequest = http::parse_json(request)?;
        let mut errors = FieldErrors::new();
        let email = body.email.as_deref().and_then(|e| {
            EmailAddress::parse(e)
                .map_err(|m| add(&mut errors, "email", m))
                .ok()
        });
        check_text(body.name.as_ref(), "name", 256, &mut errors);
        check_text(body.description.as_ref(), "description", 500, &mut errors);
        check_metadata(&body.metadata, &mut errors);
        if body.email.is_none() && body.name.is_none() {
            add(&mut errors, "email", "an email or a name is required");
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid(errors));
        }
        let email = email.map(|e| e.to_string());
        let new = NewStripeObject {
            kind: "customer",
            path: "/v1/customers",
            params: |id: &str| {
                json!({
                    "email": email,
                    "name": body.name,
                    "description": body.description,
                    "metadata": metadata_for(&body.metadata, caller, id),
                })
            },
        };
        self.create_through_stripe(request, caller, new, CustomerRecord::to_json, deadline)
            .await
    }

    async fn create_subscription(
        &self,
        request: &Request,
        caller: &Caller,
        deadline: Deadline,
    ) -> Result<Response<Body>, ApiError> {
        self.stripe().await?;
        let body: SubscriptionRequest = http::parse_json(request)?;
        let mut errors = FieldErrors::new();
        let items: Vec<(String, u32)> = match (&body.price, &body.items) {
            (Some(price), None) => vec![(price.clone(), 1)],
            (None, Some(items)) if !items.is_empty() && items.len() <= MAX_ITEMS => items
                .iter()
                .map(|i| (i.price.clone(), i.quantity.unwrap_or(1)))
                .collect(),
            (None, Some(_)) => {
                add(
                    &mut errors,
                    "items",
                    format!("must hold 1 to {MAX_ITEMS} items"),
                );
                Vec::new()
            }
            _ => {
                add(&mut errors, "price", "give either price or items");
                Vec::new()
            }
        };
        for (index, (price, quantity)) in items.iter().enumerate() {
            let field = if body.price.is_some() {
                "price".to_owned()
            } else {
                format!("items[{index}].price")
            };
            check_token(price, &field, &mut errors);
            if !(1..=10_000).contains(quantity) {
                add(
                    &mut errors,
                    &format!("items[{index}].quantity"),
                    "must be 1 to 10000",
                );
            }
        }
        if let Some(method) = &body.payment_method {
            check_token(method, "payment_method", &mut errors);
        }
        check_metadata(&body.metadata, &mut errors);
        let customer = match self
            .store
            .get::<CustomerRecord>(&caller.org, &body.customer_id)
            .await
        {
            Ok(customer) => Some(customer),
            Err(StoreError::NotFound) => {
                add(&mut errors, "customer_id", "no such customer");
                None
            }
            Err(other) => return Err(other.into()),
        };
        if !errors.is_empty() {
            return Err(ApiError::invalid(errors));
        }
        let Some(stripe_customer) = customer.and_then(|c| c.stripe_id) else {
            return Err(ApiError::field(
                "customer_id",
                "the customer has no Stripe customer",
            ));
        };
        let items: Vec<Value> = items
            .iter()
            .map(|(price, quantity)| json!({"price": price, "quantity": quantity}))
            .collect();
        let new = NewStripeObject {
            kind: "subscription",
            path: "/v1/subscriptions",
            params: |id: &str| {
                json!({
                    "customer": stripe_customer,
                    "items": items,
                    "default_payment_method": body.payment_method,
                    "metadata": metadata_for(&body.metadata, caller, id),
                })
            },
        };
        self.create_through_stripe(request, caller, new, SubscriptionRecord::to_json, deadline)
            .await
    }

    async fn cancel_subscription(
        &self,
        request: &Request,
        caller: &Caller,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let record: SubscriptionRecord = self.store.get(&caller.org, id).await?;
        if record.status == "canceled" {
            return http::json(200, &record.to_json());
        }
        let stripe = self.stripe().await?;
        let Some(stripe_id) = &record.stripe_id else {
            return Err(ApiError::Conflict(
                "the subscription was never created at Stripe".to_owned(),
            ));
        };
        let canceled = stripe
            .delete(&format!("/v1/subscriptions/{stripe_id}"))
            .await
            .map_err(|e| stripe_problem(&e))?;
        self.events
            .publish(vec![Event {
                status: Some("ok".to_owned()),
                ..Event::new(
                    &caller.org,
                    EventKind::Provider,
                    "stripe.subscription.cancel",
                )
                .with_detail(json!({"stripe_id": stripe_id}))
            }])
            .await;
        // What Stripe answered is its state now.
        self.reconciler
            .apply(&canceled, chrono::Utc::now().timestamp())
            .await?;
        let record: SubscriptionRecord = self.store.get(&caller.org, id).await?;
        self.audit(
            request,
            caller,
            "payment.subscription.cancel",
            format!("subscription/{id}"),
            Value::Null,
        )
        .await;
        http::json(200, &record.to_json())
    }

    async fn charge(
        &self,
        request: &Request,
        caller: &Caller,
        deadline: Deadline,
    ) -> Result<Response<Body>, ApiError> {
        self.stripe().await?;
        let body: ChargeRequest = http::parse_json(request)?;
        let mut errors = FieldErrors::new();
        let currency = Currency::parse(&body.currency)
            .map_err(|m| add(&mut errors, "currency", m))
            .ok();
        if let Some(currency) = &currency
            && let Err(message) = check_amount(body.amount, currency)
        {
            add(&mut errors, "amount", message);
        } else if currency.is_none() && !(1..=money::MAX_AMOUNT).contains(&body.amount) {
            add(
                &mut errors,
                "amount",
                format!(
                    "must be a whole number of minor units from 1 to {}",
                    money::MAX_AMOUNT
                ),
            );
        }
        check_text(body.description.as_ref(), "description", 1000, &mut errors);
        if let Some(method) = &body.payment_method {
            check_token(method, "payment_method", &mut errors);
        }
        check_metadata(&body.metadata, &mut errors);
        let customer = match &body.customer_id {
            None => None,
            Some(id) => match self.store.get::<CustomerRecord>(&caller.org, id).await {
                Ok(customer) => Some(customer),
                Err(StoreError::NotFound) => {
                    add(&mut errors, "customer_id", "no such customer");
                    None
                }
                Err(other) => return Err(other.into()),
            },
        };
        // No method named: the customer's default, or nothing is charged (never a made-up
        // method). Looked up only for an otherwise valid request.
        let payment_method = match (&body.payment_method, &customer) {
            (Some(method), _) => Some(method.clone()),
            (None, Some(customer)) if errors.is_empty() => {
                self.default_payment_method(customer, deadline).await?
            }
            (None, _) => None,
        };
        if body.off_session && customer.is_none() && !errors.contains_key("customer_id") {
            add(
                &mut errors,
                "customer_id",
                "is required for an off-session charge (a saved method belongs to a customer)",
            );
        }
        if payment_method.is_none() && !errors.contains_key("customer_id") {
            add(
                &mut errors,
                "payment_method",
                if customer.is_some() {
                    "is required: the customer has no default payment method"
                } else {
                    "is required unless customer_id names a customer with a default payment method"
                },
            );
        }
        let (Some(currency), Some(payment_method), true) =
            (currency, payment_method, errors.is_empty())
        else {
            return Err(ApiError::invalid(errors));
        };
        let create = CreateRequest::of(request, &caller.org, "payment");
        let fresh = RecordId::new().to_string();
        let claim = self
            .store
            .claim_request(
                &caller.org,
                "payment",
                &create.name,
                &fresh,
                &create.content,
                chrono::Utc::now(),
            )
            .await?;
        let (id, existing) = match claim {
            RequestClaim::New => (fresh, None),
            RequestClaim::Existing(id) => {
                match self.store.get::<PaymentRecord>(&caller.org, &id).await {
                    Ok(record) => (id, Some(record)),
                    Err(StoreError::NotFound) => (id, None),
                    Err(other) => return Err(other.into()),
                }
            }
            RequestClaim::Mismatch => return Err(reused_key()),
        };
        let record = match existing {
            // A retry of a charge whose outcome is known: answered from the record, never
            // charged again.
            Some(record) if record.status != PaymentStatus::Pending => {
                return http::json(201, &record.to_json());
            }
            Some(record) => record,
            None => {
                let now = chrono::Utc::now();
                let mut record = PaymentRecord {
                    id: id.clone(),
                    org_id: caller.org.clone(),
                    customer_id: customer.as_ref().map(|c| c.id.clone()),
                    stripe_customer: customer.as_ref().and_then(|c| c.stripe_id.clone()),
                    stripe_id: None,
                    amount: body.amount,
                    currency: currency.clone(),
                    description: body.description.clone(),
                    status: PaymentStatus::Pending,
                    amount_refunded: 0,
                    failure_reason: None,
                    invoice_id: None,
                    payment_method: Some(payment_method),
                    metadata: body.metadata.clone(),
                    created_at: now,
                    updated_at: now,
                    state_at: 0,
                    state_rank: 0,
                    version: 0,
                };
                // Recorded before Stripe is called: whatever happens next, the charge is
                // findable (and the sync can settle it from `metadata[herald_id]`).
                self.store.save(&mut record).await?;
                self.deliveries(&Applied {
                    payment_changes: vec![shared::payments::reconcile::PaymentChange {
                        org: caller.org.clone(),
                        id: id.clone(),
                        status: PaymentStatus::Pending,
                        amount: record.amount,
                        currency: currency.as_str().to_owned(),
                    }],
                    ..Applied::default()
                })
                .await;
                record
            }
        };
        // Built from the record the request named, so every attempt sends Stripe the same
        // parameters (the body is the same: the create request's content says so).
        let mut params = json!({
            "amount": record.amount,
            "currency": record.currency.as_str(),
            "customer": record.stripe_customer,
            "payment_method": record.payment_method,
            "confirm": true,
            // Server-side confirmation: no redirect-based methods, which need a return URL;
            // a card's 3-D Secure is still possible (`next_action: use_stripe_sdk`).
            "automatic_payment_methods": {"enabled": true, "allow_redirects": "never"},
            "description": body.description,
            "metadata": metadata_for(&body.metadata, caller, &id),
        });
        if body.off_session {
            params["off_session"] = json!(true);
        }
        let result = self
            .call_stripe(
                caller,
                "payment_intent.create",
                "/v1/payment_intents",
                &params,
                &create.stripe_key("payment"),
                deadline,
            )
            .await;
        let (status, intent) = match result {
            Ok(intent) => {
                let applied = self
                    .reconciler
                    .apply(&intent, intent["created"].as_i64().unwrap_or(0))
                    .await?;
                self.deliveries(&applied).await;
                (201, Some(intent))
            }
            Err(StripeError::Card {
                payment_intent: Some(intent),
                ..
            }) => {
                let applied = self
                    .reconciler
                    .apply(&intent, intent["created"].as_i64().unwrap_or(0))
                    .await?;
                self.deliveries(&applied).await;
                (201, Some(*intent))
            }
            Err(error) if outcome_unknown(&error) => {
                // Stripe may or may not have the intent (an answer Herald cannot read may
                // still be a charge): it stays pending until the webhook or the sync says,
                // and a retry of this request reaches the same intent, never a second one.
                tracing::warn!(
                    payment = id,
                    reason = error.reason(),
                    "Stripe's answer is unknown; payment left pending"
                );
                (202, None)
            }
            Err(error) => {
                let reason = match &error {
                    StripeError::Card { .. } => error.reason(),
                    _ => decline_reason(&json!({"message": error.reason()})),
                };
                self.fail(&caller.org, &id, reason).await?;
                (201, None)
            }
        };
        let record: PaymentRecord = self.store.get(&caller.org, &id).await?;
        self.audit(
            request,
            caller,
            "payment.charge.create",
            format!("payment/{id}"),
            json!({"amount": record.amount, "currency": record.currency.as_str(), "status": record.status.as_str()}),
        )
        .await;
        let mut answer = record.to_json();
        // What Stripe.js needs to finish a payment that waits for the customer (3-D Secure):
        // the intent's client secret, and its next action when Stripe names one. Only in
        // this answer: Stripe asks that the secret not be stored or logged.
        if let Some(intent) = intent.filter(|_| record.status == PaymentStatus::RequiresAction) {
            answer["client_secret"] = intent["client_secret"].clone();
            if intent["next_action"].is_object() {
                answer["next_action"] = intent["next_action"].clone();
            }
        }
        let response = http::json(status, &answer)?;
        // A pending charge is not kept under its Idempotency-Key: a retry asks Stripe again
        // with the same Stripe key, which settles it either way.
        Ok(if status == 202 {
            idempotency::unsettled(response)
        } else {
            response
        })
    }

    /// The customer's default payment method at Stripe
    /// (`invoice_settings.default_payment_method`, an id or an expanded object), if it has one.
    async fn default_payment_method(
        &self,
        customer: &CustomerRecord,
        deadline: Deadline,
    ) -> Result<Option<String>, ApiError> {
        let Some(stripe_id) = &customer.stripe_id else {
            return Ok(None);
        };
        let object = self
            .read_stripe(&format!("/v1/customers/{stripe_id}"), Some(deadline))
            .await?;
        let method = &object["invoice_settings"]["default_payment_method"];
        Ok(method
            .as_str()
            .or_else(|| method["id"].as_str())
            .map(str::to_owned))
    }

    /// Marks a payment Stripe refused as failed.
    async fn fail(&self, org: &OrgId, id: &str, reason: String) -> Result<(), ApiError> {
        for _ in 0..4 {
            let mut record: PaymentRecord = self.store.get(org, id).await?;
            if record.status != PaymentStatus::Pending {
                return Ok(());
            }
            record.status = PaymentStatus::Failed;
            record.failure_reason = Some(reason.clone());
            record.state_rank = PaymentStatus::Failed.rank();
            record.updated_at = chrono::Utc::now();
            match self.store.save(&mut record).await {
                Ok(()) => {
                    self.deliveries(&Applied {
                        payment_changes: vec![shared::payments::reconcile::PaymentChange {
                            org: org.clone(),
                            id: id.to_owned(),
                            status: PaymentStatus::Failed,
                            amount: record.amount,
                            currency: record.currency.as_str().to_owned(),
                        }],
                        ..Applied::default()
                    })
                    .await;
                    return Ok(());
                }
                Err(StoreError::Conflict(_)) => {}
                Err(other) => return Err(other.into()),
            }
        }
        Err(ApiError::Conflict(
            "the payment kept changing; retry".to_owned(),
        ))
    }

    async fn refund(
        &self,
        request: &Request,
        caller: &Caller,
        id: &str,
        deadline: Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let body: RefundRequest = if http::body_bytes(request)
            .iter()
            .all(u8::is_ascii_whitespace)
        {
            RefundRequest::default()
        } else {
            http::parse_json(request)?
        };
        let record: PaymentRecord = self.store.get(&caller.org, id).await?;
        self.stripe().await?;
        if !matches!(
            record.status,
            PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded
        ) {
            return Err(ApiError::Conflict(format!(
                "only a succeeded payment can be refunded; this one is {}",
                record.status.as_str()
            )));
        }
        let remaining = record.amount - record.amount_refunded;
        let amount = body.amount.unwrap_or(remaining);
        if !(1..=remaining).contains(&amount) {
            return Err(ApiError::field(
                "amount",
                format!("must be 1 to {remaining}, the amount not yet refunded"),
            ));
        }
        if let Some(reason) = &body.reason
            && !["duplicate", "fraudulent", "requested_by_customer"].contains(&reason.as_str())
        {
            return Err(ApiError::field(
                "reason",
                "must be duplicate, fraudulent or requested_by_customer",
            ));
        }
        let Some(intent) = &record.stripe_id else {
            return Err(ApiError::Conflict(
                "the payment has no Stripe payment intent".to_owned(),
            ));
        };
        let params = json!({
            "payment_intent": intent,
            "amount": amount,
            "reason": body.reason,
            "metadata": metadata_for(&BTreeMap::new(), caller, id),
        });
        // The key names the refund by what was refunded before it: retrying this refund
        // replays it, a later refund of the same amount is a new one.
        let key = format!("herald-refund-{id}-{}-{amount}", record.amount_refunded);
        let refund = self
            .call_stripe(
                caller,
                "refund.create",
                "/v1/refunds",
                &params,
                &key,
                deadline,
            )
            .await
            .map_err(|e| stripe_problem(&e))?;
        if refund["status"] == "failed" || refund["status"] == "canceled" {
            return Err(ApiError::Unprocessable(format!(
                "Stripe did not refund: {}",
                refund["failure_reason"]
            )));
        }
        let total = record.amount_refunded + amount;
        let mut updated = record;
        for _ in 0..4 {
            if updated.amount_refunded >= total {
                break;
            }
            let before = updated.status;
            updated.amount_refunded = total.min(updated.amount);
            updated.settle_status(PaymentStatus::Succeeded);
            updated.updated_at = chrono::Utc::now();
            match self.store.save(&mut updated).await {
                Ok(()) => {
                    if updated.status != before {
                        self.deliveries(&Applied {
                            payment_changes: vec![shared::payments::reconcile::PaymentChange {
                                org: caller.org.clone(),
                                id: id.to_owned(),
                                status: updated.status,
                                amount: updated.amount,
                                currency: updated.currency.as_str().to_owned(),
                            }],
                            ..Applied::default()
                        })
                        .await;
                    }
                    break;
                }
                Err(StoreError::Conflict(_)) => updated = self.store.get(&caller.org, id).await?,
                Err(other) => return Err(other.into()),
            }
        }
        self.audit(
            request,
            caller,
            "payment.refund",
            format!("payment/{id}"),
            json!({"amount": amount, "refund": refund["id"]}),
        )
        .await;
        let mut answer = updated.to_json();
        answer["refund"] =
            json!({"id": refund["id"], "amount": amount, "status": refund["status"]});
        http::json(200, &answer)
    }

    async fn invoice_link(&self, caller: &Caller, id: &str) -> Result<Response<Body>, ApiError> {
        let payment: PaymentRecord = self.store.get(&caller.org, id).await?;
        if let Some(invoice_id) = &payment.invoice_id {
            let stored = self
                .store
                .find_by_stripe::<InvoiceRecord>(&caller.org, invoice_id)
                .await?;
            let pdf = match stored.and_then(|i| i.invoice_pdf) {
                Some(pdf) => Some(pdf),
                None if self
                    .stripe
                    .get()
                    .await
                    .map_err(ApiError::internal)?
                    .is_some() =>
                {
                    self.read_stripe(&format!("/v1/invoices/{invoice_id}"), None)
                        .await?["invoice_pdf"]
                        .as_str()
                        .map(str::to_owned)
                }
                None => None,
            };
            if let Some(url) = pdf {
                return http::json(
                    200,
                    &json!({"kind": "invoice", "invoice": invoice_id, "url": url}),
                );
            }
        }
        if !matches!(
            payment.status,
            PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded
        ) {
            return Err(ApiError::Conflict(format!(
                "a receipt exists only for a succeeded payment; this one is {}",
                payment.status.as_str()
            )));
        }
        let url = receipt::store_and_link(&self.s3, &self.bucket, &payment)
            .await
            .map_err(ApiError::Internal)?;
        http::json(
            200,
            &json!({"kind": "receipt", "url": url, "expires_in": receipt::LINK_LIFETIME.as_secs()}),
        )
    }

    async fn list_payments(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let mut filters = Vec::new();
        if let Some(status) = params.get("status") {
            let status = PaymentStatus::parse(status)
                .ok_or_else(|| ApiError::field("status", "is not a payment status"))?;
            filters.push(("status", status.as_str().to_owned()));
        }
        if let Some(customer) = params.get("customer_id").or_else(|| params.get("customer")) {
            filters.push(("customer_id", customer.clone()));
        }
        let org = caller.listed_org(&params)?;
        let page = PageRequest::from_query(&params, org.as_str())?;
        let (records, next) = self
            .store
            .list::<PaymentRecord>(&org, &filters, &page)
            .await?;
        page_json(&page, &records, next, PaymentRecord::to_json)
    }

    async fn list_customers(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let mut filters = Vec::new();
        if let Some(email) = params.get("email") {
            filters.push(("email", email.trim().to_ascii_lowercase()));
        }
        let org = caller.listed_org(&params)?;
        let page = PageRequest::from_query(&params, org.as_str())?;
        let (records, next) = self
            .store
            .list::<CustomerRecord>(&org, &filters, &page)
            .await?;
        page_json(&page, &records, next, CustomerRecord::to_json)
    }

    async fn list_subscriptions(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let mut filters = Vec::new();
        if let Some(status) = params.get("status") {
            if !SUBSCRIPTION_STATUSES.contains(&status.as_str()) {
                return Err(ApiError::field("status", "is not a subscription status"));
            }
            filters.push(("status", status.clone()));
        }
        if let Some(customer) = params.get("customer_id").or_else(|| params.get("customer")) {
            filters.push(("customer_id", customer.clone()));
        }
        let org = caller.listed_org(&params)?;
        let page = PageRequest::from_query(&params, org.as_str())?;
        let (records, next) = self
            .store
            .list::<SubscriptionRecord>(&org, &filters, &page)
            .await?;
        page_json(&page, &records, next, SubscriptionRecord::to_json)
    }

    async fn list_invoices(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let mut filters = Vec::new();
        if let Some(status) = params.get("status") {
            if !INVOICE_STATUSES.contains(&status.as_str()) {
                return Err(ApiError::field(
                    "status",
                    "must be draft, open, paid, uncollectible or void",
                ));
            }
            filters.push(("status", status.clone()));
        }
        if let Some(customer) = params.get("customer_id").or_else(|| params.get("customer")) {
            filters.push(("customer_id", customer.clone()));
        }
        let org = caller.listed_org(&params)?;
        let page = PageRequest::from_query(&params, org.as_str())?;
        let (records, next) = self
            .store
            .list::<InvoiceRecord>(&org, &filters, &page)
            .await?;
        page_json(&page, &records, next, InvoiceRecord::to_json)
    }
}

#[cfg(test)]
mod budget {
    use super::*;

    /// The function's `Timeout` in template.yaml.
    fn template_timeout() -> Duration {
        let template = include_str!("../../template.yaml");
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
        let backoffs: Duration = (1..STRIPE_ATTEMPTS).map(backoff).sum();
        let timeout = shared::providers::stripe::DEFAULT_TIMEOUT;
        assert!(timeout * STRIPE_ATTEMPTS + backoffs <= DEFAULT_STRIPE_BUDGET);
        assert!(DEFAULT_STRIPE_BUDGET + RECORD_RESERVE <= template_timeout());
        assert!(template_timeout() < Duration::from_secs(30));
    }
}
