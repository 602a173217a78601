//! Herald's payment records: customers, subscriptions, payments (PaymentIntents) and
//! invoices, each mirroring one Stripe object for one organization.
//!
//! Every record keeps when Stripe's state it shows was current (`state_at`, unix seconds:
//! an event's `created`, or the moment a sync read the object) and the rank of that state
//! (`state_rank`), so an older or less advanced state never overwrites a newer one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::money::Currency;
use crate::domain::OrgId;

/// A Herald payment's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Recorded, Stripe's answer not yet known.
    Pending,
    RequiresAction,
    Processing,
    Failed,
    Canceled,
    Succeeded,
    PartiallyRefunded,
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::RequiresAction => "requires_action",
            Self::Processing => "processing",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Succeeded => "succeeded",
            Self::PartiallyRefunded => "partially_refunded",
            Self::Refunded => "refunded",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        serde_json::from_value(Value::String(value.to_owned())).ok()
    }

    /// How far along a PaymentIntent is: a tie between two states seen in the same second
    /// goes to the more advanced one.
    pub fn rank(self) -> u32 {
        match self {
            Self::Pending => 0,
            Self::RequiresAction => 1,
            Self::Processing => 2,
            Self::Failed => 3,
            Self::Canceled => 4,
            Self::Succeeded | Self::PartiallyRefunded | Self::Refunded => 5,
        }
    }

    /// The status of a PaymentIntent object.
    pub fn of_intent(intent: &Value) -> Self {
        match intent["status"].as_str().unwrap_or_default() {
            "succeeded" => Self::Succeeded,
            "canceled" => Self::Canceled,
            "processing" | "requires_capture" => Self::Processing,
            "requires_action" => Self::RequiresAction,
            // An off-session charge the bank wants authenticated: the customer can still
            // complete it on session, so it waits for them rather than failing (Stripe:
            // "authentication_required … the card was declined as the transaction requires
            // authentication", docs.stripe.com/declines/codes).
            "requires_payment_method" if requires_authentication(&intent["last_payment_error"]) => {
                Self::RequiresAction
            }
            "requires_payment_method" if intent["last_payment_error"].is_object() => Self::Failed,
            _ => Self::Pending,
        }
    }
}

/// Whether a PaymentIntent's `last_payment_error` asks for the customer's authentication.
pub fn requires_authentication(error: &Value) -> bool {
    error["code"] == "authentication_required" || error["decline_code"] == "authentication_required"
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerRecord {
    pub id: String,
    pub org_id: OrgId,
    pub stripe_id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub state_at: i64,
    #[serde(default)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionItem {
    pub price: String,
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub id: String,
    pub org_id: OrgId,
    /// The Herald customer, when known.
    pub customer_id: Option<String>,
    pub stripe_id: Option<String>,
    pub stripe_customer: Option<String>,
    pub items: Vec<SubscriptionItem>,
    /// Stripe's subscription status (`incomplete`, `active`, `past_due`, `canceled`, …).
    pub status: String,
    pub current_period_end: Option<i64>,
    pub canceled_at: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub state_at: i64,
    #[serde(default)]
    pub state_rank: u32,
    #[serde(default)]
    pub version: u64,
}

/// Rank of a subscription status; `canceled` is final.
pub fn subscription_rank(status: &str) -> u32 {
    match status {
        "incomplete" => 0,
        "trialing" => 1,
        "active" => 2,
        "past_due" => 3,
        "unpaid" | "paused" => 4,
        "incomplete_expired" | "canceled" => 9,
        _ => 0,
    }
}

/// Rank of an invoice status; `paid` and `void` are final.
pub fn invoice_rank(status: &str) -> u32 {
    match status {
        "draft" => 0,
        "open" => 1,
        "uncollectible" => 2,
        "paid" | "void" => 9,
        _ => 0,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub id: String,
    pub org_id: OrgId,
    pub customer_id: Option<String>,
    pub stripe_customer: Option<String>,
    /// The PaymentIntent.
    pub stripe_id: Option<String>,
    pub amount: i64,
    pub currency: Currency,
    pub description: Option<String>,
    pub status: PaymentStatus,
    #[serde(default)]
    pub amount_refunded: i64,
    pub failure_reason: Option<String>,
    /// The Stripe invoice this payment pays, when there is one.
    pub invoice_id: Option<String>,
    /// The payment method Herald asked Stripe to charge (named, or the customer's default
    /// when the charge was made), so a retry of the charge sends Stripe the same request.
    #[serde(default)]
    pub payment_method: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub state_at: i64,
    #[serde(default)]
    pub state_rank: u32,
    #[serde(default)]
    pub version: u64,
}

/// A charge as a request asks for it, checked: what a new payment record starts from and
/// what every attempt at the PaymentIntent sends Stripe.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub amount: i64,
    pub currency: Currency,
    /// The Herald customer and its Stripe customer, when the charge names one.
    pub customer_id: Option<String>,
    pub stripe_customer: Option<String>,
    pub payment_method: String,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Charged while the customer is away (Stripe `off_session`).
    pub off_session: bool,
}

impl PaymentRecord {
    /// The record of `charge`, written before Stripe is called: `pending`, no intent yet.
    pub fn pending(id: String, org_id: OrgId, charge: &Charge, now: DateTime<Utc>) -> Self {
        Self {
            id,
            org_id,
            customer_id: charge.customer_id.clone(),
            stripe_customer: charge.stripe_customer.clone(),
            stripe_id: None,
            amount: charge.amount,
            currency: charge.currency.clone(),
            description: charge.description.clone(),
            status: PaymentStatus::Pending,
            amount_refunded: 0,
            failure_reason: None,
            invoice_id: None,
            payment_method: Some(charge.payment_method.clone()),
            metadata: charge.metadata.clone(),
            created_at: now,
            updated_at: now,
            state_at: 0,
            state_rank: 0,
            version: 0,
        }
    }

    /// The status with refunds laid over the PaymentIntent's own: refunds only grow.
    pub fn settle_status(&mut self, intent_status: PaymentStatus) {
        self.status = if self.amount_refunded > 0
            && matches!(
                intent_status,
                PaymentStatus::Succeeded
                    | PaymentStatus::PartiallyRefunded
                    | PaymentStatus::Refunded
            ) {
            if self.amount_refunded >= self.amount {
                PaymentStatus::Refunded
            } else {
                PaymentStatus::PartiallyRefunded
            }
        } else {
            intent_status
        };
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "customer_id": self.customer_id,
            "stripe_payment_intent": self.stripe_id,
            "amount": self.amount,
            "currency": self.currency.as_str(),
            "zero_decimal": self.currency.is_zero_decimal(),
            "display_amount": self.currency.format(self.amount),
            "description": self.description,
            "status": self.status.as_str(),
            "amount_refunded": self.amount_refunded,
            "failure_reason": self.failure_reason,
            "invoice": self.invoice_id,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceRecord {
    pub id: String,
    pub org_id: OrgId,
    pub stripe_id: String,
    pub stripe_customer: Option<String>,
    pub customer_id: Option<String>,
    pub subscription: Option<String>,
    pub status: String,
    pub amount_due: i64,
    pub amount_paid: i64,
    pub currency: String,
    pub number: Option<String>,
    pub invoice_pdf: Option<String>,
    pub hosted_invoice_url: Option<String>,
    pub payment_intent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub state_at: i64,
    #[serde(default)]
    pub state_rank: u32,
    #[serde(default)]
    pub version: u64,
}

impl CustomerRecord {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "stripe_customer": self.stripe_id, "email": self.email,
            "name": self.name, "description": self.description, "metadata": self.metadata,
            "created_at": self.created_at, "updated_at": self.updated_at,
        })
    }
}

