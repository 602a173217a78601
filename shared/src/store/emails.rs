//! Email records and suppressions.
//!
//! | item | `pk` / `sk` | indexes |
//! |---|---|---|
//! | email | `ORG#<org>#EMAIL#<shard>` / `EMAIL#<ulid>` | `GSI1` `EMAIL#SENT#<sent shard>` / `<sent ms>#<ulid>` while `sent` (status check) |
//! | email body | `ORG#<org>#BODY#<ulid>` / `BODY` (`html`, `text`, or `parts`) | |
//! | bulk's shared body | `ORG#<org>#BODY#<bulk ulid>` / `SHARED` (`shared`) | |
//! | suppression | `ORG#<org>` / `SUPP#<lowercase address>` | |
//!
//! Emails are write-sharded: `<shard>` is the email id's shard of
//! [`RECORD_SHARDS`](super::RECORD_SHARDS) (see `shards.rs`), so at 1 million emails an hour
//! the create, claim, finish and webhook writes of one organization spread over sixteen
//! partition keys instead of one. Point reads and writes compute the key from `(org, id)`;
//! the listing and the report aggregation read every shard. Suppressions are written at the
//! bounce rate and stay on `ORG#<org>`. (Before issue 10 emails were on `ORG#<org>` and the
//! fan-out key had no shard; no deployment holds such items, so nothing is migrated.)
//!
//! Provider events applied to an email are listed on it (`applied_events`), so the dedupe
//! record is written in the same conditional update as the change it guards. (Not a
//! transaction: single-item writes cost half the capacity, and moto copies every table on
//! each transaction, which made local bulk sends crawl.)
//!
//! An email's bodies live in their own item, written once with the email and never updated:
//! DynamoDB charges an `UpdateItem` for the whole item, so a 20 KB HTML body inside the
//! status item would make each of its four or five status writes cost 20 write units
//! instead of one (docs/SCALE.md). Each body has a partition key of its own: it is only
//! ever read by `(org, id)`, and 60 KB bodies at 278 emails/s would be too much for the
//! sixteen status shards. Reads that show or send the content (`get_with_bodies`,
//! `claim_all`) fetch it; status work (webhooks, listings, reports) never does. A bulk's
//! emails may instead hold only the parts that vary around one shared body (issue 20):
//! reading their bodies then reads that item once per bulk.
//!
//! Sending takes one claim per send job, not per email (issue 20 §5): an email is created
//! with the id of the send job it is enqueued in (`send_job`), the job's delivery claims
//! the job in one conditional write ([`EmailStore::claim_job`]), and its emails stay
//! `queued` until their outcome is written, conditional on still naming the job. So an email
//! costs three writes (created, its outcome, the webhook's) where a claim of its own made
//! four. An email enqueued again (a retry, a hand-back, a sweep, a resend) has no job and is
//! claimed itself (`queued → sending`), as before; an email that names a job cannot be
//! claimed that way, and the sweep takes its job off only while the job is not held.
//!
//! Status changes are conditional on the status the writer saw (and every write bumps
//! `version`), so concurrent workers and webhooks can never move an email backwards.

use std::collections::HashMap;
use std::sync::Arc;

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
    Item, PartitionKey, StoreError, batch_get, get_live, is_condition_failure, paged_query, s,
    timeline_value,
};
use crate::aws::DynamoDbClient;
use crate::domain::email::{
    EmailAddress, EmailRecord, EmailStatus, Engagement, FailureKind, SharedBody, TimelineEntry,
};
use crate::domain::{OrgId, RecordId};
use crate::pagination::{Cursor, PageRequest};
use crate::queue::BulkSpan;

/// Shards of the "emails in `sent`" index, so a high send rate does not pile onto one
/// index partition (see docs/SCALE.md).
pub const SENT_SHARDS: u32 = 8;

