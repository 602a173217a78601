//! `sms-rate-cap`: does the per-organization SMS cap hold over every sliding second while
//! many workers send for one organization at once (issue 20)?
//!
//! Starts the bundle in-process against local services (moto and a MongoDB-compatible
//! server, e.g. from `scripts/services.sh start`) without queue pollers, accepts `--sms`
//! SMS for one organization through the API, then runs `--workers` SMS-worker invocations
//! at once, each with an equal share of the records (then drains what they handed back
//! through the queue), and reads the times the Twilio sandbox received the sends. It prints
//! the most sends any sliding second held (goal: at most the cap, allowing a few ms of
//! clock jitter) and the rate achieved from the first send to the last (goal: at least
//! 90 % of it where the machine can send that fast; a cap far above what it can send shows
//! that ceiling).
//!
//! `cargo run --release -p herald-bench --bin sms-rate-cap -- --sms 1000 --cap 50 --workers 20`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use local::BundleOptions;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "The most SMS any sliding second holds under concurrent workers")]
struct Args {
    #[arg(long, default_value_t = 1_000)]
    sms: usize,
    /// `SMS_RATE_PER_SECOND`: sends per organization and second.
    #[arg(long, default_value_t = 50)]
    cap: u32,
    /// SMS-worker invocations running at once (the template's reserved concurrency is 20).
    #[arg(long, default_value_t = 20)]
    workers: usize,
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    aws_endpoint: String,
    #[arg(long, env = "MONGODB_URI")]
    mongodb_uri: String,
    #[arg(long, default_value = "template.yaml")]
    template: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let prefix = format!("rate{}", chrono::Utc::now().format("%H%M%S"));
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
    // The longest wait the worker allows; what it hands back is drained below.
    let wait = "30".to_owned();
    options.overrides.extend(BTreeMap::from([
        ("MONGODB_DATABASE".to_owned(), prefix.clone()),
        ("SMS_RATE_PER_SECOND".to_owned(), args.cap.to_string()),
        ("SMS_RATE_WAIT_SECONDS".to_owned(), wait),
    ]));
    options.poll_queues = false;
    options.run_schedules = false;
    let bundle = local::start(options).await?;

    let org = format!("rate{}", chrono::Utc::now().timestamp_millis());
    let token = bundle
        .auth
        .mint("sms-rate-cap", Some(&org), &["admin"], 3600)?;
    let http = reqwest::Client::new();
    let mut ids = Vec::with_capacity(args.sms);
    for n in 0..args.sms {
        let reply: Value = http
            .post(bundle.url("/services/sms/"))
            .bearer_auth(&token)
            .json(&json!({"to": format!("+1415555{:04}", n % 10_000), "body": format!("Cap {n}")}))
            .send()
            .await?
            .json()
            .await?;
        ids.push(reply["id"].as_str().context("accepted")?.to_owned());
    }

    // Each worker gets a share in one job of its own (the API made a job per SMS).
    bench::out_of_send_jobs(&bundle, &ids).await?;
    let worker = bundle
        .pollers
        .iter()
        .find(|p| p.function == "sms-worker")
        .context("the sms-worker runs")?;
    let share = args.sms.div_ceil(args.workers);
    let started = Instant::now();
    let events = ids
        .chunks(share)
        .enumerate()
        .map(|(n, chunk)| {
            serde_json::from_value(json!({"Records": [{
                "messageId": format!("m{n}"),
                "receiptHandle": format!("r{n}"),
                "body": json!({"v": 1, "org": org, "kind": "sms.send", "ids": chunk}).to_string(),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
            }]}))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let invocations = events.into_iter().map(|event| worker.handler.call(event));
    // Polled together: the invocations run at once, as concurrent Lambdas do.
    let responses = futures::future::join_all(invocations).await;
    // Jobs handed back (a worker's wait ran out) go through the queue as on AWS.
    // (A handed-back job is delayed a second: three empty one-second polls mean none is left.)
    let mut empty_polls = 0;
    while empty_polls < 3 {
        empty_polls = if worker.poll_once().await? == 0 {
            empty_polls + 1
        } else {
            0
        };
    }
    let wall = started.elapsed();
    let failed: usize = responses.iter().map(|r| r.batch_item_failures.len()).sum();

    let twilio = bundle
        .twilio
        .as_deref()
        .context("the Twilio sandbox runs")?;
    let mut sent: Vec<i64> = twilio
        .inbox()
        .iter()
        .filter_map(|m| m["received_at"].as_str())
        .filter_map(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        .map(|at| at.timestamp_millis())
        .collect();
    sent.sort_unstable();
    let busiest = busiest_window(&sent, 1_000);
    let busiest_less_jitter = busiest_window(&sent, 1_000 - CLOCK_JITTER_MS);
    let span_ms = sent.last().zip(sent.first()).map_or(0, |(l, f)| l - f);
    // Sends after the first, over the time they took: the rate the cap let through.
    let rate = (sent.len().saturating_sub(1)) as f64 / (span_ms.max(1) as f64 / 1000.0);
    println!(
        "machine: {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    println!(
        "{} SMS, cap {}/s, {} workers at once: {} sent, {} jobs failed, wall {:.1} s",
        args.sms,
        args.cap,
        args.workers,
        sent.len(),
        failed,
        wall.as_secs_f64()
    );
    println!(
        "busiest sliding second: {busiest} sends, {busiest_less_jitter} less {CLOCK_JITTER_MS} ms of \
         clock jitter (cap {}); achieved rate {rate:.1}/s ({:.0} % of the cap)",
        args.cap,
        rate / f64::from(args.cap) * 100.0
    );
    anyhow::ensure!(sent.len() == args.sms, "not every SMS was sent");
    Ok(())
}

/// Sends booked exactly a second apart reach the provider a little either side of it: the
/// worker may wake up to 20 ms late before it books again (`LATE_GRACE_MS`), and the call
/// and the provider's clock add a few ms. A window that much shorter counts what the cap
/// promises.
const CLOCK_JITTER_MS: i64 = 25;

/// The most of the sorted `times` (unix ms) any half-open window of `window_ms` holds.
fn busiest_window(times: &[i64], window_ms: i64) -> usize {
    let mut start = 0;
    let mut most = 0;
    for (end, at) in times.iter().enumerate() {
        while times[start] <= at - window_ms {
            start += 1;
        }
        most = most.max(end + 1 - start);
    }
    most
}
