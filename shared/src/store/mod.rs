//! DynamoDB adapters.
//!
//! Herald keeps its records in one table (`TABLE_NAME`) with generic key attributes:
//!
//! | attribute | template item |
//! |---|---|
//! | `pk` / `sk` | `ORG#<org>` / `TPL#<kind>#<ulid>`: an organization's templates, newest last |
//! | `gsi1pk` / `gsi1sk` (`GSI1`) | `TPL#<kind>` / `<ulid>`: superusers' cross-organization listing and lookup by id |
//! | `gsi2pk` / `gsi2sk` (`GSI2`) | `ORG#<org>#TPL#<kind>` / `<lowercase name>#<ulid>`: ordering by name |
//!
//! Every key starts with the organization (or is a superuser-only index), so a query built
//! from the caller's token cannot reach another organization's items. Soft-deleted items keep
//! their base keys (for audit) but leave the secondary indexes.
//!
//! Most items of an organization share the partition key `ORG#<org>`. Email and SMS
//! records, written several times each at up to 1 million messages an hour, are
//! write-sharded instead: `ORG#<org>#EMAIL#<shard>` and `ORG#<org>#SMS#<shard>`, the shard a
//! stable hash of the record id modulo [`RECORD_SHARDS`], and their bulk fan-out index keys
//! likewise (`shards.rs` says why and how listings merge the shards). This changed in issue
//! 10 from `ORG#<org>` for every item; there was no deployment, so no data is migrated.

mod bulks;
mod consent;
mod email_reports;
mod emails;
mod event_reports;
mod events;
mod idempotency;
mod payments;
mod phonebooks;
mod reports;
mod send_jobs;
mod send_rate;
mod shards;
mod sms;
mod templates;

pub use bulks::BulkStore;
pub use consent::{
    Addressed, Consent, ConsentChange, ConsentStore, LINK_CHANGES_PER_MINUTE, Topic,
};
pub use email_reports::CampaignStats;
pub use emails::{
    EmailListQuery, EmailStore, EventEffect, EventInput, EventsApplied, SENT_SHARDS, SendOutcome,
    Suppression,
};
pub use event_reports::{ActorAction, PaymentTotal};
pub use events::{AuditQuery, EventStore, SeriesPoint};
pub use idempotency::{IdempotencyStart, IdempotencyStore, KEY_LIFETIME};
pub use payments::{PaymentEntity, PaymentStore, RequestClaim, SyncCheckpoint, Updated};
pub use phonebooks::{Contact, Import, Phonebook, PhonebookStore};
pub use reports::{ExpiredReport, ReportStore};
pub use send_jobs::Taken;
pub use send_rate::{Booking, SendRate, Window};
pub use shards::{RECORD_SHARDS, StuckInSent, Swept, Unsettled};
pub use sms::{InboundSms, SMS_SENT_SHARDS, SmsListQuery, SmsStore, StatusApplied, TwilioReport};
pub use templates::{TemplateListQuery, TemplateOrder, TemplateStore};

use anyhow::Context;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

use crate::pagination::{Cursor, PageRequest};

pub type Item = HashMap<String, AttributeValue>;

/// Storage outcomes the API distinguishes; everything else is an internal error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("invalid cursor")]
    InvalidCursor,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The string key attributes of an item, as a pagination cursor.
fn cursor_of(item: &Item, names: &[&str]) -> Cursor {
    names
        .iter()
        .filter_map(|name| match item.get(*name) {
            Some(AttributeValue::S(value)) => Some(((*name).to_owned(), value.clone())),
            _ => None,
        })
        .collect()
}

fn key_of(cursor: &Cursor) -> Item {
    cursor
        .iter()
        .map(|(name, value)| (name.clone(), AttributeValue::S(value.clone())))
        .collect()
}

/// Whether a conditional write was refused for its condition (not for anything else).
fn is_condition_failure<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(
    error: &aws_sdk_dynamodb::error::SdkError<E>,
) -> bool {
    error
        .as_service_error()
        .is_some_and(|e| e.code() == Some("ConditionalCheckFailedException"))
}

/// A record's timeline entries as the list attribute they are stored in.
fn timeline_value(
    entries: &[crate::domain::email::TimelineEntry],
) -> Result<AttributeValue, StoreError> {
    Ok(serde_dynamo::to_attribute_value(entries).context("encoding timeline entries")?)
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// How many DynamoDB pages one list request may read before it hands back a cursor, so a
/// selective filter cannot make one request scan a whole partition.
const MAX_QUERY_ROUNDS: usize = 10;

/// The partition a list query reads; a cursor must point into it.
pub(crate) struct PartitionKey<'a> {
    pub attribute: &'a str,
    pub value: &'a str,
}

