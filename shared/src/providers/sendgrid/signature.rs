//! SendGrid's Signed Event Webhook.
//!
//! SendGrid signs each webhook POST with ECDSA over P-256 and SHA-256. The signed bytes are
//! the value of the timestamp header followed immediately by the raw request body; the
//! signature header is base64 of the ASN.1 DER signature. The verification key is what
//! SendGrid's settings page shows: base64 of the DER SubjectPublicKeyInfo (a PEM without its
//! header lines).
//!
//! # Replay window
//! A captured request stays validly signed forever, so [`WebhookVerifier::verify`] also
//! requires the timestamp to be within a tolerance of the current time, in either direction
//! (clocks drift both ways). [`DEFAULT_TOLERANCE`] is five minutes: wide enough for clock skew
//! and SendGrid's delivery latency, narrow enough that a captured batch cannot be replayed
//! later. Replays inside the window are harmless because events are deduplicated by
//! `sg_event_id` downstream.
//!
//! The ECDSA work comes from the `p256` crate; only the message framing and the fixed
//! SubjectPublicKeyInfo prefix are written here.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use p256::ecdsa::signature::{DigestSigner as _, DigestVerifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use rand_core::OsRng;
use sha2::{Digest as _, Sha256};

/// The signature header, lowercase as HTTP/2 and API Gateway deliver header names.
pub const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";

/// The timestamp header (Unix seconds), lowercase.
pub const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

/// How far the signed timestamp may be from now; see the module docs for why five minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// DER SubjectPublicKeyInfo header for an uncompressed P-256 point: SEQUENCE { SEQUENCE {
/// id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }. The 65-byte point follows.
const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a webhook request is not accepted as SendGrid's. Safe to log: no variant carries
/// request data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the webhook signature header is missing or empty")]
    MissingSignature,
    #[error("the webhook signature is not base64 of a DER-encoded ECDSA signature")]
    MalformedSignature,
    #[error("the webhook timestamp is missing or not Unix seconds")]
    MalformedTimestamp,
    /// Genuinely signed, but outside the replay window.
    #[error(
        "the webhook timestamp is {age_secs} s from now, outside the {tolerance_secs} s tolerance"
    )]
    Stale { age_secs: u64, tolerance_secs: u64 },
    #[error("the webhook signature does not match the timestamp and body")]
    Invalid,
}

/// The configured verification key is not a P-256 public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the SendGrid webhook verification key is not a P-256 public key \
     (expected base64 DER SubjectPublicKeyInfo or PEM)"
)]
pub struct InvalidPublicKey;

/// Checks webhook requests against the account's verification key. Build once per cold start.
#[derive(Clone)]
pub struct WebhookVerifier {
    key: VerifyingKey,
}

/// Signs webhook requests the way SendGrid does, for the local provider sandbox and tests.
#[derive(Clone)]
pub struct WebhookSigner {
    key: SigningKey,
}

impl WebhookVerifier {
    /// Accepts the key as SendGrid's settings page shows it (base64 DER SubjectPublicKeyInfo,
    /// line breaks allowed) or as a full `-----BEGIN PUBLIC KEY-----` PEM.
    ///
    /// # Errors
    /// [`InvalidPublicKey`] when the text is neither, or is not a P-256 key.
    pub fn from_base64_spki(encoded: &str) -> Result<Self, InvalidPublicKey> {
        let trimmed = encoded.trim();
        let key = if trimmed.starts_with("-----BEGIN") {
            VerifyingKey::from_public_key_pem(trimmed).map_err(|_| InvalidPublicKey)?
        } else {
            let compact: String = trimmed.split_whitespace().collect();
            let der = STANDARD.decode(compact).map_err(|_| InvalidPublicKey)?;
            VerifyingKey::from_public_key_der(&der).map_err(|_| InvalidPublicKey)?
        };
        Ok(Self { key })
    }

