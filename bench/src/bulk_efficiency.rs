//! Bulk efficiency: what one bulk send costs in provider calls, SQS messages and DynamoDB
//! writes, measured through the local runner (issue 10; docs/PERFORMANCE.md).
//!
//! A run sends one bulk request with inline `recipients` through the bundle's HTTP API, waits
//! until every message reaches a final status (the sandboxes post delivery webhooks), waits
//! for the counters to settle, and reads the SDK operation counter the runner puts on the
//! functions' AWS clients ([`local::sdk_counters`]) and the provider sandbox's call count.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use local::RunningBundle;
use local::sdk_counters::SdkCallCounts;
use serde_json::{Value, json};
use shared::domain::OrgId;
use shared::store::{EmailStore, SmsStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    fn provider(self) -> &'static str {
        match self {
            Self::Email => "SendGrid",
            Self::Sms => "Twilio",
        }
    }
}

/// The counts of one bulk send.
#[derive(Debug, Clone)]
pub struct BulkRun {
    pub channel: Channel,
    /// The organization the run sent as (a fresh one per run).
    pub org: String,
    pub recipients: usize,
    /// Calls the provider sandbox received (Mail Send / Messages).
    pub provider_calls: u64,
    /// Calls the SendGrid sandbox refused for breaking a Mail Send rule (0 for SMS).
    pub refusals: u64,
    /// Bytes of the Mail Send requests SendGrid accepted (0 for SMS).
    pub provider_bytes: u64,
    pub sdk: SdkCallCounts,
    /// Final statuses reached, by status.
    pub statuses: BTreeMap<String, usize>,
    /// Wall time from the API call until every message was final (not a benchmark figure:
    /// moto on one core is the bottleneck).
    pub elapsed: Duration,
    /// Queue URL's last segment → the template's logical id, for readable queue names.
    queue_names: BTreeMap<String, String>,
}

/// What a bulk email looks like.
#[derive(Debug, Clone, Default)]
pub struct EmailShape {
    /// Copy every email to this address, and make every hundredth recipient that address
    /// itself (the shape SendGrid refuses when planned carelessly: issue 15).
    pub cc: Option<String>,
    /// An HTML body of about this many bytes besides the short text (0: text only).
    pub body_bytes: usize,
    /// The body greets each recipient by name, and holds an `#if` and an `#each` over their
    /// variables (else every recipient gets the same body). Sent as bulks of
    /// [`PERSONALIZED_PER_REQUEST`] recipients, each a request of its own.
    pub personalized: bool,
}

impl EmailShape {
    /// The HTML body: a newsletter's paragraphs up to `body_bytes`, with a personal
    /// greeting, offer and list when `personalized`.
    fn html(&self) -> Option<String> {
        if self.body_bytes == 0 {
            return None;
        }
        let paragraph = "<p>Our spring collection is here: linen, cotton and wool in more \
                         colours than ever, made to last and priced fairly.</p>\n";
        let personal = "<h1>Hello {{first_name}}!</h1>\n{{#if vip}}\n<p>Your VIP price: \
                        {{price}}</p>\n{{else}}\n<p>Join the club for early access.</p>\n\
                        {{/if}}\n<ul>\n{{#each picks}}\n  <li>{{this}}</li>\n{{/each}}\n</ul>\n";
        let mut html = if self.personalized {
            personal.to_owned()
        } else {
            "<h1>Hello!</h1>\n".to_owned()
        };
        while html.len() + paragraph.len() <= self.body_bytes {
            html.push_str(paragraph);
        }
        Some(html)
    }

    fn variables(&self, i: usize) -> Value {
        if !self.personalized {
            return json!({"n": i});
        }
        json!({
            "n": i, "first_name": format!("Reader {i}"), "vip": i.is_multiple_of(5),
            "price": format!("${}.99", 10 + i % 90),
            "picks": (0..i % 4).map(|k| format!("Pick {k} for reader {i}")).collect::<Vec<_>>(),
        })
    }
}

/// Sends one bulk email to `recipients` addresses and counts what it took. The bundle must
/// run with the SendGrid sandbox and its queue pollers.
///
/// # Errors
/// When the API refuses the send or not every email is final within `timeout`.
pub async fn bulk_email(
    bundle: &RunningBundle,
    recipients: usize,
    shape: &EmailShape,
    timeout: Duration,
) -> anyhow::Result<BulkRun> {
    let list: Vec<Value> = (0..recipients)
        .map(|i| match &shape.cc {
            Some(cc) if i % 100 == 99 => json!({"to": cc, "variables": shape.variables(i)}),
            _ => json!({"to": format!("r{i:05}@example.com"), "variables": shape.variables(i)}),
        })
        .collect();
    let per_request = if shape.personalized {
        PERSONALIZED_PER_REQUEST
    } else {
        recipients.max(1)
    };
    let mut body = json!({
        "subject": if shape.personalized || shape.body_bytes == 0 { "Bulk efficiency {{n}}" } else { "Spring news" },
        "text": if shape.personalized || shape.body_bytes == 0 { "Hello recipient {{n}}." } else { "Our spring collection is here." },
        "campaign": "bulk-efficiency",
    });
    if let Some(html) = shape.html() {
        body["html"] = json!(html);
    }
    if let Some(cc) = &shape.cc {
        body["cc"] = json!([cc]);
    }
    let bodies = list
        .chunks(per_request)
        .map(|chunk| {
            let mut request = body.clone();
            request["recipients"] = json!(chunk);
            request
        })
        .collect();
    run(bundle, Channel::Email, None, recipients, bodies, timeout).await
}

