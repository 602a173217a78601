//! Criterion benches for Herald's hot paths (issue 10): what a webhook invocation does per
//! batch, what rendering and SMS measurement cost per message. `cargo bench -p herald-functions`.
//! Figures and targets are in docs/PERFORMANCE.md.

// Benches are test code: a broken fixture should stop the run loudly.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use functions::sendgrid_webhook::{effect_of, group_by_email, suppression_reason};
use shared::domain::email::{EmailAddress, EmailRecord};
use shared::providers::sendgrid::{DEFAULT_TOLERANCE, WebhookSigner, parse_batch};
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

criterion_group!(
    benches,
    sendgrid_webhook_batch,
    template_rendering,
    sms_segments
);
criterion_main!(benches);