/// Runs a prepared query (key condition, filters, order) one API page at a time: resumes
/// after the page's cursor, reads until `page.limit` items pass the filters (or the rounds
/// run out), and returns them with the position to resume after.
///
/// `key_names` are the attributes that identify an item in the queried index; a cursor
/// must hold exactly those, inside `partition`, or it is refused.
pub(crate) async fn paged_query(
    request: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
    page: &PageRequest,
    partition: PartitionKey<'_>,
    key_names: &[&str],
) -> Result<(Vec<Item>, Option<Cursor>), StoreError> {
    let mut start = match &page.after {
        Some(cursor) => {
            let valid = cursor.len() == key_names.len()
                && key_names.iter().all(|name| cursor.contains_key(*name))
                && cursor.get(partition.attribute).map(String::as_str) == Some(partition.value);
            if !valid {
                return Err(StoreError::InvalidCursor);
            }
            Some(key_of(cursor))
        }
        None => None,
    };
    let mut items: Vec<Item> = Vec::new();
    for _ in 0..MAX_QUERY_ROUNDS {
        let output = request
            .clone()
            .set_exclusive_start_key(start.take())
            .limit(i32::try_from(page.limit + 1).unwrap_or(101).max(25))
            .send()
            .await
            .map_err(|error| {
                if page.after.is_some()
                    && error
                        .as_service_error()
                        .is_some_and(|e| e.meta().code() == Some("ValidationException"))
                {
                    StoreError::InvalidCursor
                } else {
                    StoreError::Other(anyhow::Error::new(error).context("Query"))
                }
            })?;
        items.extend(output.items.unwrap_or_default());
        if items.len() > page.limit {
            items.truncate(page.limit);
            let next = items.last().map(|item| cursor_of(item, key_names));
            return Ok((items, next));
        }
        match output.last_evaluated_key {
            Some(key) => start = Some(key),
            None => return Ok((items, None)),
        }
    }
    // Out of rounds with a partly filled page: resume where the reads stopped.
    let next = start.as_ref().map(|key| cursor_of(key, key_names));
    Ok((items, next))
}

/// The live (not soft-deleted) item at `pk`/`sk`, read consistently; `what` names it in
/// errors. A record's keys begin with its organization, so another organization's id is
/// simply not found.
///
/// # Errors
/// [`StoreError::NotFound`] when missing or deleted.
pub(crate) async fn get_live(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: String,
    sk: String,
    what: &str,
) -> Result<Item, StoreError> {
    let item = dynamodb
        .get_item()
        .table_name(table)
        .key("pk", s(pk))
        .key("sk", s(sk))
        .consistent_read(true)
        .send()
        .await
        .with_context(|| format!("GetItem {what}"))?
        .item
        .ok_or(StoreError::NotFound)?;
    if item.contains_key("deleted_at") {
        return Err(StoreError::NotFound);
    }
    Ok(item)
}

/// Reads items by key, 100 per BatchGetItem, retrying unprocessed keys with backoff.
/// Missing keys are simply absent from the result.
pub(crate) async fn batch_get(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: Vec<Item>,
    projection: Option<&str>,
) -> Result<Vec<Item>, StoreError> {
    use anyhow::Context;
    let mut found = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(100) {
        let mut pending = chunk.to_vec();
        for attempt in 0..6 {
            let request = aws_sdk_dynamodb::types::KeysAndAttributes::builder()
                .set_keys(Some(pending))
                .consistent_read(true)
                .set_projection_expression(projection.map(str::to_owned))
                .build()
                .context("BatchGetItem keys")?;
            let output = dynamodb
                .batch_get_item()
                .request_items(table, request)
                .send()
                .await
                .context("BatchGetItem")?;
            found.extend(
                output
                    .responses
                    .and_then(|mut r| r.remove(table))
                    .unwrap_or_default(),
            );
            pending = output
                .unprocessed_keys
                .and_then(|mut m| m.remove(table))
                .map(|k| k.keys)
                .unwrap_or_default();
            if pending.is_empty() {
                break;
            }
            if attempt == 5 {
                return Err(
                    anyhow::anyhow!("DynamoDB left {} reads unprocessed", pending.len()).into(),
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await;
        }
    }
    Ok(found)
}

/// Whether a transaction was cancelled because one of its conditions failed.
pub(crate) fn cancelled_by_a_condition(
    error: &aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
    >,
) -> bool {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match error.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => cancelled
            .cancellation_reasons()
            .iter()
            .any(|reason| reason.code() == Some("ConditionalCheckFailed")),
        _ => false,
    }
}
