//! Report aggregations over MongoDB events (SPEC §9), each a `$match`/`$group` pipeline
//! scoped by organization and period, so the server does the counting and only one
//! document per group comes back.

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};

use super::{EventStore, StoreError};
use crate::domain::OrgId;

/// One actor's use of one action (audit events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorAction {
    pub actor: String,
    pub action: String,
    pub count: i64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

/// Payment delivery events of one status and currency, with their summed amount.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentTotal {
    pub status: String,
    pub currency: String,
    pub count: i64,
    pub amount: f64,
}

fn range(from: DateTime<Utc>, to: DateTime<Utc>) -> Document {
    doc! {
        "$gte": bson::DateTime::from_millis(from.timestamp_millis()),
        "$lt": bson::DateTime::from_millis(to.timestamp_millis()),
    }
}

fn count_of(value: Option<&Bson>) -> i64 {
    match value {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(n)) => *n as i64,
        _ => 0,
    }
}

fn number_of(value: Option<&Bson>) -> f64 {
    match value {
        Some(Bson::Int32(n)) => f64::from(*n),
        Some(Bson::Int64(n)) => *n as f64,
        Some(Bson::Double(n)) => *n,
        _ => 0.0,
    }
}

fn time_of(value: Option<&Bson>) -> DateTime<Utc> {
    match value {
        Some(Bson::DateTime(t)) => {
            DateTime::<Utc>::from_timestamp_millis(t.timestamp_millis()).unwrap_or_default()
        }
        _ => DateTime::<Utc>::default(),
    }
}

impl EventStore {
    async fn groups(&self, pipeline: Vec<Document>) -> Result<Vec<Document>, StoreError> {
        let cursor = self
            .collection
            .aggregate(pipeline)
            .await
            .context("aggregate report")?;
        Ok(cursor.try_collect().await.context("read report groups")?)
    }

    /// Inbound messages per day (`YYYY-MM-DD`): webhook events with `action` on `channel`.
    ///
    /// # Errors
    /// When MongoDB cannot be reached.
    pub async fn inbound_per_day(
        &self,
        org: &OrgId,
        channel: &str,
        action: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let groups = self
            .groups(vec![
                doc! {"$match": {"org_id": org.as_str(), "kind": "webhook", "channel": channel, "action": action, "created_at": range(from, to)}},
                doc! {"$group": {"_id": "$day", "count": {"$sum": 1}}},
                doc! {"$sort": {"_id": 1}},
            ])
            .await?;
        let mut days: Vec<(String, i64)> = groups
            .iter()
            .filter_map(|g| Some((g.get_str("_id").ok()?.to_owned(), count_of(g.get("count")))))
            .collect();
        days.sort();
        Ok(days)
    }

    /// Audit activity per actor and action, sorted by actor then action.
    ///
    /// # Errors
    /// When MongoDB cannot be reached.
    pub async fn actor_activity(
        &self,
        org: &OrgId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<ActorAction>, StoreError> {
        let groups = self
            .groups(vec![
                doc! {"$match": {"org_id": org.as_str(), "kind": "audit", "created_at": range(from, to)}},
                doc! {"$group": {
                    "_id": {"actor": "$actor", "action": "$action"},
                    "count": {"$sum": 1},
                    "first": {"$min": "$created_at"},
                    "last": {"$max": "$created_at"},
                }},
                doc! {"$sort": {"_id.actor": 1, "_id.action": 1}},
            ])
            .await?;
        let mut rows: Vec<ActorAction> = groups
            .iter()
            .filter_map(|g| {
                let key = g.get_document("_id").ok()?;
                Some(ActorAction {
                    actor: key.get_str("actor").unwrap_or("(unknown)").to_owned(),
                    action: key.get_str("action").unwrap_or_default().to_owned(),
                    count: count_of(g.get("count")),
                    first: time_of(g.get("first")),
                    last: time_of(g.get("last")),
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.actor, &a.action).cmp(&(&b.actor, &b.action)));
        Ok(rows)
    }

    /// Payment delivery events per status and currency with their summed `detail.amount`.
    ///
    /// # Errors
    /// When MongoDB cannot be reached.
    pub async fn payment_totals(
        &self,
        org: &OrgId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PaymentTotal>, StoreError> {
        let groups = self
            .groups(vec![
                doc! {"$match": {"org_id": org.as_str(), "kind": "delivery", "channel": "payment", "created_at": range(from, to)}},
                doc! {"$group": {
                    "_id": {"status": "$status", "currency": "$detail.currency"},
                    "count": {"$sum": 1},
                    "amount": {"$sum": "$detail.amount"},
                }},
            ])
            .await?;
        let mut totals: Vec<PaymentTotal> = groups
            .iter()
            .filter_map(|g| {
                let key = g.get_document("_id").ok()?;
                Some(PaymentTotal {
                    status: key.get_str("status").unwrap_or_default().to_owned(),
                    currency: key.get_str("currency").unwrap_or("").to_uppercase(),
                    count: count_of(g.get("count")),
                    amount: number_of(g.get("amount")),
                })
            })
            .collect();
        totals.sort_by(|a, b| (&a.currency, &a.status).cmp(&(&b.currency, &b.status)));
        Ok(totals)
    }
}

impl EventStore {
    /// Events of `kind` per day (`YYYY-MM-DD`), oldest first.
    ///
    /// # Errors
    /// When MongoDB cannot be reached.
    pub async fn kind_per_day(
        &self,
        org: &OrgId,
        kind: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let groups = self
            .groups(vec![
                doc! {"$match": {"org_id": org.as_str(), "kind": kind, "created_at": range(from, to)}},
                doc! {"$group": {"_id": "$day", "count": {"$sum": 1}}},
            ])
            .await?;
        let mut days: Vec<(String, i64)> = groups
            .iter()
            .filter_map(|g| Some((g.get_str("_id").ok()?.to_owned(), count_of(g.get("count")))))
            .collect();
        days.sort();
        Ok(days)
    }
}
