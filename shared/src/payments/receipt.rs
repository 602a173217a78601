//! The receipt Herald renders for a payment that has no Stripe invoice: one A4 page of text
//! in the embedded Unicode font, so names and descriptions in any script print.

use printpdf::{
    Mm, Op, ParsedFont, PdfDocument, PdfFontHandle, PdfPage, PdfSaveOptions, Point, Pt, TextItem,
};

use super::records::PaymentRecord;

/// The receipt's S3 key: `receipts/<org>/<payment id>.pdf`.
pub fn key(payment: &PaymentRecord) -> String {
    format!("receipts/{}/{}.pdf", payment.org_id, payment.id)
}

/// The lines of the receipt, top to bottom (size in points, text).
pub fn lines(payment: &PaymentRecord) -> Vec<(f32, String)> {
    let mut lines = vec![
        (22.0, "Receipt".to_owned()),
        (11.0, format!("Organization: {}", payment.org_id)),
        (11.0, format!("Payment: {}", payment.id)),
        (
            11.0,
            format!("Date: {}", payment.created_at.format("%Y-%m-%d %H:%M UTC")),
        ),
        (11.0, String::new()),
        (
            14.0,
            format!("Amount: {}", payment.currency.format(payment.amount)),
        ),
    ];
    if payment.amount_refunded > 0 {
        lines.push((
            11.0,
            format!(
                "Refunded: {}",
                payment.currency.format(payment.amount_refunded)
            ),
        ));
    }
    lines.push((11.0, format!("Status: {}", payment.status.as_str())));
    if let Some(description) = &payment.description {
        lines.push((11.0, format!("Description: {description}")));
    }
    if let Some(stripe) = &payment.stripe_id {
        lines.push((9.0, format!("Stripe reference: {stripe}")));
    }
    lines
}

/// Renders the receipt PDF.
///
/// # Errors
/// When the embedded font cannot be parsed (a build defect).
pub fn render(payment: &PaymentRecord) -> Result<Vec<u8>, String> {
    let font = ParsedFont::from_bytes(crate::pdf::UNICODE_FONT, 0, &mut Vec::new())
        .ok_or("the embedded font does not parse")?;
    let mut document = PdfDocument::new(&format!("Receipt {}", payment.id));
    let font = document.add_font(&font);
    let mut ops = Vec::new();
    let mut y = 270.0_f32;
    for (size, text) in lines(payment) {
        ops.extend([
            Op::StartTextSection,
            Op::SetTextCursor {
                pos: Point::new(Mm(20.0), Mm(y)),
            },
            Op::SetFont {
                font: PdfFontHandle::External(font.clone()),
                size: Pt(size),
            },
            Op::ShowText {
                items: vec![TextItem::Text(text)],
            },
            Op::EndTextSection,
        ]);
        y -= size * 0.6;
    }
    let bytes = document
        .with_pages(vec![PdfPage::new(Mm(210.0), Mm(297.0), ops)])
        .save(&PdfSaveOptions::default(), &mut Vec::new());
    Ok(bytes)
}

/// How long a receipt link works.
pub const LINK_LIFETIME: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Renders the receipt into `bucket` (server-side encrypted) and returns a presigned GET URL
/// valid for [`LINK_LIFETIME`]. Rendered on every request: a refund changes the receipt.
///
/// # Errors
/// When rendering, the upload or presigning fails.
pub async fn store_and_link(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    payment: &PaymentRecord,
) -> anyhow::Result<String> {
    use anyhow::Context;
    let pdf = render(payment).map_err(anyhow::Error::msg)?;
    let key = key(payment);
    s3.put_object()
        .bucket(bucket)
        .key(&key)
        .body(pdf.into())
        .content_type("application/pdf")
        .content_disposition(format!("inline; filename=\"receipt-{}.pdf\"", payment.id))
        .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256)
        .send()
        .await
        .context("PutObject receipt")?;
    let presigned = s3
        .get_object()
        .bucket(bucket)
        .key(&key)
        .presigned(
            aws_sdk_s3::presigning::PresigningConfig::expires_in(LINK_LIFETIME)
                .context("presigning config")?,
        )
        .await
        .context("presigning the receipt")?;
    Ok(presigned.uri().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrgId;
    use crate::payments::money::Currency;
    use crate::payments::records::PaymentStatus;

    #[test]
    fn renders_a_pdf_with_the_amount() {
        let payment = PaymentRecord {
            id: "01JD5Z3Q0000000000000000AA".into(),
            org_id: OrgId::parse("acme").unwrap(),
            customer_id: None,
            stripe_customer: None,
            stripe_id: Some("pi_1".into()),
            amount: 1999,
            currency: Currency::parse("eur").unwrap(),
            description: Some("Заказ 1042".into()),
            status: PaymentStatus::PartiallyRefunded,
            amount_refunded: 500,
            failure_reason: None,
            invoice_id: None,
            payment_method: None,
            metadata: Default::default(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            state_at: 0,
            state_rank: 0,
            version: 0,
        };
        assert_eq!(
            key(&payment),
            "receipts/acme/01JD5Z3Q0000000000000000AA.pdf"
        );
        let texts: Vec<String> = lines(&payment).into_iter().map(|(_, t)| t).collect();
        assert!(texts.contains(&"Amount: 19.99 EUR".to_owned()));
        assert!(texts.contains(&"Refunded: 5.00 EUR".to_owned()));
        let pdf = render(&payment).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        assert!(pdf.len() > 1000);
    }
}
