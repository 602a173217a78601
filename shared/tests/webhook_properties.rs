//! Property tests for the Stripe and Twilio webhook parsers and signature checkers
//! (issue 9): arbitrary bytes and headers never panic and never verify; a signed request
//! verifies until any byte of it changes. SendGrid's parser and verifier carry the same
//! properties beside their code (`providers/sendgrid`).

#![allow(clippy::unwrap_used)]

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use shared::providers::stripe::{self, StripeEvent, WebhookVerifier};
use shared::providers::twilio;

const STRIPE_SECRET: &str = "whsec_property_test_secret";
const TWILIO_TOKEN: &str = "property-test-auth-token";
const URL: &str = "https://abc.lambda-url.us-east-1.on.aws/";

fn now() -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 0).single().unwrap()
}

/// Form parameters with distinct names (Twilio sorts by name).
fn params() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::btree_map("[A-Za-z]{1,12}", ".{0,40}", 0..12)
        .prop_map(|map| map.into_iter().collect())
}

proptest! {
    #[test]
    fn stripe_event_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = StripeEvent::parse(&body);
    }

    #[test]
    fn stripe_random_headers_never_verify(
        header in ".{0,200}",
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let verifier = WebhookVerifier::from_list(STRIPE_SECRET).unwrap();
        prop_assert!(verifier.verify(Some(&header), &body, now(), stripe::DEFAULT_TOLERANCE).is_err());
    }

    #[test]
    fn stripe_signed_bodies_verify_until_a_bit_changes(
        body in proptest::collection::vec(any::<u8>(), 1..256),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let verifier = WebhookVerifier::from_list(STRIPE_SECRET).unwrap();
        let header = stripe::sign(STRIPE_SECRET, now().timestamp(), &body);
        prop_assert!(verifier.verify(Some(&header), &body, now(), stripe::DEFAULT_TOLERANCE).is_ok());
        let mut tampered = body.clone();
        tampered[flip.index(body.len())] ^= 1 << bit;
        prop_assert!(verifier.verify(Some(&header), &tampered, now(), stripe::DEFAULT_TOLERANCE).is_err());
    }

    #[test]
    fn twilio_random_signatures_never_verify(params in params(), signature in ".{0,64}") {
        prop_assert!(!twilio::verify(TWILIO_TOKEN, URL, &params, &signature));
    }

    #[test]
    fn twilio_signed_params_verify_in_any_order_until_one_changes(
        params in params(),
        extra in "[a-z]{1,8}",
    ) {
        let signature = twilio::sign(TWILIO_TOKEN, URL, &params);
        let mut reversed = params.clone();
        reversed.reverse();
        prop_assert!(twilio::verify(TWILIO_TOKEN, URL, &reversed, &signature));
        let mut tampered = params.clone();
        tampered.push(("Injected".to_owned(), extra));
        prop_assert!(!twilio::verify(TWILIO_TOKEN, URL, &tampered, &signature));
        prop_assert!(!twilio::verify(TWILIO_TOKEN, "https://elsewhere.example/", &params, &signature));
    }

    #[test]
    fn twilio_form_bodies_parse_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        let _ = twilio::verify(TWILIO_TOKEN, URL, &pairs, "");
    }
}
