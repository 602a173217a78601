//! The cold-start benchmark: starts each release-built function binary the way Lambda does
//! (its template environment, `AWS_LAMBDA_RUNTIME_API` pointing at [`RuntimeApi`]) and
//! records init time (process start → first `next` poll), the first invocation's duration
//! with the function's first sample event from `events/`, and peak RSS (`VmHWM`) after it —
//! the median of `runs` fresh processes — beside the same figures for `hello-floor`, whose
//! runs alternate with each function's.
//!
//! Resources live on the local AWS endpoint (moto), created as the local runner creates
//! them, so init does what it does on Lambda: read its environment, prepare its clients.

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
    /// The floor's medians over the runs interleaved with these (for the floor itself, its
    /// own figures): the ratios are to these.
    pub floor_init: Duration,
    pub floor_rss_kib: u64,
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

    // The floor runs alternate with each function's runs, and each function's ratios are
    // to the floor runs beside its own: on a shared machine, load drifts over the minutes
    // a whole table takes, and a floor measured once at the start would carry that drift
    // into every ratio.
    let floor = Binary::new(options, FLOOR, BTreeMap::new(), "admin-page")?;
    let mut all_floor_runs = Runs::default();
    let mut functions = Vec::new();
    for function in &template.functions {
        if !options.only.is_empty() && !options.only.contains(&function.binary) {
            continue;
        }
        let vars =
            local::function_environment(function, &template, &names, &base_env, &BTreeMap::new());
        let binary = Binary::new(
            options,
            &function.binary,
            vars.into_iter().collect(),
            &function.binary,
        )?;
        let (mut runs, mut floor_runs) = (Runs::default(), Runs::default());
        for _ in 0..options.runs {
            floor_runs.push(floor.run_once().await?);
            runs.push(binary.run_once().await?);
        }
        let floor_figures = floor_runs.figures(&floor);
        all_floor_runs.extend(floor_runs);
        functions.push(runs.figures(&binary).beside(&floor_figures));
    }
    let floor = all_floor_runs.figures(&floor);
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

/// A binary to start, with its environment and first sample event.
struct Binary {
    name: String,
    path: PathBuf,
    bytes: u64,
    vars: BTreeMap<String, String>,
    event: Vec<u8>,
}

impl Binary {
    fn new(
        options: &Options,
        name: &str,
        vars: BTreeMap<String, String>,
        events_of: &str,
    ) -> anyhow::Result<Self> {
        let path = options.bin_dir.join(name);
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("{} (build it with scripts/coldstart.sh)", path.display()))?
            .len();
        let event = std::fs::read(first_event(&options.events, events_of)?)?;
        Ok(Self {
            name: name.to_owned(),
            path,
            bytes,
            vars,
            event,
        })
    }

    /// One fresh process: init, its first invocation, then its peak RSS.
    async fn run_once(&self) -> anyhow::Result<Run> {
        let api = RuntimeApi::start(self.event.clone()).await?;
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&self.path)
            .env_clear()
            .envs(&self.vars)
            .envs(lambda_environment(&self.name, &api))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.path.display()))?;
        let pid = child.id().context("no pid")?;
        let timeline = api.wait_answered(Duration::from_secs(30)).await;
        let peak_rss_kib = peak_rss_kib(pid);
        let _ = child.kill().await;
        let ready = timeline
            .ready_at
            .with_context(|| format!("{} never polled for work (init failed?)", self.name))?;
        let answered = timeline.answered_at.with_context(|| {
            format!("{} did not answer its first invocation in 30 s", self.name)
        })?;
        Ok(Run {
            init: ready - started,
            first_invocation: answered - ready,
            peak_rss_kib: peak_rss_kib?,
            error: timeline.error,
        })
    }
}

struct Run {
    init: Duration,
    first_invocation: Duration,
    peak_rss_kib: u64,
    error: Option<String>,
}

#[derive(Default)]
struct Runs {
    inits: Vec<Duration>,
    invocations: Vec<Duration>,
    rss: Vec<u64>,
    errors: Vec<String>,
}

impl Runs {
    fn push(&mut self, run: Run) {
        self.inits.push(run.init);
        self.invocations.push(run.first_invocation);
        self.rss.push(run.peak_rss_kib);
        self.errors.extend(run.error);
    }

    fn extend(&mut self, other: Runs) {
        self.inits.extend(other.inits);
        self.invocations.extend(other.invocations);
        self.rss.extend(other.rss);
        self.errors.extend(other.errors);
    }

    fn figures(&self, binary: &Binary) -> Figures {
        let init = median(&self.inits);
        let peak_rss_kib = median(&self.rss);
        Figures {
            function: binary.name.clone(),
            init,
            first_invocation: median(&self.invocations),
            peak_rss_kib,
            binary_bytes: binary.bytes,
            floor_init: init,
            floor_rss_kib: peak_rss_kib,
            errors: self.errors.clone(),
        }
    }
}

impl Figures {
    /// These figures with their ratios taken to `floor` (the floor runs beside them).
    fn beside(self, floor: &Figures) -> Self {
        Self {
            floor_init: floor.init,
            floor_rss_kib: floor.peak_rss_kib,
            ..self
        }
    }

    pub fn init_ratio(&self) -> f64 {
        millis(self.init) / millis(self.floor_init)
    }

    #[allow(clippy::cast_precision_loss)]
    pub fn rss_ratio(&self) -> f64 {
        self.peak_rss_kib as f64 / self.floor_rss_kib as f64
    }
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

fn median<T: Ord + Copy>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
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
                figures.init_ratio(),
                millis(figures.first_invocation),
                mib(figures.peak_rss_kib * 1024),
                figures.rss_ratio(),
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
                "init_ratio_to_floor": f.init_ratio(),
                "rss_ratio_to_floor": f.rss_ratio(),
                "errors": f.errors,
            })
        };
        serde_json::json!({
            "floor": row(&self.floor),
            "functions": self.functions.iter().map(row).collect::<Vec<_>>(),
        })
    }
}
