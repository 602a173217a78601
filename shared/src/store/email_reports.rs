//! Report aggregations over email records (SPEC §9): per-campaign delivery and engagement
//! for one organization and period. The queries read only the organization's email shards in
//! the period's id range (ULIDs sort by creation time) and projects the few attributes it
//! counts; memory holds one counter per campaign and per day, never the records.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;

use super::shards::{pages_of_all, record_partitions};
use super::{EmailStore, StoreError, s};
use crate::domain::email::EmailStatus;
use crate::domain::{OrgId, RecordId};

/// One campaign's counts. `sent` counts emails the provider accepted (sent, deferred,
/// delivered or bounced); `failed` those it never did (failed, dropped, suppressed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignStats {
    pub campaign: String,
    pub recipients: i64,
    pub sent: i64,
    pub delivered: i64,
    pub opened: i64,
    pub clicked: i64,
    pub bounced: i64,
    pub failed: i64,
}

/// The name under which emails without a campaign are counted.
pub const NO_CAMPAIGN: &str = "(no campaign)";

impl EmailStore {
    /// Per-campaign counts (sorted by campaign) and emails created per day (oldest first)
    /// for emails created in `[from, to)`.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn campaign_performance(
        &self,
        org: &OrgId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(Vec<CampaignStats>, BTreeMap<String, i64>), StoreError> {
        let lowest = RecordId::lowest_at(from).to_string();
        let highest = RecordId::lowest_at(to).to_string();
        let mut campaigns: BTreeMap<String, CampaignStats> = BTreeMap::new();
        let mut daily: BTreeMap<String, i64> = BTreeMap::new();
        let requests = record_partitions(org, "EMAIL")
            .into_iter()
            .map(|partition| {
                self.dynamodb
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                    .filter_expression("attribute_not_exists(deleted_at)")
                    .expression_attribute_values(":pk", s(partition))
                    .expression_attribute_values(":lo", s(format!("EMAIL#{lowest}")))
                    .expression_attribute_values(":hi", s(format!("EMAIL#{highest}")))
                    .projection_expression("campaign, #status, engagement, created_at")
                    .expression_attribute_names("#status", "status")
            })
            .collect();
        let mut pages = std::pin::pin!(pages_of_all(requests, "Query emails for a report"));
        while let Some(items) = pages.try_next().await? {
            for item in items {
                let text = |name: &str| match item.get(name) {
                    Some(AttributeValue::S(value)) => Some(value.as_str()),
                    _ => None,
                };
                let campaign = text("campaign").unwrap_or(NO_CAMPAIGN).to_owned();
                let status = text("status").and_then(EmailStatus::parse);
                let engagement: Vec<&str> = match item.get("engagement") {
                    Some(AttributeValue::L(list)) => list
                        .iter()
                        .filter_map(|v| v.as_s().ok().map(String::as_str))
                        .collect(),
                    _ => Vec::new(),
                };
                if let Some(day) = text("created_at").and_then(|t| t.get(..10)) {
                    *daily.entry(day.to_owned()).or_default() += 1;
                }
                let stats = campaigns
                    .entry(campaign.clone())
                    .or_insert_with(|| CampaignStats {
                        campaign,
                        ..CampaignStats::default()
                    });
                stats.recipients += 1;
                match status {
                    Some(EmailStatus::Sent | EmailStatus::Deferred) => stats.sent += 1,
                    Some(EmailStatus::Delivered) => {
                        stats.sent += 1;
                        stats.delivered += 1;
                    }
                    Some(EmailStatus::Bounced) => {
                        stats.sent += 1;
                        stats.bounced += 1;
                    }
                    Some(EmailStatus::Failed | EmailStatus::Dropped | EmailStatus::Suppressed) => {
                        stats.failed += 1;
                    }
                    _ => {}
                }
                stats.opened += i64::from(engagement.contains(&"opened"));
                stats.clicked += i64::from(engagement.contains(&"clicked"));
            }
        }
        Ok((campaigns.into_values().collect(), daily))
    }
}
