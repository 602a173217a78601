//! Applies Stripe objects to Herald's records: what the webhook does with an event's object
//! and what the daily sync does with every object it lists.
//!
//! The organization comes from `metadata.org_id` on the object (for a subscription's
//! invoice, from the subscription's metadata Stripe copies into `subscription_details`, or
//! `parent.subscription_details` in newer API versions). A charge Stripe made for a
//! subscription invoice has no metadata: it belongs to the organization of the customer
//! Herald knows it by, else of the payment Herald recorded for its PaymentIntent. Other
//! objects without one are not Herald's and are skipped. The record is the one named by
//! `metadata.herald_id`, else the one already mirroring the Stripe id, else a new one whose
//! id is derived from the object (its creation time and Stripe id), so importing the same
//! object twice makes one record.
//!
//! A state is applied only when it [`supersedes`] the stored one, so a late or replayed
//! older event never overwrites newer state; refunded amounts only grow.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::money::Currency;
use super::records::{
    CustomerRecord, InvoiceRecord, PaymentRecord, PaymentStatus, SubscriptionItem,
    SubscriptionRecord, invoice_rank, subscription_rank, supersedes,
};
use crate::domain::{OrgId, RecordId};
use crate::providers::stripe::StripeEvent;
use crate::store::{PaymentEntity, PaymentStore, StoreError};

/// The Stripe event types whose object the reconciler applies, from the webhook and from
/// the sync's read of the Events API; others are logged and acknowledged. At most 20, the
/// most `GET /v1/events` takes in `types[]` (docs.stripe.com/api/events/list).
pub const HANDLED_EVENTS: &[&str] = &[
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.processing",
    "payment_intent.canceled",
    "payment_intent.requires_action",
    "charge.refunded",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.finalized",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.created",
    "customer.updated",
];

/// Attempts at a read-modify-write that lost a race.
const ATTEMPTS: usize = 4;

/// A payment whose status changed (for `Event::delivery`).
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentChange {
    pub org: OrgId,
    pub id: String,
    pub status: PaymentStatus,
    pub amount: i64,
    pub currency: String,
}

impl PaymentChange {
    /// The change that left `record` as it is.
    pub fn of(record: &PaymentRecord) -> Self {
        Self {
            org: record.org_id.clone(),
            id: record.id.clone(),
            status: record.status,
            amount: record.amount,
            currency: record.currency.as_str().to_owned(),
        }
    }

    /// The delivery event (audit trail and analytics) of this change.
    pub fn delivery(&self) -> crate::events::Event {
        crate::events::Event::delivery(
            &self.org,
            "payment",
            format!("payment/{}", self.id),
            self.status.as_str(),
        )
        .with_detail(serde_json::json!({"amount": self.amount, "currency": self.currency}))
    }
}

/// What applying one object did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The organization and record the object maps to, when it is Herald's.
    pub target: Option<(OrgId, String)>,
    /// Whether a record changed (false: the object was older than what is stored).
    pub changed: bool,
    pub payment_changes: Vec<PaymentChange>,
    /// Why nothing was applied, when nothing was.
    pub skipped: Option<&'static str>,
}

impl Applied {
    fn skipped(reason: &'static str) -> Self {
        Self {
            skipped: Some(reason),
            ..Self::default()
        }
    }
}

/// What [`Reconciler::apply_event`] did with an event.
#[derive(Debug, Clone, PartialEq)]
pub enum EventApplied {
    /// Applied before (a redelivery, or the sync and the webhook both had it).
    Duplicate,
    /// A type Herald does not act on.
    NotHandled,
    Applied(Applied),
}

/// The organization an object belongs to, from its metadata.
pub fn org_of(object: &Value) -> Option<OrgId> {
    [
        &object["metadata"]["org_id"],
        &object["subscription_details"]["metadata"]["org_id"],
        &object["parent"]["subscription_details"]["metadata"]["org_id"],
    ]
    .into_iter()
    .find_map(|v| v.as_str())
    .and_then(|org| OrgId::parse(org).ok())
}

