//! Charges: `POST /services/payments` (a confirmed PaymentIntent), and the payments list.
//!
//! A charge is recorded `pending` before Stripe is called, so whatever happens next it is
//! findable, and the webhook or the sync can settle it from `metadata[herald_id]`.

use std::collections::BTreeMap;

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use shared::auth::Caller;
use shared::http::idempotency;
use shared::http::{self, ApiError, FieldErrorCollector};
use shared::payments::reconcile::decline_reason;
use shared::payments::{
    Charge, Currency, CustomerRecord, PaymentRecord, PaymentStatus, check_amount, money,
};
use shared::providers::stripe::{Deadline, StripeError};
use shared::store::{StoreError, Updated};

use super::PaymentsApi;
use super::checks::{check_metadata, check_text, check_token, metadata_for};
use super::stripe_calls::{CreateRequest, outcome_unknown};

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

/// The checks that need nothing stored: currency, amount, description, method, metadata.
fn check_fields(body: &ChargeRequest, errors: &mut FieldErrorCollector) -> Option<Currency> {
    let currency = Currency::parse(&body.currency)
        .map_err(|m| errors.add("currency", m))
        .ok();
    if let Some(currency) = &currency
        && let Err(message) = check_amount(body.amount, currency)
    {
        errors.add("amount", message);
    } else if currency.is_none() && !(1..=money::MAX_AMOUNT).contains(&body.amount) {
        errors.add(
            "amount",
            format!(
                "must be a whole number of minor units from 1 to {}",
                money::MAX_AMOUNT
            ),
        );
    }
    check_text(body.description.as_ref(), "description", 1000, errors);
    if let Some(method) = &body.payment_method {
        check_token(method, "payment_method", errors);
    }
    check_metadata(&body.metadata, errors);
    currency
}

/// What a charge sends Stripe, from the record the request named: every attempt sends the
/// same parameters (the body is the same: the create request's content says so).
fn intent_params(record: &PaymentRecord, charge: &Charge, caller: &Caller) -> Value {
    let mut params = json!({
        "amount": record.amount,
        "currency": record.currency.as_str(),
        "customer": record.stripe_customer,
        "payment_method": record.payment_method,
        "confirm": true,
        // Server-side confirmation: no redirect-based methods, which need a return URL;
        // a card's 3-D Secure is still possible (`next_action: use_stripe_sdk`).
        "automatic_payment_methods": {"enabled": true, "allow_redirects": "never"},
        "description": charge.description,
        "metadata": metadata_for(&charge.metadata, caller, &record.id),
    });
    if charge.off_session {
        params["off_session"] = json!(true);
    }
    params
}

/// The answer to a charge: the record, and — for a payment that waits for the customer
/// (3-D Secure) — what Stripe.js needs to finish it: the intent's client secret and its
/// next action. Only in this answer: Stripe asks that the secret not be stored or logged.
fn charge_answer(record: &PaymentRecord, intent: Option<Value>) -> Value {
    let mut answer = record.to_json();
    if let Some(intent) = intent.filter(|_| record.status == PaymentStatus::RequiresAction) {
        answer["client_secret"] = intent["client_secret"].clone();
        if intent["next_action"].is_object() {
            answer["next_action"] = intent["next_action"].clone();
        }
    }
    answer
}

impl PaymentsApi {
    pub(super) async fn charge(
        &self,
        request: &Request,
        caller: &Caller,
        deadline: Deadline,
    ) -> Result<Response<Body>, ApiError> {
        self.stripe().await?;
        let body: ChargeRequest = http::parse_json(request)?;
        let charge = self.checked_charge(body, caller, deadline).await?;
        let create = CreateRequest::of(request, &caller.org, "payment");
        let record = match self
            .claim_create::<PaymentRecord>(caller, "payment", &create)
            .await?
        {
            // A retry of a charge whose outcome is known: answered from the record, never
            // charged again.
            (_, Some(record)) if record.status != PaymentStatus::Pending => {
                return http::json(201, &record.to_json());
            }
            (_, Some(record)) => record,
            (id, None) => self.record_pending(caller, id, &charge).await?,
        };
        let id = record.id.clone();
        let params = intent_params(&record, &charge, caller);
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
        let (status, intent) = self.settle_charge(caller, &id, result).await?;
        let record: PaymentRecord = self.store.get(&caller.org, &id).await?;
        let detail = json!({"amount": record.amount, "currency": record.currency.as_str(), "status": record.status.as_str()});
        self.audit(
            request,
            caller,
            "payment.charge.create",
            format!("payment/{id}"),
            detail,
        )
        .await;
        let response = http::json(status, &charge_answer(&record, intent))?;
        // A pending charge is not kept under its Idempotency-Key: a retry asks Stripe again
        // with the same Stripe key, which settles it either way.
        Ok(if status == 202 {
            idempotency::unsettled(response)
        } else {
            response
        })
    }

