//! Subscriptions: create (a Stripe subscription of a Herald customer), cancel, list.

use std::collections::BTreeMap;

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use shared::auth::Caller;
use shared::events::{Event, EventKind};
use shared::http::{self, ApiError, FieldErrorCollector};
use shared::payments::{CustomerRecord, SubscriptionRecord};
use shared::providers::stripe::Deadline;
use shared::store::StoreError;

use super::PaymentsApi;
use super::checks::{check_metadata, check_token, metadata_for, status_filter};
use super::stripe_calls::NewStripeObject;

const MAX_ITEMS: usize = 20;
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

/// The `(price, quantity)` items a request names, each checked.
fn checked_items(
    body: &SubscriptionRequest,
    errors: &mut FieldErrorCollector,
) -> Vec<(String, u32)> {
    let items: Vec<(String, u32)> = match (&body.price, &body.items) {
        (Some(price), None) => vec![(price.clone(), 1)],
        (None, Some(items)) if !items.is_empty() && items.len() <= MAX_ITEMS => items
            .iter()
            .map(|i| (i.price.clone(), i.quantity.unwrap_or(1)))
            .collect(),
        (None, Some(_)) => {
            errors.add("items", format!("must hold 1 to {MAX_ITEMS} items"));
            Vec::new()
        }
        _ => {
            errors.add("price", "give either price or items");
            Vec::new()
        }
    };
    for (index, (price, quantity)) in items.iter().enumerate() {
        let field = if body.price.is_some() {
            "price".to_owned()
        } else {
            format!("items[{index}].price")
        };
        check_token(price, &field, errors);
        if !(1..=10_000).contains(quantity) {
            errors.add(format!("items[{index}].quantity"), "must be 1 to 10000");
        }
    }
    items
}

impl PaymentsApi {
    pub(super) async fn create_subscription(
        &self,
        request: &Request,
        caller: &Caller,
        deadline: Deadline,
    ) -> Result<Response<Body>, ApiError> {
        self.stripe().await?;
        let body: SubscriptionRequest = http::parse_json(request)?;
        let mut errors = FieldErrorCollector::new();
        let items = checked_items(&body, &mut errors);
        if let Some(method) = &body.payment_method {
            check_token(method, "payment_method", &mut errors);
        }
        check_metadata(&body.metadata, &mut errors);
        let customer = self
            .customer_named(caller, &body.customer_id, &mut errors)
            .await?;
        errors.finish()?;
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

    /// The customer `id` names in the caller's organization; `customer_id` is noted as a
    /// field error when there is none.
    pub(super) async fn customer_named(
        &self,
        caller: &Caller,
        id: &str,
        errors: &mut FieldErrorCollector,
    ) -> Result<Option<CustomerRecord>, ApiError> {
        match self.store.get::<CustomerRecord>(&caller.org, id).await {
            Ok(customer) => Ok(Some(customer)),
            Err(StoreError::NotFound) => {
                errors.add("customer_id", "no such customer");
                Ok(None)
            }
            Err(other) => Err(other.into()),
        }
    }

    pub(super) async fn cancel_subscription(
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
            .map_err(ApiError::from)?;
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
        let resource = format!("subscription/{id}");
        self.audit(
            request,
            caller,
            "payment.subscription.cancel",
            resource,
            Value::Null,
        )
        .await;
        http::json(200, &record.to_json())
    }

    pub(super) async fn list_subscriptions(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let status = status_filter(
            &params,
            SUBSCRIPTION_STATUSES,
            "is not a subscription status",
        )?;
        let filters = status.map(|s| ("status", s.clone())).into_iter().collect();
        self.list(caller, &params, filters, SubscriptionRecord::to_json)
            .await
    }
}
