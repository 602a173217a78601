//! SMS records, opt-outs and inbound conversation entries (the per-organization send rate
//! is `send_rate.rs`).
//!
//! | item | `pk` / `sk` | indexes |
//! |---|---|---|
//! | SMS | `ORG#<org>#SMS#<shard>` / `SMS#<ulid>` | `GSI1` `SMS#SENT#<shard>` / `<sent ms>#<ulid>` while `sent` (status check) |
//! | opt-out | `ORG#<org>` / `OPTOUT#<e164>` | |
//! | inbound message | `ORG#<org>` / `SMSIN#<ulid>`, and `SMSINSID#<MessageSid>` to dedupe | |
//! | last sender to a number | `SMSPEER#<e164>` / `SMSPEER` (org of the latest outbound SMS to it) | |
//!
//! SMS records are write-sharded: `<shard>` is the record id's shard of
//! [`RECORD_SHARDS`](super::RECORD_SHARDS) (see `shards.rs`), so one organization's claim,
//! finish and callback writes spread over sixteen partition keys, and listings merge them.
//! Opt-outs and inbound messages arrive at a human rate and stay on `ORG#<org>`. (Before
//! issue 10 SMS records were on `ORG#<org>` and the fan-out key had no shard; no deployment
//! holds such items, so nothing is migrated.)
//!
//! Status changes are conditional on the version the writer read, so concurrent callbacks,
//! the status check and the worker can never move a record backwards; the callback keys
//! already applied are listed on the record and written in the same update.

use std::collections::HashMap;

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use super::send_jobs::{self, Taken};
use super::shards::{
    self, PendingRecord, ShardedList, StuckInSent, Swept, Unsettled, merged_query,
    pending_index_key, record_partitions, record_pk, status_index_shard,
};
use super::{
    Item, PartitionKey, SendOutcome, StoreError, batch_get, get_live, is_condition_failure,
    paged_query, s, timeline_value,
};
use crate::aws::DynamoDbClient;
use crate::domain::email::{FailureKind, TimelineEntry};
use crate::domain::sms_message::{PhoneNumber, SmsRecord, SmsStatus};
use crate::domain::{OrgId, RecordId};
use crate::pagination::{Cursor, PageRequest};
use crate::queue::BulkSpan;

/// Shards of the "SMS in `sent`" index (see the email store's `SENT_SHARDS`).
pub const SMS_SENT_SHARDS: u32 = 8;

#[derive(Debug, Clone)]
pub struct SmsStore {
    dynamodb: DynamoDbClient,
    table: String,
}

#[derive(Debug, Clone, Default)]
pub struct SmsListQuery {
    pub status: Option<SmsStatus>,
    pub to: Option<String>,
    pub bulk_id: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// What applying a Twilio status did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusApplied {
    /// This callback (same SID and status) was applied before.
    Duplicate,
    /// An in-progress report (Twilio's `queued` … `sent`, all Herald's `sent`) for a
    /// record already `sent` or past it whose SID is known: it changes nothing, so it is
    /// not written (a write unit for a timeline line, up to three times per message).
    Unchanged,
    /// Recorded; `Some` when the record's status moved.
    Recorded(Option<SmsStatus>),
}

/// An inbound message kept as a conversation entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InboundSms {
    /// Herald's id (a ULID: entries sort by arrival).
    pub id: String,
    pub message_sid: String,
    pub from: String,
    pub to: String,
    pub body: String,
    #[serde(default)]
    pub keyword: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// The partition of an organization's low-rate items (opt-outs, inbound messages).
fn org_pk(org: &OrgId) -> String {
    format!("ORG#{org}")
}

/// The partition key of one SMS record: its organization's shard for the id.
fn sms_pk(org: &OrgId, id: &str) -> String {
    record_pk(org, "SMS", id)
}

