//! Criterion benches for Herald's hot paths (issue 10): what a webhook invocation does per
//! batch or callback (SendGrid, Twilio and Stripe signature checks and parses), what rendering
//! and SMS measurement cost per message. `cargo bench -p herald-functions --bench hot_paths`.
//! The report files (CSV, PDF) with their peak memory are in `reports.rs`.
//! Figures and targets are in docs/PERFORMANCE.md.

// Benches are test code: a broken fixture should stop the run loudly.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use functions::sendgrid_webhook::{effect_of, group_by_email, suppression_reason};
use shared::domain::email::{EmailAddress, EmailRecord};
use shared::providers::sendgrid::{DEFAULT_TOLERANCE, WebhookSigner, parse_batch};
use shared::providers::{stripe, twilio};
use shared::render::{Escape, render};
use shared::store::EventInput;

const KINDS: [&str; 5] = ["processed", "delivered", "open", "click", "bounce"];

/// A realistic Event Webhook body: `count` events over `count / 5` emails of one organization.
fn sendgrid_batch(count: usize) -> Vec<u8> {
    let now = chrono::Utc::now().timestamp();
    let events: Vec<serde_json::Value> = (0..count)
        .map(|i| {
            serde_json::json!({
                "email": format!("user{}@example.com", i / 5),
                "timestamp": now - 60 + i64::try_from(i % 5).unwrap(),
                "event": KINDS[i % 5],
                "sg_event_id": format!("ZGVsaXZlcmVkLTAtMjQ{i:08}"),
                "sg_message_id": format!("14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.{}", i / 5),
                "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
                "response": "250 OK",
                "reason": if i % 5 == 4 { "550 5.1.1 unknown user" } else { "" },
                "url": if i % 5 == 3 { "https://example.com/offer" } else { "" },
                "org_id": "acme",
                "email_id": format!("01JDZ3Q6W6K8M0000000{:06}", i / 5),
            })
        })
        .collect();
    serde_json::to_vec(&events).unwrap()
}

fn sent_email(id: &str) -> EmailRecord {
    serde_json::from_value(serde_json::json!({
        "id": id, "org_id": "acme", "to": "user@example.com", "from": "news@acme.test",
        "subject": "Hello", "status": "sent",
        "created_at": "2026-11-24T10:00:00Z", "updated_at": "2026-11-24T10:00:00Z",
    }))
    .unwrap()
}

/// Verify, parse and plan every write of a 1,000-event batch: the webhook's CPU work
/// (its DynamoDB writes and the events queue are I/O, measured elsewhere).
fn sendgrid_webhook_batch(c: &mut Criterion) {
    let signer = WebhookSigner::generate();
    let verifier = signer.verifier();
    let body = sendgrid_batch(1_000);
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let signature = signer.sign(&timestamp, &body);
    let mut group = c.benchmark_group("sendgrid_webhook");
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("batch_1000_verify_parse_plan", |b| {
        b.iter(|| {
            verifier
                .verify(
                    &signature,
                    &timestamp,
                    black_box(&body),
                    chrono::Utc::now(),
                    DEFAULT_TOLERANCE,
                )
                .unwrap();
            let events = parse_batch(&body).unwrap();
            let (by_email, _ignored) = group_by_email(&events);
            let mut planned = 0;
            for ((_, id), events) in &by_email {
                let current = sent_email(id);
                for event in events {
                    let effect = effect_of(event, &current);
                    let input = EventInput {
                        key: format!("sendgrid#{}", event.sg_event_id),
                        suppress: suppression_reason(&event.event).and_then(|reason| {
                            Some((EmailAddress::parse(&event.email).ok()?, reason.to_owned()))
                        }),
                    };
                    black_box((effect, input));
                    planned += 1;
                }
            }
            assert_eq!(planned, 1_000);
        });
    });
    group.finish();
}