#[derive(Debug, Clone)]
pub struct EmailStore {
    pub(super) dynamodb: DynamoDbClient,
    pub(super) table: String,
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

/// A suppression list entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Suppression {
    pub email: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

/// The partition of an organization's low-rate items (suppressions).
fn org_pk(org: &OrgId) -> String {
    format!("ORG#{org}")
}

/// The partition key of one email: its organization's shard for the id.
fn email_pk(org: &OrgId, id: &str) -> String {
    record_pk(org, "EMAIL", id)
}

fn email_sk(id: &str) -> String {
    format!("EMAIL#{id}")
}

/// The partition key of an email's body item (its sort key is `BODY`).
fn body_pk(org: &OrgId, id: &str) -> String {
    format!("ORG#{org}#BODY#{id}")
}

const BODY_SK: &str = "BODY";
const SHARED_BODY_SK: &str = "SHARED";

/// Parts up to this size stay in the status item: a bulk email is then one item written at
/// creation instead of two (issue 20), and its status writes still cost one write unit each
/// (DynamoDB charges 1 WCU per 1 KB of the item, "Read/write capacity mode" in the Developer
/// Guide; the status item is about 400 bytes before its timeline grows).
const INLINE_PARTS_BYTES: usize = 300;

/// The record's attributes that go to the body item instead of the status item.
const BODY_ATTRIBUTES: [&str; 3] = ["html", "text", "parts"];

fn supp_sk(address: &str) -> String {
    format!("SUPP#{}", address.to_lowercase())
}

fn sent_shard(id: &str) -> String {
    format!("EMAIL#SENT#{}", status_index_shard(id, SENT_SHARDS))
}

/// The pending-index key of an email waiting since `since` (see [`pending_index_key`]).
fn pending_key(id: &str, since: DateTime<Utc>) -> (String, String) {
    pending_index_key("EMAIL", SENT_SHARDS, id, since)
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Applies an effect to a record in memory, forward-only.
fn apply_in_memory(record: &mut EmailRecord, effect: &EventEffect) {
    if let Some(status) = effect
        .status
        .filter(|next| record.accepts_provider_status(*next))
    {
        if record.status == EmailStatus::Failed {
            // The give-up is overridden: its reason stays in the timeline only.
            record.failure_kind = None;
            record.failure_reason = None;
        }
        record.status = status;
        if let Some(reason) = &effect.failure_reason {
            record.failure_reason = Some(reason.clone());
        }
    }
    if let Some(engagement) = effect.engagement.filter(|e| !record.engagement.contains(e)) {
        record.engagement.push(engagement);
    }
    if let Some(entry) = &effect.timeline {
        record.timeline.push(entry.clone());
    }
}

/// What [`EmailStore::apply_events`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventsApplied {
    pub applied: usize,
    pub duplicates: usize,
    /// The email's status after the events, when they changed it.
    pub new_status: Option<EmailStatus>,
    /// The events took the email past `sent` before the worker recorded it there (the
    /// webhook overtook the worker's outcome write, whose condition then fails): the `sent`
    /// change is the webhook's to report, or analytics would never count it.
    pub overtook_sent: bool,
}

/// One provider event to apply: its dedupe key and the address it suppresses, if any.
#[derive(Debug, Clone)]
pub struct EventInput {
    pub key: String,
    pub suppress: Option<(EmailAddress, String)>,
}

fn decode(item: Item) -> Result<EmailRecord, StoreError> {
    Ok(serde_dynamo::from_item(item).context("malformed email item")?)
}

impl EmailStore {
    pub fn new(dynamodb: DynamoDbClient, table: impl Into<String>) -> Self {
        Self {
            dynamodb,
            table: table.into(),
        }
    }

    /// The items a new email is stored as: its status item, and its body item when it has
    /// a body.
    fn items_of(record: &EmailRecord) -> Result<Vec<Item>, StoreError> {
        let mut item: Item = serde_dynamo::to_item(record).context("encoding email")?;
        let inline_parts = record
            .parts
            .as_ref()
            .is_some_and(|parts| parts.bytes() <= INLINE_PARTS_BYTES);
        let mut body: Item = BODY_ATTRIBUTES
            .iter()
            .filter(|name| !(inline_parts && **name == "parts"))
            .filter_map(|name| item.remove_entry(*name))
            .collect();
        item.insert("pk".into(), s(email_pk(&record.org_id, &record.id)));
        item.insert("sk".into(), s(email_sk(&record.id)));
        item.insert("entity".into(), s("email"));
        item.insert("status_rank".into(), n(record.status.rank()));
        if record.status == EmailStatus::Queued {
            let (pk, sk) = pending_key(&record.id, record.created_at);
            item.insert("gsi1pk".into(), s(pk));
            item.insert("gsi1sk".into(), s(sk));
        }
        let mut items = vec![item];
        if !body.is_empty() {
            body.insert("pk".into(), s(body_pk(&record.org_id, &record.id)));
            body.insert("sk".into(), s(BODY_SK));
            body.insert("entity".into(), s("email_body"));
            items.push(body);
        }
        Ok(items)
    }

    /// Stores new records (fresh ids) with their bodies, 25 items per BatchWriteItem,
    /// several batches at once.
    ///
    /// # Errors
    /// When a batch cannot be written after retrying unprocessed items.
    pub async fn create_all(&self, records: &[EmailRecord]) -> Result<(), StoreError> {
        let mut puts = Vec::with_capacity(records.len() * 2);
        for record in records {
            for item in Self::items_of(record)? {
                let put = PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .context("PutRequest")?;
                puts.push(WriteRequest::builder().put_request(put).build());
            }
        }
        let writes: Vec<_> = puts
            .chunks(25)
            .map(|batch| self.write_batch(batch.to_vec()))
            .collect();
        futures::stream::iter(writes)
            .buffer_unordered(8)
            .try_collect::<()>()
            .await
    }