fn sms_sk(id: &str) -> String {
    format!("SMS#{id}")
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn sent_shard(id: &str) -> String {
    format!("SMS#SENT#{}", status_index_shard(id, SMS_SENT_SHARDS))
}

/// The pending-index key of an SMS waiting since `since` (see [`pending_index_key`]).
fn pending_key(id: &str, since: DateTime<Utc>) -> (String, String) {
    pending_index_key("SMS", SMS_SENT_SHARDS, id, since)
}

fn decode(item: Item) -> Result<SmsRecord, StoreError> {
    Ok(serde_dynamo::from_item(item).context("malformed SMS item")?)
}

/// Writes items 25 per BatchWriteItem, several batches at once, retrying unprocessed ones.
pub(crate) async fn put_all(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    items: Vec<Item>,
) -> Result<(), StoreError> {
    let batches: Vec<Vec<WriteRequest>> = items
        .chunks(25)
        .map(|chunk| {
            chunk
                .iter()
                .map(|item| {
                    let put = PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .context("PutRequest")?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .collect::<Result<_, _>>()?;
    let writes = batches.into_iter().map(|mut batch| async move {
        for attempt in 0..6 {
            let output = dynamodb
                .batch_write_item()
                .request_items(table, batch)
                .send()
                .await
                .context("BatchWriteItem")?;
            batch = output
                .unprocessed_items
                .and_then(|mut m| m.remove(table))
                .unwrap_or_default();
            if batch.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await;
        }
        Err(StoreError::from(anyhow::anyhow!(
            "DynamoDB left {} writes unprocessed",
            batch.len()
        )))
    });
    futures::stream::iter(writes)
        .buffer_unordered(8)
        .try_collect::<()>()
        .await
}

/// What Twilio says about a message (a status callback or a fetch): its status, its SID
/// when known, and the error code of a failure.
#[derive(Debug, Clone, Copy)]
pub struct TwilioReport<'a> {
    pub status: &'a str,
    pub sid: Option<&'a str>,
    pub error_code: Option<i64>,
}

impl SmsStore {
    pub fn new(dynamodb: DynamoDbClient, table: impl Into<String>) -> Self {
        Self {
            dynamodb,
            table: table.into(),
        }
    }

    fn item_of(record: &SmsRecord) -> Result<Item, StoreError> {
        let mut item: Item = serde_dynamo::to_item(record).context("encoding SMS")?;
        item.insert("pk".into(), s(sms_pk(&record.org_id, &record.id)));
        item.insert("sk".into(), s(sms_sk(&record.id)));
        item.insert("entity".into(), s("sms"));
        if record.status == SmsStatus::Queued {
            let (pk, sk) = pending_key(&record.id, record.created_at);
            item.insert("gsi1pk".into(), s(pk));
            item.insert("gsi1sk".into(), s(sk));
        }
        Ok(item)
    }

    /// Stores new records (fresh ids).
    ///
    /// # Errors
    /// When a batch cannot be written after retries.
    pub async fn create_all(&self, records: &[SmsRecord]) -> Result<(), StoreError> {
        let items = records
            .iter()
            .map(Self::item_of)
            .collect::<Result<Vec<_>, _>>()?;
        put_all(&self.dynamodb, &self.table, items).await
    }

    /// Stores records whose ids may already be taken by the same record (a phonebook
    /// fan-out redone after a crash, [`RecordId::derived`] ids): each put is conditional on
    /// the id being free, so a record made before (and perhaps sent since) is left as it is.
    /// BatchWriteItem cannot carry a condition, so these are single puts, several at once;
    /// DynamoDB bills them the same write units. Returns the ids that were new.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn create_new(&self, records: &[SmsRecord]) -> Result<Vec<String>, StoreError> {
        let items = records
            .iter()
            .map(|record| Ok((record.id.clone(), Self::item_of(record)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let puts = items.into_iter().map(|(id, item)| {
            let put = self
                .dynamodb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)");
            async move { (id, put.send().await) }
        });
        let outcomes: Vec<_> = futures::stream::iter(puts)
            .buffer_unordered(16)
            .collect()
            .await;
        let mut made = Vec::new();
        for (id, result) in outcomes {
            match result {
                Ok(_) => made.push(id),
                Err(error) if is_condition_failure(&error) => {}
                Err(error) => {
                    return Err(anyhow::Error::new(error).context("PutItem SMS").into());
                }
            }
        }
        Ok(made)
    }

    /// # Errors
    /// [`StoreError::NotFound`] when missing, deleted or another organization's.
    pub async fn get(&self, org: &OrgId, id: &str) -> Result<SmsRecord, StoreError> {
        let item = get_live(
            &self.dynamodb,
            &self.table,
            sms_pk(org, id),
            sms_sk(id),
            "SMS",
        )
        .await?;
        decode(item)
    }

    /// Lists an organization's live SMS records, newest first, merged from every shard.
    ///
    /// # Errors
    /// [`StoreError::InvalidCursor`] for a cursor that is not an SMS sort key.
    pub async fn list(
        &self,
        org: &OrgId,
        query: &SmsListQuery,
        page: &PageRequest,
    ) -> Result<(Vec<SmsRecord>, Option<Cursor>), StoreError> {
        let (lowest, highest) = RecordId::range(query.created_after, query.created_before);
        let mut filters = vec!["attribute_not_exists(deleted_at)".to_owned()];
        let mut request = self.dynamodb.query().table_name(&self.table);
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
        if let Some(bulk) = &query.bulk_id {
            filters.push("bulk_id = :bulk".to_owned());
            request = request.expression_attribute_values(":bulk", s(bulk));
        }
        request = request.filter_expression(filters.join(" AND "));
        let list = ShardedList {
            partitions: record_partitions(org, "SMS"),
            lowest: sms_sk(&lowest),
            highest: sms_sk(&highest),
            sort_prefix: "SMS#",
        };
        let (items, next) = merged_query(request, list, page).await?;
        Ok((
            items.into_iter().map(decode).collect::<Result<_, _>>()?,
            next,
        ))
    }

    /// Soft-deletes a record: it is kept for audit, never listed or sent again.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when missing, deleted or another organization's.
    pub async fn delete(
        &self,
        org: &OrgId,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sms_pk(org, id)))
            .key("sk", s(sms_sk(id)))
            .update_expression("SET deleted_at = :now REMOVE gsi1pk, gsi1sk")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(deleted_at)")
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Err(StoreError::NotFound),
            Err(error) => Err(anyhow::Error::new(error)
                .context("UpdateItem SMS delete")
                .into()),
        }
    }

    /// Fetches live records by id, in the order asked; deleted and unknown ones are left out.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn get_many(
        &self,
        org: &OrgId,
        ids: &[String],
    ) -> Result<Vec<SmsRecord>, StoreError> {
        let keys = ids
            .iter()
            .map(|id| {
                HashMap::from([
                    ("pk".to_owned(), s(sms_pk(org, id))),
                    ("sk".to_owned(), s(sms_sk(id))),
                ])
            })
            .collect();
        let mut records: Vec<SmsRecord> = batch_get(&self.dynamodb, &self.table, keys, None)
            .await?
            .into_iter()
            .filter(|item| !item.contains_key("deleted_at"))
            .map(decode)
            .collect::<Result<_, _>>()?;
        records.sort_by_key(|r| ids.iter().position(|id| *id == r.id));
        Ok(records)
    }

    /// Takes a record for sending: `queued`, or `sending` whose previous claim lapsed.
    /// `None` when another delivery has it or it moved on, so a duplicate never sends twice.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn claim(
        &self,
        org: &OrgId,
        id: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<Option<SmsRecord>, StoreError> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sms_pk(org, id)))
            .key("sk", s(sms_sk(id)))
            .update_expression(
                "SET #status = :sending, claim_until = :lease, attempts = attempts + :one, \
                 updated_at = :now, version = version + :one",
            )
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(deleted_at) AND \
                 attribute_not_exists(send_job) AND \
                 (#status = :queued OR (#status = :sending AND claim_until < :epoch))",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":sending", s("sending"))
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":lease", n((now + lease).timestamp()))
            .expression_attribute_values(":epoch", n(now.timestamp()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => decode(output.attributes.unwrap_or_default()).map(Some),
            Err(error) if is_condition_failure(&error) => Ok(None),
            Err(error) => Err(anyhow::Error::new(error)
                .context("UpdateItem SMS claim")
                .into()),
        }
    }

    /// Claims send job `job` for this delivery (see `send_jobs`). `false`: another
    /// delivery holds it.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn claim_job(
        &self,
        org: &OrgId,
        job: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<bool, StoreError> {
        send_jobs::claim(&self.dynamodb, &self.table, org, job, now, lease).await
    }

    /// Lets go of send job `job`, so the next message of the job takes it at once.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn release_job(&self, org: &OrgId, job: &str) -> Result<(), StoreError> {
        send_jobs::release(&self.dynamodb, &self.table, org, job).await
    }

    /// Gives back a claim that was not used (`sending` → `queued`, the attempt not counted),
    /// so the next delivery takes the record at once rather than after the lease.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn release(
        &self,
        org: &OrgId,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sms_pk(org, id)))
            .key("sk", s(sms_sk(id)))
            .update_expression(
                "SET #status = :queued, attempts = attempts - :one, updated_at = :now, \
                 version = version + :one REMOVE claim_until",
            )
            .condition_expression("#status = :sending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":sending", s("sending"))
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Ok(()), // moved on meanwhile
            Err(error) => Err(anyhow::Error::new(error)
                .context("UpdateItem SMS release")
                .into()),
        }
    }

    /// Moves a claimed record on from `sending`. A record a fast callback already moved on
    /// keeps its status but gets the SID. Returns whether the status was written.
    ///
    /// # Errors
    /// Storage failures only.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        &self,
        org: &OrgId,
        id: &str,
        taken: &Taken,
        outcome: &SendOutcome,
        twilio_status: Option<&str>,
        error_code: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut extra = String::new();
        let request = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sms_pk(org, id)))
            .key("sk", s(sms_sk(id)))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .expression_attribute_values(":one", n(1));
        // Taken in its job, the record is still `queued`: this write is its attempt.
        let mut request = match taken {
            Taken::Claimed => request
                .condition_expression("#status = :sending")
                .expression_attribute_values(":sending", s("sending")),
            Taken::InJob(job) => {
                extra.push_str(", attempts = attempts + :one");
                request
                    .condition_expression("#status = :queued AND send_job = :job")
                    .expression_attribute_values(":queued", s("queued"))
                    .expression_attribute_values(":job", s(job))
            }
        };
        let (status, event, detail) = match outcome {
            SendOutcome::Sent { message_id } => {
                extra.push_str(", provider_message_id = :msg, sent_at = :now, gsi1pk = :g1, gsi1sk = :g1s, twilio_status = :tw");
                request = request
                    .expression_attribute_values(
                        ":msg",
                        message_id.as_deref().map_or(AttributeValue::Null(true), s),
                    )
                    .expression_attribute_values(":g1", s(sent_shard(id)))
                    .expression_attribute_values(
                        ":g1s",
                        s(format!("{:013}#{id}", now.timestamp_millis())),
                    )
                    .expression_attribute_values(":tw", s(twilio_status.unwrap_or("queued")));
                (SmsStatus::Sent, "sent", None)
            }
            SendOutcome::Retry { reason } => {
                extra.push_str(", failure_reason = :reason, gsi1pk = :g1, gsi1sk = :g1s");
                let (pk, sk) = pending_key(id, now);
                request = request
                    .expression_attribute_values(":g1", s(pk))
                    .expression_attribute_values(":g1s", s(sk));
                (SmsStatus::Queued, "retry_scheduled", Some(reason.clone()))
            }
            SendOutcome::Failed { kind, reason } => {
                extra.push_str(", failure_reason = :reason, failure_kind = :kind");
                let kind = match kind {
                    FailureKind::Transient => "transient",
                    FailureKind::Permanent => "permanent",
                };
                request = request.expression_attribute_values(":kind", s(kind));
                if let Some(code) = error_code {
                    extra.push_str(", error_code = :code");
                    request = request.expression_attribute_values(":code", n(code));
                }
                (SmsStatus::Failed, "failed", Some(reason.clone()))
            }
            SendOutcome::Suppressed => {
                extra.push_str(", failure_reason = :reason");
                (
                    SmsStatus::Suppressed,
                    "suppressed",
                    Some("the number opted out (STOP) for this organization".to_owned()),
                )
            }
        };
        if let Some(detail) = &detail {
            request = request.expression_attribute_values(":reason", s(detail));
        }
        // A final status leaves the pending index (`sent` moved to the sent index above).
        let final_removes = if matches!(status, SmsStatus::Failed | SmsStatus::Suppressed) {
            ", gsi1pk, gsi1sk"
        } else {
            ""
        };
        let result = request
            .update_expression(format!(
                "SET #status = :status, updated_at = :now, version = version + :one, \
                 timeline = list_append(timeline, :entry){extra} REMOVE claim_until, send_job{final_removes}"
            ))
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(
                ":entry",
                timeline_value(&[TimelineEntry::new(now, event, detail)])?,
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if is_condition_failure(&error) => {
                // A callback moved the record on first. Claimed, it keeps the SID here; taken
                // in its job, the callback took it out of the job with the SID and the attempt
                // (`apply_status`).
                if let (
                    SendOutcome::Sent {
                        message_id: Some(sid),
                    },
                    Taken::Claimed,
                ) = (outcome, taken)
                {
                    let _ = self
                        .dynamodb
                        .update_item()
                        .table_name(&self.table)
                        .key("pk", s(sms_pk(org, id)))
                        .key("sk", s(sms_sk(id)))
                        .update_expression("SET provider_message_id = :msg, sent_at = :now")
                        .condition_expression(
                            "attribute_exists(pk) AND attribute_not_exists(provider_message_id)",
                        )
                        .expression_attribute_values(":msg", s(sid))
                        .expression_attribute_values(":now", s(now.to_rfc3339()))
                        .send()
                        .await;
                }
                Ok(false)
            }
            Err(error) => Err(anyhow::Error::new(error)
                .context("UpdateItem SMS finish")
                .into()),
        }
    }

    /// Applies a Twilio status (from a callback or the status check) forward-only, once per
    /// `key`. Conditional on the version read; a concurrent change makes it read again.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown or deleted record; storage failures.
    pub async fn apply_status(
        &self,
        org: &OrgId,
        id: &str,
        report: &TwilioReport<'_>,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<StatusApplied, StoreError> {
        let TwilioReport {
            status: twilio_status,
            sid,
            error_code,
        } = *report;
        for _ in 0..5 {
            let record = self.get(org, id).await?;
            if record.applied_events.iter().any(|k| k == key) {
                return Ok(StatusApplied::Duplicate);
            }
            let next = SmsStatus::from_twilio(twilio_status)
                .filter(|next| record.status.can_become(*next));
            let mut sets = vec![
                "updated_at = :now".to_owned(),
                "version = version + :one".to_owned(),
                "applied_events = list_append(if_not_exists(applied_events, :empty), :key)"
                    .to_owned(),
                "timeline = list_append(timeline, :entry)".to_owned(),
            ];
            // A callback can overtake the send worker's own write of the SID.
            let sid = sid.filter(|_| record.provider_message_id.is_none());
            let in_progress = SmsStatus::from_twilio(twilio_status) == Some(SmsStatus::Sent);
            if next.is_none() && sid.is_none() && in_progress {
                return Ok(StatusApplied::Unchanged);
            }
            if sid.is_some() {
                sets.push("provider_message_id = :sid".to_owned());
            }
            let mut removes = Vec::new();
            // Still `queued` in its send job: the callback overtook the worker's outcome
            // write, which will now fail its condition. The send happened: count it here and
            // take the record out of its job.
            if record.status == SmsStatus::Queued && record.send_job.is_some() {
                sets.push("attempts = attempts + :one".to_owned());
                sets.push("sent_at = if_not_exists(sent_at, :now)".to_owned());
                removes.push("send_job");
            }
            let detail = error_code.map(|c| format!("Twilio error {c}"));
            let mut request = self
                .dynamodb
                .update_item()
                .table_name(&self.table)
                .key("pk", s(sms_pk(org, id)))
                .key("sk", s(sms_sk(id)))
                .condition_expression("version = :v AND attribute_not_exists(deleted_at)")
                .expression_attribute_values(":v", n(record.version))
                .expression_attribute_values(":now", s(now.to_rfc3339()))
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":empty", AttributeValue::L(Vec::new()))
                .expression_attribute_values(":key", AttributeValue::L(vec![s(key)]))
                .expression_attribute_values(
                    ":entry",
                    timeline_value(&[TimelineEntry::new(
                        now,
                        format!("twilio.{twilio_status}"),
                        detail.clone(),
                    )])?,
                );
            if let Some(sid) = sid {
                request = request.expression_attribute_values(":sid", s(sid));
            }
            if let Some(next) = next {
                sets.push("#status = :status".to_owned());
                sets.push("twilio_status = :tw".to_owned());
                request = request
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":status", s(next.as_str()))
                    .expression_attribute_values(":tw", s(twilio_status));
                if next == SmsStatus::Sent {
                    sets.push("gsi1pk = :g1".to_owned());
                    sets.push("gsi1sk = :g1s".to_owned());
                    request = request
                        .expression_attribute_values(":g1", s(sent_shard(id)))
                        .expression_attribute_values(
                            ":g1s",
                            s(format!("{:013}#{id}", now.timestamp_millis())),
                        );
                } else {
                    removes.push("gsi1pk");
                    removes.push("gsi1sk");
                }
                if matches!(next, SmsStatus::Undelivered | SmsStatus::Failed) {
                    sets.push("failure_reason = :reason".to_owned());
                    sets.push("failure_kind = :kind".to_owned());
                    request = request
                        .expression_attribute_values(
                            ":reason",
                            s(detail
                                .clone()
                                .unwrap_or_else(|| format!("Twilio reported {twilio_status}"))),
                        )
                        .expression_attribute_values(":kind", s("permanent"));
                }
                if let Some(code) = error_code {
                    sets.push("error_code = :code".to_owned());
                    request = request.expression_attribute_values(":code", n(code));
                }
            }
            let mut expression = format!("SET {}", sets.join(", "));
            if !removes.is_empty() {
                expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
            }
            match request.update_expression(expression).send().await {
                Ok(_) => return Ok(StatusApplied::Recorded(next)),
                Err(error) if is_condition_failure(&error) => continue,
                Err(error) => {
                    return Err(anyhow::Error::new(error)
                        .context("UpdateItem SMS status")
                        .into());
                }
            }
        }
        Err(anyhow::anyhow!("SMS {id} kept changing while a status was applied").into())
    }

    /// The ids of a bulk send's records still `queued`, in id order (every shard of the
    /// bulk's fan-out key, read at once), each with the send job it waits in.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn queued_in_bulk(
        &self,
        org: &OrgId,
        bulk_id: &str,
        span: &BulkSpan,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        shards::queued_in_bulk(&self.dynamodb, &self.table, "SMS", org, bulk_id, span).await
    }

    /// Notes a status-check lookup of a `sent` SMS that settled nothing (see
    /// [`Unsettled`]); `None` when it is no longer `sent`.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn unsettled_check(
        &self,
        org: &OrgId,
        id: &str,
        now: DateTime<Utc>,
        max_checks: u32,
    ) -> Result<Option<Unsettled>, StoreError> {
        shards::unsettled_check(
            &self.dynamodb,
            &self.table,
            (sms_pk(org, id), sms_sk(id)),
            id,
            now,
            max_checks,
            |reason| {
                timeline_value(&[TimelineEntry::new(
                    now,
                    "status_check_gave_up",
                    Some(reason),
                )])
            },
        )
        .await
    }

    /// Records waiting (`queued`, or `sending` under a claim) since before `cutoff`, across
    /// organizations, for the sweep: at most `max`, a fair share from every shard.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn pending_before(
        &self,
        cutoff: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<StuckInSent>, StoreError> {
        shards::stuck_in_sent(
            &self.dynamodb,
            &self.table,
            "SMS#PENDING",
            SMS_SENT_SHARDS,
            cutoff,
            max,
        )
        .await
    }

    /// Settles one record the sweep found waiting (see [`Swept`]).
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn sweep(
        &self,
        org: &OrgId,
        id: &str,
        now: DateTime<Utc>,
        give_up_before: DateTime<Utc>,
    ) -> Result<Swept, StoreError> {
        let key = (sms_pk(org, id), sms_sk(id));
        if !send_jobs::leave_idle_job(&self.dynamodb, &self.table, org, key, now).await? {
            return Ok(Swept::Busy);
        }
        let record = PendingRecord {
            pk: sms_pk(org, id),
            sk: sms_sk(id),
            kind: "SMS",
            since: pending_key(id, now).1,
            failed_rank: None,
            entry: |reason: String| {
                timeline_value(&[TimelineEntry::new(now, "failed", Some(reason))])
            },
        };
        shards::sweep_record(&self.dynamodb, &self.table, record, now, give_up_before).await
    }

    /// Records in `sent` since before `cutoff`, across organizations (for the status check).
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn stuck_in_sent(
        &self,
        cutoff: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<StuckInSent>, StoreError> {
        shards::stuck_in_sent(
            &self.dynamodb,
            &self.table,
            "SMS#SENT",
            SMS_SENT_SHARDS,
            cutoff,
            max,
        )
        .await
    }

    /// # Errors
    /// Storage failures only.
    pub async fn is_opted_out(
        &self,
        org: &OrgId,
        number: &PhoneNumber,
    ) -> Result<bool, StoreError> {
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(format!("OPTOUT#{number}")))
            .consistent_read(true)
            .send()
            .await
            .context("GetItem opt-out")?
            .item;
        Ok(item.is_some())
    }

    /// Opts a number out of (or back into) an organization's SMS.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn set_opted_out(
        &self,
        org: &OrgId,
        number: &PhoneNumber,
        opted_out: bool,
        keyword: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if opted_out {
            self.dynamodb
                .put_item()
                .table_name(&self.table)
                .item("pk", s(org_pk(org)))
                .item("sk", s(format!("OPTOUT#{number}")))
                .item("entity", s("sms_opt_out"))
                .item("phone", s(number.as_str()))
                .item("keyword", s(keyword))
                .item("created_at", s(now.to_rfc3339()))
                .send()
                .await
                .context("PutItem opt-out")?;
        } else {
            self.dynamodb
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(org_pk(org)))
                .key("sk", s(format!("OPTOUT#{number}")))
                .send()
                .await
                .context("DeleteItem opt-out")?;
        }
        Ok(())
    }

    /// Keeps an inbound message as a conversation entry (`SMSIN#<ulid>`, newest last);
    /// `false` when this `MessageSid` was kept before. The SID marker is written first, and
    /// taken back if the entry cannot be written, so Twilio's retry stores it then.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn record_inbound(
        &self,
        org: &OrgId,
        inbound: &InboundSms,
    ) -> Result<bool, StoreError> {
        let marker = s(format!("SMSINSID#{}", inbound.message_sid));
        let result = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", s(org_pk(org)))
            .item("sk", marker.clone())
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(error) if is_condition_failure(&error) => return Ok(false),
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context("PutItem inbound SMS marker")
                    .into());
            }
        }
        let mut item: Item = serde_dynamo::to_item(inbound).context("encoding inbound SMS")?;
        item.insert("pk".into(), s(org_pk(org)));
        item.insert("sk".into(), s(format!("SMSIN#{}", inbound.id)));
        item.insert("entity".into(), s("sms_inbound"));
        let written = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await;
        if let Err(error) = written {
            let _ = self
                .dynamodb
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(org_pk(org)))
                .key("sk", marker)
                .send()
                .await;
            return Err(anyhow::Error::new(error)
                .context("PutItem inbound SMS")
                .into());
        }
        Ok(true)
    }

    /// An organization's inbound messages, newest first, optionally from one number.
    ///
    /// # Errors
    /// [`StoreError::InvalidCursor`] for a cursor of another partition.
    pub async fn list_inbound(
        &self,
        org: &OrgId,
        from: Option<&str>,
        page: &PageRequest,
    ) -> Result<(Vec<InboundSms>, Option<Cursor>), StoreError> {
        let partition = org_pk(org);
        let mut request = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(&partition))
            .expression_attribute_values(":prefix", s("SMSIN#"))
            .scan_index_forward(false);
        if let Some(from) = from {
            request = request
                .filter_expression("#from = :from")
                .expression_attribute_names("#from", "from")
                .expression_attribute_values(":from", s(from));
        }
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
            .map(|item| serde_dynamo::from_item(item).context("malformed inbound SMS"))
            .collect::<Result<_, _>>()?;
        Ok((entries, next))
    }

    /// Notes that `org` last sent to `number`, so a reply from it belongs to `org`.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn remember_peer(
        &self,
        number: &PhoneNumber,
        org: &OrgId,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("SMSPEER#{number}")))
            .item("sk", s("SMSPEER"))
            .item("org_id", s(org.as_str()))
            .item("updated_at", s(now.to_rfc3339()))
            .send()
            .await
            .context("PutItem SMS peer")?;
        Ok(())
    }

    /// The organization that last sent an SMS to `number`.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn peer_org(&self, number: &PhoneNumber) -> Result<Option<OrgId>, StoreError> {
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("SMSPEER#{number}")))
            .key("sk", s("SMSPEER"))
            .consistent_read(true)
            .send()
            .await
            .context("GetItem SMS peer")?
            .item;
        Ok(item.and_then(|item| match item.get("org_id") {
            Some(AttributeValue::S(org)) => OrgId::parse(org).ok(),
            _ => None,
        }))
    }
}