fn template_rendering(c: &mut Criterion) {
    let html = "<h1>Hello {{first_name}}</h1><p>Your order {{order.id}} of {{order.total}} \
                ships {{#if express}}tomorrow{{else}}this week{{/if}}.</p>\
                <ul>{{#each items}}<li>{{this.name}} × {{this.quantity}}</li>{{/each}}</ul>";
    let variables = serde_json::json!({
        "first_name": "Zoë <script>",
        "express": true,
        "order": {"id": "A-1042", "total": "€42.00"},
        "items": [{"name": "Mug", "quantity": 2}, {"name": "Tea", "quantity": 1}],
    });
    c.bench_function("render/email_html", |b| {
        b.iter(|| render(black_box(html), &variables, Escape::Html).unwrap());
    });
    c.bench_function("render/sms_text", |b| {
        b.iter(|| {
            render(
                black_box("Hi {{first_name}}, your code is {{code}}."),
                &serde_json::json!({"first_name": "Ana", "code": "491822"}),
                Escape::None,
            )
            .unwrap()
        });
    });
}

fn sms_segments(c: &mut Criterion) {
    let gsm = "Your parcel A-1042 arrives tomorrow between 9:00 and 12:00. Reply STOP to opt out. "
        .repeat(4);
    let unicode = "Привет! Ваш заказ прибудет завтра 📦 — ответьте STOP для отписки. ".repeat(4);
    c.bench_function("sms_segments/gsm7_340_chars", |b| {
        b.iter(|| shared::domain::sms::measure(black_box(&gsm)));
    });
    c.bench_function("sms_segments/ucs2_260_chars", |b| {
        b.iter(|| shared::domain::sms::measure(black_box(&unicode)));
    });
}

/// The webhook's public URL, as `TWILIO_WEBHOOK_URL` configures it.
const TWILIO_WEBHOOK_URL: &str = "https://abcdefghijklmnop.lambda-url.eu-west-1.on.aws/";

/// A status callback as Twilio posts it for an undelivered message (form-encoded, the
/// parameters of a Messaging Service send with an error code).
const TWILIO_STATUS_CALLBACK: &str = "ErrorCode=30003&SmsSid=SM0123456789abcdef0123456789abcdef\
&SmsStatus=undelivered&MessageStatus=undelivered&To=%2B14155552671\
&MessagingServiceSid=MG0123456789abcdef0123456789abcdef\
&MessageSid=SM0123456789abcdef0123456789abcdef\
&AccountSid=AC0123456789abcdef0123456789abcdef&From=%2B15005550006\
&ApiVersion=2010-04-01&RawDlrDoneDate=2611241900&ChannelToAddress=%2B1415555XXXX";

/// `X-Twilio-Signature` over the configured URL and the sorted form parameters (HMAC-SHA1),
/// alone and with the form parse the webhook does first.
fn twilio_signature(c: &mut Criterion) {
    let token = "9f2c4e8a1b3d5f7092c4e6a8b0d2f4e6";
    let body = TWILIO_STATUS_CALLBACK.as_bytes();
    let parse = |body: &[u8]| -> Vec<(String, String)> {
        url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    };
    let params = parse(body);
    assert_eq!(params.len(), 12);
    let signature = twilio::sign(token, TWILIO_WEBHOOK_URL, &params);
    let mut group = c.benchmark_group("twilio_webhook");
    group.bench_function("status_callback_verify", |b| {
        b.iter(|| {
            assert!(twilio::verify(
                token,
                TWILIO_WEBHOOK_URL,
                black_box(&params),
                &signature
            ));
        });
    });
    group.bench_function("status_callback_parse_verify", |b| {
        b.iter(|| {
            let params = parse(black_box(body));
            assert!(twilio::verify(
                token,
                TWILIO_WEBHOOK_URL,
                &params,
                &signature
            ));
        });
    });
    group.finish();
}