    /// Fills in the bodies of `records` from their body items (one read per 100). A record
    /// stored before bodies had their own item keeps the bodies it carries.
    /// Reads the records' bodies (their own items) into `html` and `text`.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn attach_bodies(&self, records: &mut [EmailRecord]) -> Result<(), StoreError> {
        self.read_body_items(records).await?;
        self.attach_shared_bodies(records).await
    }

    /// Stores a bulk's shared body, before the emails that use it.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn put_shared_body(
        &self,
        org: &OrgId,
        bulk_id: &str,
        body: &SharedBody,
    ) -> Result<(), StoreError> {
        let mut item = Item::new();
        item.insert("pk".into(), s(body_pk(org, bulk_id)));
        item.insert("sk".into(), s(SHARED_BODY_SK));
        item.insert("entity".into(), s("email_shared_body"));
        item.insert(
            "shared".into(),
            serde_dynamo::to_attribute_value(body).context("encoding shared body")?,
        );
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .context("PutItem shared body")?;
        Ok(())
    }

    /// Gives every record holding parts its bulk's shared body (one read per bulk), where it
    /// has not been read yet.
    async fn attach_shared_bodies(&self, records: &mut [EmailRecord]) -> Result<(), StoreError> {
        let mut wanted: Vec<(OrgId, String)> = records
            .iter()
            .filter_map(|r| {
                let parts = r.parts.as_ref().filter(|p| p.body.is_none())?;
                Some((r.org_id.clone(), parts.shared.clone()))
            })
            .collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        let keys = wanted
            .iter()
            .map(|(org, id)| {
                HashMap::from([
                    ("pk".to_owned(), s(body_pk(org, id))),
                    ("sk".to_owned(), s(SHARED_BODY_SK)),
                ])
            })
            .collect();
        let mut found: HashMap<String, Arc<SharedBody>> = HashMap::new();
        for item in batch_get(&self.dynamodb, &self.table, keys, None).await? {
            let (Some(pk), Some(body)) = (item.get("pk"), item.get("shared")) else {
                continue;
            };
            let body: SharedBody =
                serde_dynamo::from_attribute_value(body.clone()).context("decoding shared body")?;
            found.insert(pk.as_s().cloned().unwrap_or_default(), Arc::new(body));
        }
        for record in records {
            let key = record
                .parts
                .as_ref()
                .map(|p| body_pk(&record.org_id, &p.shared));
            if let (Some(parts), Some(key)) = (record.parts.as_mut(), key)
                && parts.body.is_none()
            {
                parts.body = found.get(&key).cloned();
            }
        }
        Ok(())
    }

    /// Reads each record's own body item into `html` and `text`, or `parts`.
    async fn read_body_items(&self, records: &mut [EmailRecord]) -> Result<(), StoreError> {
        let keys = records
            .iter()
            .map(|record| {
                HashMap::from([
                    ("pk".to_owned(), s(body_pk(&record.org_id, &record.id))),
                    ("sk".to_owned(), s(BODY_SK)),
                ])
            })
            .collect();
        // Keyed by partition key, which names the email.
        let bodies: HashMap<String, Item> = batch_get(&self.dynamodb, &self.table, keys, None)
            .await?
            .into_iter()
            .filter_map(|item| Some((item.get("pk")?.as_s().ok()?.clone(), item)))
            .collect();
        for record in records {
            if let Some(body) = bodies.get(&body_pk(&record.org_id, &record.id)) {
                let text = |name: &str| body.get(name).and_then(|v| v.as_s().ok()).cloned();
                record.html = text("html");
                record.text = text("text");
                record.parts = body
                    .get("parts")
                    .map(|parts| serde_dynamo::from_attribute_value(parts.clone()))
                    .transpose()
                    .context("decoding body parts")?;
            }
        }
        Ok(())
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
        let item = get_live(
            &self.dynamodb,
            &self.table,
            email_pk(org, &id.to_string()),
            email_sk(&id.to_string()),
            "email",
        )
        .await?;
        decode(item)
    }

    /// The email with its bodies, for the detail view ([`Self::get`] reads the status item
    /// alone, which is all the status work needs).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when missing, deleted or another organization's.
    pub async fn get_with_bodies(
        &self,
        org: &OrgId,
        id: RecordId,
    ) -> Result<EmailRecord, StoreError> {
        let mut record = self.get(org, id).await?;
        self.attach_bodies(std::slice::from_mut(&mut record))
            .await?;
        record.fill_bodies();
        Ok(record)
    }

    /// Lists an organization's live emails, newest first, merged from every shard.
    ///
    /// # Errors
    /// [`StoreError::InvalidCursor`] for a cursor that is not an email sort key.
    pub async fn list(
        &self,
        org: &OrgId,
        query: &EmailListQuery,
        page: &PageRequest,
    ) -> Result<(Vec<EmailRecord>, Option<Cursor>), StoreError> {
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
        if let Some(campaign) = &query.campaign {
            filters.push("campaign = :campaign".to_owned());
            request = request.expression_attribute_values(":campaign", s(campaign));
        }
        request = request.filter_expression(filters.join(" AND "));
        let list = ShardedList {
            partitions: record_partitions(org, "EMAIL"),
            lowest: email_sk(&lowest),
            highest: email_sk(&highest),
            sort_prefix: "EMAIL#",
        };
        let (items, next) = merged_query(request, list, page).await?;
        Ok((
            items.into_iter().map(decode).collect::<Result<_, _>>()?,
            next,
        ))
    }

    /// Fetches live records by id, without their bodies (`claim_all` reads those for the
    /// emails it takes); deleted ones are left out, so they are never sent.
    ///
    /// # Errors
    /// Storage failures only; unknown ids are left out.
    pub async fn get_many(
        &self,
        org: &OrgId,
        ids: &[String],
    ) -> Result<Vec<EmailRecord>, StoreError> {
        let keys = ids
            .iter()
            .map(|id| {
                HashMap::from([
                    ("pk".to_owned(), s(email_pk(org, id))),
                    ("sk".to_owned(), s(email_sk(id))),
                ])
            })
            .collect();
        batch_get(&self.dynamodb, &self.table, keys, None)
            .await?
            .into_iter()
            .filter(|item| !item.contains_key("deleted_at"))
            .map(decode)
            .collect()
    }

    /// Sends one conditional update. `Ok(None)` when its condition does not hold.
    async fn send_update(&self, update: EmailUpdate) -> Result<Option<Item>, StoreError> {
        let mut request = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(email_pk(&update.org, &update.id)))
            .key("sk", s(email_sk(&update.id)))
            .update_expression(update.expression)
            .condition_expression(update.condition)
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew);
        for (name, attribute) in update.names {
            request = request.expression_attribute_names(name, attribute);
        }
        for (name, value) in update.values {
            request = request.expression_attribute_values(name, value);
        }
        match request.send().await {
            Ok(output) => Ok(Some(output.attributes.unwrap_or_default())),
            Err(error) if is_condition_failure(&error) => Ok(None),
            Err(error) => Err(anyhow::Error::new(error).context("UpdateItem email").into()),
        }
    }

    /// Sends updates sixteen at a time, in order of the input; `None` where a condition failed.
    async fn send_updates(
        &self,
        updates: Vec<EmailUpdate>,
    ) -> Result<Vec<Option<Item>>, StoreError> {
        let requests: Vec<_> = updates
            .into_iter()
            .map(|update| self.send_update(update))
            .collect();
        futures::stream::iter(requests)
            .buffered(16)
            .try_collect()
            .await
    }

    /// Takes emails for sending. Those `queued` in send job `job` (which this delivery has
    /// claimed, [`EmailStore::claim_job`]) are taken as they are, without a write; each
    /// other one is claimed itself if it names no job: `queued`, or `sending` whose previous
    /// claim lapsed (the worker that held it died). Returns the records taken, leaving out any
    /// that another delivery already has or that moved on, so a duplicate message never
    /// sends twice. Bodies already read into `records` are kept; the others are read.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn claim_all(
        &self,
        records: &[EmailRecord],
        job: Option<&str>,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<Vec<EmailRecord>, StoreError> {
        let (mut owned, others): (Vec<EmailRecord>, Vec<&EmailRecord>) = (
            records
                .iter()
                .filter(|r| r.in_send_job(job))
                .cloned()
                .collect(),
            records.iter().filter(|r| !r.in_send_job(job)).collect(),
        );
        let updates = others
            .into_iter()
            .map(|record| EmailUpdate {
                org: record.org_id.clone(),
                id: record.id.clone(),
                expression: "SET #status = :sending, status_rank = :rank, claim_until = :lease, \
                             attempts = attempts + :one, updated_at = :now, version = version + :one"
                    .to_owned(),
                condition: "attribute_exists(pk) AND attribute_not_exists(deleted_at) AND \
                            attribute_not_exists(send_job) AND \
                            (#status = :queued OR (#status = :sending AND claim_until < :epoch))"
                    .to_owned(),
                names: vec![("#status", "status")],
                values: vec![
                    (":sending".into(), s("sending")),
                    (":queued".into(), s("queued")),
                    (":rank".into(), n(EmailStatus::Sending.rank())),
                    (":lease".into(), n((now + lease).timestamp())),
                    (":epoch".into(), n(now.timestamp())),
                    (":one".into(), n(1)),
                    (":now".into(), s(now.to_rfc3339())),
                ],
            })
            .collect();
        let mut claimed = self
            .send_updates(updates)
            .await?
            .into_iter()
            .flatten()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        claimed.append(&mut owned);
        let read: HashMap<&str, &EmailRecord> = records
            .iter()
            .filter(|r| r.has_bodies())
            .map(|r| (r.id.as_str(), r))
            .collect();
        for record in &mut claimed {
            if let Some(known) = read.get(record.id.as_str()) {
                record.take_bodies_of(known);
            }
        }
        let mut unread: Vec<EmailRecord> = claimed
            .iter()
            .filter(|r| !r.has_bodies())
            .cloned()
            .collect();
        if !unread.is_empty() {
            self.attach_bodies(&mut unread).await?;
            let fresh: HashMap<String, EmailRecord> =
                unread.into_iter().map(|r| (r.id.clone(), r)).collect();
            for record in &mut claimed {
                if let Some(fresh) = fresh.get(&record.id) {
                    record.take_bodies_of(fresh);
                }
            }
        }
        // Parts kept in the status item came back with the claim, without their shared body.
        self.attach_shared_bodies(&mut claimed).await?;
        Ok(claimed)
    }

    /// Moves claimed emails on from `sending`: to `sent` (with the provider's message id),
    /// back to `queued` for a retry, or to a final status. An email that already moved on (a
    /// fast webhook beat the worker) is left alone but keeps the provider id. Returns the ids
    /// whose status this wrote (the others' status change was the webhook's to report).
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn finish_all(
        &self,
        org: &OrgId,
        taken: &[(String, Taken)],
        outcome: &SendOutcome,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let updates = taken
            .iter()
            .map(|(id, taken)| finish_update(org, id, taken, outcome, now))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<&String> = taken.iter().map(|(id, _)| id).collect();
        let results = self.send_updates(updates).await?;
        if let SendOutcome::Sent {
            message_id: Some(message_id),
        } = outcome
        {
            let late: Vec<EmailUpdate> = taken
                .iter()
                .zip(&results)
                .filter(|(_, result)| result.is_none())
                .map(|((id, taken), _)| EmailUpdate {
                    org: org.clone(),
                    id: id.clone(),
                    // Taken in its job, the email was still `queued` when the webhook moved
                    // it on: this write counts the attempt.
                    expression: format!(
                        "SET provider_message_id = if_not_exists(provider_message_id, :msg), \
                         sent_at = if_not_exists(sent_at, :now){}",
                        match taken {
                            Taken::InJob(_) => ", attempts = attempts + :one",
                            Taken::Claimed => "",
                        }
                    ),
                    condition: "attribute_exists(pk)".to_owned(),
                    names: vec![],
                    values: [
                        (":msg".into(), s(message_id)),
                        (":now".into(), s(now.to_rfc3339())),
                    ]
                    .into_iter()
                    .chain(matches!(taken, Taken::InJob(_)).then(|| (":one".into(), n(1))))
                    .collect(),
                })
                .collect();
            self.send_updates(late).await?;
        }
        Ok(ids
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_some())
            .map(|(id, _)| (*id).clone())
            .collect())
    }

    /// Claims send job `job` for this delivery, in one conditional write on the job's own
    /// item: it is new, or the delivery that held it stopped (its lease ran out). `false`:
    /// another delivery holds it now.
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

    /// Lets go of send job `job` early, so a retry of its message takes it at once.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn release_job(&self, org: &OrgId, job: &str) -> Result<(), StoreError> {
        send_jobs::release(&self.dynamodb, &self.table, org, job).await
    }

    /// Takes emails out of send job `job` (they are enqueued again on their own: the rest of
    /// a job passed on), so they are claimed each by whichever delivery takes them.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn leave_job(
        &self,
        org: &OrgId,
        ids: &[String],
        job: &str,
    ) -> Result<(), StoreError> {
        let updates = ids
            .iter()
            .map(|id| EmailUpdate {
                org: org.clone(),
                id: id.clone(),
                expression: "REMOVE send_job".to_owned(),
                condition: "send_job = :job AND #status = :queued".to_owned(),
                names: vec![("#status", "status")],
                values: vec![(":job".into(), s(job)), (":queued".into(), s("queued"))],
            })
            .collect();
        self.send_updates(updates).await?;
        Ok(())
    }

    /// Applies one email's provider events exactly once. The ids of the events applied are
    /// kept on the email itself (`applied_events`), so the dedupe check and the change are
    /// one conditional write: a retried or duplicated event finds its id there and changes
    /// nothing. Suppressions are written first (idempotent), so a failure in between is
    /// repaired by the provider's retry. `current` is the record as prefetched (`None`:
    /// read it); `decide` says what event `i` does to the record as the earlier events left
    /// it. Returns what happened.
    ///
    /// # Errors
    /// Storage failures, or contention that outlasts the retries.
    pub async fn apply_events(
        &self,
        org: &OrgId,
        email_id: Option<&str>,
        mut current: Option<EmailRecord>,
        events: &[EventInput],
        now: DateTime<Utc>,
        decide: impl Fn(&EmailRecord, usize) -> EventEffect,
    ) -> Result<EventsApplied, StoreError> {
        let mut suppressed: Vec<String> = Vec::new();
        for (address, reason) in events.iter().filter_map(|e| e.suppress.as_ref()) {
            if !suppressed.contains(&address.suppression_key()) {
                suppressed.push(address.suppression_key());
                self.put_suppression(org, address, reason, now).await?;
            }
        }
        for attempt in 0..6 {
            if attempt > 0 || current.is_none() {
                current = match email_id.and_then(RecordId::parse) {
                    Some(id) => match self.get(org, id).await {
                        Ok(record) => Some(record),
                        Err(StoreError::NotFound) => None,
                        Err(other) => return Err(other),
                    },
                    None => None,
                };
            }
            let Some(before) = &current else {
                // No such email (deleted, or not Herald's): only the suppression applies.
                return Ok(EventsApplied::default());
            };
            let mut after = before.clone();
            let mut fresh = Vec::new();
            let mut duplicates = 0;
            for (index, event) in events.iter().enumerate() {
                if after.applied_events.contains(&event.key) {
                    duplicates += 1;
                    continue;
                }
                let effect = decide(&after, index);
                apply_in_memory(&mut after, &effect);
                after.applied_events.push(event.key.clone());
                fresh.push(event.key.clone());
            }
            if fresh.is_empty() {
                return Ok(EventsApplied {
                    applied: 0,
                    duplicates,
                    new_status: None,
                    overtook_sent: false,
                });
            }
            if self
                .send_update(change_update(before, &after, now)?)
                .await?
                .is_some()
            {
                let sent = EmailStatus::Sent.rank();
                return Ok(EventsApplied {
                    applied: fresh.len(),
                    duplicates,
                    new_status: (after.status != before.status).then_some(after.status),
                    overtook_sent: before.status.rank() < sent
                        && after.status.rank() > sent
                        && after.status != EmailStatus::Suppressed,
                });
            }
            // The email changed under us: read it again and decide again.
        }
        Err(StoreError::Conflict(
            "the email kept changing while applying events".to_owned(),
        ))
    }

    async fn put_suppression(
        &self,
        org: &OrgId,
        address: &EmailAddress,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", s(org_pk(org)))
            .item("sk", s(supp_sk(address.as_str())))
            .item("entity", s("suppression"))
            .item("email", s(address.suppression_key()))
            .item("reason", s(reason))
            .item("created_at", s(now.to_rfc3339()))
            .send()
            .await
            .context("PutItem suppression")?;
        Ok(())
    }

    /// Soft-deletes an email and removes its body. A queued email is then never sent
    /// (claims skip deleted ones).
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
            .key("pk", s(email_pk(org, &id.to_string())))
            .key("sk", s(email_sk(&id.to_string())))
            .update_expression(
                "SET deleted_at = :now, version = version + :one REMOVE gsi1pk, gsi1sk",
            )
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(deleted_at)")
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(error) if is_condition_failure(&error) => return Err(StoreError::NotFound),
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context("UpdateItem email delete")
                    .into());
            }
        }
        // After the status item, so a failure here leaves a deleted email whose content is
        // no longer shown or sent; nothing reads a deleted email's body.
        self.dynamodb
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(body_pk(org, &id.to_string())))
            .key("sk", s(BODY_SK))
            .send()
            .await
            .context("DeleteItem email body")?;
        Ok(())
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
            PageRequest::from_query(&params, org.as_str()).map_err(anyhow::Error::new)?;
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
                    .key("pk", s(email_pk(org, &record.id)))
                    .key("sk", s(email_sk(&record.id)))
                    .update_expression("SET #status = :queued, status_rank = :rank, updated_at = :now, version = version + :one, timeline = list_append(timeline, :entry), gsi1pk = :g1, gsi1sk = :g1s REMOVE failure_kind, failure_reason, send_job")
                    .expression_attribute_values(":g1", s(pending_key(&record.id, now).0))
                    .expression_attribute_values(":g1s", s(pending_key(&record.id, now).1))
                    .condition_expression("#status = :failed AND attribute_not_exists(deleted_at)")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":queued", s("queued"))
                    .expression_attribute_values(":failed", s("failed"))
                    .expression_attribute_values(":rank", n(EmailStatus::Queued.rank()))
                    .expression_attribute_values(":now", s(now.to_rfc3339()))
                    .expression_attribute_values(":one", n(1))
                    .expression_attribute_values(":entry", timeline_value(std::slice::from_ref(&entry))?)
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

    /// The ids of a bulk send's emails still `queued`, in id order (every shard of the
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
        shards::queued_in_bulk(&self.dynamodb, &self.table, "EMAIL", org, bulk_id, span).await
    }

    /// Emails that have been `sent` since before `cutoff` without a final event, oldest
    /// first, across organizations (for the status check).
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
            "EMAIL#SENT",
            SENT_SHARDS,
            cutoff,
            max,
        )
        .await
    }

    /// Notes a status-check lookup of a `sent` email that settled nothing (see
    /// [`Unsettled`]); `None` when the email is no longer `sent`.
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
            (email_pk(org, id), email_sk(id)),
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

    /// Emails waiting (`queued`, or `sending` under a claim) since before `cutoff`, across
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
            "EMAIL#PENDING",
            SENT_SHARDS,
            cutoff,
            max,
        )
        .await
    }

    /// Settles one email the sweep found waiting: gives up on it when it was created
    /// before `give_up_before`, else resets its waiting clock so it is enqueued again (see
    /// [`Swept`]). Every step is conditional on what the email is now, so a worker or
    /// webhook that moves it meanwhile wins.
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
        let key = (email_pk(org, id), email_sk(id));
        if !send_jobs::leave_idle_job(&self.dynamodb, &self.table, org, key, now).await? {
            return Ok(Swept::Busy);
        }
        let record = PendingRecord {
            pk: email_pk(org, id),
            sk: email_sk(id),
            kind: "EMAIL",
            since: pending_key(id, now).1,
            failed_rank: Some(EmailStatus::Failed.rank()),
            entry: |reason: String| {
                timeline_value(&[TimelineEntry::new(now, "failed", Some(reason))])
            },
        };
        shards::sweep_record(&self.dynamodb, &self.table, record, now, give_up_before).await
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
        let keys = unique
            .iter()
            .map(|address| {
                HashMap::from([
                    ("pk".to_owned(), s(org_pk(org))),
                    ("sk".to_owned(), s(supp_sk(address))),
                ])
            })
            .collect();
        let items = batch_get(&self.dynamodb, &self.table, keys, Some("email")).await?;
        Ok(items
            .into_iter()
            .filter_map(|item| match item.get("email") {
                Some(AttributeValue::S(email)) => Some(email.clone()),
                _ => None,
            })
            .collect())
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

