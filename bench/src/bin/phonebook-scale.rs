//! `phonebook-scale`: a phonebook of `--contacts` contacts end to end up to its records
//! (issue 20 §4): the CSV import (one upload; its chunks written by the bulk worker), a send
//! to the phonebook (the API's latency), and the fan-out that makes a record per contact, with
//! the fan-out's invocation dropped once `--kill-at` of the contacts have records and the job
//! redelivered by SQS. It prints the import time, the send's latency, the fan-out time, the
//! process's peak resident memory after each phase, and checks that every contact has exactly
//! one record (the bulk's progress counts the records in its id range; the ids are derived
//! from the bulk and the number, so a second record for a contact would be a second item).
//!
//! The bundle runs in-process against local services (`scripts/services.sh start`), without
//! the SMS worker: the records stay `queued`, so what is measured is the import and the
//! fan-out, not Twilio.
//!
//! `cargo run --release -p herald-bench --bin phonebook-scale -- --contacts 100000`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use local::BundleOptions;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Import, send to and fan out a phonebook of many contacts")]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    contacts: usize,
    /// Share of the contacts with records when the fan-out's invocation is dropped.
    #[arg(long, default_value_t = 0.5)]
    kill_at: f64,
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    aws_endpoint: String,
    #[arg(long, env = "MONGODB_URI")]
    mongodb_uri: String,
    #[arg(long, default_value = "template.yaml")]
    template: PathBuf,
}

/// North American numbers the phone-number rules accept: ten area codes × 555-0000…9999.
const AREA_CODES: [u32; 10] = [415, 212, 646, 312, 617, 206, 303, 404, 512, 702];

fn number(i: usize) -> String {
    format!("+1{}555{:04}", AREA_CODES[i / 10_000 % 10], i % 10_000)
}

