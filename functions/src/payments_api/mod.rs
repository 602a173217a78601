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
//!
//! One file per resource: [`charges`], [`refunds`], [`customers`], [`subscriptions`],
//! [`invoices`]; what they share with Stripe in [`stripe_calls`], request checks in
//! [`checks`].

mod charges;
mod checks;
mod customers;
mod invoices;
mod refunds;
mod stripe_calls;
mod subscriptions;

use std::collections::BTreeMap;
use std::time::Duration;

use lambda_http::{Body, Request, Response};
use serde_json::Value;

use shared::auth::{Caller, ClaimNames};
use shared::aws::{AwsClients, S3Client};
use shared::config::{Env, OnFirstUse};
use shared::domain::RecordId;
use shared::events::EventPublisher;
use shared::http::idempotency::run_once;
use shared::http::{self, ApiError, PageRequest, Route, RouteMatch};
use shared::payments::reconcile::{Applied, PaymentChange, Reconciler};
use shared::payments::{CustomerRecord, PaymentRecord, SubscriptionRecord};
use shared::providers::stripe::StripeClient;
use shared::store::{IdempotencyStore, PaymentEntity, PaymentStore};

use crate::runtime::{BoxFuture, HttpFunction};

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

impl HttpFunction for PaymentsApi {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

impl PaymentsApi {
    /// No I/O: the Stripe key is read by the first request that needs it.
    ///
    /// # Errors
    /// When a required variable is missing or malformed.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let table = env.required("TABLE_NAME")?;
        let store = PaymentStore::new(aws.dynamodb.clone(), &table);
        Ok(Self {
            stripe_budget: stripe_calls::budget_from_env(env)?,
            reconciler: Reconciler::new(store.clone()),
            store,
            idempotency: IdempotencyStore::new(aws.dynamodb.clone(), &table),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            stripe: StripeClient::on_first_use(aws, env)?,
            s3: aws.s3.clone(),
            bucket: env.required("BUCKET_NAME")?,
            claims: ClaimNames::from_env(env),
        })
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond("payments-api", &request, || self.dispatch(&request)).await
    }

    async fn dispatch(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        let deadline = self.deadline(request);
        use PaymentOperation as Op;
        let (operation, found, caller) = PaymentOperation::authorize(request, &self.claims)?;
        // A create or a refund runs once per Idempotency-Key (scope: its method and route).
        let scope = operation.idempotency_scope();
        macro_rules! once {
            ($handler:expr) => {
                run_once(&self.idempotency, &caller.org, &scope, request, || $handler).await
            };
        }
        match operation {
            Op::Charge => once!(self.charge(request, &caller, deadline)),
            Op::ListPayments => self.list_payments(request, &caller).await,
            Op::GetPayment => self.record(&caller, &found, PaymentRecord::to_json).await,
            Op::Refund => {
                let id = path_id(&found)?;
                once!(self.refund(request, &caller, &id, deadline))
            }
            Op::InvoiceLink => self.invoice_link(&caller, &path_id(&found)?).await,
            Op::CreateCustomer => once!(self.create_customer(request, &caller, deadline)),
            Op::ListCustomers => self.list_customers(request, &caller).await,
            Op::GetCustomer => self.record(&caller, &found, CustomerRecord::to_json).await,
            Op::CreateSubscription => once!(self.create_subscription(request, &caller, deadline)),
            Op::ListSubscriptions => self.list_subscriptions(request, &caller).await,
            Op::GetSubscription => {
                self.record(&caller, &found, SubscriptionRecord::to_json)
                    .await
            }
            Op::CancelSubscription => {
                self.cancel_subscription(request, &caller, &path_id(&found)?)
                    .await
            }
            Op::ListInvoices => self.list_invoices(request, &caller).await,
        }
    }

    /// `GET …/{id}` of any payment record.
    async fn record<R: PaymentEntity>(
        &self,
        caller: &Caller,
        found: &RouteMatch,
        to_json: fn(&R) -> Value,
    ) -> Result<Response<Body>, ApiError> {
        let record: R = self.store.get(&caller.org, &path_id(found)?).await?;
        http::json(200, &to_json(&record))
    }

    /// A page of the records of one kind that match `filters` (and `customer_id` when the
    /// query names one), of the caller's organization or the one a superuser names.
    async fn list<R: PaymentEntity>(
        &self,
        caller: &Caller,
        params: &BTreeMap<String, String>,
        mut filters: Vec<(&'static str, String)>,
        to_json: fn(&R) -> Value,
    ) -> Result<Response<Body>, ApiError> {
        if let Some(customer) = params.get("customer_id").or_else(|| params.get("customer")) {
            filters.push(("customer_id", customer.clone()));
        }
        let org = caller.listed_org(params)?;
        let page = PageRequest::from_query(params, org.as_str())?;
        let (records, next) = self.store.list::<R>(&org, &filters, &page).await?;
        let items: Vec<Value> = records.iter().map(to_json).collect();
        http::page(&page, &items, next)
    }

    /// Publishes the audit entry of a change made in this request.
    async fn audit(
        &self,
        request: &Request,
        caller: &Caller,
        action: &str,
        resource: String,
        detail: Value,
    ) {
        let request_id = http::request_id(request);
        self.events
            .audit(caller, &request_id, action, resource, detail)
            .await;
    }

    /// Publishes `Event::delivery` for each payment status change.
    async fn deliveries(&self, applied: &Applied) {
        let events = applied
            .payment_changes
            .iter()
            .map(PaymentChange::delivery)
            .collect();
        self.events.publish(events).await;
    }

    /// Publishes the delivery event of the status `record` has now.
    async fn delivery(&self, record: &PaymentRecord) {
        self.events
            .publish(vec![PaymentChange::of(record).delivery()])
            .await;
    }
}

fn path_id(found: &RouteMatch) -> Result<String, ApiError> {
    let id = found.param("id");
    RecordId::parse(id)
        .map(|_| id.to_owned())
        .ok_or(ApiError::NotFound)
}
