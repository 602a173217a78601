//! Each report type's content from the stores, scoped to the report's organization and
//! period. The stores aggregate (DynamoDB query with a projection, MongoDB `$group`), so
//! what is held here is one row per campaign, day, actor or channel/status.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::{Cell, Report, ReportContent, ReportKind, ratio};
use crate::store::{CampaignStats, EmailStore, EventStore};

/// Channels the summary always lists, even without activity.
const SUMMARY_CHANNELS: [&str; 3] = ["email", "sms", "payment"];

/// Every day of the period (`YYYY-MM-DD`) with its count, zero where `counts` has none.
fn every_day(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    counts: &BTreeMap<String, i64>,
) -> Vec<(String, i64)> {
    let mut days = Vec::new();
    let mut day = from.date_naive();
    let last = (to - chrono::Duration::milliseconds(1)).date_naive();
    while day <= last && days.len() < 400 {
        let key = day.format("%Y-%m-%d").to_string();
        let count = counts.get(&key).copied().unwrap_or(0);
        days.push((key, count));
        day = day.succ_opt().unwrap_or(day);
    }
    days
}

fn columns(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Builds the report's content.
///
/// # Errors
/// When a store cannot be read.
pub async fn build(
    report: &Report,
    emails: &EmailStore,
    events: &EventStore,
) -> anyhow::Result<ReportContent> {
    let (org, from, to) = (&report.org_id, report.from, report.to);
    Ok(match report.kind {
        ReportKind::CampaignPerformance => {
            let (campaigns, daily) = emails.campaign_performance(org, from, to).await?;
            campaign_performance(&campaigns, every_day(from, to, &daily))
        }
        ReportKind::ConversationAnalytics => {
            let outbound = events
                .series(Some(org), "day", from, to, Some("sms"))
                .await?;
            let inbound = events
                .inbound_per_day(org, "sms", "sms.inbound", from, to)
                .await?;
            let statuses: BTreeSet<String> = outbound.iter().map(|p| p.status.clone()).collect();
            let mut days: BTreeMap<String, (i64, BTreeMap<String, i64>)> = BTreeMap::new();
            for (day, count) in &inbound {
                days.entry(day.clone()).or_default().0 += count;
            }
            for point in &outbound {
                *days
                    .entry(point.bucket.clone())
                    .or_default()
                    .1
                    .entry(point.status.clone())
                    .or_default() += point.count;
            }
            let volume: BTreeMap<String, i64> = days
                .iter()
                .map(|(day, (inbound, by_status))| {
                    (day.clone(), inbound + by_status.values().sum::<i64>())
                })
                .collect();
            let mut summary = vec![(
                "Inbound messages".to_owned(),
                inbound.iter().map(|(_, n)| n).sum::<i64>().to_string(),
            )];
            for status in &statuses {
                let count: i64 = outbound
                    .iter()
                    .filter(|p| &p.status == status)
                    .map(|p| p.count)
                    .sum();
                summary.push((format!("Outbound {status}"), count.to_string()));
            }
            let mut header = columns(&["day", "inbound"]);
            header.extend(statuses.iter().map(|s| format!("outbound_{s}")));
            ReportContent {
                summary,
                daily: every_day(from, to, &volume),
                columns: header,
                rows: days
                    .iter()
                    .map(|(day, (inbound, by_status))| {
                        let mut row = vec![Cell::text(day), Cell::Int(*inbound)];
                        row.extend(
                            statuses
                                .iter()
                                .map(|s| Cell::Int(by_status.get(s).copied().unwrap_or(0))),
                        );
                        row
                    })
                    .collect(),
            }
        }
        ReportKind::UserAnalytics => {
            let activity = events.actor_activity(org, from, to).await?;
            let daily: BTreeMap<String, i64> = events
                .kind_per_day(org, "audit", from, to)
                .await?
                .into_iter()
                .collect();
            // Groups arrive sorted by actor: fold each actor's actions into one row.
            let mut rows = Vec::new();
            let mut index = 0;
            while index < activity.len() {
                let actor = &activity[index].actor;
                let end = activity[index..]
                    .iter()
                    .position(|a| &a.actor != actor)
                    .map_or(activity.len(), |n| index + n);
                let mine = &activity[index..end];
                let mut top: Vec<_> = mine.iter().collect();
                top.sort_by(|a, b| b.count.cmp(&a.count).then(a.action.cmp(&b.action)));
                let top_actions = top
                    .iter()
                    .take(3)
                    .map(|a| format!("{} ({})", a.action, a.count))
                    .collect::<Vec<_>>()
                    .join("; ");
                let first = mine.iter().map(|a| a.first).min().unwrap_or_default();
                let last = mine.iter().map(|a| a.last).max().unwrap_or_default();
                rows.push(vec![
                    Cell::text(actor),
                    Cell::Int(mine.iter().map(|a| a.count).sum()),
                    Cell::Int(mine.len() as i64),
                    Cell::text(first.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    Cell::text(last.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    Cell::text(top_actions),
                ]);
                index = end;
            }
            ReportContent {
                summary: vec![
                    ("Users".into(), rows.len().to_string()),
                    (
                        "Actions".into(),
                        activity.iter().map(|a| a.count).sum::<i64>().to_string(),
                    ),
                ],
                daily: every_day(from, to, &daily),
                columns: columns(&[
                    "actor",
                    "actions",
                    "distinct_actions",
                    "first_seen",
                    "last_seen",
                    "top_actions",
                ]),
                rows,
            }
        }
        ReportKind::Summary => {
            let series = events.series(Some(org), "day", from, to, None).await?;
            let payments = events.payment_totals(org, from, to).await?;
            let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
            let mut daily: BTreeMap<String, i64> = BTreeMap::new();
            for point in &series {
                *counts
                    .entry((point.channel.clone(), point.status.clone()))
                    .or_default() += point.count;
                *daily.entry(point.bucket.clone()).or_default() += point.count;
            }
            let mut summary = Vec::new();
            let channels: BTreeSet<String> = SUMMARY_CHANNELS
                .iter()
                .map(|c| (*c).to_owned())
                .chain(counts.keys().map(|(c, _)| c.clone()))
                .collect();
            for channel in &channels {
                let total: i64 = counts
                    .iter()
                    .filter(|((c, _), _)| c == channel)
                    .map(|(_, n)| n)
                    .sum();
                summary.push((format!("{channel} events"), total.to_string()));
            }
            let mut amounts: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
            for total in &payments {
                *amounts
                    .entry(total.status.clone())
                    .or_default()
                    .entry(total.currency.clone())
                    .or_default() += total.amount;
            }
            for (currency, amount) in
                payments
                    .iter()
                    .fold(BTreeMap::<String, f64>::new(), |mut sums, t| {
                        if t.status == "succeeded" {
                            *sums.entry(t.currency.clone()).or_default() += t.amount;
                        }
                        sums
                    })
            {
                summary.push((
                    format!("Payments succeeded ({currency})"),
                    format!("{amount:.2}"),
                ));
            }
            ReportContent {
                summary,
                daily: every_day(from, to, &daily),
                columns: columns(&["channel", "status", "count", "amount"]),
                rows: counts
                    .iter()
                    .map(|((channel, status), count)| {
                        let amount = if channel == "payment" {
                            amounts
                                .get(status)
                                .map(|by_currency| {
                                    by_currency
                                        .iter()
                                        .map(|(currency, amount)| format!("{amount:.2} {currency}"))
                                        .collect::<Vec<_>>()
                                        .join("; ")
                                })
                                .unwrap_or_default()
                        } else {
                            String::new()
                        };
                        vec![
                            Cell::text(channel),
                            Cell::text(status),
                            Cell::Int(*count),
                            Cell::text(amount),
                        ]
                    })
                    .collect(),
            }
        }
    })
}

/// A campaign-performance report's content: one row per campaign, the totals and the
/// daily volume. Apart from [`build`] so the benches and the sample PDF lay out exactly what
/// the worker writes.
pub fn campaign_performance(
    campaigns: &[CampaignStats],
    daily: Vec<(String, i64)>,
) -> ReportContent {
    let total = |f: fn(&CampaignStats) -> i64| -> i64 { campaigns.iter().map(f).sum() };
    let (sent, delivered) = (total(|c| c.sent), total(|c| c.delivered));
    ReportContent {
        summary: vec![
            ("Campaigns".into(), campaigns.len().to_string()),
            ("Emails".into(), total(|c| c.recipients).to_string()),
            ("Sent".into(), sent.to_string()),
            ("Delivered".into(), delivered.to_string()),
            ("Opened".into(), total(|c| c.opened).to_string()),
            ("Clicked".into(), total(|c| c.clicked).to_string()),
            ("Bounced".into(), total(|c| c.bounced).to_string()),
            ("Failed".into(), total(|c| c.failed).to_string()),
            (
                "Delivery rate".into(),
                Cell::Percent(ratio(delivered, sent)).display(),
            ),
        ],
        daily,
        columns: columns(&[
            "campaign",
            "recipients",
            "sent",
            "delivered",
            "opened",
            "clicked",
            "bounced",
            "failed",
            "delivery_rate",
            "open_rate",
            "click_rate",
        ]),
        rows: campaigns
            .iter()
            .map(|c| {
                vec![
                    Cell::text(&c.campaign),
                    Cell::Int(c.recipients),
                    Cell::Int(c.sent),
                    Cell::Int(c.delivered),
                    Cell::Int(c.opened),
                    Cell::Int(c.clicked),
                    Cell::Int(c.bounced),
                    Cell::Int(c.failed),
                    Cell::Percent(ratio(c.delivered, c.sent)),
                    Cell::Percent(ratio(c.opened, c.delivered)),
                    Cell::Percent(ratio(c.clicked, c.delivered)),
                ]
            })
            .collect(),
    }
}