impl SendOutcome {
    /// A transient failure: retried while attempts are left, recorded as `failed` on the
    /// last one (before SQS moves the job to the DLQ).
    pub fn transient(reason: String, last_attempt: bool) -> Self {
        if last_attempt {
            Self::Failed {
                kind: FailureKind::Transient,
                reason,
            }
        } else {
            Self::Retry { reason }
        }
    }
}

/// One conditional update of an email item.
struct EmailUpdate {
    org: OrgId,
    id: String,
    expression: String,
    condition: String,
    names: Vec<(&'static str, &'static str)>,
    values: Vec<(String, AttributeValue)>,
}

fn finish_update(
    org: &OrgId,
    id: &str,
    taken: &Taken,
    outcome: &SendOutcome,
    now: DateTime<Utc>,
) -> Result<EmailUpdate, StoreError> {
    let mut values: Vec<(String, AttributeValue)> =
        vec![(":now".into(), s(now.to_rfc3339())), (":one".into(), n(1))];
    // Taken with its job, the email is still `queued`: this write is its attempt.
    let (condition, attempt) = match taken {
        Taken::Claimed => {
            values.push((":sending".into(), s("sending")));
            ("#status = :sending", "")
        }
        Taken::InJob(job) => {
            values.push((":queued".into(), s("queued")));
            values.push((":job".into(), s(job)));
            (
                "#status = :queued AND send_job = :job",
                ", attempts = attempts + :one",
            )
        }
    };
    let (status, event, detail, extra) = match outcome {
        SendOutcome::Sent { message_id } => {
            values.push((
                ":msg".into(),
                message_id.as_deref().map_or(AttributeValue::Null(true), s),
            ));
            values.push((":g1".into(), s(sent_shard(id))));
            values.push((
                ":g1s".into(),
                s(format!("{:013}#{id}", now.timestamp_millis())),
            ));
            (
                EmailStatus::Sent,
                "sent",
                None,
                ", provider_message_id = :msg, sent_at = :now, gsi1pk = :g1, gsi1sk = :g1s",
            )
        }
        SendOutcome::Retry { reason } => {
            let (pk, sk) = pending_key(id, now);
            values.push((":g1".into(), s(pk)));
            values.push((":g1s".into(), s(sk)));
            (
                EmailStatus::Queued,
                "retry_scheduled",
                Some(reason.clone()),
                ", failure_reason = :reason, gsi1pk = :g1, gsi1sk = :g1s",
            )
        }
        SendOutcome::Failed { kind, reason } => {
            let kind = match kind {
                FailureKind::Transient => "transient",
                FailureKind::Permanent => "permanent",
            };
            values.push((":kind".into(), s(kind)));
            (
                EmailStatus::Failed,
                "failed",
                Some(reason.clone()),
                ", failure_reason = :reason, failure_kind = :kind",
            )
        }
        SendOutcome::Suppressed => (
            EmailStatus::Suppressed,
            "suppressed",
            Some("the address is on the suppression list".to_owned()),
            ", failure_reason = :reason",
        ),
    };
    if let Some(detail) = &detail {
        values.push((":reason".into(), s(detail)));
    }
    // A final status leaves the pending index (`sent` moved to the sent index above).
    let final_removes = if matches!(status, EmailStatus::Failed | EmailStatus::Suppressed) {
        ", gsi1pk, gsi1sk"
    } else {
        ""
    };
    values.push((":status".into(), s(status.as_str())));
    values.push((":rank".into(), n(status.rank())));
    values.push((
        ":entry".into(),
        timeline_value(&[TimelineEntry::new(now, event, detail)])?,
    ));
    Ok(EmailUpdate {
        org: org.clone(),
        id: id.to_owned(),
        expression: format!(
            "SET #status = :status, status_rank = :rank, updated_at = :now, version = version + :one, \
             timeline = list_append(timeline, :entry){extra}{attempt} \
             REMOVE claim_until, send_job{final_removes}"
        ),
        condition: condition.to_owned(),
        names: vec![("#status", "status")],
        values,
    })
}