    /// The charge a request asks for, every field checked; the customer's default payment
    /// method when it names none (never a made-up method), looked up only for an otherwise
    /// valid request.
    async fn checked_charge(
        &self,
        body: ChargeRequest,
        caller: &Caller,
        deadline: Deadline,
    ) -> Result<Charge, ApiError> {
        let mut errors = FieldErrorCollector::new();
        let currency = check_fields(&body, &mut errors);
        let customer = match &body.customer_id {
            None => None,
            Some(id) => self.customer_named(caller, id, &mut errors).await?,
        };
        let payment_method = match (&body.payment_method, &customer) {
            (Some(method), _) => Some(method.clone()),
            (None, Some(customer)) if errors.is_empty() => {
                self.default_payment_method(customer, deadline).await?
            }
            (None, _) => None,
        };
        if body.off_session && customer.is_none() && !errors.has("customer_id") {
            errors.add(
                "customer_id",
                "is required for an off-session charge (a saved method belongs to a customer)",
            );
        }
        if payment_method.is_none() && !errors.has("customer_id") {
            errors.add(
                "payment_method",
                if customer.is_some() {
                    "is required: the customer has no default payment method"
                } else {
                    "is required unless customer_id names a customer with a default payment method"
                },
            );
        }
        errors.finish()?;
        let (Some(currency), Some(payment_method)) = (currency, payment_method) else {
            return Err(ApiError::internal(anyhow::anyhow!(
                "a checked charge lacks its currency or method"
            )));
        };
        Ok(Charge {
            amount: body.amount,
            currency,
            customer_id: customer.as_ref().map(|c| c.id.clone()),
            stripe_customer: customer.and_then(|c| c.stripe_id),
            payment_method,
            description: body.description,
            metadata: body.metadata,
            off_session: body.off_session,
        })
    }

    /// Records the charge `pending` before Stripe is called, and publishes that.
    async fn record_pending(
        &self,
        caller: &Caller,
        id: String,
        charge: &Charge,
    ) -> Result<PaymentRecord, ApiError> {
        let mut record = PaymentRecord::pending(id, caller.org.clone(), charge, chrono::Utc::now());
        self.store.save(&mut record).await?;
        self.delivery(&record).await;
        Ok(record)
    }

    /// Applies what Stripe answered to payment `id`: the answer's status and, for a charge
    /// that waits for the customer, the intent.
    async fn settle_charge(
        &self,
        caller: &Caller,
        id: &str,
        result: Result<Value, StripeError>,
    ) -> Result<(u16, Option<Value>), ApiError> {
        let intent = match result {
            Ok(intent) => intent,
            Err(StripeError::Card {
                payment_intent: Some(intent),
                ..
            }) => *intent,
            Err(error) if outcome_unknown(&error) => {
                // Stripe may or may not have the intent (an answer Herald cannot read may
                // still be a charge): it stays pending until the webhook or the sync says,
                // and a retry of this request reaches the same intent, never a second one.
                tracing::warn!(
                    payment = id,
                    reason = error.reason(),
                    "Stripe's answer is unknown; payment left pending"
                );
                return Ok((202, None));
            }
            Err(error) => {
                let reason = match &error {
                    StripeError::Card { .. } => error.reason(),
                    _ => decline_reason(&json!({"message": error.reason()})),
                };
                self.fail(caller, id, reason).await?;
                return Ok((201, None));
            }
        };
        let applied = self
            .reconciler
            .apply(&intent, intent["created"].as_i64().unwrap_or(0))
            .await?;
        self.deliveries(&applied).await;
        Ok((201, Some(intent)))
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

    /// Marks a payment Stripe refused as failed (unless something settled it already).
    async fn fail(&self, caller: &Caller, id: &str, reason: String) -> Result<(), ApiError> {
        let updated = self
            .store
            .update(&caller.org, id, None, |payment: &mut PaymentRecord| {
                if payment.status != PaymentStatus::Pending {
                    return false;
                }
                payment.status = PaymentStatus::Failed;
                payment.failure_reason = Some(reason.clone());
                payment.state_rank = PaymentStatus::Failed.rank();
                payment.updated_at = chrono::Utc::now();
                true
            })
            .await;
        match updated {
            Ok(Updated { record, changed }) => {
                if changed {
                    self.delivery(&record).await;
                }
                Ok(())
            }
            Err(StoreError::Conflict(_)) => Err(ApiError::Conflict(
                "the payment kept changing; retry".to_owned(),
            )),
            Err(other) => Err(other.into()),
        }
    }

    pub(super) async fn list_payments(
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
        self.list(caller, &params, filters, PaymentRecord::to_json)
            .await
    }
}