/// The process's peak resident set (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.contacts <= 100_000, "at most 100,000 distinct numbers");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let prefix = format!("pb{}", chrono::Utc::now().format("%H%M%S"));
    let mut options = BundleOptions::new(&args.template, &prefix);
    for name in [
        "SENDGRID_API_KEY",
        "TWILIO_ACCOUNT_SID",
        "STRIPE_SECRET_KEY",
    ] {
        options.env.remove(name);
    }
    options.env.extend(BTreeMap::from([
        ("AWS_ENDPOINT_URL".to_owned(), args.aws_endpoint.clone()),
        ("MONGODB_URI".to_owned(), args.mongodb_uri.clone()),
    ]));
    options
        .overrides
        .insert("MONGODB_DATABASE".to_owned(), prefix.clone());
    options.poll_queues = false;
    options.run_schedules = false;
    // moto is far slower than DynamoDB: a job of 10,000 puts must not meet the Timeout here.
    let template = local::template::BundleTemplate::load(&args.template)?;
    options.timeouts = template
        .functions
        .into_iter()
        .map(|f| (f.binary, Duration::from_secs(900)))
        .collect();
    let bundle = local::start(options).await?;
    let bulk_queue = bundle.resource("SmsBulkQueue").to_owned();
    // A dropped invocation's job comes back after this.
    bundle
        .aws
        .sqs
        .set_queue_attributes()
        .queue_url(&bulk_queue)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "5".to_owned(),
        )
        .send()
        .await?;
    let poller = bundle
        .pollers
        .iter()
        .find(|p| p.function == "bulk-worker" && p.queue_url == bulk_queue)
        .context("the bulk worker polls the SMS bulk queue")?;
    let org = format!("pb{}", chrono::Utc::now().timestamp_millis());
    let token = bundle
        .auth
        .mint("phonebook-scale", Some(&org), &["admin"], 3600)?;
    let http = reqwest::Client::new();
    let get = |path: String| {
        let request = http.get(bundle.url(&path)).bearer_auth(&token);
        async move { anyhow::Ok(request.send().await?.json::<Value>().await?) }
    };

    let book: Value = http
        .post(bundle.url("/services/phonebooks/"))
        .bearer_auth(&token)
        .json(&json!({"name": "Everyone"}))
        .send()
        .await?
        .json()
        .await?;
    let book_id = book["id"].as_str().context("phonebook made")?.to_owned();
    let mut csv = String::from("phone,name,plan\n");
    for i in 0..args.contacts {
        csv.push_str(&format!("{},Guest {i},plan-{}\n", number(i), i % 3));
    }
    let csv_bytes = csv.len();

    // The import: one upload, then its chunks through the bulk worker.
    let started = Instant::now();
    let upload = http
        .post(bundle.url(&format!("/services/phonebooks/{book_id}/contacts/")))
        .bearer_auth(&token)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await?;
    let upload_status = upload.status().as_u16();
    let upload: Value = upload.json().await?;
    let upload_latency = started.elapsed();
    anyhow::ensure!(upload_status == 202, "import refused: {upload}");
    let import_id = upload["import_id"].as_str().context("an import id")?;
    let import_path = format!("/services/phonebooks/{book_id}/imports/{import_id}/");
    loop {
        poller.poll_once().await?;
        let import = get(import_path.clone()).await?;
        if import["state"] == "done" {
            anyhow::ensure!(
                import["contact_count"] == args.contacts,
                "import ended with {import}"
            );
            break;
        }
    }
    let import_time = started.elapsed();
    let import_peak = peak_rss_mib();

    // The send: the API's latency, then the fan-out, one invocation dropped on the way.
    let started = Instant::now();
    let sent: Value = http
        .post(bundle.url("/services/sms/"))
        .bearer_auth(&token)
        .json(&json!({"phonebook_id": book_id, "body": "Hi {{name}}, your {{plan}} renews soon"}))
        .send()
        .await?
        .json()
        .await?;
    let send_latency = started.elapsed();
    let bulk_id = sent["bulk_id"].as_str().context("a bulk id")?.to_owned();
    let progress_path = format!("/services/sms/bulk/{bulk_id}/");
    let records = |progress: &Value| -> u64 {
        progress["statuses"]
            .as_object()
            .map_or(0, |s| s.values().filter_map(Value::as_u64).sum())
    };
    let kill_at = (args.contacts as f64 * args.kill_at) as u64;
    let mut killed_at = None;
    let fan_out_started = Instant::now();
    loop {
        if killed_at.is_none() {
            let watch = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let progress = get(progress_path.clone()).await?;
                    let made = records(&progress);
                    if made >= kill_at && made > progress["created"].as_u64().unwrap_or(0) {
                        return anyhow::Ok((made, progress["created"].as_u64().unwrap_or(0)));
                    }
                }
            };
            tokio::select! {
                polled = poller.poll_once() => { polled?; }
                caught = watch => { killed_at = Some(caught?); }
            }
        } else {
            poller.poll_once().await?;
        }
        let progress = get(progress_path.clone()).await?;
        if progress["state"] == "created" {
            let made = records(&progress);
            let fan_out = fan_out_started.elapsed();
            println!(
                "machine: {} {}, {} cores",
                std::env::consts::OS,
                std::env::consts::ARCH,
                std::thread::available_parallelism().map_or(0, usize::from)
            );
            println!(
                "import of {} contacts ({:.1} MiB of CSV): upload answered {} in {} ms, \
                 {} chunks written in {:.1} s; peak RSS {import_peak:.0} MiB",
                args.contacts,
                csv_bytes as f64 / 1_048_576.0,
                upload_status,
                upload_latency.as_millis(),
                upload["chunks"],
                import_time.as_secs_f64(),
            );
            println!(
                "send to the phonebook: answered in {} ms; fan-out to {made} records in \
                 {:.1} s ({:.0} records/s); peak RSS {:.0} MiB",
                send_latency.as_millis(),
                fan_out.as_secs_f64(),
                made as f64 / fan_out.as_secs_f64(),
                peak_rss_mib()
            );
            match killed_at {
                Some((made, checkpoint)) => println!(
                    "fan-out invocation dropped with {made} records made and {checkpoint} \
                     checkpointed; redelivered"
                ),
                None => println!("the fan-out ended before it could be dropped"),
            }
            anyhow::ensure!(
                made == args.contacts as u64
                    && progress["total"] == args.contacts
                    && progress["created"] == args.contacts,
                "not exactly one record per contact: {progress}"
            );
            println!("every contact has exactly one record: {progress}");
            return Ok(());
        }
    }
}