/// The PaymentIntent that paid an invoice, in either shape Herald can receive: the
/// invoice's `payment_intent` (API versions up to 2025-02-24.acacia, Herald's pinned
/// 2024-06-20 among them), or, from 2025-03-31.basil on, its `payments` list of
/// `invoice_payment`s (`payment.type` = `payment_intent`), the paid one first.
pub fn invoice_intent(invoice: &Value) -> Option<String> {
    if let Some(intent) = id_of(&invoice["payment_intent"]) {
        return Some(intent);
    }
    let payments = invoice["payments"]["data"].as_array()?;
    let intent_of = |payment: &&Value| {
        (payment["payment"]["type"] == "payment_intent")
            .then(|| id_of(&payment["payment"]["payment_intent"]))
            .flatten()
    };
    payments
        .iter()
        .filter(|p| p["status"] == "paid")
        .find_map(|p| intent_of(&p))
        .or_else(|| payments.iter().find_map(|p| intent_of(&p)))
}

/// An invoice's subscription: `subscription`, or `parent.subscription_details.subscription`
/// from 2025-03-31.basil on.
fn invoice_subscription(invoice: &Value) -> Option<String> {
    id_of(&invoice["subscription"])
        .or_else(|| id_of(&invoice["parent"]["subscription_details"]["subscription"]))
}

/// A record id for an object Herald did not create: sorted by the object's creation time,
/// the same for the same Stripe id.
pub fn derived_id(created: i64, stripe_id: &str) -> String {
    let digest = Sha256::digest(stripe_id.as_bytes());
    let mut random = [0u8; 16];
    random.copy_from_slice(&digest[..16]);
    let millis = u64::try_from(created.max(0)).unwrap_or(0) * 1000;
    ulid::Ulid::from_parts(millis, u128::from_be_bytes(random)).to_string()
}