/// Sends one bulk SMS to `recipients` numbers and counts what it took. The bundle must run
/// with the Twilio sandbox; its per-organization SMS rate (`SMS_RATE_PER_SECOND`) paces it.
/// `org` names the sending organization (for a bundle whose `TWILIO_NUMBER_ORGS` gives it
/// the sender number); `None`: a new one per run.
///
/// # Errors
/// When the API refuses the send or not every SMS is final within `timeout`.
pub async fn bulk_sms(
    bundle: &RunningBundle,
    org: Option<&str>,
    recipients: usize,
    timeout: Duration,
) -> anyhow::Result<BulkRun> {
    let list: Vec<Value> = (0..recipients)
        .map(|i| json!({"to": format!("+1415555{:04}", i % 10_000), "variables": {"n": i}}))
        .collect();
    let body = json!({"recipients": list, "body": "Bulk efficiency {{n}}"});
    run(bundle, Channel::Sms, org, recipients, vec![body], timeout).await
}

/// Recipients per request of a personalized bulk: the API takes request bodies up to 1 MiB,
/// and 10,000 recipients with their own variables do not fit in one.
const PERSONALIZED_PER_REQUEST: usize = 2_500;

async fn run(
    bundle: &RunningBundle,
    channel: Channel,
    org: Option<&str>,
    recipients: usize,
    bodies: Vec<Value>,
    timeout: Duration,
) -> anyhow::Result<BulkRun> {
    let org_name = org.map_or_else(
        || format!("bulk{}", chrono::Utc::now().timestamp_millis()),
        str::to_owned,
    );
    let org = OrgId::parse(&org_name).map_err(anyhow::Error::msg)?;
    let token = bundle
        .auth
        .mint("bulk-efficiency", Some(&org_name), &["admin"], 3600)?;
    let path = match channel {
        Channel::Email => "/services/email",
        Channel::Sms => "/services/sms",
    };
    let provider_calls_before = provider_calls(bundle, channel)?;
    let refusals_before = refusals(bundle);
    let bytes_before = provider_bytes(bundle);
    bundle.sdk_calls.reset();
    let started = Instant::now();

    let mut ids: Vec<String> = Vec::with_capacity(recipients);
    for body in &bodies {
        let response = reqwest::Client::new()
            .post(bundle.url(path))
            .bearer_auth(&token)
            .json(body)
            .send()
            .await
            .context("the bundle answers")?;
        let status = response.status();
        let reply: Value = response.json().await.context("the reply is JSON")?;
        anyhow::ensure!(
            status.as_u16() == 202,
            "bulk send refused ({status}): {reply}"
        );
        ids.extend(
            reply["ids"]
                .as_array()
                .context("the reply lists the ids")?
                .iter()
                .filter_map(|id| id.as_str().map(str::to_owned)),
        );
    }
    anyhow::ensure!(
        ids.len() == recipients,
        "{} of {recipients} recipients were accepted",
        ids.len()
    );

    let statuses = wait_until_final(bundle, channel, &org, ids, started + timeout).await?;
    let elapsed = started.elapsed();
    let sdk = settled_counts(bundle).await;
    let queue_names = bundle
        .names
        .iter()
        .filter_map(|(logical_id, resource)| {
            let name = resource.reference.rsplit('/').next()?;
            Some((name.to_owned(), logical_id.clone()))
        })
        .collect();
    Ok(BulkRun {
        channel,
        org: org_name,
        recipients,
        provider_calls: provider_calls(bundle, channel)? - provider_calls_before,
        refusals: refusals(bundle) - refusals_before,
        provider_bytes: provider_bytes(bundle) - bytes_before,
        sdk,
        statuses,
        elapsed,
        queue_names,
    })
}

fn provider_bytes(bundle: &RunningBundle) -> u64 {
    bundle
        .sendgrid
        .as_ref()
        .map_or(0, |sandbox| sandbox.bytes_received())
}

fn refusals(bundle: &RunningBundle) -> u64 {
    bundle
        .sendgrid
        .as_ref()
        .map_or(0, |sandbox| sandbox.refusals())
}

fn provider_calls(bundle: &RunningBundle, channel: Channel) -> anyhow::Result<u64> {
    match channel {
        Channel::Email => bundle
            .sendgrid
            .as_ref()
            .map(|sandbox| sandbox.calls())
            .context("the SendGrid sandbox is not running (SENDGRID_API_KEY is set?)"),
        Channel::Sms => bundle
            .twilio
            .as_ref()
            .map(|sandbox| sandbox.calls())
            .context("the Twilio sandbox is not running (TWILIO_ACCOUNT_SID is set?)"),
    }
}

