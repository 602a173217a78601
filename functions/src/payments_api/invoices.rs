//! Invoices and receipts: the list of invoices, and a payment's invoice PDF or receipt.

use lambda_http::{Body, Request, Response};
use serde_json::json;

use shared::auth::Caller;
use shared::http::{self, ApiError};
use shared::payments::{InvoiceRecord, PaymentRecord, PaymentStatus, receipt};

use super::PaymentsApi;
use super::checks::status_filter;

const INVOICE_STATUSES: &[&str] = &["draft", "open", "paid", "uncollectible", "void"];

impl PaymentsApi {
    /// A payment's Stripe invoice PDF when it has one, else a signed link to its receipt
    /// (stored in S3 on first ask).
    pub(super) async fn invoice_link(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let payment: PaymentRecord = self.store.get(&caller.org, id).await?;
        if let Some(invoice_id) = &payment.invoice_id
            && let Some(url) = self.invoice_pdf(caller, invoice_id).await?
        {
            return http::json(
                200,
                &json!({"kind": "invoice", "invoice": invoice_id, "url": url}),
            );
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

    /// The invoice's PDF link: as stored, else as Stripe has it (when Stripe is configured).
    async fn invoice_pdf(
        &self,
        caller: &Caller,
        invoice_id: &str,
    ) -> Result<Option<String>, ApiError> {
        let stored = self
            .store
            .find_by_stripe::<InvoiceRecord>(&caller.org, invoice_id)
            .await?;
        if let Some(pdf) = stored.and_then(|i| i.invoice_pdf) {
            return Ok(Some(pdf));
        }
        let configured = self.stripe.get().await.map_err(ApiError::internal)?;
        if configured.is_none() {
            return Ok(None);
        }
        let invoice = self
            .read_stripe(&format!("/v1/invoices/{invoice_id}"), None)
            .await?;
        Ok(invoice["invoice_pdf"].as_str().map(str::to_owned))
    }

    pub(super) async fn list_invoices(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let status = status_filter(
            &params,
            INVOICE_STATUSES,
            "must be draft, open, paid, uncollectible or void",
        )?;
        let filters = status.map(|s| ("status", s.clone())).into_iter().collect();
        self.list(caller, &params, filters, InvoiceRecord::to_json)
            .await
    }
}
