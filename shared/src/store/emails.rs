//! Email records, suppressions and webhook-event dedupe markers.
//!
//! | item | `pk` / `sk` | indexes |
//! |---|---|---|
//! | email | `ORG#<org>` / `EMAIL#<ulid>` | `GSI1` `EMAIL#SENT#<shard>` / `<sent ms>#<ulid>` while `sent` (status check); `GSI2` `BULK#<org>#<bulk>` / `<ulid>` (fan-out) |
//! | suppression | `ORG#<org>` / `SUPP#<lowercase address>` | |
//! | webhook event seen | `EVENT#<provider>#<event id>` / `EVENT` | expires after 7 days (TTL `expires_at`) |
//!
//! Status changes are conditional on the status the writer saw (and every write bumps
//! `version`), so concurrent workers and webhooks can never move an email backwards.

use std::collections::HashMap;

use anyhow::Context;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, Put, PutRequest, TransactWriteItem, Update, WriteRequest,
};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use super::{Item, PartitionKey, StoreError, paged_query, s};
use crate::domain::email::{
    EmailAddress, EmailRecord, EmailStatus, Engagement, FailureKind, TimelineEntry,
};
use crate::domain::{OrgId, RecordId};
use crate::http::{Cursor, PageRequest};

/// Shards of the "emails in `sent`" index, so a high send rate does not pile onto one
/// index partition (see docs/SCALE.md).
pub const SENT_SHARDS: u32 = 8;
const EVENT_MARKER_DAYS: i64 = 7;

#[derive(Debug, Clone)]
pub struct EmailStore {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
}

#[derive(Debug, Clone, Default)]
pub struct EmailListQuery {
    pub status: Option<EmailStatus>,
    pub to: Option<String>,
    pub campaign: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// What a provider event does to an email, decided from the current record.
#[derive(Debug, Clone, Default)]
pub struct EventEffect {
    pub status: Option<EmailStatus>,
    pub engagement: Option<Engagement>,
    pub timeline: Option<TimelineEntry>,
    pub failure_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Applied,
    Duplicate,
}

/// A suppression list entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Suppression {
    pub email: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

fn org_pk(org: &OrgId) -> String {
    format!("ORG#{org}")
}

fn email_sk(id: &str) -> String {
    format!("EMAIL#{id}")
}

fn supp_sk(address: &str) -> String {
    format!("SUPP#{}", address.to_lowercase())
}

fn sent_shard(id: &str) -> String {
    let shard = id.bytes().fold(0u32, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u32::from(b))
    }) % SENT_SHARDS;
    format!("EMAIL#SENT#{shard}")
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn is_condition_failure<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(
    error: &aws_sdk_dynamodb::error::SdkError<E>,
) -> bool {
    error
        .as_service_error()
        .is_some_and(|e| e.code() == Some("ConditionalCheckFailedException"))
}

fn timeline_value(entry: &TimelineEntry) -> Result<AttributeValue, StoreError> {
    let value: AttributeValue =
        serde_dynamo::to_attribute_value(entry).context("encoding timeline entry")?;
    Ok(AttributeValue::L(vec![value]))
}

fn decode(item: Item) -> Result<EmailRecord, StoreError> {
    Ok(serde_dynamo::from_item(item).context("malformed email item")?)
}

