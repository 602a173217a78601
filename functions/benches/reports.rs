//! Criterion benches for the report files (issue 10): a 100,000-row CSV and a 10,000-row PDF
//! (`MAX_PDF_ROWS`), each timed and with its peak heap.
//! `cargo bench -p herald-functions --bench reports`. Figures and targets are in
//! docs/PERFORMANCE.md.
//!
//! Both run the writers the report worker runs (`reports::file::write_csv` into the S3 part
//! buffer, `pdf::render_report`) over a campaign-performance report laid out by the worker's
//! own `reports::content::campaign_performance` (eleven columns, one row per campaign). The CSV's parts go
//! to a sink that keeps only their sizes, so no S3 is needed and each 5 MiB part is dropped
//! once "uploaded", as S3 takes it.
//!
//! Peak memory: this binary's global allocator counts the heap bytes in use and their
//! high-water mark. Before each case the mark is reset; the case then builds its content and
//! writes the file once, outside the timing loop, and prints (stderr) the peak, the part of it
//! that is the content the worker holds before writing, and what writing added. Benches live
//! apart from `hot_paths.rs` so its timings run on the plain system allocator. The counting
//! allocator's `realloc` copies into a new block, so a growing buffer counts old and new
//! together for a moment: the figure is an upper bound.

// Benches are test code: a broken fixture should stop the run loudly.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use peak_alloc::PeakAlloc;
use shared::pdf::{MAX_PDF_ROWS, ReportHeading, render_report};
use shared::reports::upload::{CountingSink, PART_SIZE, PartBuffer};
use shared::reports::{ReportContent, content, file};
use shared::store::CampaignStats;

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

const CSV_ROWS: usize = 100_000;
/// Issue 10's target for the 100,000-row CSV.
const CSV_PEAK_TARGET_MIB: f64 = 64.0;

const MIB: f64 = 1024.0 * 1024.0;

/// A campaign-performance report of `rows` campaigns, laid out by the worker's own
/// `reports::content::campaign_performance`; names mix scripts, as customers' do.
fn campaign_performance(rows: usize) -> ReportContent {
    let names = [
        "spring sale",
        "Весенняя распродажа",
        "Ανοιξιάτικες εκπτώσεις",
        "rentrée",
    ];
    let campaigns: Vec<CampaignStats> = (0..rows)
        .map(|n| {
            let recipients = i64::try_from(1_000 + n % 9_000).unwrap();
            let delivered = recipients * 97 / 100;
            let opened = delivered / 3;
            CampaignStats {
                campaign: format!("{} {n}", names[n % names.len()]),
                recipients,
                sent: recipients,
                delivered,
                opened,
                clicked: opened / 4,
                bounced: recipients - delivered,
                failed: 0,
            }
        })
        .collect();
    let daily = (1..=30)
        .map(|d| (format!("2026-11-{d:02}"), (d * 37 % 23 + 5) * 40))
        .collect();
    content::campaign_performance(&campaigns, daily)
}

/// Streams the CSV as the report worker does, parts dropped as they are "uploaded".
/// Returns the file's size.
fn write_csv(content: &ReportContent) -> u64 {
    futures::executor::block_on(async {
        let mut buffer = PartBuffer::new(CountingSink::default(), PART_SIZE);
        let rows = file::write_csv(&mut buffer, &content.columns, &content.rows)
            .await
            .unwrap();
        assert_eq!(rows, content.rows.len() as u64);
        let (_sink, bytes) = buffer.finish().await.unwrap();
        bytes
    })
}

fn heading() -> ReportHeading {
    ReportHeading {
        title: "Campaign performance".into(),
        organization: "acme".into(),
        period: "2026-11-01 00:00 UTC – 2026-12-01 00:00 UTC".into(),
        generated_at: "2026-12-01T02:00:00Z".into(),
    }
}

/// Builds the content and writes the file once with the heap's high-water mark reset, and
/// prints the peak: the figure the benches' timings do not give. Returns the peak in MiB.
fn print_peak_heap(case: &str, rows: usize, write: impl FnOnce(&ReportContent) -> u64) -> f64 {
    HEAP.reset_peak_usage();
    let before = HEAP.current_usage();
    let content = campaign_performance(rows);
    let held = HEAP.current_usage().saturating_sub(before);
    let peak_before_writing = HEAP.peak_usage();
    let bytes = write(&content);
    let peak = HEAP.peak_usage().saturating_sub(before);
    drop(content);
    let mib = |n: usize| n as f64 / MIB;
    eprintln!(
        "{case}: peak heap {:.1} MiB — the {rows} rows held as the worker holds them {:.1} MiB, \
         writing the {:.1} MiB file added {:.1} MiB at most (building the rows peaked at {:.1} MiB)",
        mib(peak),
        mib(held),
        bytes as f64 / MIB,
        mib(peak.saturating_sub(held)),
        mib(peak_before_writing.saturating_sub(before)),
    );
    mib(peak)
}

fn csv_report(c: &mut Criterion) {
    let peak = print_peak_heap("reports/csv_100k_rows", CSV_ROWS, write_csv);
    let met = if peak <= CSV_PEAK_TARGET_MIB {
        "met"
    } else {
        "MISSED"
    };
    eprintln!("reports/csv_100k_rows: target peak ≤ {CSV_PEAK_TARGET_MIB} MiB (issue 10): {met}");
    let content = campaign_performance(CSV_ROWS);
    let mut group = c.benchmark_group("reports");
    group.sample_size(10);
    group.throughput(Throughput::Elements(CSV_ROWS as u64));
    group.bench_function("csv_100k_rows", |b| {
        b.iter(|| write_csv(black_box(&content)));
    });
    group.finish();
}

fn pdf_report(c: &mut Criterion) {
    let render = |content: &ReportContent| render_report(&heading(), content).unwrap().len() as u64;
    print_peak_heap("reports/pdf_10k_rows", MAX_PDF_ROWS, render);
    let content = campaign_performance(MAX_PDF_ROWS);
    let mut group = c.benchmark_group("reports");
    group.sample_size(10);
    group.throughput(Throughput::Elements(MAX_PDF_ROWS as u64));
    group.bench_function("pdf_10k_rows", |b| {
        b.iter(|| render(black_box(&content)));
    });
    group.finish();
}

criterion_group!(benches, csv_report, pdf_report);
criterion_main!(benches);