fn text(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

/// An id field that may be expanded into an object.
fn id_of(value: &Value) -> Option<String> {
    text(value).or_else(|| text(&value["id"]))
}

fn time_of(seconds: &Value) -> DateTime<Utc> {
    seconds
        .as_i64()
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .unwrap_or_else(Utc::now)
}

/// `metadata` without Herald's own keys.
pub fn user_metadata(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| *k != "org_id" && *k != "herald_id")
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct Reconciler {
    store: PaymentStore,
}

impl Reconciler {
    pub fn new(store: PaymentStore) -> Self {
        Self { store }
    }

    /// Applies one Stripe event, from the webhook or the sync's read of the Events API:
    /// once per event id, and only types in [`HANDLED_EVENTS`]. The effect first, then the
    /// mark: a crash in between leaves the event unmarked, and applying the same state
    /// again changes nothing.
    ///
    /// # Errors
    /// Storage failures (the webhook answers 5xx so Stripe retries; the sync stops and
    /// resumes from its checkpoint).
    pub async fn apply_event(&self, event: &StripeEvent) -> Result<EventApplied, StoreError> {
        if self.store.event_seen(&event.id).await? {
            return Ok(EventApplied::Duplicate);
        }
        if !HANDLED_EVENTS.contains(&event.kind.as_str()) {
            return Ok(EventApplied::NotHandled);
        }
        let applied = self.apply(&event.data.object, event.created).await?;
        self.store
            .mark_event(&event.id, &event.kind, Utc::now())
            .await?;
        Ok(EventApplied::Applied(applied))
    }

    /// Applies `object` as Stripe's state at `at` (unix seconds).
    ///
    /// # Errors
    /// Storage failures (the caller answers 5xx so Stripe retries).
    pub async fn apply(&self, object: &Value, at: i64) -> Result<Applied, StoreError> {
        let kind = object["object"].as_str().unwrap_or_default();
        let org = match org_of(object) {
            Some(org) => Some(org),
            None if kind == "charge" => self.org_of_charge(object).await?,
            None => None,
        };
        let Some(org) = org else {
            return Ok(Applied::skipped("no metadata.org_id"));
        };
        let Some(stripe_id) = text(&object["id"]) else {
            return Ok(Applied::skipped("no object id"));
        };
        for attempt in 1..=ATTEMPTS {
            let result = match kind {
                "customer" => self.customer(&org, &stripe_id, object, at).await,
                "subscription" => self.subscription(&org, &stripe_id, object, at).await,
                "payment_intent" => self.payment_intent(&org, &stripe_id, object, at).await,
                "charge" => self.charge(&org, object).await,
                "invoice" => self.invoice(&org, &stripe_id, object, at).await,
                _ => return Ok(Applied::skipped("not an object Herald mirrors")),
            };
            match result {
                Err(StoreError::Conflict(_)) if attempt < ATTEMPTS => {}
                other => return other,
            }
        }
        Err(StoreError::Conflict("record kept changing".to_owned()))
    }

    /// The organization of a charge without `metadata.org_id` (a subscription invoice's):
    /// that of the customer Herald mirrors for its `customer`, else that of the payment
    /// Herald recorded for its `payment_intent` (the invoice's payment).
    async fn org_of_charge(&self, object: &Value) -> Result<Option<OrgId>, StoreError> {
        if let Some(customer) = id_of(&object["customer"])
            && let Some(org) = self
                .store
                .org_by_stripe::<CustomerRecord>(&customer)
                .await?
        {
            return Ok(Some(org));
        }
        match id_of(&object["payment_intent"]) {
            Some(intent) => self.store.org_by_stripe::<PaymentRecord>(&intent).await,
            None => Ok(None),
        }
    }

    /// The existing record for an object, by Herald id or Stripe id.
    async fn existing<T: PaymentEntity>(
        &self,
        org: &OrgId,
        stripe_id: &str,
        object: &Value,
    ) -> Result<Option<T>, StoreError> {
        if let Some(id) = object["metadata"]["herald_id"]
            .as_str()
            .filter(|id| RecordId::parse(id).is_some())
        {
            match self.store.get::<T>(org, id).await {
                Ok(record) => return Ok(Some(record)),
                Err(StoreError::NotFound) => {}
                Err(other) => return Err(other),
            }
        }
        self.store.find_by_stripe::<T>(org, stripe_id).await
    }

    /// The id a new record for `object` gets.
    fn new_id(object: &Value, stripe_id: &str) -> String {
        object["metadata"]["herald_id"]
            .as_str()
            .filter(|id| RecordId::parse(id).is_some())
            .map_or_else(
                || derived_id(object["created"].as_i64().unwrap_or(0), stripe_id),
                str::to_owned,
            )
    }

    async fn herald_customer(
        &self,
        org: &OrgId,
        object: &Value,
    ) -> Result<Option<String>, StoreError> {
        let Some(customer) = id_of(&object["customer"]) else {
            return Ok(None);
        };
        Ok(self
            .store
            .find_by_stripe::<CustomerRecord>(org, &customer)
            .await?
            .map(|c| c.id))
    }

    async fn customer(
        &self,
        org: &OrgId,
        stripe_id: &str,
        object: &Value,
        at: i64,
    ) -> Result<Applied, StoreError> {
        let now = Utc::now();
        let mut record = match self
            .existing::<CustomerRecord>(org, stripe_id, object)
            .await?
        {
            Some(record) if at < record.state_at => return Ok(Self::unchanged(org, &record.id)),
            Some(record) => record,
            None => CustomerRecord {
                id: Self::new_id(object, stripe_id),
                org_id: org.clone(),
                stripe_id: None,
                email: None,
                name: None,
                description: None,
                metadata: BTreeMap::new(),
                created_at: time_of(&object["created"]),
                updated_at: now,
                state_at: 0,
                version: 0,
            },
        };
        record.stripe_id = Some(stripe_id.to_owned());
        record.email = text(&object["email"]);
        record.name = text(&object["name"]);
        record.description = text(&object["description"]);
        record.metadata = user_metadata(object);
        record.state_at = at;
        record.updated_at = now;
        self.store.save(&mut record).await?;
        Ok(Self::changed(org, &record.id))
    }

    async fn subscription(
        &self,
        org: &OrgId,
        stripe_id: &str,
        object: &Value,
        at: i64,
    ) -> Result<Applied, StoreError> {
        let status = text(&object["status"]).unwrap_or_else(|| "incomplete".to_owned());
        let rank = subscription_rank(&status);
        let now = Utc::now();
        let mut record = match self
            .existing::<SubscriptionRecord>(org, stripe_id, object)
            .await?
        {
            Some(record) if !supersedes(record.state_at, record.state_rank, at, rank) => {
                return Ok(Self::unchanged(org, &record.id));
            }
            Some(record) => record,
            None => SubscriptionRecord {
                id: Self::new_id(object, stripe_id),
                org_id: org.clone(),
                customer_id: None,
                stripe_id: Some(stripe_id.to_owned()),
                stripe_customer: None,
                items: Vec::new(),
                status: status.clone(),
                current_period_end: None,
                canceled_at: None,
                created_at: time_of(&object["created"]),
                updated_at: now,
                state_at: 0,
                state_rank: 0,
                version: 0,
            },
        };
        if record.customer_id.is_none() {
            record.customer_id = self.herald_customer(org, object).await?;
        }
        record.stripe_id = Some(stripe_id.to_owned());
        record.stripe_customer = id_of(&object["customer"]);
        if let Some(items) = object["items"]["data"].as_array() {
            record.items = items
                .iter()
                .filter_map(|item| {
                    Some(SubscriptionItem {
                        price: id_of(&item["price"])?,
                        quantity: u32::try_from(item["quantity"].as_u64().unwrap_or(1))
                            .unwrap_or(1),
                    })
                })
                .collect();
        }
        record.status = status;
        record.current_period_end = object["current_period_end"].as_i64();
        record.canceled_at = object["canceled_at"].as_i64();
        record.state_at = at;
        record.state_rank = rank;
        record.updated_at = now;
        self.store.save(&mut record).await?;
        Ok(Self::changed(org, &record.id))
    }

    async fn payment_intent(
        &self,
        org: &OrgId,
        stripe_id: &str,
        object: &Value,
        at: i64,
    ) -> Result<Applied, StoreError> {
        let intent_status = PaymentStatus::of_intent(object);
        let now = Utc::now();
        let Ok(currency) = Currency::parse(object["currency"].as_str().unwrap_or_default()) else {
            return Ok(Applied::skipped("payment intent without a known currency"));
        };
        let mut record = match self
            .existing::<PaymentRecord>(org, stripe_id, object)
            .await?
        {
            Some(record)
                if !supersedes(record.state_at, record.state_rank, at, intent_status.rank()) =>
            {
                return Ok(Self::unchanged(org, &record.id));
            }
            Some(record) => record,
            None => PaymentRecord {
                id: Self::new_id(object, stripe_id),
                org_id: org.clone(),
                customer_id: None,
                stripe_customer: None,
                stripe_id: Some(stripe_id.to_owned()),
                amount: object["amount"].as_i64().unwrap_or(0),
                currency: currency.clone(),
                description: text(&object["description"]),
                status: PaymentStatus::Pending,
                amount_refunded: 0,
                failure_reason: None,
                invoice_id: None,
                payment_method: id_of(&object["payment_method"]),
                metadata: user_metadata(object),
                created_at: time_of(&object["created"]),
                updated_at: now,
                state_at: 0,
                state_rank: 0,
                version: 0,
            },
        };
        let before = record.status;
        if record.customer_id.is_none() {
            record.customer_id = self.herald_customer(org, object).await?;
        }
        record.stripe_id = Some(stripe_id.to_owned());
        record.stripe_customer = id_of(&object["customer"]);
        record.amount = object["amount"].as_i64().unwrap_or(record.amount);
        record.currency = currency;
        if let Some(invoice) = id_of(&object["invoice"]) {
            record.invoice_id = Some(invoice);
        }
        // A failure, or an authentication the customer still owes (off-session
        // `authentication_required`), keeps Stripe's code so the product can act on it.
        record.failure_reason = match intent_status {
            PaymentStatus::Failed | PaymentStatus::RequiresAction
                if object["last_payment_error"].is_object() =>
            {
                Some(decline_reason(&object["last_payment_error"]))
            }
            _ => None,
        };
        record.settle_status(intent_status);
        record.state_at = at;
        record.state_rank = intent_status.rank();
        record.updated_at = now;
        self.store.save(&mut record).await?;
        Ok(Self::with_change(org, &record, before))
    }

    async fn charge(&self, org: &OrgId, object: &Value) -> Result<Applied, StoreError> {
        let Some(intent) = id_of(&object["payment_intent"]) else {
            return Ok(Applied::skipped("charge without a payment intent"));
        };
        let Some(mut record) = self.existing::<PaymentRecord>(org, &intent, object).await? else {
            return Ok(Applied::skipped("charge of a payment Herald does not know"));
        };
        let refunded = object["amount_refunded"].as_i64().unwrap_or(0);
        if refunded <= record.amount_refunded {
            return Ok(Self::unchanged(org, &record.id));
        }
        let before = record.status;
        record.amount_refunded = refunded.min(record.amount);
        // A refunded charge succeeded, whatever event about it is still on its way.
        record.settle_status(PaymentStatus::Succeeded);
        record.state_rank = record.state_rank.max(PaymentStatus::Succeeded.rank());
        record.updated_at = Utc::now();
        self.store.save(&mut record).await?;
        Ok(Self::with_change(org, &record, before))
    }

    /// An invoice, and a paid invoice's payment. The payment is written first: whoever sees
    /// a paid invoice also sees its payment, and if the invoice write then fails, the
    /// redelivery finds the payment instead of a paid invoice it would skip as already
    /// applied. The retries on a lost race stay here so that the payment this delivery
    /// recorded is still reported when a concurrent delivery wins the invoice write.
    async fn invoice(
        &self,
        org: &OrgId,
        stripe_id: &str,
        object: &Value,
        at: i64,
    ) -> Result<Applied, StoreError> {
        let status = text(&object["status"]).unwrap_or_else(|| "draft".to_owned());
        let rank = invoice_rank(&status);
        let mut payment_changes: Option<Vec<PaymentChange>> = None;
        for _ in 0..ATTEMPTS {
            let now = Utc::now();
            let mut record = match self
                .existing::<InvoiceRecord>(org, stripe_id, object)
                .await?
            {
                Some(record) if !supersedes(record.state_at, record.state_rank, at, rank) => {
                    return Ok(Applied {
                        payment_changes: payment_changes.unwrap_or_default(),
                        ..Self::unchanged(org, &record.id)
                    });
                }
                Some(record) => record,
                None => InvoiceRecord {
                    id: Self::new_id(object, stripe_id),
                    org_id: org.clone(),
                    stripe_id: stripe_id.to_owned(),
                    stripe_customer: None,
                    customer_id: None,
                    subscription: None,
                    status: status.clone(),
                    amount_due: 0,
                    amount_paid: 0,
                    currency: String::new(),
                    number: None,
                    invoice_pdf: None,
                    hosted_invoice_url: None,
                    payment_intent: None,
                    created_at: time_of(&object["created"]),
                    updated_at: now,
                    state_at: 0,
                    state_rank: 0,
                    version: 0,
                },
            };
            if record.customer_id.is_none() {
                record.customer_id = self.herald_customer(org, object).await?;
            }
            record.stripe_customer = id_of(&object["customer"]);
            record.subscription = invoice_subscription(object);
            record.status = status.clone();
            record.amount_due = object["amount_due"].as_i64().unwrap_or(0);
            record.amount_paid = object["amount_paid"].as_i64().unwrap_or(0);
            record.currency = text(&object["currency"]).unwrap_or_default();
            record.number = text(&object["number"]);
            record.invoice_pdf = text(&object["invoice_pdf"]);
            record.hosted_invoice_url = text(&object["hosted_invoice_url"]);
            record.payment_intent = invoice_intent(object);
            record.state_at = at;
            record.state_rank = rank;
            record.updated_at = now;
            if payment_changes.is_none()
                && status == "paid"
                && let Some(intent) = &record.payment_intent
            {
                payment_changes = Some(self.invoice_payment(&record, intent, object, at).await?);
            }
            match self.store.save(&mut record).await {
                Ok(()) => {
                    return Ok(Applied {
                        payment_changes: payment_changes.unwrap_or_default(),
                        ..Self::changed(org, &record.id)
                    });
                }
                Err(StoreError::Conflict(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Err(StoreError::Conflict("the invoice kept changing".to_owned()))
    }

    /// A paid invoice's payment: linked to the payment Herald has for its PaymentIntent, or
    /// recorded as a payment of its own (subscription renewals charge without Herald).
    async fn invoice_payment(
        &self,
        invoice: &InvoiceRecord,
        intent: &str,
        object: &Value,
        at: i64,
    ) -> Result<Vec<PaymentChange>, StoreError> {
        let org = &invoice.org_id;
        if let Some(mut payment) = self
            .store
            .find_by_stripe::<PaymentRecord>(org, intent)
            .await?
        {
            if payment.invoice_id.as_deref() != Some(invoice.stripe_id.as_str()) {
                payment.invoice_id = Some(invoice.stripe_id.clone());
                payment.updated_at = Utc::now();
                self.store.save(&mut payment).await?;
            }
            return Ok(Vec::new());
        }
        let Ok(currency) = Currency::parse(&invoice.currency) else {
            return Ok(Vec::new());
        };
        let mut payment = PaymentRecord {
            id: derived_id(object["created"].as_i64().unwrap_or(0), intent),
            org_id: org.clone(),
            customer_id: invoice.customer_id.clone(),
            stripe_customer: invoice.stripe_customer.clone(),
            stripe_id: Some(intent.to_owned()),
            amount: invoice.amount_paid,
            currency,
            description: invoice.number.as_ref().map(|n| format!("Invoice {n}")),
            status: PaymentStatus::Succeeded,
            amount_refunded: 0,
            failure_reason: None,
            invoice_id: Some(invoice.stripe_id.clone()),
            payment_method: None,
            metadata: BTreeMap::new(),
            created_at: invoice.created_at,
            updated_at: Utc::now(),
            state_at: at,
            state_rank: PaymentStatus::Succeeded.rank(),
            version: 0,
        };
        match self.store.save(&mut payment).await {
            Ok(()) => Ok(vec![PaymentChange {
                org: org.clone(),
                id: payment.id.clone(),
                status: payment.status,
                amount: payment.amount,
                currency: payment.currency.as_str().to_owned(),
            }]),
            // Recorded by a concurrent delivery of the same invoice.
            Err(StoreError::Conflict(_)) => Ok(Vec::new()),
            Err(other) => Err(other),
        }
    }

    fn unchanged(org: &OrgId, id: &str) -> Applied {
        Applied {
            target: Some((org.clone(), id.to_owned())),
            ..Applied::default()
        }
    }

    fn changed(org: &OrgId, id: &str) -> Applied {
        Applied {
            target: Some((org.clone(), id.to_owned())),
            changed: true,
            ..Applied::default()
        }
    }

    fn with_change(org: &OrgId, record: &PaymentRecord, before: PaymentStatus) -> Applied {
        let mut applied = Self::changed(org, &record.id);
        if record.status != before {
            applied.payment_changes.push(PaymentChange {
                org: org.clone(),
                id: record.id.clone(),
                status: record.status,
                amount: record.amount,
                currency: record.currency.as_str().to_owned(),
            });
        }
        applied
    }
}

/// `decline_code: message` of a `last_payment_error`.
pub fn decline_reason(error: &Value) -> String {
    let message = error["message"].as_str().unwrap_or("the payment failed");
    match error["decline_code"]
        .as_str()
        .or_else(|| error["code"].as_str())
    {
        Some(code) => format!("{code}: {message}"),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn organizations_come_from_metadata_only() {
        assert_eq!(
            org_of(&json!({"metadata": {"org_id": "acme"}}))
                .unwrap()
                .as_str(),
            "acme"
        );
        assert_eq!(
            org_of(
                &json!({"metadata": {}, "subscription_details": {"metadata": {"org_id": "globex"}}})
            )
            .unwrap()
            .as_str(),
            "globex"
        );
        assert!(org_of(&json!({"metadata": {}})).is_none());
        assert!(org_of(&json!({"metadata": {"org_id": "a#b"}})).is_none());
    }

    #[test]
    fn an_invoice_names_its_payment_intent_in_either_api_shape() {
        assert_eq!(
            invoice_intent(&json!({"payment_intent": "pi_old"})).as_deref(),
            Some("pi_old")
        );
        assert_eq!(
            invoice_intent(&json!({"payment_intent": {"id": "pi_expanded"}})).as_deref(),
            Some("pi_expanded")
        );
        let basil = json!({"payments": {"object": "list", "data": [
            {"status": "canceled", "payment": {"type": "payment_intent", "payment_intent": "pi_first"}},
            {"status": "paid", "payment": {"type": "payment_intent", "payment_intent": {"id": "pi_paid"}}},
        ]}, "parent": {"subscription_details": {"subscription": "sub_1"}}});
        assert_eq!(invoice_intent(&basil).as_deref(), Some("pi_paid"));
        assert_eq!(invoice_subscription(&basil).as_deref(), Some("sub_1"));
        let open = json!({"payments": {"data": [
            {"status": "open", "payment": {"type": "payment_intent", "payment_intent": "pi_open"}},
        ]}});
        assert_eq!(invoice_intent(&open).as_deref(), Some("pi_open"));
        assert_eq!(invoice_intent(&json!({"payments": {"data": []}})), None);
        assert_eq!(
            invoice_subscription(&json!({"subscription": "sub_old"})).as_deref(),
            Some("sub_old")
        );
    }

    #[test]
    fn derived_ids_are_stable_and_time_ordered() {
        let a = derived_id(1_700_000_000, "pi_1");
        assert_eq!(a, derived_id(1_700_000_000, "pi_1"));
        assert_ne!(a, derived_id(1_700_000_000, "pi_2"));
        assert!(RecordId::parse(&a).is_some());
        assert!(derived_id(1_700_000_001, "pi_0") > derived_id(1_700_000_000, "pi_z"));
    }
}