impl SubscriptionRecord {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "customer_id": self.customer_id, "stripe_subscription": self.stripe_id,
            "items": self.items, "status": self.status,
            "current_period_end": self.current_period_end, "canceled_at": self.canceled_at,
            "created_at": self.created_at, "updated_at": self.updated_at,
        })
    }
}

impl InvoiceRecord {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "stripe_invoice": self.stripe_id, "customer_id": self.customer_id,
            "subscription": self.subscription, "status": self.status,
            "amount_due": self.amount_due, "amount_paid": self.amount_paid,
            "currency": self.currency, "number": self.number, "invoice_pdf": self.invoice_pdf,
            "hosted_invoice_url": self.hosted_invoice_url,
            "created_at": self.created_at, "updated_at": self.updated_at,
        })
    }
}

/// Whether a state seen at `at` with `rank` may replace the stored one: newer wins; in the
/// same second the more advanced state wins; a final state (rank 9) is never left.
pub fn supersedes(stored_at: i64, stored_rank: u32, at: i64, rank: u32) -> bool {
    if stored_rank == 9 && rank < 9 {
        return false;
    }
    at > stored_at || (at == stored_at && rank >= stored_rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_or_less_advanced_states_never_win() {
        assert!(supersedes(100, 2, 101, 0));
        assert!(!supersedes(100, 2, 99, 5));
        assert!(supersedes(100, 2, 100, 5));
        assert!(!supersedes(100, 5, 100, 2));
        assert!(!supersedes(100, 9, 200, 2), "canceled stays canceled");
    }

    #[test]
    fn intent_statuses_map_to_payment_statuses() {
        assert_eq!(
            PaymentStatus::of_intent(&json!({"status": "succeeded"})),
            PaymentStatus::Succeeded
        );
        assert_eq!(
            PaymentStatus::of_intent(
                &json!({"status": "requires_payment_method", "last_payment_error": {"code": "card_declined"}})
            ),
            PaymentStatus::Failed
        );
        assert_eq!(
            PaymentStatus::of_intent(&json!({"status": "requires_payment_method"})),
            PaymentStatus::Pending
        );
        assert_eq!(
            PaymentStatus::of_intent(
                &json!({"status": "requires_payment_method", "last_payment_error": {"code": "authentication_required", "decline_code": "authentication_required"}})
            ),
            PaymentStatus::RequiresAction
        );
    }

    #[test]
    fn refunds_lay_over_success() {
        let mut payment = PaymentRecord {
            id: "p".into(),
            org_id: OrgId::parse("acme").unwrap(),
            customer_id: None,
            stripe_customer: None,
            stripe_id: None,
            amount: 1000,
            currency: Currency::parse("usd").unwrap(),
            description: None,
            status: PaymentStatus::Succeeded,
            amount_refunded: 300,
            failure_reason: None,
            invoice_id: None,
            payment_method: None,
            metadata: BTreeMap::new(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            state_at: 0,
            state_rank: 0,
            version: 0,
        };
        payment.settle_status(PaymentStatus::Succeeded);
        assert_eq!(payment.status, PaymentStatus::PartiallyRefunded);
        payment.amount_refunded = 1000;
        payment.settle_status(PaymentStatus::Succeeded);
        assert_eq!(payment.status, PaymentStatus::Refunded);
    }
}
