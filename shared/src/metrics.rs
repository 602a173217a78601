//! CloudWatch metrics as Embedded Metric Format (EMF) log lines (SPEC §13, issue 18).
//!
//! A function records samples while it works ([`count`], [`milliseconds`]); they are kept
//! for the invocation ([`Recorder::scope`], which [`crate::logging::Invocation`] opens) and
//! written once when it ends, as one JSON line per dimension set and organization. On
//! Lambda a JSON line on stdout is enough: CloudWatch Logs extracts the metrics.
//!
//! Hand-written on `serde_json` rather than `metrics_cloudwatch_embedded`: that crate sits
//! on the `metrics` facade's one global recorder, installed at init, which the local runner
//! (every function of the bundle in one process) would share between functions and
//! invocations. Here a recorder lives in one invocation's task, costs nothing until a
//! sample is recorded, and a flush is a write to stdout after the response is made.
//!
//! Organization is a property (searchable in Logs Insights), never a dimension: every
//! distinct dimension value makes a metric of its own (cardinality, cost).
//!
//! The format and its limits, which [`validate`] checks (the local runner refuses a
//! document CloudWatch would not extract from):
//! <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

/// A DimensionSet holds at most 9 keys (the specification's schema, `maxItems: 9`).
pub const MAX_DIMENSIONS: usize = 9;
/// A directive defines at most 100 metrics; a metric's value array holds at most 100 values.
pub const MAX_METRICS: usize = 100;
pub const MAX_VALUES: usize = 100;
/// A log event is at most 256 KB.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The namespace when `METRICS_NAMESPACE` is not set (the template sets `Herald/<Stage>`).
pub const DEFAULT_NAMESPACE: &str = "Herald";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Milliseconds => "Milliseconds",
        }
    }
}

/// A metric: its name, unit and dimension names. The dimensions are fixed per metric, so
/// alarms and the dashboard address one dimension set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: Unit,
    pub dimensions: &'static [&'static str],
    /// Further dimension sets (subsets of `dimensions`) the metric is also published under,
    /// so one alarm can watch a total (every function's 5xx) rather than one per value.
    pub rollups: &'static [&'static [&'static str]],
}

