//! The cold-start benchmark: starts each release-built function binary the way Lambda does
//! (its template environment, `AWS_LAMBDA_RUNTIME_API` pointing at [`RuntimeApi`]) and
//! records init time (process start → first `next` poll), the first invocation's duration
//! with the function's first sample event from `events/`, and peak RSS (`VmHWM`) after it —
//! the median of `runs` fresh processes — beside the same figures for `hello-floor`.
//!
//! Resources live on the local AWS endpoint (moto), created as the local runner creates
//! them, so init does what it does on Lambda: read secrets, build clients.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use local::template::BundleTemplate;
use shared::aws::AwsClients;
use shared::config::Env;

use crate::runtime_api::RuntimeApi;

pub const FLOOR: &str = "hello-floor";

#[derive(Debug, Clone, clap::Parser)]
#[command(about = "Cold-start benchmark of every Herald function against a hello-world floor")]
pub struct Options {
    /// Where the release binaries are (`cargo build --release`).
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    #[arg(long, default_value = "template.yaml")]
    pub template: PathBuf,
    #[arg(long, default_value = "events")]
    pub events: PathBuf,
    /// Fresh processes per function; the table shows medians.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Only these functions (binary names); all by default.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Medians over the runs of one function.
#[derive(Debug, Clone)]
pub struct Figures {
    pub function: String,
    pub init: Duration,
    pub first_invocation: Duration,
    pub peak_rss_kib: u64,
    pub binary_bytes: u64,
    /// Set when any run's init or invocation reported an error (figures still count).
    pub errors: Vec<String>,
}

pub struct Report {
    pub floor: Figures,
    pub functions: Vec<Figures>,
}

/// # Errors
/// When the template, a binary or the local AWS endpoint is missing, or a run times out.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let template = BundleTemplate::load(&options.template)?;
    let base_env = Env::from_process();
    base_env
        .required("AWS_ENDPOINT_URL")
        .context("the benchmark needs AWS_ENDPOINT_URL (moto: scripts/services.sh start)")?;
    let aws = AwsClients::load(&base_env).await;
    let mut secret_values = BTreeMap::new();
    if let Some(uri) = base_env.optional("MONGODB_URI") {
        secret_values.insert("MONGODB_URI".to_owned(), uri);
    }
    let prefix = format!("cs{}", std::process::id());
    let names = local::resources::create_all(&template, &aws, &prefix, &secret_values).await?;

    let floor_event = std::fs::read(first_event(&options.events, "admin-page")?)?;
    let floor = measure(options, FLOOR, &BTreeMap::new(), &floor_event).await?;
    let mut functions = Vec::new();
    for function in &template.functions {
        if !options.only.is_empty() && !options.only.contains(&function.binary) {
            continue;
        }
        let vars =
            local::function_environment(function, &template, &names, &base_env, &BTreeMap::new());
        let event = std::fs::read(first_event(&options.events, &function.binary)?)?;
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        functions.push(measure(options, &function.binary, &vars, &event).await?);
    }
    Ok(Report { floor, functions })
}

/// The function's first sample event, by file name.
fn first_event(events: &Path, binary: &str) -> anyhow::Result<PathBuf> {
    let dir = events.join(binary);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .with_context(|| format!("no sample event in {}", dir.display()))
}

async fn measure(
    options: &Options,
    binary: &str,
    vars: &BTreeMap<String, String>,
    event: &[u8],
) -> anyhow::Result<Figures> {
    let path = options.bin_dir.join(binary);
    let binary_bytes = std::fs::metadata(&path)
        .with_context(|| format!("{} (build it with scripts/coldstart.sh)", path.display()))?
        .len();
    let mut inits = Vec::new();
    let mut invocations = Vec::new();
    let mut rss = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..options.runs {
        let api = RuntimeApi::start(event.to_vec()).await?;
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&path)
            .env_clear()
            .envs(vars)
            .envs(lambda_environment(binary, &api))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        let pid = child.id().context("no pid")?;
        let timeline = api.wait_answered(Duration::from_secs(30)).await;
        let peak = peak_rss_kib(pid);
        let _ = child.kill().await;
        let ready = timeline
            .ready_at
            .with_context(|| format!("{binary} never polled for work (init failed?)"))?;
        let answered = timeline
            .answered_at
            .with_context(|| format!("{binary} did not answer its first invocation in 30 s"))?;
        inits.push(ready - started);
        invocations.push(answered - ready);
        rss.push(peak?);
        errors.extend(timeline.error);
    }
    Ok(Figures {
        function: binary.to_owned(),
        init: median(&mut inits),
        first_invocation: median(&mut invocations),
        peak_rss_kib: median(&mut rss),
        binary_bytes,
        errors,
    })
}

/// CA bundles as distributions ship them: Lambda's AL2023 image, then Debian's.
const CA_BUNDLES: [&str; 2] = [
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/certs/ca-certificates.crt",
];

/// What Lambda sets for every function (besides the template's variables), plus one thing
/// for the file system this runs on: the AWS SDK's HTTPS client loads the platform's root
/// certificates at init. On Lambda's AL2023 image that is one bundle file; on Debian the
/// probe also reads every file of `/etc/ssl/certs` (292 on the dev VM), which Lambda never
/// does. `SSL_CERT_FILE` points the loader at the bundle alone, so init is measured as it
/// would run on Lambda.
fn lambda_environment(binary: &str, api: &RuntimeApi) -> Vec<(String, String)> {
    let bundle = CA_BUNDLES
        .iter()
        .find(|path| Path::new(path).exists())
        .map(|path| ("SSL_CERT_FILE", (*path).to_owned()));
    [
        ("AWS_LAMBDA_RUNTIME_API", api.addr.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", binary.to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".to_owned()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{binary}")),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "coldstart".to_owned()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
        ("_HANDLER", "bootstrap".to_owned()),
        ("LAMBDA_TASK_ROOT", "/var/task".to_owned()),
        ("TZ", ":UTC".to_owned()),
    ]
    .into_iter()
    .chain(bundle)
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

/// The process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")
}

fn median<T: Ord + Copy>(values: &mut [T]) -> T {
    values.sort_unstable();
    values[values.len() / 2]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[allow(clippy::cast_precision_loss)]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Report {
    /// A Markdown table, each function beside the floor.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| function | init ms | init ×floor | first invocation ms | peak RSS MiB | RSS ×floor | binary MiB |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for figures in std::iter::once(&self.floor).chain(&self.functions) {
            out.push_str(&format!(
                "| {}{} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} | {:.1} |\n",
                figures.function,
                if figures.errors.is_empty() {
                    ""
                } else {
                    " (errors)"
                },
                millis(figures.init),
                millis(figures.init) / millis(self.floor.init),
                millis(figures.first_invocation),
                mib(figures.peak_rss_kib * 1024),
                mib(figures.peak_rss_kib * 1024) / mib(self.floor.peak_rss_kib * 1024),
                mib(figures.binary_bytes),
            ));
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let row = |f: &Figures| {
            serde_json::json!({
                "function": f.function,
                "init_ms": millis(f.init),
                "first_invocation_ms": millis(f.first_invocation),
                "peak_rss_kib": f.peak_rss_kib,
                "binary_bytes": f.binary_bytes,
                "errors": f.errors,
            })
        };
        serde_json::json!({
            "floor": row(&self.floor),
            "functions": self.functions.iter().map(row).collect::<Vec<_>>(),
        })
    }
}