/// Reads the records (with the runner's own, uncounted client) until all are final.
async fn wait_until_final(
    bundle: &RunningBundle,
    channel: Channel,
    org: &OrgId,
    ids: Vec<String>,
    deadline: Instant,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let table = bundle.resource("HeraldTable").to_owned();
    let emails = EmailStore::new(bundle.aws.dynamodb.clone(), table.clone());
    let sms = SmsStore::new(bundle.aws.dynamodb.clone(), table);
    let mut pending: HashSet<String> = ids.into_iter().collect();
    let mut finals = BTreeMap::new();
    loop {
        let asked: Vec<String> = pending.iter().cloned().collect();
        let mut now_pending = BTreeMap::<String, usize>::new();
        let mut found = HashSet::new();
        let statuses: Vec<(String, &'static str, bool)> = match channel {
            Channel::Email => emails
                .get_many(org, &asked)
                .await?
                .into_iter()
                .map(|r| (r.id, r.status.as_str(), r.status.is_final()))
                .collect(),
            Channel::Sms => sms
                .get_many(org, &asked)
                .await?
                .into_iter()
                .map(|r| (r.id, r.status.as_str(), r.status.is_final()))
                .collect(),
        };
        for (id, status, is_final) in statuses {
            found.insert(id.clone());
            if is_final {
                pending.remove(&id);
                *finals.entry(status.to_owned()).or_insert(0) += 1;
            } else {
                *now_pending.entry(status.to_owned()).or_insert(0) += 1;
            }
        }
        anyhow::ensure!(
            found.len() == asked.len(),
            "{} records went missing",
            asked.len() - found.len()
        );
        if pending.is_empty() {
            return Ok(finals);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out with {} not final: {now_pending:?} (final: {finals:?})",
            pending.len()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The counts once nothing has changed for five seconds: the delivery events a webhook
/// publishes after its write, and their recording, finish after the status is final, and a
/// worker whose calls overtook its own outcome writes (the webhook got there first) writes
/// after it too — on a loaded machine seconds later.
async fn settled_counts(bundle: &RunningBundle) -> SdkCallCounts {
    let mut last = bundle.sdk_calls.snapshot();
    let mut quiet = 0;
    while quiet < 5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = bundle.sdk_calls.snapshot();
        if now.operations == last.operations {
            quiet += 1;
        } else {
            quiet = 0;
            last = now;
        }
    }
    last
}

impl BulkRun {
    /// DynamoDB item writes per message.
    pub fn writes_per_message(&self) -> f64 {
        ratio(self.sdk.dynamodb_items_written(), self.recipients)
    }

    /// The table for docs/PERFORMANCE.md (Markdown).
    pub fn table(&self) -> String {
        let n = self.recipients;
        let unit = match self.channel {
            Channel::Email => "email",
            Channel::Sms => "SMS",
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "bulk {unit} to {n} recipients: final statuses {:?}, {:.0} s until all final\n",
            self.statuses,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "| measure | count | per {unit} |");
        let _ = writeln!(out, "|---|---:|---:|");
        let mut row = |name: String, count: u64| {
            let _ = writeln!(out, "| {name} | {count} | {:.3} |", ratio(count, n));
        };
        row(
            format!("{} calls", self.channel.provider()),
            self.provider_calls,
        );
        row(
            format!("{} refusals (request rules)", self.channel.provider()),
            self.refusals,
        );
        if self.channel == Channel::Email {
            row(
                "bytes sent to SendGrid (accepted calls)".to_owned(),
                self.provider_bytes,
            );
        }
        row("SQS messages sent".to_owned(), self.sdk.sqs_messages_sent());
        for (queue, count) in &self.sdk.messages_by_queue {
            let name = self.queue_names.get(queue).unwrap_or(queue);
            row(format!("&nbsp;&nbsp;to {name}"), *count);
        }
        let sends = ["SendMessage", "SendMessageBatch"]
            .iter()
            .map(|op| self.sdk.get("SQS", op).calls)
            .sum();
        row("SQS send calls".to_owned(), sends);
        row(
            "DynamoDB item writes".to_owned(),
            self.sdk.dynamodb_items_written(),
        );
        for (operation, count) in self.sdk.dynamodb_writes() {
            row(
                format!("&nbsp;&nbsp;{operation} ({} calls)", count.calls),
                count.items,
            );
        }
        for (kind, count) in &self.sdk.writes_by_item {
            row(format!("&nbsp;&nbsp;of `{kind}#…` items"), *count);
        }
        let _ = writeln!(
            out,
            "\nEvery AWS operation the functions made (calls; items where a call carries many):\n"
        );
        let _ = writeln!(out, "| service | operation | calls | items |");
        let _ = writeln!(out, "|---|---|---:|---:|");
        for ((service, operation), count) in &self.sdk.operations {
            let _ = writeln!(
                out,
                "| {service} | {operation} | {} | {} |",
                count.calls, count.items
            );
        }
        out
    }
}

fn ratio(count: u64, per: usize) -> f64 {
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let value = count as f64 / per.max(1) as f64;
    value
}