/// Messages by channel (`email`, `sms`) and outcome. Every status a message reaches
/// (counted where its delivery event is published, [`crate::events`]): `queued` (accepted:
/// the API answered 202), `sent` (the provider took it), `delivered`, `bounced`,
/// `undelivered`, `suppressed`, and `failed` split by kind: `failed_transient` (Herald gave
/// up after its last attempt, or the sweep did: `resend-failed` may try again) and
/// `failed_permanent` (refused, or reported failed by the provider). Besides the statuses,
/// `retried`: put back in `queued` for another attempt (a transient failure with attempts
/// left, or handed back when an invocation's send budget ran out). Jobs that reach the DLQ
/// are counted by [`JOBS`] (`dead_lettered`): the DLQ holds jobs, and the messages of a
/// send job dead-lettered on a transient failure are its `failed_transient`.
pub const MESSAGES: Metric = Metric {
    name: "Messages",
    unit: Unit::Count,
    dimensions: &["Channel", "Outcome"],
    rollups: &[],
};
/// Provider webhooks by provider and outcome: `applied`, `duplicate`, `ignored`, `rejected`.
pub const WEBHOOK_EVENTS: Metric = Metric {
    name: "WebhookEvents",
    unit: Unit::Count,
    dimensions: &["Provider", "Outcome"],
    rollups: &[],
};
/// Refused webhook requests by reason (`signature`, `malformed`, `too_large`, …): a burst of
/// `signature` usually means a rotated secret.
pub const WEBHOOK_REJECTIONS: Metric = Metric {
    name: "WebhookRejections",
    unit: Unit::Count,
    dimensions: &["Provider", "Reason"],
    rollups: &[&["Provider"]],
};
/// Provider API calls by provider and outcome: `ok`, `not_found`, `throttled`, `transient`,
/// `permanent`, `credentials` ([`crate::providers::send`]).
pub const PROVIDER_CALLS: Metric = Metric {
    name: "ProviderCalls",
    unit: Unit::Count,
    dimensions: &["Provider", "Outcome"],
    rollups: &[],
};
/// How long a provider call took (p50/p99 come from the values).
pub const PROVIDER_LATENCY: Metric = Metric {
    name: "ProviderLatency",
    unit: Unit::Milliseconds,
    dimensions: &["Provider"],
    rollups: &[],
};
/// HTTP requests by function and status class (`2xx`, `4xx`, `5xx`).
pub const API_REQUESTS: Metric = Metric {
    name: "ApiRequests",
    unit: Unit::Count,
    dimensions: &["Function", "StatusClass"],
    rollups: &[&["StatusClass"]],
};
pub const API_LATENCY: Metric = Metric {
    name: "ApiLatency",
    unit: Unit::Milliseconds,
    dimensions: &["Function"],
    rollups: &[],
};
/// Report generation time and rows, by format.
pub const REPORT_DURATION: Metric = Metric {
    name: "ReportDuration",
    unit: Unit::Milliseconds,
    dimensions: &["Format"],
    rollups: &[],
};
pub const REPORT_ROWS: Metric = Metric {
    name: "ReportRows",
    unit: Unit::Count,
    dimensions: &["Format"],
    rollups: &[],
};
/// Charges by the status Stripe gave them (`succeeded`, `requires_action`, `pending`,
/// `failed`, …).
pub const CHARGES: Metric = Metric {
    name: "Charges",
    unit: Unit::Count,
    dimensions: &["Status"],
    rollups: &[],
};
/// Records the sweep found stuck, by channel and what it did (`requeued`, `failed`).
pub const STUCK_RECORDS: Metric = Metric {
    name: "StuckRecords",
    unit: Unit::Count,
    dimensions: &["Channel", "Action"],
    rollups: &[],
};
/// Stripe sync runs by outcome (`ok`, `failed`).
pub const STRIPE_SYNC_RUNS: Metric = Metric {
    name: "StripeSyncRuns",
    unit: Unit::Count,
    dimensions: &["Outcome"],
    rollups: &[],
};

/// Queue jobs by worker and outcome ([`JobOutcome`]): `done`, `retried` (handed back to the
/// queue), `dead_lettered` (failed on the last receive the queue's `maxReceiveCount`
/// allows: SQS moves it to the DLQ, whose depth is alarmed).
pub const JOBS: Metric = Metric {
    name: "Jobs",
    unit: Unit::Count,
    dimensions: &["Function", "Outcome"],
    rollups: &[],
};

/// Every metric Herald emits (the template's alarms and dashboard name only these).
pub const ALL: &[Metric] = &[
    MESSAGES,
    WEBHOOK_EVENTS,
    WEBHOOK_REJECTIONS,
    PROVIDER_CALLS,
    PROVIDER_LATENCY,
    API_REQUESTS,
    API_LATENCY,
    REPORT_DURATION,
    REPORT_ROWS,
    CHARGES,
    STUCK_RECORDS,
    STRIPE_SYNC_RUNS,
    JOBS,
];

/// Where documents go: stdout unless the local runner installed its collector.
type Sink = Box<dyn Fn(&str) + Send + Sync>;
static SINK: OnceLock<Sink> = OnceLock::new();

static NAMESPACE: OnceLock<String> = OnceLock::new();

/// The namespace when the process has no `METRICS_NAMESPACE` (the local runner, whose
/// functions share one process, sets the one the template gives them; the first call wins).
pub fn set_namespace(namespace: &str) {
    let _ = NAMESPACE.set(namespace.to_owned());
}