/// A `payment_intent.succeeded` event as Stripe sends it (API version 2024-06-20, pretty
/// printed as Stripe does), about 2 KB: the envelope and the full PaymentIntent with Herald's
/// metadata.
const STRIPE_EVENT: &str = r#"{
  "id": "evt_3QAbCdEfGhIjKlMn0a1b2c3d",
  "object": "event",
  "api_version": "2024-06-20",
  "created": 1795546802,
  "data": {
    "object": {
      "id": "pi_3QAbCdEfGhIjKlMn0x9y8z7w",
      "object": "payment_intent",
      "amount": 1999,
      "amount_capturable": 0,
      "amount_details": {
        "tip": {}
      },
      "amount_received": 1999,
      "application": null,
      "application_fee_amount": null,
      "automatic_payment_methods": {
        "allow_redirects": "always",
        "enabled": true
      },
      "canceled_at": null,
      "cancellation_reason": null,
      "capture_method": "automatic_async",
      "client_secret": "pi_3QAbCdEfGhIjKlMn0x9y8z7w_secret_Qr5tUv7wXy9zAb1cDe3fGh5iJ",
      "confirmation_method": "automatic",
      "created": 1795546800,
      "currency": "usd",
      "customer": "cus_R1a2b3c4d5e6f7",
      "description": "Herald order A-1042",
      "invoice": null,
      "last_payment_error": null,
      "latest_charge": "ch_3QAbCdEfGhIjKlMn0q1w2e3r",
      "livemode": false,
      "metadata": {
        "herald_id": "01JD5Z3Q0000000000000000PA",
        "org_id": "acme"
      },
      "next_action": null,
      "on_behalf_of": null,
      "payment_method": "pm_1QAbCdEfGhIjKlMnOpQrStUv",
      "payment_method_configuration_details": {
        "id": "pmc_1PqRsTuVwXyZaBcDeFgHiJkL",
        "parent": null
      },
      "payment_method_options": {
        "card": {
          "installments": null,
          "mandate_options": null,
          "network": null,
          "request_three_d_secure": "automatic"
        },
        "link": {
          "persistent_token": null
        }
      },
      "payment_method_types": [
        "card",
        "link"
      ],
      "processing": null,
      "receipt_email": "billing@acme.example",
      "review": null,
      "setup_future_usage": null,
      "source": null,
      "statement_descriptor": null,
      "statement_descriptor_suffix": "HERALD",
      "status": "succeeded",
      "transfer_data": null,
      "transfer_group": null
    }
  },
  "livemode": false,
  "pending_webhooks": 2,
  "request": {
    "id": "req_Ab3dEf6hIj9kLm",
    "idempotency_key": "herald-01JD5Z3Q000000000000000PA"
  },
  "type": "payment_intent.succeeded"
}"#;

fn stripe_event() -> Vec<u8> {
    let body = STRIPE_EVENT.as_bytes().to_vec();
    assert!(
        (1_800..=2_600).contains(&body.len()),
        "{} bytes",
        body.len()
    );
    body
}

/// `Stripe-Signature` v1 (HMAC-SHA256 of `"{t}.{body}"`) against three configured secrets,
/// the matching one last, so a valid request costs the most MACs it can; and the parse of
/// the event that follows it.
fn stripe_signature(c: &mut Criterion) {
    let body = stripe_event();
    let verifier = stripe::WebhookVerifier::from_list(
        "whsec_rotatedOutLastQuarter0000000000000,whsec_stagingEndpoint000000000000000000,\
         whsec_currentEndpoint11111111111111111111",
    )
    .unwrap();
    let now = chrono::Utc::now();
    let header = stripe::sign(
        "whsec_currentEndpoint11111111111111111111",
        now.timestamp() - 2,
        &body,
    );
    let mut group = c.benchmark_group("stripe_webhook");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("verify_2kb_3_secrets", |b| {
        b.iter(|| {
            verifier
                .verify(
                    Some(&header),
                    black_box(&body),
                    now,
                    stripe::DEFAULT_TOLERANCE,
                )
                .unwrap();
        });
    });
    group.bench_function("parse_event_2kb", |b| {
        b.iter(|| {
            let event = stripe::StripeEvent::parse(black_box(&body)).unwrap();
            assert_eq!(event.kind, "payment_intent.succeeded");
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    sendgrid_webhook_batch,
    template_rendering,
    sms_segments,
    twilio_signature,
    stripe_signature
);
criterion_main!(benches);
