//! Writes a 100,000-row report CSV (1,000,000 with `-- 1000000`) through the same CSV
//! encoder and part buffer the report worker streams to S3, into a sink that only counts
//! the parts, and reports the peak memory: the buffer's high-water mark and the process's
//! peak resident set (`VmHWM` from /proc, Linux).
//!
//! `cargo run -p herald-shared --example csv_peak_memory [-- <rows>]`
//!
//! Peak RSS stays flat as rows grow (try 100000 and 1000000): the file is never held.

use shared::reports::upload::{CountingSink, PART_SIZE, PartBuffer};
use shared::reports::{Cell, file};

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let rows: i64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let before = peak_rss_kib();
    let mut buffer = PartBuffer::new(CountingSink::default(), PART_SIZE);
    let columns = ["campaign", "recipients", "delivery_rate"].map(str::to_owned);
    let written = file::write_csv(
        &mut buffer,
        &columns,
        (0..rows).map(|n| {
            [
                Cell::text(format!("campaign {n} — Кампания")),
                Cell::Int(n),
                Cell::Percent(0.97),
            ]
        }),
    )
    .await?;
    let peak_buffer = buffer.peak_buffered;
    let (sink, bytes) = buffer.finish().await?;
    println!("rows written:        {written}");
    println!(
        "file size:           {bytes} bytes in {} parts",
        sink.parts.len()
    );
    println!("part buffer peak:    {peak_buffer} bytes (part size {PART_SIZE})");
    if let (Some(before), Some(after)) = (before, peak_rss_kib()) {
        println!("peak RSS before:     {before} KiB");
        println!("peak RSS after:      {after} KiB");
    }
    Ok(())
}
