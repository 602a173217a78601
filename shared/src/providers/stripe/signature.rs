//! Stripe webhook signatures: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]`,
//! where each `v1` is HMAC-SHA256 over `"{t}.{raw body}"` keyed with an endpoint secret.
//! Any `v1` matching any configured secret passes (several secrets live side by side while
//! one is rotated out); the timestamp must be within the tolerance of now.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "stripe-signature";
/// Stripe's own libraries default to five minutes.
pub const DEFAULT_TOLERANCE: chrono::Duration = chrono::Duration::seconds(300);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    #[error("the signature timestamp is outside the tolerance")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

/// Verifies signatures against every configured endpoint secret.
pub struct WebhookVerifier {
    secrets: Vec<SecretString>,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookVerifier({} secrets)", self.secrets.len())
    }
}

impl WebhookVerifier {
    /// From `STRIPE_WEBHOOK_SECRETS`: comma-separated `whsec_…` values. `None` when empty.
    pub fn from_list(list: &str) -> Option<Self> {
        let secrets: Vec<SecretString> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| SecretString::from(s.to_owned()))
            .collect();
        (!secrets.is_empty()).then_some(Self { secrets })
    }

    /// # Errors
    /// Why the request is not Stripe's.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: DateTime<Utc>,
        tolerance: chrono::Duration,
    ) -> Result<(), SignatureError> {
        let header = header
            .filter(|h| !h.trim().is_empty())
            .ok_or(SignatureError::Missing)?;
        let mut timestamp = None;
        let mut candidates = Vec::new();
        for part in header.split(',') {
            let (name, value) = part
                .trim()
                .split_once('=')
                .ok_or(SignatureError::Malformed)?;
            match name {
                "t" => {
                    timestamp = Some(
                        value
                            .parse::<i64>()
                            .map_err(|_| SignatureError::Malformed)?,
                    )
                }
                "v1" => candidates.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?),
                // v0 (test-mode legacy) and future schemes are ignored, as Stripe advises.
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
        if candidates.is_empty() {
            return Err(SignatureError::Malformed);
        }
        if (now.timestamp() - timestamp).abs() > tolerance.num_seconds() {
            return Err(SignatureError::Stale);
        }
        for secret in &self.secrets {
            for candidate in &candidates {
                // `verify_slice` compares in constant time.
                if mac(secret.expose_secret(), timestamp, body)
                    .verify_slice(candidate)
                    .is_ok()
                {
                    return Ok(());
                }
            }
        }
        Err(SignatureError::Mismatch)
    }
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Stripe-Signature` header Stripe would send for `body` at `timestamp` (for the local
/// sandbox and tests).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let signature = hex::encode(mac(secret, timestamp, body).finalize().into_bytes());
    format!("t={timestamp},v1={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;

    fn verifier(list: &str) -> WebhookVerifier {
        WebhookVerifier::from_list(list).unwrap()
    }

    #[test]
    fn a_valid_signature_passes() {
        let now = Utc::now();
        let header = sign("whsec_a", now.timestamp(), BODY);
        assert_eq!(
            verifier("whsec_a").verify(Some(&header), BODY, now, DEFAULT_TOLERANCE),
            Ok(())
        );
    }

    #[test]
    fn a_tampered_body_or_signature_fails() {
        let now = Utc::now();
        let header = sign("whsec_a", now.timestamp(), BODY);
        let tampered = br#"{"id":"evt_1","type":"payment_intent.succeeded "}"#;
        assert_eq!(
            verifier("whsec_a").verify(Some(&header), tampered, now, DEFAULT_TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        let flipped = format!("{}0", &header[..header.len() - 1]);
        let flipped = if flipped == header {
            format!("{}1", &header[..header.len() - 1])
        } else {
            flipped
        };
        assert_eq!(
            verifier("whsec_a").verify(Some(&flipped), BODY, now, DEFAULT_TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verifier("whsec_b").verify(Some(&header), BODY, now, DEFAULT_TOLERANCE),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_stale_or_future_timestamp_fails() {
        let now = Utc::now();
        for offset in [-301, 301] {
            let header = sign("whsec_a", now.timestamp() + offset, BODY);
            assert_eq!(
                verifier("whsec_a").verify(Some(&header), BODY, now, DEFAULT_TOLERANCE),
                Err(SignatureError::Stale)
            );
        }
        let header = sign("whsec_a", now.timestamp() - 299, BODY);
        assert!(
            verifier("whsec_a")
                .verify(Some(&header), BODY, now, DEFAULT_TOLERANCE)
                .is_ok()
        );
    }

    #[test]
    fn rotated_secrets_and_several_v1_values_pass() {
        let now = Utc::now();
        // During rotation Stripe signs with both secrets; Herald may know only one of them.
        let old = sign("whsec_old", now.timestamp(), BODY);
        let new = sign("whsec_new", now.timestamp(), BODY);
        let both = format!("{old},v1={}", new.split_once("v1=").unwrap().1);
        assert!(
            verifier("whsec_new")
                .verify(Some(&both), BODY, now, DEFAULT_TOLERANCE)
                .is_ok()
        );
        assert!(
            verifier("whsec_old")
                .verify(Some(&both), BODY, now, DEFAULT_TOLERANCE)
                .is_ok()
        );
        assert!(
            verifier("whsec_old, whsec_new")
                .verify(Some(&new), BODY, now, DEFAULT_TOLERANCE)
                .is_ok()
        );
    }

    #[test]
    fn missing_or_malformed_headers_fail() {
        let now = Utc::now();
        let v = verifier("whsec_a");
        assert_eq!(
            v.verify(None, BODY, now, DEFAULT_TOLERANCE),
            Err(SignatureError::Missing)
        );
        for bad in ["garbage", "t=abc,v1=00", "t=1", "v1=zz", "t=1,v1=zz"] {
            assert_eq!(
                v.verify(Some(bad), BODY, now, DEFAULT_TOLERANCE),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        assert!(WebhookVerifier::from_list(" , ").is_none());
    }
}