    /// Verifies one webhook request: `signature_b64` and `timestamp` are the header values
    /// (pass `""` for a missing header), `body` the raw bytes as received, before any JSON
    /// parsing, since re-serializing would change what was signed.
    ///
    /// The signature is checked before the timestamp's age, so [`SignatureError::Stale`]
    /// always means a genuine request that arrived too late (or a replay), never a forgery.
    ///
    /// # Errors
    /// The first check that fails, as a [`SignatureError`].
    pub fn verify(
        &self,
        signature_b64: &str,
        timestamp: &str,
        body: &[u8],
        now: DateTime<Utc>,
        tolerance: Duration,
    ) -> Result<(), SignatureError> {
        let signature_b64 = signature_b64.trim();
        if signature_b64.is_empty() {
            return Err(SignatureError::MissingSignature);
        }
        let der = STANDARD
            .decode(signature_b64)
            .map_err(|_| SignatureError::MalformedSignature)?;
        let signature =
            Signature::from_der(&der).map_err(|_| SignatureError::MalformedSignature)?;
        let signed_at = parse_timestamp(timestamp)?;

        self.key
            .verify_digest(signed_digest(timestamp, body), &signature)
            .map_err(|_| SignatureError::Invalid)?;

        let age_secs = now.timestamp().abs_diff(signed_at);
        let tolerance_secs = tolerance.as_secs();
        if age_secs > tolerance_secs {
            return Err(SignatureError::Stale {
                age_secs,
                tolerance_secs,
            });
        }
        Ok(())
    }
}

impl WebhookSigner {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::random(&mut OsRng),
        }
    }

    /// The verification key in the form SendGrid's settings page shows (and
    /// [`WebhookVerifier::from_base64_spki`] reads).
    pub fn public_key_base64(&self) -> String {
        let point = self.key.verifying_key().to_encoded_point(false);
        let mut der = Vec::with_capacity(SPKI_P256_PREFIX.len() + point.len());
        der.extend_from_slice(&SPKI_P256_PREFIX);
        der.extend_from_slice(point.as_bytes());
        STANDARD.encode(der)
    }

    pub fn verifier(&self) -> WebhookVerifier {
        WebhookVerifier {
            key: *self.key.verifying_key(),
        }
    }

    /// The signature header value for `timestamp` (the timestamp header value) and `body`.
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        let signature: Signature = self.key.sign_digest(signed_digest(timestamp, body));
        STANDARD.encode(signature.to_der().as_bytes())
    }
}

impl fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerifier").finish_non_exhaustive()
    }
}

impl fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSigner")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

/// Hashes in two parts, so the body is never copied to build the signed message.
fn signed_digest(timestamp: &str, body: &[u8]) -> Sha256 {
    Sha256::new()
        .chain_update(timestamp.as_bytes())
        .chain_update(body)
}