fn namespace() -> String {
    std::env::var("METRICS_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| NAMESPACE.get().cloned())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

/// Sends every document of this process to `sink` instead of stdout (the local runner;
/// only the first call counts).
pub fn set_sink(sink: impl Fn(&str) + Send + Sync + 'static) {
    let _ = SINK.set(Box::new(sink));
}

fn emit(line: &str) {
    match SINK.get() {
        Some(sink) => sink(line),
        None => println!("{line}"),
    }
}

tokio::task_local! {
    static CURRENT: RefCell<Recorder>;
}

/// Counts `value` of `metric` for `org` (if the sample belongs to one).
pub fn count(metric: &Metric, dimensions: &[&str], value: u64, org: Option<&str>) {
    debug_assert_eq!(metric.unit, Unit::Count, "{}", metric.name);
    record(metric, dimensions, value as f64, org);
}

/// Records a duration of `metric`.
pub fn milliseconds(metric: &Metric, dimensions: &[&str], elapsed: std::time::Duration) {
    debug_assert_eq!(metric.unit, Unit::Milliseconds, "{}", metric.name);
    record(metric, dimensions, elapsed.as_secs_f64() * 1000.0, None);
}

/// Counts `n` provider webhook events with `outcome` (`received`, `applied`, `duplicate`,
/// `ignored`).
pub fn webhook_events(provider: &str, outcome: &str, n: u64) {
    if n > 0 {
        count(&WEBHOOK_EVENTS, &[provider, outcome], n, None);
    }
}

/// What became of one queue job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Done,
    /// Handed back to its queue for another receive.
    Retried,
    /// Failed on its last receive (`ApproximateReceiveCount` reached the queue's
    /// `maxReceiveCount`): SQS moves it to the DLQ instead of delivering it again.
    DeadLettered,
}

impl JobOutcome {
    /// The outcome of a job that ended with `failed` on its `receives`-th receive from a
    /// queue that dead-letters after `max_receives`.
    pub fn of(failed: bool, receives: u32, max_receives: u32) -> Self {
        match (failed, receives >= max_receives) {
            (false, _) => Self::Done,
            (true, false) => Self::Retried,
            (true, true) => Self::DeadLettered,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// Counts a batch's jobs by outcome.
pub fn jobs(function: &str, outcomes: impl IntoIterator<Item = JobOutcome>) {
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for outcome in outcomes {
        *counts.entry(outcome.as_str()).or_default() += 1;
    }
    for (outcome, n) in counts {
        count(&JOBS, &[function, outcome], n, None);
    }
}

/// Counts `n` messages of `channel` put back in `queued` for another attempt.
pub fn messages_retried(channel: &str, n: usize, org: &str) {
    if n > 0 {
        count(&MESSAGES, &[channel, "retried"], n as u64, Some(org));
    }
}

fn record(metric: &Metric, dimensions: &[&str], value: f64, org: Option<&str>) {
    debug_assert_eq!(metric.dimensions.len(), dimensions.len(), "{}", metric.name);
    let added =
        CURRENT.try_with(|current| current.borrow_mut().add(metric, dimensions, value, org));
    // Outside an invocation (a spawned task, a unit test) the sample is written at once.
    if added.is_err() {
        let mut alone = Recorder::new("", "");
        alone.add(metric, dimensions, value, org);
        alone.flush();
    }
}

/// One group of samples: one document.
#[derive(Debug, Default)]
struct Group {
    rollups: &'static [&'static [&'static str]],
    metric_units: BTreeMap<&'static str, Unit>,
    values: BTreeMap<&'static str, Vec<f64>>,
}

/// What one document is for: its dimensions (name and value, in the metric's order) and the
/// organization its samples belong to.
type GroupKey = (Vec<(&'static str, String)>, Option<String>);

/// The samples of one invocation, grouped by dimensions and organization.
#[derive(Debug)]
pub struct Recorder {
    function: String,
    lambda_request_id: String,
    groups: BTreeMap<GroupKey, Group>,
}

impl Recorder {
    pub fn new(function: &str, lambda_request_id: &str) -> Self {
        Self {
            function: function.to_owned(),
            lambda_request_id: lambda_request_id.to_owned(),
            groups: BTreeMap::new(),
        }
    }

    /// Runs `work` with this recorder as the invocation's, then writes its documents.
    pub async fn scope<F: std::future::Future>(self, work: F) -> F::Output {
        let (output, recorder) = CURRENT
            .scope(RefCell::new(self), async {
                let output = work.await;
                let recorder = CURRENT.with(|current| {
                    std::mem::replace(&mut *current.borrow_mut(), Recorder::new("", ""))
                });
                (output, recorder)
            })
            .await;
        recorder.flush();
        output
    }

    fn add(&mut self, metric: &Metric, dimensions: &[&str], value: f64, org: Option<&str>) {
        let key: Vec<(&'static str, String)> = metric
            .dimensions
            .iter()
            .zip(dimensions)
            .map(|(name, value)| (*name, (*value).to_owned()))
            .collect();
        let group = self
            .groups
            .entry((key, org.map(str::to_owned)))
            .or_default();
        group.rollups = metric.rollups;
        group.metric_units.insert(metric.name, metric.unit);
        let values = group.values.entry(metric.name).or_default();
        match (metric.unit, values.first_mut()) {
            // Counts add up: one value per document is all CloudWatch needs for a sum.
            (Unit::Count, Some(total)) => *total += value,
            _ => values.push(value),
        }
    }

    /// The invocation's documents (a value array is split across documents at 100).
    pub fn documents(&self) -> Vec<Value> {
        let namespace = namespace();
        let timestamp = chrono::Utc::now().timestamp_millis();
        let mut documents = Vec::new();
        for ((dimensions, org), group) in &self.groups {
            let longest = group.values.values().map(Vec::len).max().unwrap_or(0);
            for part in 0..longest.div_ceil(MAX_VALUES) {
                let mut root = Map::new();
                let mut metrics = Vec::new();
                for (name, values) in &group.values {
                    let chunk: Vec<f64> = values
                        .iter()
                        .skip(part * MAX_VALUES)
                        .take(MAX_VALUES)
                        .copied()
                        .collect();
                    let value = match chunk.as_slice() {
                        [] => continue,
                        [one] => json!(one),
                        many => json!(many),
                    };
                    root.insert((*name).to_owned(), value);
                    metrics.push(json!({"Name": name, "Unit": group.metric_units[name].as_str()}));
                }
                let names: Vec<&str> = dimensions.iter().map(|(name, _)| *name).collect();
                let mut sets = vec![names];
                sets.extend(group.rollups.iter().map(|set| set.to_vec()));
                for (name, value) in dimensions {
                    root.insert((*name).to_owned(), json!(value));
                }
                if !self.function.is_empty() {
                    root.entry("Function").or_insert(json!(self.function));
                }
                if !self.lambda_request_id.is_empty() {
                    root.insert(
                        "lambda_request_id".to_owned(),
                        json!(self.lambda_request_id),
                    );
                }
                if let Some(org) = org {
                    root.insert("Organization".to_owned(), json!(org));
                }
                root.insert(
                    "_aws".to_owned(),
                    json!({"Timestamp": timestamp, "CloudWatchMetrics": [
                        {"Namespace": namespace, "Dimensions": sets, "Metrics": metrics}
                    ]}),
                );
                documents.push(Value::Object(root));
            }
        }
        documents
    }

    fn flush(&self) {
        for document in self.documents() {
            emit(&document.to_string());
        }
    }
}

/// Why CloudWatch would not extract metrics from `line`, per the specification's rules
/// and schema (the local runner's stand-in for CloudWatch Logs applies it to every line).
///
/// # Errors
/// The first rule the line breaks.
pub fn validate(line: &str) -> Result<Value, String> {
    if line.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "{} bytes: a log event is at most 256 KB",
            line.len()
        ));
    }
    let root: Value =
        serde_json::from_str(line).map_err(|e| format!("not one JSON object: {e}"))?;
    let aws = root
        .get("_aws")
        .and_then(Value::as_object)
        .ok_or("no _aws metadata object")?;
    if !aws.get("Timestamp").is_some_and(Value::is_u64) {
        return Err("_aws.Timestamp must be an integer of milliseconds".to_owned());
    }
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .ok_or("_aws.CloudWatchMetrics must be an array")?;
    for directive in directives {
        validate_directive(&root, directive)?;
    }
    Ok(root)
}

fn validate_directive(root: &Value, directive: &Value) -> Result<(), String> {
    let name_ok = |s: &str| !s.is_empty() && s.len() <= 255;
    let namespace = directive["Namespace"].as_str().unwrap_or_default();
    if !name_ok(namespace) {
        return Err("Namespace must be 1–255 characters".to_owned());
    }
    let sets = directive["Dimensions"]
        .as_array()
        .filter(|sets| !sets.is_empty())
        .ok_or("Dimensions must be a non-empty array of dimension sets")?;
    for set in sets {
        let keys = set.as_array().ok_or("a DimensionSet must be an array")?;
        if keys.len() > MAX_DIMENSIONS {
            return Err(format!(
                "a DimensionSet has {} keys (at most 9)",
                keys.len()
            ));
        }
        for key in keys {
            let key = key
                .as_str()
                .filter(|k| name_ok(k))
                .ok_or("bad dimension key")?;
            // A dimension value is 1–1024 characters (CloudWatch API Dimension).
            let value = root[key].as_str().unwrap_or_default();
            if value.is_empty() || value.len() > 1024 {
                return Err(format!("dimension {key} must be a 1–1024 character string"));
            }
        }
    }
    let metrics = directive["Metrics"]
        .as_array()
        .ok_or("Metrics must be an array")?;
    if metrics.len() > MAX_METRICS {
        return Err(format!(
            "{} metrics in one directive (at most 100)",
            metrics.len()
        ));
    }
    for metric in metrics {
        let name = metric["Name"]
            .as_str()
            .filter(|n| name_ok(n))
            .ok_or("bad metric Name")?;
        let numeric = match &root[name] {
            Value::Number(_) => true,
            Value::Array(values) => {
                values.len() <= MAX_VALUES && values.iter().all(Value::is_number)
            }
            _ => false,
        };
        if !numeric {
            return Err(format!(
                "metric {name} must be a number or at most 100 numbers"
            ));
        }
        if let Some(unit) = metric.get("Unit")
            && !unit.as_str().is_some_and(|u| UNITS.contains(&u))
        {
            return Err(format!("metric {name}: {unit} is not a CloudWatch unit"));
        }
    }
    Ok(())
}

/// The units the specification's schema allows.
const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_latencies_split_at_one_hundred_values() {
        let mut recorder = Recorder::new("email-worker", "req-1");
        recorder.add(&MESSAGES, &["email", "sent"], 2.0, Some("acme"));
        recorder.add(&MESSAGES, &["email", "sent"], 3.0, Some("acme"));
        recorder.add(&MESSAGES, &["email", "sent"], 1.0, Some("globex"));
        for ms in 0..150 {
            recorder.add(&PROVIDER_LATENCY, &["sendgrid"], f64::from(ms), None);
        }
        let documents = recorder.documents();
        assert_eq!(documents.len(), 4, "{documents:#?}");
        for document in &documents {
            validate(&document.to_string()).unwrap();
        }
        let acme = documents
            .iter()
            .find(|d| d["Organization"] == "acme")
            .unwrap();
        assert_eq!(acme["Messages"], 5.0);
        assert_eq!(acme["Channel"], "email");
        assert_eq!(acme["Function"], "email-worker");
        assert_eq!(acme["lambda_request_id"], "req-1");
        let directive = &acme["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Dimensions"], json!([["Channel", "Outcome"]]));
        let latencies: Vec<usize> = documents
            .iter()
            .filter_map(|d| d["ProviderLatency"].as_array().map(Vec::len))
            .collect();
        assert_eq!(latencies, [100, 50]);
    }

    #[test]
    fn the_validator_refuses_what_cloudwatch_would_not_extract() {
        let good = r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[["D"]],"Metrics":[{"Name":"M","Unit":"Count"}]}]},"D":"x","M":1}"#;
        validate(good).unwrap();
        for bad in [
            good.replace(r#""D":"x""#, r#""D":7"#),
            good.replace(r#""M":1"#, r#""M":"1""#),
            good.replace(r#""Unit":"Count""#, r#""Unit":"Things""#),
            good.replace(r#""Timestamp":1"#, r#""Timestamp":"now""#),
            good.replace(r#""Dimensions":[["D"]]"#, r#""Dimensions":[]"#),
            good.replace(
                r#"[["D"]]"#,
                r#"[["D","D","D","D","D","D","D","D","D","D"]]"#,
            ),
            format!("x{good}"),
        ] {
            assert!(validate(&bad).is_err(), "{bad}");
        }
    }
}