impl EmailStore {
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            dynamodb,
            table: table.into(),
        }
    }

    fn item_of(record: &EmailRecord) -> Result<Item, StoreError> {
        let mut item: Item = serde_dynamo::to_item(record).context("encoding email")?;
        item.insert("pk".into(), s(org_pk(&record.org_id)));
        item.insert("sk".into(), s(email_sk(&record.id)));
        item.insert("entity".into(), s("email"));
        item.insert("status_rank".into(), n(record.status.rank()));
        if let Some(bulk) = &record.bulk_id {
            item.insert("gsi2pk".into(), s(format!("BULK#{}#{bulk}", record.org_id)));
            item.insert("gsi2sk".into(), s(&record.id));
        }
        Ok(item)
    }

    /// Stores new records (fresh ids), 25 per BatchWriteItem, several batches at once.
    ///
    /// # Errors
    /// When a batch cannot be written after retrying unprocessed items.
    pub async fn create_all(&self, records: &[EmailRecord]) -> Result<(), StoreError> {
        let batches: Vec<Vec<WriteRequest>> = records
            .chunks(25)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|record| {
                        let put = PutRequest::builder()
                            .set_item(Some(Self::item_of(record)?))
                            .build()
                            .context("PutRequest")?;
                        Ok(WriteRequest::builder().put_request(put).build())
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .collect::<Result<_, _>>()?;
        let writes: Vec<_> = batches
            .into_iter()
            .map(|batch| self.write_batch(batch))
            .collect();
        futures::stream::iter(writes)
            .buffer_unordered(8)
            .try_collect::<()>()
            .await
    }

    async fn write_batch(&self, mut batch: Vec<WriteRequest>) -> Result<(), StoreError> {
        for attempt in 0..6 {
            let output = self
                .dynamodb
                .batch_write_item()
                .request_items(&self.table, batch)
                .send()
                .await
                .context("BatchWriteItem emails")?;
            batch = output
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            if batch.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await;
        }
        Err(anyhow::anyhow!("DynamoDB left {} email writes unprocessed", batch.len()).into())
    }

    /// # Errors
    /// [`StoreError::NotFound`] when missing, deleted or another organization's.
    pub async fn get(&self, org: &OrgId, id: RecordId) -> Result<EmailRecord, StoreError> {
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(email_sk(&id.to_string())))
            .consistent_read(true)
            .send()
            .await
            .context("GetItem email")?
            .item
            .ok_or(StoreError::NotFound)?;
        if item.contains_key("deleted_at") {
            return Err(StoreError::NotFound);
        }
        decode(item)
    }

    /// Lists an organization's live emails, newest first.
    ///
    /// # Errors
    /// [`StoreError::InvalidCursor`] for a cursor of another partition.
    pub async fn list(
        &self,
        org: &OrgId,
        query: &EmailListQuery,
        page: &PageRequest,
    ) -> Result<(Vec<EmailRecord>, Option<Cursor>), StoreError> {
        let lowest = query
            .created_after
            .map(|t| RecordId::lowest_at(t).to_string())
            .unwrap_or_else(|| "0".to_owned());
        let highest = query
            .created_before
            .map(|t| RecordId::highest_at(t).to_string())
            .unwrap_or_else(|| "~".to_owned());
        let partition = org_pk(org);
        let mut filters = vec!["attribute_not_exists(deleted_at)".to_owned()];
        let mut request = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(&partition))
            .expression_attribute_values(":lo", s(email_sk(&lowest)))
            .expression_attribute_values(":hi", s(email_sk(&highest)))
            .scan_index_forward(false);
        if let Some(status) = query.status {
            filters.push("#status = :status".to_owned());
            request = request
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":status", s(status.as_str()));
        }
        if let Some(to) = &query.to {
            filters.push("#to = :to".to_owned());
            request = request
                .expression_attribute_names("#to", "to")
                .expression_attribute_values(":to", s(to));
        }
        if let Some(campaign) = &query.campaign {
            filters.push("campaign = :campaign".to_owned());
            request = request.expression_attribute_values(":campaign", s(campaign));
        }
        request = request.filter_expression(filters.join(" AND "));
        let (items, next) = paged_query(
            request,
            page,
            PartitionKey {
                attribute: "pk",
                value: &partition,
            },
            &["pk", "sk"],
        )
        .await?;
        Ok((
            items.into_iter().map(decode).collect::<Result<_, _>>()?,
            next,
        ))
    }

    /// Fetches records by id (live or not: workers must see deleted ones to skip them).
    ///
    /// # Errors
    /// Storage failures only; unknown ids are left out.
    pub async fn get_many(
        &self,
        org: &OrgId,
        ids: &[String],
    ) -> Result<Vec<EmailRecord>, StoreError> {
        let mut records = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let mut keys: Vec<Item> = chunk
                .iter()
                .map(|id| {
                    HashMap::from([
                        ("pk".to_owned(), s(org_pk(org))),
                        ("sk".to_owned(), s(email_sk(id))),
                    ])
                })
                .collect();
            for attempt in 0..6 {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .context("keys")?;
                let output = self
                    .dynamodb
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .context("BatchGetItem emails")?;
                for item in output
                    .responses
                    .and_then(|mut r| r.remove(&self.table))
                    .unwrap_or_default()
                {
                    if !item.contains_key("deleted_at") {
                        records.push(decode(item)?);
                    }
                }
                keys = output
                    .unprocessed_keys
                    .and_then(|mut m| m.remove(&self.table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                if keys.is_empty() {
                    break;
                }
                if attempt == 5 {
                    return Err(anyhow::anyhow!(
                        "DynamoDB left {} email reads unprocessed",
                        keys.len()
                    )
                    .into());
                }
                tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await;
            }
        }
        Ok(records)
    }

    /// Takes an email for sending: `queued`, or `sending` whose previous claim lapsed (the
    /// worker that held it died). Returns the claimed record, or `None` when another
    /// delivery already has it or it moved on — so a duplicate message never sends twice.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn claim(
        &self,
        org: &OrgId,
        id: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<Option<EmailRecord>, StoreError> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(email_sk(id)))
            .update_expression("SET #status = :sending, status_rank = :rank, claim_until = :lease, attempts = attempts + :one, updated_at = :now, version = version + :one")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(deleted_at) AND (#status = :queued OR (#status = :sending AND claim_until < :epoch))")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":sending", s("sending"))
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":rank", n(EmailStatus::Sending.rank()))
            .expression_attribute_values(":lease", n((now + lease).timestamp()))
            .expression_attribute_values(":epoch", n(now.timestamp()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => Ok(Some(decode(output.attributes.unwrap_or_default())?)),
            Err(error) if is_condition_failure(&error) => Ok(None),
            Err(error) => Err(anyhow::Error::new(error)
                .context("UpdateItem email claim")
                .into()),
        }
    }

    /// Moves a claimed email on from `sending`: to `sent` (with the provider's message id),
    /// back to `queued` for a retry, or to a final status. A record that already moved on
    /// (a fast webhook beat the worker) is left alone but keeps the provider id.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn finish(
        &self,
        org: &OrgId,
        id: &str,
        outcome: &SendOutcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut request = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(email_sk(id)))
            .condition_expression("#status = :sending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":sending", s("sending"))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .expression_attribute_values(":one", n(1));
        let (status, event, detail) = match outcome {
            SendOutcome::Sent { message_id } => {
                request = request
                    .expression_attribute_values(
                        ":msg",
                        message_id.as_deref().map_or(AttributeValue::Null(true), s),
                    )
                    .expression_attribute_values(":g1", s(sent_shard(id)))
                    .expression_attribute_values(
                        ":g1s",
                        s(format!("{:013}#{id}", now.timestamp_millis())),
                    );
                (EmailStatus::Sent, "sent", None)
            }
            SendOutcome::Retry { reason } => {
                (EmailStatus::Queued, "retry_scheduled", Some(reason.clone()))
            }
            SendOutcome::Failed { kind, reason } => {
                request = request.expression_attribute_values(
                    ":kind",
                    s(match kind {
                        FailureKind::Transient => "transient",
                        FailureKind::Permanent => "permanent",
                    }),
                );
                (EmailStatus::Failed, "failed", Some(reason.clone()))
            }
            SendOutcome::Suppressed => (
                EmailStatus::Suppressed,
                "suppressed",
                Some("the address is on the suppression list".to_owned()),
            ),
        };
        let base = "SET #status = :status, status_rank = :rank, updated_at = :now, version = version + :one, timeline = list_append(timeline, :entry)";
        let expression = match outcome {
            SendOutcome::Sent { .. } => format!(
                "{base}, provider_message_id = :msg, sent_at = :now, gsi1pk = :g1, gsi1sk = :g1s REMOVE claim_until"
            ),
            SendOutcome::Retry { .. } => {
                format!("{base}, failure_reason = :reason REMOVE claim_until")
            }
            SendOutcome::Failed { .. } => {
                format!("{base}, failure_reason = :reason, failure_kind = :kind REMOVE claim_until")
            }
            SendOutcome::Suppressed => format!("{base} REMOVE claim_until"),
        };
        if let Some(detail) = &detail {
            request = request.expression_attribute_values(":reason", s(detail));
        }
        let entry = TimelineEntry::new(now, event, detail);
        let result = request
            .update_expression(expression)
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":rank", n(status.rank()))
            .expression_attribute_values(":entry", timeline_value(&entry)?)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => {
                if let SendOutcome::Sent {
                    message_id: Some(message_id),
                } = outcome
                {
                    self.dynamodb
                        .update_item()
                        .table_name(&self.table)
                        .key("pk", s(org_pk(org)))
                        .key("sk", s(email_sk(id)))
                        .update_expression("SET provider_message_id = if_not_exists(provider_message_id, :msg), sent_at = if_not_exists(sent_at, :now)")
                        .expression_attribute_values(":msg", s(message_id))
                        .expression_attribute_values(":now", s(now.to_rfc3339()))
                        .send()
                        .await
                        .context("UpdateItem email provider id")?;
                }
                Ok(())
            }
            Err(error) => Err(anyhow::Error::new(error)
                .context("UpdateItem email finish")
                .into()),
        }
    }

    /// Applies a provider event exactly once: the dedupe marker, the email change and the
    /// suppression entry commit together or not at all. `decide` sees the current record
    /// (`None` when Herald has no such email) and says what the event changes.
    ///
    /// # Errors
    /// Storage failures, or contention that outlasts the retries.
    pub async fn apply_event(
        &self,
        org: &OrgId,
        email_id: Option<&str>,
        event_key: &str,
        suppress: Option<(&EmailAddress, &str)>,
        now: DateTime<Utc>,
        decide: impl Fn(&EmailRecord) -> EventEffect,
    ) -> Result<EventOutcome, StoreError> {
        for _ in 0..5 {
            let current = match email_id {
                Some(id) => match RecordId::parse(id) {
                    Some(record_id) => match self.get(org, record_id).await {
                        Ok(record) => Some(record),
                        Err(StoreError::NotFound) => None,
                        Err(other) => return Err(other),
                    },
                    None => None,
                },
                None => None,
            };
            let mut items = vec![
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .item("pk", s(format!("EVENT#{event_key}")))
                            .item("sk", s("EVENT"))
                            .item("entity", s("event_seen"))
                            .item("org_id", s(org.as_str()))
                            .item(
                                "expires_at",
                                n((now + chrono::Duration::days(EVENT_MARKER_DAYS)).timestamp()),
                            )
                            .condition_expression("attribute_not_exists(pk)")
                            .build()
                            .context("Put event marker")?,
                    )
                    .build(),
            ];
            if let Some(record) = &current {
                let effect = decide(record);
                if let Some(update) = self.effect_update(record, &effect, now)? {
                    items.push(TransactWriteItem::builder().update(update).build());
                }
            }
            if let Some((address, reason)) = suppress {
                items.push(
                    TransactWriteItem::builder()
                        .put(
                            Put::builder()
                                .table_name(&self.table)
                                .item("pk", s(org_pk(org)))
                                .item("sk", s(supp_sk(address.as_str())))
                                .item("entity", s("suppression"))
                                .item("email", s(address.suppression_key()))
                                .item("reason", s(reason))
                                .item("created_at", s(now.to_rfc3339()))
                                .build()
                                .context("Put suppression")?,
                        )
                        .build(),
                );
            }
            let result = self
                .dynamodb
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(EventOutcome::Applied),
                Err(error) => {
                    let reasons: Vec<Option<String>> = match error.as_service_error() {
                        Some(TransactWriteItemsError::TransactionCanceledException(canceled)) => {
                            canceled
                                .cancellation_reasons()
                                .iter()
                                .map(|r| r.code().map(str::to_owned))
                                .collect()
                        }
                        _ => Vec::new(),
                    };
                    if reasons.first().and_then(Option::as_deref) == Some("ConditionalCheckFailed")
                    {
                        return Ok(EventOutcome::Duplicate);
                    }
                    if reasons
                        .iter()
                        .skip(1)
                        .any(|r| r.as_deref() == Some("ConditionalCheckFailed"))
                    {
                        continue; // the email changed under us: read it again
                    }
                    return Err(anyhow::Error::new(error)
                        .context("TransactWriteItems event")
                        .into());
                }
            }
        }
        Err(StoreError::Conflict(
            "the email kept changing while applying an event".to_owned(),
        ))
    }

    fn effect_update(
        &self,
        record: &EmailRecord,
        effect: &EventEffect,
        now: DateTime<Utc>,
    ) -> Result<Option<Update>, StoreError> {
        let mut sets = vec![
            "updated_at = :now".to_owned(),
            "version = version + :one".to_owned(),
        ];
        let mut removes = Vec::new();
        let mut values: Vec<(&str, AttributeValue)> = vec![
            (":now", s(now.to_rfc3339())),
            (":one", n(1)),
            (":v", n(record.version)),
        ];
        let mut changed = false;
        if let Some(status) = effect.status.filter(|next| record.status.can_become(*next)) {
            changed = true;
            sets.push("#status = :status".to_owned());
            sets.push("status_rank = :rank".to_owned());
            values.push((":status", s(status.as_str())));
            values.push((":rank", n(status.rank())));
            if record.status == EmailStatus::Sent {
                removes.push("gsi1pk");
                removes.push("gsi1sk");
            }
            if let Some(reason) = &effect.failure_reason {
                sets.push("failure_reason = :reason".to_owned());
                values.push((":reason", s(reason)));
            }
        }
        if let Some(engagement) = effect.engagement.filter(|e| !record.engagement.contains(e)) {
            changed = true;
            let mut all = record.engagement.clone();
            all.push(engagement);
            sets.push("engagement = :engagement".to_owned());
            values.push((
                ":engagement",
                serde_dynamo::to_attribute_value(&all).context("engagement")?,
            ));
        }
        if let Some(entry) = &effect.timeline {
            changed = true;
            sets.push("timeline = list_append(timeline, :entry)".to_owned());
            values.push((":entry", timeline_value(entry)?));
        }
        if !changed {
            return Ok(None);
        }
        let mut expression = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(org_pk(&record.org_id)))
            .key("sk", s(email_sk(&record.id)))
            .update_expression(expression)
            // Written only over the version this decision was made from.
            .condition_expression("version = :v AND attribute_not_exists(deleted_at)");
        if sets.iter().any(|set| set.starts_with("#status")) {
            update = update.expression_attribute_names("#status", "status");
        }
        for (name, value) in values {
            update = update.expression_attribute_values(name, value);
        }
        Ok(Some(update.build().context("Update email effect")?))
    }

    /// Soft-deletes an email. A queued email is then never sent (claims skip deleted ones).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when missing or already deleted.
    pub async fn delete(
        &self,
        org: &OrgId,
        id: RecordId,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(email_sk(&id.to_string())))
            .update_expression("SET deleted_at = :now, version = version + :one REMOVE gsi1pk, gsi1sk, gsi2pk, gsi2sk")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(deleted_at)")
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Err(StoreError::NotFound),
            Err(error) => Err(anyhow::Error::new(error)
                .context("UpdateItem email delete")
                .into()),
        }
    }

    /// Puts every email that failed for a transient reason (and matches `query`) back in
    /// `queued`; returns their ids, at most `max`.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn requeue_transient_failures(
        &self,
        org: &OrgId,
        query: &EmailListQuery,
        max: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let query = EmailListQuery {
            status: Some(EmailStatus::Failed),
            ..query.clone()
        };
        let mut ids = Vec::new();
        let mut params = std::collections::BTreeMap::new();
        params.insert("limit".to_owned(), "100".to_owned());
        let mut page =
            PageRequest::from_query(&params, org.as_str()).map_err(|e| anyhow::anyhow!("{e}"))?;
        loop {
            let (records, next) = self.list(org, &query, &page).await?;
            for record in records
                .iter()
                .filter(|r| r.failure_kind == Some(FailureKind::Transient))
            {
                if ids.len() >= max {
                    return Ok(ids);
                }
                let entry = TimelineEntry::new(now, "requeued", None);
                let result = self
                    .dynamodb
                    .update_item()
                    .table_name(&self.table)
                    .key("pk", s(org_pk(org)))
                    .key("sk", s(email_sk(&record.id)))
                    .update_expression("SET #status = :queued, status_rank = :rank, updated_at = :now, version = version + :one, timeline = list_append(timeline, :entry) REMOVE failure_kind, failure_reason")
                    .condition_expression("#status = :failed AND attribute_not_exists(deleted_at)")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":queued", s("queued"))
                    .expression_attribute_values(":failed", s("failed"))
                    .expression_attribute_values(":rank", n(EmailStatus::Queued.rank()))
                    .expression_attribute_values(":now", s(now.to_rfc3339()))
                    .expression_attribute_values(":one", n(1))
                    .expression_attribute_values(":entry", timeline_value(&entry)?)
                    .send()
                    .await;
                match result {
                    Ok(_) => ids.push(record.id.clone()),
                    Err(error) if is_condition_failure(&error) => {}
                    Err(error) => {
                        return Err(anyhow::Error::new(error)
                            .context("UpdateItem email requeue")
                            .into());
                    }
                }
            }
            match next {
                Some(position) => page.after = Some(position),
                None => return Ok(ids),
            }
        }
    }

    /// The ids of a bulk send's emails still `queued`, in id order.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn queued_in_bulk(
        &self,
        org: &OrgId,
        bulk_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .dynamodb
                .query()
                .table_name(&self.table)
                .index_name("GSI2")
                .key_condition_expression("gsi2pk = :pk")
                .filter_expression("#status = :queued")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":pk", s(format!("BULK#{org}#{bulk_id}")))
                .expression_attribute_values(":queued", s("queued"))
                .projection_expression("id")
                .set_exclusive_start_key(start)
                .send()
                .await
                .context("Query bulk emails")?;
            for item in output.items.unwrap_or_default() {
                if let Some(AttributeValue::S(id)) = item.get("id") {
                    ids.push(id.clone());
                }
            }
            start = output.last_evaluated_key;
            if start.is_none() {
                return Ok(ids);
            }
        }
    }

    /// Emails that have been `sent` since before `cutoff` without a final event, oldest
    /// first, across organizations (for the status check): `(org, id, provider message id)`.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn stuck_in_sent(
        &self,
        cutoff: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<(OrgId, String, Option<String>)>, StoreError> {
        let mut found = Vec::new();
        for shard in 0..SENT_SHARDS {
            let mut start = None;
            loop {
                let output = self
                    .dynamodb
                    .query()
                    .table_name(&self.table)
                    .index_name("GSI1")
                    .key_condition_expression("gsi1pk = :pk AND gsi1sk < :cutoff")
                    .expression_attribute_values(":pk", s(format!("EMAIL#SENT#{shard}")))
                    .expression_attribute_values(
                        ":cutoff",
                        s(format!("{:013}", cutoff.timestamp_millis())),
                    )
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .context("Query sent emails")?;
                for item in output.items.unwrap_or_default() {
                    let record = decode(item)?;
                    found.push((record.org_id, record.id, record.provider_message_id));
                    if found.len() >= max {
                        return Ok(found);
                    }
                }
                start = output.last_evaluated_key;
                if start.is_none() {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Which of `addresses` are on the organization's suppression list.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn suppressed(
        &self,
        org: &OrgId,
        addresses: &[&EmailAddress],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut unique: Vec<String> = addresses.iter().map(|a| a.suppression_key()).collect();
        unique.sort();
        unique.dedup();
        let mut found = std::collections::HashSet::new();
        for chunk in unique.chunks(100) {
            let mut keys: Vec<Item> = chunk
                .iter()
                .map(|address| {
                    HashMap::from([
                        ("pk".to_owned(), s(org_pk(org))),
                        ("sk".to_owned(), s(supp_sk(address))),
                    ])
                })
                .collect();
            while !keys.is_empty() {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .projection_expression("email")
                    .build()
                    .context("keys")?;
                let output = self
                    .dynamodb
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .context("BatchGetItem suppressions")?;
                for item in output
                    .responses
                    .and_then(|mut r| r.remove(&self.table))
                    .unwrap_or_default()
                {
                    if let Some(AttributeValue::S(email)) = item.get("email") {
                        found.insert(email.clone());
                    }
                }
                keys = output
                    .unprocessed_keys
                    .and_then(|mut m| m.remove(&self.table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
            }
        }
        Ok(found)
    }

    /// # Errors
    /// [`StoreError::InvalidCursor`] for a cursor of another partition.
    pub async fn list_suppressions(
        &self,
        org: &OrgId,
        page: &PageRequest,
    ) -> Result<(Vec<Suppression>, Option<Cursor>), StoreError> {
        let partition = org_pk(org);
        let request = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :supp)")
            .expression_attribute_values(":pk", s(&partition))
            .expression_attribute_values(":supp", s("SUPP#"));
        let (items, next) = paged_query(
            request,
            page,
            PartitionKey {
                attribute: "pk",
                value: &partition,
            },
            &["pk", "sk"],
        )
        .await?;
        let entries = items
            .into_iter()
            .map(|item| serde_dynamo::from_item(item).context("malformed suppression"))
            .collect::<Result<_, _>>()?;
        Ok((entries, next))
    }

    /// # Errors
    /// [`StoreError::NotFound`] when the address is not on the list.
    pub async fn delete_suppression(&self, org: &OrgId, address: &str) -> Result<(), StoreError> {
        let result = self
            .dynamodb
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(supp_sk(address)))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Err(StoreError::NotFound),
            Err(error) => Err(anyhow::Error::new(error)
                .context("DeleteItem suppression")
                .into()),
        }
    }
}

/// How a send attempt ended for one email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Sent {
        message_id: Option<String>,
    },
    /// A transient failure with attempts left: back to `queued`.
    Retry {
        reason: String,
    },
    Failed {
        kind: FailureKind,
        reason: String,
    },
    Suppressed,
}