/// Unix seconds, digits only: a sign or spaces would be signed bytes SendGrid never sends.
fn parse_timestamp(timestamp: &str) -> Result<i64, SignatureError> {
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::MalformedTimestamp);
    }
    timestamp
        .parse()
        .map_err(|_| SignatureError::MalformedTimestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::TimeZone as _;
    use p256::pkcs8::EncodePublicKey as _;
    use proptest::prelude::*;

    // SendGrid's own test vector, published in the tests of its official libraries
    // (sendgrid-nodejs packages/eventwebhook and sendgrid-go helpers/eventwebhook).
    const SENDGRID_PUBLIC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";
    const SENDGRID_SIGNATURE: &str = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=";
    const SENDGRID_TIMESTAMP: &str = "1588788367";
    const SENDGRID_PAYLOAD: &str =
        r#"{"category":"example_payload","event":"test_event","message_id":"message_id"}"#;
    const SENDGRID_OTHER_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA==";

    const BODY: &[u8] = br#"[{"email":"ann@example.com","event":"delivered","sg_event_id":"e1","timestamp":1700000000}]"#;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).single().unwrap()
    }

    fn sendgrid_verify(
        key: &str,
        payload: &str,
        signature: &str,
        timestamp: &str,
    ) -> Result<(), SignatureError> {
        WebhookVerifier::from_base64_spki(key).unwrap().verify(
            signature,
            timestamp,
            payload.as_bytes(),
            at(1_588_788_367 + 10),
            DEFAULT_TOLERANCE,
        )
    }

    #[test]
    fn sendgrid_published_vector_verifies() {
        assert_eq!(
            sendgrid_verify(
                SENDGRID_PUBLIC_KEY,
                SENDGRID_PAYLOAD,
                SENDGRID_SIGNATURE,
                SENDGRID_TIMESTAMP
            ),
            Ok(())
        );
    }

    #[test]
    fn sendgrid_published_vector_rejects_what_its_libraries_reject() {
        let tampered_signature = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0=";
        assert_eq!(
            sendgrid_verify(
                SENDGRID_OTHER_KEY,
                SENDGRID_PAYLOAD,
                SENDGRID_SIGNATURE,
                SENDGRID_TIMESTAMP
            ),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            sendgrid_verify(
                SENDGRID_PUBLIC_KEY,
                "payload",
                SENDGRID_SIGNATURE,
                SENDGRID_TIMESTAMP
            ),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            sendgrid_verify(
                SENDGRID_PUBLIC_KEY,
                SENDGRID_PAYLOAD,
                tampered_signature,
                SENDGRID_TIMESTAMP
            ),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            sendgrid_verify(
                SENDGRID_PUBLIC_KEY,
                SENDGRID_PAYLOAD,
                SENDGRID_SIGNATURE,
                "timestamp"
            ),
            Err(SignatureError::MalformedTimestamp)
        );
    }

    #[test]
    fn a_pem_key_is_accepted_too() {
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
            &SENDGRID_PUBLIC_KEY[..64],
            &SENDGRID_PUBLIC_KEY[64..]
        );
        let verifier = WebhookVerifier::from_base64_spki(&pem).unwrap();

        let result = verifier.verify(
            SENDGRID_SIGNATURE,
            SENDGRID_TIMESTAMP,
            SENDGRID_PAYLOAD.as_bytes(),
            at(1_588_788_367),
            DEFAULT_TOLERANCE,
        );

        assert_eq!(result, Ok(()));
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let signer = WebhookSigner::generate();
        let verifier = WebhookVerifier::from_base64_spki(&signer.public_key_base64()).unwrap();

        let signature = signer.sign("1700000000", BODY);

        assert_eq!(
            verifier.verify(
                &signature,
                "1700000000",
                BODY,
                at(1_700_000_042),
                DEFAULT_TOLERANCE
            ),
            Ok(())
        );
    }

    #[test]
    fn the_public_key_is_standard_spki() {
        let signer = WebhookSigner::generate();
        let der = signer.verifier().key.to_public_key_der().unwrap();

        assert_eq!(signer.public_key_base64(), STANDARD.encode(der.as_bytes()));
        assert!(
            signer
                .public_key_base64()
                .starts_with("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE")
        );
    }

    #[test]
    fn tampering_is_detected() {
        let signer = WebhookSigner::generate();
        let verifier = signer.verifier();
        let signature = signer.sign("1700000000", BODY);
        let now = at(1_700_000_000);

        let mut tampered = BODY.to_vec();
        tampered[30] ^= 1;
        assert_eq!(
            verifier.verify(&signature, "1700000000", &tampered, now, DEFAULT_TOLERANCE),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verifier.verify(&signature, "1700000001", BODY, now, DEFAULT_TOLERANCE),
            Err(SignatureError::Invalid)
        );
        // SendGrid's framing cannot tell a digit moved from the timestamp into the body:
        // such a request signs the same bytes. The timestamp is then ten times off, so the
        // replay window rejects it (and the body is no longer JSON).
        assert!(matches!(
            verifier.verify(
                &signature,
                "170000000",
                &[b"0".as_slice(), BODY].concat(),
                now,
                DEFAULT_TOLERANCE
            ),
            Err(SignatureError::Stale { .. })
        ));
    }

    #[test]
    fn another_key_does_not_verify() {
        let signature = WebhookSigner::generate().sign("1700000000", BODY);

        let result = WebhookSigner::generate().verifier().verify(
            &signature,
            "1700000000",
            BODY,
            at(1_700_000_000),
            DEFAULT_TOLERANCE,
        );

        assert_eq!(result, Err(SignatureError::Invalid));
    }

    #[test]
    fn stale_and_future_timestamps_are_rejected() {
        let signer = WebhookSigner::generate();
        let verifier = signer.verifier();
        let signature = signer.sign("1700000000", BODY);
        let verify_at =
            |now| verifier.verify(&signature, "1700000000", BODY, at(now), DEFAULT_TOLERANCE);

        assert_eq!(verify_at(1_700_000_300), Ok(()));
        assert_eq!(verify_at(1_699_999_700), Ok(()));
        assert_eq!(
            verify_at(1_700_000_301),
            Err(SignatureError::Stale {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert!(matches!(
            verify_at(1_699_999_000),
            Err(SignatureError::Stale { .. })
        ));
    }

    #[test]
    fn garbage_inputs_are_errors() {
        let signer = WebhookSigner::generate();
        let verifier = signer.verifier();
        let signature = signer.sign("1700000000", BODY);
        let now = at(1_700_000_000);
        let verify = |signature: &str, timestamp: &str| {
            verifier.verify(signature, timestamp, BODY, now, DEFAULT_TOLERANCE)
        };

        assert_eq!(
            verify("", "1700000000"),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            verify("  ", "1700000000"),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            verify("not base64!", "1700000000"),
            Err(SignatureError::MalformedSignature)
        );
        assert_eq!(
            verify("AAAA", "1700000000"),
            Err(SignatureError::MalformedSignature)
        );
        assert_eq!(
            verify(&signature, ""),
            Err(SignatureError::MalformedTimestamp)
        );
        assert_eq!(
            verify(&signature, "+1700000000"),
            Err(SignatureError::MalformedTimestamp)
        );
        assert_eq!(
            verify(&signature, "1700000000.5"),
            Err(SignatureError::MalformedTimestamp)
        );
        assert_eq!(
            verify(&signature, "99999999999999999999999"),
            Err(SignatureError::MalformedTimestamp)
        );

        for key in [
            "",
            "not base64!",
            "AAAA",
            &SENDGRID_PUBLIC_KEY[..40],
            "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----",
            // A valid SPKI for another curve (Ed25519).
            "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=",
        ] {
            assert_eq!(
                WebhookVerifier::from_base64_spki(key).unwrap_err(),
                InvalidPublicKey,
                "{key}"
            );
        }
    }

    proptest! {
        #[test]
        fn random_signature_bytes_never_verify(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let verifier = WebhookVerifier::from_base64_spki(SENDGRID_PUBLIC_KEY).unwrap();
            let result = verifier.verify(
                &STANDARD.encode(&bytes),
                SENDGRID_TIMESTAMP,
                SENDGRID_PAYLOAD.as_bytes(),
                at(1_588_788_367),
                DEFAULT_TOLERANCE,
            );
            prop_assert!(result.is_err());
        }

        #[test]
        fn random_text_inputs_never_panic(signature in ".{0,120}", timestamp in ".{0,24}", key in ".{0,200}") {
            let verifier = WebhookVerifier::from_base64_spki(SENDGRID_PUBLIC_KEY).unwrap();
            let result = verifier.verify(&signature, &timestamp, b"[]", at(1_588_788_367), DEFAULT_TOLERANCE);
            prop_assert!(result.is_err());
            let _ = WebhookVerifier::from_base64_spki(&key);
        }
    }
}
