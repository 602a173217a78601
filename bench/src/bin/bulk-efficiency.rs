//! `bulk-efficiency`: starts the bundle in-process against local services (moto and a
//! MongoDB-compatible server, e.g. from `scripts/services.sh start`), sends one bulk email
//! (and optionally one bulk SMS) through the API and prints what it took: provider calls, SQS
//! messages, DynamoDB item writes, per message.
//!
//! `cargo run -p herald-bench --bin bulk-efficiency -- --recipients 10000 [--cc boss@example.com]
//! [--body-bytes 60000 [--personalized]]`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bench::bulk_efficiency;
use clap::Parser;
use local::BundleOptions;

#[derive(Debug, Parser)]
#[command(about = "Provider calls, SQS messages and DynamoDB writes per bulk send")]
struct Args {
    /// Recipients of the bulk send.
    #[arg(long, default_value_t = 10_000)]
    recipients: usize,
    /// Copy every email to this address (and make every hundredth recipient that address).
    #[arg(long)]
    cc: Option<String>,
    /// An HTML body of about this many bytes (0: a short text body only).
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
    /// Personalize the body: a greeting by name, an `#if` and an `#each` per recipient.
    #[arg(long)]
    personalized: bool,
    /// Also send a bulk SMS to this many recipients (0: no SMS run).
    #[arg(long, default_value_t = 0)]
    sms_recipients: usize,
    /// The SMS rate per organization and second for the SMS run (the template's default
    /// paces 10,000 SMS over 17 minutes; the counts do not depend on it).
    #[arg(long, default_value_t = 200)]
    sms_rate: u32,
    /// Give up when not every message is final after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_seconds: u64,
    /// Every function's `Timeout` for this run (0 keeps the template's). The runner stops an
    /// invocation at its `Timeout`, as Lambda does; moto answers about a hundred requests a
    /// second where DynamoDB answers thousands, so a batch of ten 1,000-email jobs, a few
    /// seconds of writes on AWS, can take minutes here, and with the template's 60 s the
    /// run would measure moto's throughput instead of Herald's calls. Kept under the send
    /// queue's 360 s visibility timeout, past which SQS would deliver a running job again.
    #[arg(long, default_value_t = 300)]
    function_timeout_seconds: u64,
    /// The moto endpoint (`eval "$(scripts/services.sh env)"` sets it, with AWS credentials).
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
    // The functions' warnings (retries, refused webhooks) explain a slow or stuck run.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let prefix = format!("bulk{}", chrono::Utc::now().format("%H%M%S"));
    let mut options = BundleOptions::new(&args.template, &prefix);
    // Counts are measured against the sandboxes, never the real providers.
    for name in [
        "SENDGRID_API_KEY",
        "TWILIO_ACCOUNT_SID",
        "STRIPE_SECRET_KEY",
    ] {
        options.env.remove(name);
    }
    options.env.extend(BTreeMap::from([
        ("AWS_ENDPOINT_URL".to_owned(), args.aws_endpoint),
        ("MONGODB_URI".to_owned(), args.mongodb_uri),
    ]));
    options.overrides.extend(BTreeMap::from([
        ("MONGODB_DATABASE".to_owned(), prefix.clone()),
        ("SMS_RATE_PER_SECOND".to_owned(), args.sms_rate.to_string()),
    ]));
    options.run_schedules = false;
    if args.function_timeout_seconds > 0 {
        let template = local::template::BundleTemplate::load(&args.template)?;
        let timeout = Duration::from_secs(args.function_timeout_seconds);
        options.timeouts = template
            .functions
            .into_iter()
            .map(|function| (function.binary, timeout))
            .collect();
    }
    let bundle = local::start(options).await?;
    let timeout = Duration::from_secs(args.timeout_seconds);

    let machine = format!(
        "{} {}, {} CPUs",
        std::env::consts::OS,
        std::env::consts::ARCH,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "bulk-efficiency {} ({machine}), resources prefixed {prefix}\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let shape = bulk_efficiency::EmailShape {
        cc: args.cc.clone(),
        body_bytes: args.body_bytes,
        personalized: args.personalized,
    };
    let email = bulk_efficiency::bulk_email(&bundle, args.recipients, &shape, timeout).await?;
    println!("{}", email.table());
    if args.sms_recipients > 0 {
        let sms = bulk_efficiency::bulk_sms(&bundle, None, args.sms_recipients, timeout).await?;
        println!("{}", sms.table());
    }
    Ok(())
}
