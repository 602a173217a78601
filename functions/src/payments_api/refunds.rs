//! Refunds: `POST /services/payments/{id}/refund`, in full or in part.

use std::collections::BTreeMap;

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use shared::auth::Caller;
use shared::http::{self, ApiError};
use shared::payments::{PaymentRecord, PaymentStatus};
use shared::providers::stripe::Deadline;
use shared::store::{StoreError, Updated};

use super::PaymentsApi;
use super::checks::metadata_for;

const REFUND_REASONS: &[&str] = &["duplicate", "fraudulent", "requested_by_customer"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundRequest {
    amount: Option<i64>,
    reason: Option<String>,
}

/// A refund of `payment` as the request asks for it, checked: the amount (all that is
/// left unless it names less) and the reason.
fn checked_refund(
    body: RefundRequest,
    payment: &PaymentRecord,
) -> Result<(i64, Option<String>), ApiError> {
    if !matches!(
        payment.status,
        PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded
    ) {
        return Err(ApiError::Conflict(format!(
            "only a succeeded payment can be refunded; this one is {}",
            payment.status.as_str()
        )));
    }
    let remaining = payment.amount - payment.amount_refunded;
    let amount = body.amount.unwrap_or(remaining);
    if !(1..=remaining).contains(&amount) {
        return Err(ApiError::field(
            "amount",
            format!("must be 1 to {remaining}, the amount not yet refunded"),
        ));
    }
    if let Some(reason) = &body.reason
        && !REFUND_REASONS.contains(&reason.as_str())
    {
        return Err(ApiError::field(
            "reason",
            "must be duplicate, fraudulent or requested_by_customer",
        ));
    }
    Ok((amount, body.reason))
}

impl PaymentsApi {
    pub(super) async fn refund(
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
        let payment: PaymentRecord = self.store.get(&caller.org, id).await?;
        self.stripe().await?;
        let (amount, reason) = checked_refund(body, &payment)?;
        let Some(intent) = &payment.stripe_id else {
            return Err(ApiError::Conflict(
                "the payment has no Stripe payment intent".to_owned(),
            ));
        };
        let params = json!({
            "payment_intent": intent,
            "amount": amount,
            "reason": reason,
            "metadata": metadata_for(&BTreeMap::new(), caller, id),
        });
        // The key names the refund by what was refunded before it: retrying this refund
        // replays it, a later refund of the same amount is a new one.
        let key = format!("herald-refund-{id}-{}-{amount}", payment.amount_refunded);
        let refund = self
            .call_stripe(
                caller,
                "refund.create",
                "/v1/refunds",
                &params,
                &key,
                deadline,
            )
            .await?;
        if refund["status"] == "failed" || refund["status"] == "canceled" {
            return Err(ApiError::Unprocessable(format!(
                "Stripe did not refund: {}",
                refund["failure_reason"]
            )));
        }
        let total = payment.amount_refunded + amount;
        let updated = self.record_refund(caller, payment, total).await?;
        let detail = json!({"amount": amount, "refund": refund["id"]});
        self.audit(
            request,
            caller,
            "payment.refund",
            format!("payment/{id}"),
            detail,
        )
        .await;
        let mut answer = updated.to_json();
        answer["refund"] = refund_json(&refund, amount);
        http::json(200, &answer)
    }

    /// Records that `total` of `payment` (as read for this refund) is refunded — the webhook
    /// may have got there first — and publishes its delivery when that changes its status.
    async fn record_refund(
        &self,
        caller: &Caller,
        payment: PaymentRecord,
        total: i64,
    ) -> Result<PaymentRecord, ApiError> {
        let id = payment.id.clone();
        let mut before = None;
        let updated = self
            .store
            .update(
                &caller.org,
                &id,
                Some(payment),
                |payment: &mut PaymentRecord| {
                    before = Some(payment.status);
                    if payment.amount_refunded >= total {
                        return false;
                    }
                    payment.amount_refunded = total.min(payment.amount);
                    payment.settle_status(PaymentStatus::Succeeded);
                    payment.updated_at = chrono::Utc::now();
                    true
                },
            )
            .await;
        match updated {
            Ok(Updated { record, changed }) => {
                if changed && before != Some(record.status) {
                    self.delivery(&record).await;
                }
                Ok(record)
            }
            // Stripe has refunded: the answer says so, and the webhook settles the record.
            Err(StoreError::Conflict(_)) => Ok(self.store.get(&caller.org, &id).await?),
            Err(other) => Err(other.into()),
        }
    }
}

fn refund_json(refund: &Value, amount: i64) -> Value {
    json!({"id": refund["id"], "amount": amount, "status": refund["status"]})
}
