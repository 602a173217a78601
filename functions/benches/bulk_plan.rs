//! Criterion bench of the email worker's call plan for a large personalized bulk (issue 20):
//! `plan_mails` over 10,000 emails of a 60 KB newsletter with a greeting by name, an `#if`
//! and an `#each`, stored as the API stores them (one shared body, each email's parts), with
//! its time and peak heap. `cargo bench -p herald-functions --bench bulk_plan`. Figures are
//! in docs/PERFORMANCE.md.
//!
//! Peak heap: this binary's global allocator counts the heap bytes in use; the plan runs once
//! outside the timing loop and the bench prints (stderr) what the records held and the plan's
//! peak on top. A send job holds at most 1,000 emails (`EMAIL_SEND_JOB_IDS`): 10,000 is ten
//! jobs' worth at once, an upper bound on one invocation.

// Benches are test code: a broken fixture should stop the run loudly.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use functions::email_worker::plan_mails;
use peak_alloc::PeakAlloc;
use serde_json::json;
use shared::domain::email::{BodyParts, EmailRecord, SharedBody};
use shared::render::{Escape, Segments};

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

const EMAILS: usize = 10_000;
const BODY_BYTES: usize = 60_000;
const MIB: f64 = 1024.0 * 1024.0;

/// The 60 KB newsletter template: personal greeting, a VIP block and a list of picks.
fn newsletter() -> String {
    let mut html =
        "<h1>Hello {{first_name}}!</h1>\n{{#if vip}}\n<p>Your VIP price: {{price}}</p>\n\
                    {{else}}\n<p>Join the club for early access.</p>\n{{/if}}\n<ul>\n\
                    {{#each picks}}\n  <li>{{this}}</li>\n{{/each}}\n</ul>\n"
            .to_owned();
    let paragraph = "<p>Our spring collection is here: linen, cotton and wool in more colours \
                     than ever, made to last and priced fairly.</p>\n";
    while html.len() + paragraph.len() <= BODY_BYTES {
        html.push_str(paragraph);
    }
    html
}

/// The bulk's emails as the API stores them and the worker reads them back.
fn records() -> Vec<EmailRecord> {
    let segments = Segments::compile(&newsletter(), Escape::Html).unwrap();
    let body = Arc::new(SharedBody {
        nonce: "0".to_owned(),
        html: Some(segments.pieces().to_vec()),
        text: None,
    });
    (0..EMAILS)
        .map(|n| {
            let variables = json!({
                "first_name": format!("Reader {n}"), "vip": n % 5 == 0,
                "price": format!("${}.99", 10 + n % 90),
                "picks": (0..n % 4).map(|k| format!("Pick {k} for reader {n}")).collect::<Vec<_>>(),
            });
            let mut record: EmailRecord = serde_json::from_value(json!({
                "id": format!("01JEMAIL{n:018}"), "org_id": "acme",
                "to": format!("reader{n}@example.com"), "from": "news@acme.test",
                "subject": format!("Spring news for Reader {n}"), "status": "sending",
                "bulk_id": "01JBULK", "metadata": BTreeMap::<String, String>::new(),
                "created_at": "2026-12-04T10:00:00Z", "updated_at": "2026-12-04T10:00:00Z",
            }))
            .unwrap();
            record.parts = Some(BodyParts {
                shared: "01JBULK".to_owned(),
                html: segments.parts(&variables).unwrap(),
                text: Vec::new(),
                body: Some(body.clone()),
            });
            record
        })
        .collect()
}

fn plan_personalized_bulk(c: &mut Criterion) {
    HEAP.reset_peak_usage();
    let before = HEAP.current_usage();
    let records = records();
    let held = HEAP.current_usage().saturating_sub(before);
    let part_bytes: usize = records
        .iter()
        .filter_map(|r| r.parts.as_ref())
        .map(shared::domain::email::BodyParts::bytes)
        .sum();
    HEAP.reset_peak_usage();
    let planned = plan_mails(&records);
    let peak = HEAP.peak_usage().saturating_sub(before);
    let call_bytes: usize = planned
        .iter()
        .map(|p| serde_json::to_vec(&p.mail).unwrap().len())
        .sum();
    #[allow(clippy::cast_precision_loss)]
    let mib = |bytes: usize| bytes as f64 / MIB;
    eprintln!(
        "bulk_plan/plan_10000_personalized_60kb: {} calls, {:.1} MiB of requests; the records \
         hold {:.1} MiB ({:.1} MiB of it their parts), peak heap while planning {:.1} MiB \
         (records included)",
        planned.len(),
        mib(call_bytes),
        mib(held),
        mib(part_bytes),
        mib(peak)
    );
    drop(planned);

    let mut group = c.benchmark_group("bulk_plan");
    group.throughput(Throughput::Elements(EMAILS as u64));
    group.sample_size(10);
    group.bench_function("plan_10000_personalized_60kb", |b| {
        b.iter(|| plan_mails(black_box(&records)));
    });
    group.finish();
}

criterion_group!(benches, plan_personalized_bulk);
criterion_main!(benches);