/// The update that turns `before` into `after`, conditional on `before`'s version.
fn change_update(
    before: &EmailRecord,
    after: &EmailRecord,
    now: DateTime<Utc>,
) -> Result<EmailUpdate, StoreError> {
    let mut sets = vec![
        "updated_at = :now".to_owned(),
        "version = version + :one".to_owned(),
    ];
    let mut removes = Vec::new();
    let mut names = Vec::new();
    let mut values: Vec<(String, AttributeValue)> = vec![
        (":now".into(), s(now.to_rfc3339())),
        (":one".into(), n(1)),
        (":v".into(), n(before.version)),
    ];
    if after.status != before.status {
        sets.push("#status = :status".to_owned());
        sets.push("status_rank = :rank".to_owned());
        names.push(("#status", "status"));
        values.push((":status".into(), s(after.status.as_str())));
        values.push((":rank".into(), n(after.status.rank())));
        // Off the sent or pending index once past them (a webhook can beat the worker).
        let indexed = |status: EmailStatus| {
            matches!(
                status,
                EmailStatus::Queued | EmailStatus::Sending | EmailStatus::Sent
            )
        };
        if indexed(before.status) && !indexed(after.status) {
            removes.push("gsi1pk");
            removes.push("gsi1sk");
        }
    }
    if after.failure_reason != before.failure_reason {
        match &after.failure_reason {
            Some(reason) => {
                sets.push("failure_reason = :reason".to_owned());
                values.push((":reason".into(), s(reason)));
            }
            None => removes.push("failure_reason"),
        }
    }
    if after.failure_kind.is_none() && before.failure_kind.is_some() {
        removes.push("failure_kind");
    }
    if after.engagement != before.engagement {
        sets.push("engagement = :engagement".to_owned());
        values.push((
            ":engagement".into(),
            serde_dynamo::to_attribute_value(&after.engagement).context("engagement")?,
        ));
    }
    let added = &after.timeline[before.timeline.len().min(after.timeline.len())..];
    if !added.is_empty() {
        sets.push("timeline = list_append(timeline, :entry)".to_owned());
        values.push((":entry".into(), timeline_value(added)?));
    }
    sets.push("applied_events = :applied".to_owned());
    values.push((
        ":applied".into(),
        serde_dynamo::to_attribute_value(&after.applied_events).context("applied events")?,
    ));
    let mut expression = format!("SET {}", sets.join(", "));
    if !removes.is_empty() {
        expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
    }
    Ok(EmailUpdate {
        org: before.org_id.clone(),
        id: before.id.clone(),
        expression,
        // Written only over the version this decision was made from.
        condition: "version = :v AND attribute_not_exists(deleted_at)".to_owned(),
        names,
        values,
    })
}
