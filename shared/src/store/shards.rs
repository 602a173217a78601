//! Write sharding of an organization's high-rate records (email and SMS).
//!
//! DynamoDB serves one partition key with at most 1,000 writes and 3,000 reads a second, and
//! "split for heat" cannot help a key whose sort key only grows (ULIDs). One organization
//! sending 1 million messages an hour writes each record 3–6 times (create, claim, finish,
//! webhook updates), several thousand writes a second, so its records are spread over
//! [`RECORD_SHARDS`] partition keys, `ORG#<org>#<kind>#<shard>`, the shard a stable hash of
//! the record id. A point read or write computes the key from `(org, id)`; a listing reads
//! every shard at once and merges them newest first ([`merged_query`]), with a cursor that
//! is one sort key, so it pages exactly like a single partition.

use std::cmp::Reverse;

use anyhow::Context;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::{Stream, StreamExt};

use super::{Item, MAX_QUERY_ROUNDS, StoreError, s};
use crate::domain::{OrgId, RecordId};
use crate::pagination::{Cursor, PageRequest};
use crate::queue::BulkSpan;

/// How many partition keys one organization's email (or SMS) records are spread over:
/// 16 × 1,000 writes a second leaves room for 1 million messages an hour at ~6 writes each.
pub const RECORD_SHARDS: u32 = 16;

/// The shard of a record id: FNV-1a of its bytes, so it never changes between releases
/// (unlike `std`'s randomly seeded hasher).
pub(crate) fn shard_of(id: &str) -> u32 {
    let hash = id.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    hash % RECORD_SHARDS
}

/// The partition key of one record: `ORG#<org>#<kind>#<shard>`.
pub(crate) fn record_pk(org: &OrgId, kind: &str, id: &str) -> String {
    format!("ORG#{org}#{kind}#{}", shard_of(id))
}

/// Every partition key an organization's records of `kind` live on.
pub(crate) fn record_partitions(org: &OrgId, kind: &str) -> Vec<String> {
    (0..RECORD_SHARDS)
        .map(|shard| format!("ORG#{org}#{kind}#{shard}"))
        .collect()
}

/// The shard of a record on a status index (`SENT`, `PENDING`) with `shards` shards. A hash
/// of its own, older than [`shard_of`] and kept so existing index keys stay put.
pub(crate) fn status_index_shard(id: &str, shards: u32) -> u32 {
    id.bytes().fold(0u32, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u32::from(b))
    }) % shards
}

/// The "waiting to be sent" index key of a record (GSI1 while `queued` or `sending`):
/// `<kind>#PENDING#<shard>` / `<ms>#<id>`, `ms` the time it last started waiting. The
/// sweep (issue 15) reads it for records that have waited too long. `kind` is `EMAIL` or
/// `SMS`.
pub(crate) fn pending_index_key(
    kind: &str,
    shards: u32,
    id: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> (String, String) {
    (
        format!("{kind}#PENDING#{}", status_index_shard(id, shards)),
        format!("{:013}#{id}", since.timestamp_millis()),
    )
}

/// The ids of one bulk's records still `queued`, sorted. Read from the table itself with
/// `ConsistentRead`, not from an index: DynamoDB's indexes are eventually consistent ("a
/// query on a global secondary index might not return the most recent data", DynamoDB
/// Developer Guide, "Read consistency for global secondary indexes"), and the fan-out runs
/// a moment after the API wrote the records, so an index read can miss some and leave them
/// `queued` for good (issue 15). The records lie on the organization's `kind` shards
/// between the bulk's lowest and highest id ([`BulkSpan`]); other sends of the same moment
/// in that range are filtered out by `bulk_id`.
pub(crate) async fn queued_in_bulk(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    kind: &str,
    org: &OrgId,
    bulk: &str,
    span: &BulkSpan,
) -> Result<Vec<(String, Option<String>)>, StoreError> {
    use futures::TryStreamExt;
    let requests = bulk_queries(dynamodb, table, kind, org, bulk, span)
        .into_iter()
        .map(|query| {
            query
                .consistent_read(true)
                .filter_expression(
                    "bulk_id = :bulk AND #status = :queued AND attribute_not_exists(deleted_at)",
                )
                .expression_attribute_values(":queued", s("queued"))
                .projection_expression("id, send_job")
        })
        .collect();
    let mut pages = std::pin::pin!(pages_of_all(requests, "Query queued records of a bulk"));
    let mut ids = Vec::new();
    while let Some(items) = pages.try_next().await? {
        ids.extend(items.into_iter().filter_map(|item| match item.get("id") {
            Some(AttributeValue::S(id)) => {
                let job = item.get("send_job").and_then(|j| j.as_s().ok()).cloned();
                Some((id.clone(), job))
            }
            _ => None,
        }));
    }
    ids.sort();
    Ok(ids)
}

/// How many of a bulk's records are in each status (a bulk's progress). It reads every
/// record of the bulk: DynamoDB bills a Query by the size of the items it reads, projected
/// or not, at 4 KB per read unit and half that for an eventually consistent read (Developer
/// Guide, "Read consumption for Query"), so a few hundredths of a unit per record. A poll of
/// a bulk's progress can afford that; counters moved by every status change would add a
/// write per message, all on one item.
pub(crate) async fn bulk_status_counts(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    kind: &str,
    org: &OrgId,
    bulk: &str,
    span: &BulkSpan,
) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
    use futures::TryStreamExt;
    let requests = bulk_queries(dynamodb, table, kind, org, bulk, span)
        .into_iter()
        .map(|query| {
            query
                .filter_expression("bulk_id = :bulk AND attribute_not_exists(deleted_at)")
                .projection_expression("#status")
        })
        .collect();
    let mut pages = std::pin::pin!(pages_of_all(requests, "Query the statuses of a bulk"));
    let mut counts = std::collections::BTreeMap::new();
    while let Some(items) = pages.try_next().await? {
        for item in items {
            if let Some(AttributeValue::S(status)) = item.get("status") {
                *counts.entry(status.clone()).or_insert(0) += 1;
            }
        }
    }
    Ok(counts)
}

/// One query per shard over the sort-key range of a bulk's records, with `:bulk` and
/// `#status` bound for the caller's filter.
fn bulk_queries(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    kind: &str,
    org: &OrgId,
    bulk: &str,
    span: &BulkSpan,
) -> Vec<QueryFluentBuilder> {
    record_partitions(org, kind)
        .into_iter()
        .map(|partition| {
            dynamodb
                .query()
                .table_name(table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :lowest AND :highest")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":pk", s(partition))
                .expression_attribute_values(":lowest", s(format!("{kind}#{}", span.lowest_id)))
                .expression_attribute_values(":highest", s(format!("{kind}#{}", span.highest_id)))
                .expression_attribute_values(":bulk", s(bulk))
        })
        .collect()
}

/// A message the status check looks up: in `sent` for longer than the provider should take.
/// Email and SMS records store these three under the same names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct StuckInSent {
    pub org_id: OrgId,
    pub id: String,
    /// SendGrid's message id or Twilio's SID, when the provider gave one.
    pub provider_message_id: Option<String>,
    /// The recipient (SendGrid's Activity API finds a recipient's message by it).
    #[serde(default)]
    pub to: Option<String>,
}

/// What the sweep did with one record found waiting too long on the pending index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swept {
    /// Still `queued` (or `sending` under a lapsed claim): its clock was reset and it must
    /// be enqueued again.
    Requeue,
    /// Waiting since before the sweep's give-up time: recorded `failed` (transient, so
    /// `resend-failed` can bring it back).
    GaveUp,
    /// It had moved on (a webhook beat the worker): taken off the pending index.
    Cleared,
    /// Another delivery holds a live claim on it: left alone.
    Busy,
}

/// A record the sweep settles: its key, its pending-index prefix (`EMAIL`, `SMS`), the
/// clock value a requeue sets, the `status_rank` of `failed` where the kind keeps one, and
/// how its timeline entry is written.
pub(crate) struct PendingRecord<F> {
    pub pk: String,
    pub sk: String,
    pub kind: &'static str,
    pub since: String,
    pub failed_rank: Option<u8>,
    pub entry: F,
}

/// Settles one record the sweep found waiting (see [`Swept`]): gives up on it when it was
/// created (its ULID) before `give_up_before`, else restarts its waiting clock so it is
/// enqueued again, else takes it off the pending index if it has moved on. Each step is
/// conditional on what the record is now, so a worker or webhook that moves it meanwhile
/// wins. (DynamoDB refuses expression values an expression does not use, so each update
/// names exactly its own.)
pub(crate) async fn sweep_record<F>(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    record: PendingRecord<F>,
    now: chrono::DateTime<chrono::Utc>,
    give_up_before: chrono::DateTime<chrono::Utc>,
) -> Result<Swept, StoreError>
where
    F: Fn(String) -> Result<AttributeValue, StoreError>,
{
    let waiting = "attribute_not_exists(deleted_at) AND \
                   (#status = :queued OR (#status = :sending AND claim_until < :epoch))";
    let update = || {
        dynamodb
            .update_item()
            .table_name(table)
            .key("pk", s(&record.pk))
            .key("sk", s(&record.sk))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":sending", s("sending"))
    };
    let number = |value: i64| AttributeValue::N(value.to_string());
    let reason = format!(
        "not sent: still waiting {} hours after it was accepted",
        (now - give_up_before).num_hours()
    );
    let rank = record.failed_rank.map_or("", |_| ", status_rank = :rank");
    let mut give_up = update()
        .update_expression(format!(
            "SET #status = :failed{rank}, failure_kind = :kind, failure_reason = :reason, \
             updated_at = :now, version = version + :one, timeline = list_append(timeline, :entry) \
             REMOVE claim_until, gsi1pk, gsi1sk"
        ))
        .condition_expression(format!("{waiting} AND id < :oldest"))
        .expression_attribute_values(":epoch", number(now.timestamp()))
        .expression_attribute_values(":failed", s("failed"))
        .expression_attribute_values(":kind", s("transient"))
        .expression_attribute_values(":reason", s(&reason))
        .expression_attribute_values(":now", s(now.to_rfc3339()))
        .expression_attribute_values(":one", number(1))
        .expression_attribute_values(":entry", (record.entry)(reason.clone())?)
        .expression_attribute_values(
            ":oldest",
            s(RecordId::lowest_at(give_up_before).to_string()),
        );
    if let Some(rank) = record.failed_rank {
        give_up = give_up.expression_attribute_values(":rank", number(i64::from(rank)));
    }
    if conditional(give_up.send().await, "UpdateItem sweep give-up")? {
        return Ok(Swept::GaveUp);
    }
    let requeue = update()
        .update_expression("SET gsi1sk = :since, sweeps = if_not_exists(sweeps, :zero) + :one")
        .condition_expression(waiting)
        .expression_attribute_values(":epoch", number(now.timestamp()))
        .expression_attribute_values(":since", s(&record.since))
        .expression_attribute_values(":zero", number(0))
        .expression_attribute_values(":one", number(1));
    if conditional(requeue.send().await, "UpdateItem sweep requeue")? {
        return Ok(Swept::Requeue);
    }
    let clear = update()
        .update_expression("REMOVE gsi1pk, gsi1sk")
        .condition_expression(
            "begins_with(gsi1pk, :pending) AND NOT (#status IN (:queued, :sending))",
        )
        .expression_attribute_values(":pending", s(format!("{}#PENDING#", record.kind)));
    Ok(
        if conditional(clear.send().await, "UpdateItem sweep clear")? {
            Swept::Cleared
        } else {
            Swept::Busy
        },
    )
}

/// What became of a record the status check looked up without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsettled {
    /// Back of the line: looked up again after the others.
    Later,
    /// Its last allowed lookup: it stays `sent` (the provider took it; whether it arrived is
    /// unknown) and leaves the status index, with a timeline entry saying so.
    GaveUp,
}

/// Notes a status-check lookup that settled nothing: the record goes to the back of its
/// sent-index shard (its sort key restamped to `now`, a round robin), and its `max_checks`-th
/// such lookup takes it off the index. Conditional on the record still being `sent`.
pub(crate) async fn unsettled_check<F>(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    (pk, sk): (String, String),
    id: &str,
    now: chrono::DateTime<chrono::Utc>,
    max_checks: u32,
    entry: F,
) -> Result<Option<Unsettled>, StoreError>
where
    F: Fn(String) -> Result<AttributeValue, StoreError>,
{
    let number = |value: i64| AttributeValue::N(value.to_string());
    let update = || {
        dynamodb
            .update_item()
            .table_name(table)
            .key("pk", s(&pk))
            .key("sk", s(&sk))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":sent", s("sent"))
            .expression_attribute_values(":zero", number(0))
            .expression_attribute_values(":one", number(1))
    };
    let reason = format!("no final status from the provider after {max_checks} lookups");
    let mut give_up = update()
        .update_expression(
            "SET status_checks = if_not_exists(status_checks, :zero) + :one, \
             timeline = list_append(timeline, :entry) REMOVE gsi1pk, gsi1sk",
        )
        .expression_attribute_values(":entry", entry(reason)?);
    give_up = if max_checks <= 1 {
        give_up.condition_expression("#status = :sent")
    } else {
        give_up
            .condition_expression("#status = :sent AND status_checks >= :last")
            .expression_attribute_values(":last", number(i64::from(max_checks - 1)))
    };
    if conditional(give_up.send().await, "UpdateItem status check give-up")? {
        return Ok(Some(Unsettled::GaveUp));
    }
    let later = update()
        .update_expression(
            "SET status_checks = if_not_exists(status_checks, :zero) + :one, gsi1sk = :since",
        )
        .condition_expression("#status = :sent")
        .expression_attribute_values(":since", s(format!("{:013}#{id}", now.timestamp_millis())));
    Ok(
        conditional(later.send().await, "UpdateItem status check later")?
            .then_some(Unsettled::Later),
    )
}

/// `Ok(true)` when a conditional write happened, `Ok(false)` when its condition failed.
fn conditional<T, E>(
    result: Result<T, aws_sdk_dynamodb::error::SdkError<E>>,
    context: &'static str,
) -> Result<bool, StoreError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    match result {
        Ok(_) => Ok(true),
        Err(error) if error.code() == Some("ConditionalCheckFailedException") => Ok(false),
        Err(error) => Err(anyhow::Error::new(error).context(context).into()),
    }
}

/// Records on a status index (GSI1, keys `<prefix>#<shard>` for each of `shards`: the
/// "in `sent`" index of the status checks, the "pending" index of the sweep) that have been
/// there since before `cutoff`, oldest first per shard, at most `max` and at most an even
/// share of it from each shard.
pub(crate) async fn stuck_in_sent(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    prefix: &str,
    shards: u32,
    cutoff: chrono::DateTime<chrono::Utc>,
    max: usize,
) -> Result<Vec<StuckInSent>, StoreError> {
    let mut found = Vec::new();
    // Each shard gets its share of `max`, so records that stay on the index for good (a
    // message no provider lookup can settle) cannot pin the first shards and starve the
    // rest (issue 15).
    let per_shard = max.div_ceil(usize::try_from(shards.max(1)).unwrap_or(1));
    for shard in 0..shards {
        let mut start = None;
        let mut taken = 0;
        'shard: loop {
            let output = dynamodb
                .query()
                .table_name(table)
                .index_name("GSI1")
                .key_condition_expression("gsi1pk = :pk AND gsi1sk < :cutoff")
                .expression_attribute_values(":pk", s(format!("{prefix}#{shard}")))
                .expression_attribute_values(
                    ":cutoff",
                    s(format!("{:013}", cutoff.timestamp_millis())),
                )
                .projection_expression("#org, #id, #message, #to")
                .expression_attribute_names("#org", "org_id")
                .expression_attribute_names("#id", "id")
                .expression_attribute_names("#message", "provider_message_id")
                .expression_attribute_names("#to", "to")
                .set_exclusive_start_key(start)
                .send()
                .await
                .context("Query the sent index")?;
            for item in output.items.unwrap_or_default() {
                found.push(serde_dynamo::from_item(item).context("malformed sent-index item")?);
                taken += 1;
                if found.len() >= max {
                    return Ok(found);
                }
                if taken >= per_shard {
                    break 'shard;
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

/// Every page of several queries (one per shard), read concurrently, in arrival order.
pub(crate) fn pages_of_all(
    requests: Vec<QueryFluentBuilder>,
    context: &'static str,
) -> impl Stream<Item = Result<Vec<Item>, StoreError>> {
    // State: `Some(start)` while the query has pages left (`start` `None` for the first).
    let shards = requests.into_iter().map(move |request| {
        futures::stream::try_unfold(Some(None), move |state: Option<Option<Item>>| {
            let request = request.clone();
            async move {
                let Some(start) = state else {
                    return Ok(None);
                };
                let output = request
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .context(context)?;
                let next = output.last_evaluated_key.map(Some);
                Ok::<_, StoreError>(Some((output.items.unwrap_or_default(), next)))
            }
        })
        .boxed()
    });
    futures::stream::select_all(shards)
}

/// The sort-key range of a sharded listing and how a cursor of it looks.
pub(crate) struct ShardedList<'a> {
    /// The partition keys to read ([`record_partitions`]).
    pub partitions: Vec<String>,
    /// The lowest and highest sort key to list, both inclusive.
    pub lowest: String,
    pub highest: String,
    /// What every sort key of this listing starts with (`EMAIL#`); a cursor must too.
    pub sort_prefix: &'a str,
}

/// One shard's newest-first read: the matching items it returned, and how far down it
/// looked when it may hold more (`None`: it has nothing older left).
#[derive(Debug, Default)]
struct ShardPage {
    items: Vec<Item>,
    frontier: Option<String>,
}

fn sort_key(item: &Item) -> &str {
    match item.get("sk") {
        Some(AttributeValue::S(value)) => value,
        _ => "",
    }
}

/// Lists one page across shards, newest first: every shard is queried at once for the
/// items below the cursor (`request` holds the filters; this adds the key condition), and
/// the answers are merged by sort key. The cursor is the sort key of the last item
/// returned (or of where the reads stopped when a selective filter ran out of rounds).
///
/// # Errors
/// [`StoreError::InvalidCursor`] for a cursor that is not a sort key of this listing.
pub(crate) async fn merged_query(
    request: QueryFluentBuilder,
    list: ShardedList<'_>,
    page: &PageRequest,
) -> Result<(Vec<Item>, Option<Cursor>), StoreError> {
    let before = match &page.after {
        Some(cursor) => match cursor.get("sk") {
            Some(sk) if cursor.len() == 1 && is_sort_key(sk, list.sort_prefix) => Some(sk.clone()),
            _ => return Err(StoreError::InvalidCursor),
        },
        None => None,
    };
    // The cursor's own item is read again (BETWEEN is inclusive) and dropped below.
    let highest = match &before {
        Some(before) if *before < list.highest => before.clone(),
        _ => list.highest.clone(),
    };
    if highest < list.lowest {
        return Ok((Vec::new(), None));
    }
    let reads = list.partitions.iter().map(|partition| {
        let request = request
            .clone()
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(partition))
            .expression_attribute_values(":lo", s(&list.lowest))
            .expression_attribute_values(":hi", s(&highest))
            .scan_index_forward(false);
        let fetch = move |start: Option<Item>| {
            let request = request
                .clone()
                .set_exclusive_start_key(start)
                .limit(i32::try_from(page.limit + 1).unwrap_or(101).max(25));
            async move {
                let output = request.send().await.context("Query shard")?;
                Ok((output.items.unwrap_or_default(), output.last_evaluated_key))
            }
        };
        read_shard(fetch, page.limit, before.as_deref())
    });
    let pages = futures::future::try_join_all(reads).await?;
    let (items, next) = merge_newest_first(pages, page.limit);
    Ok((items, next.map(|sk| Cursor::from([("sk".to_owned(), sk)]))))
}

/// Whether a cursor value is a sort key this listing makes: the prefix and a record id.
fn is_sort_key(value: &str, prefix: &str) -> bool {
    value
        .strip_prefix(prefix)
        .and_then(RecordId::parse)
        .is_some_and(|id| value.ends_with(&id.to_string()))
}

/// Reads one shard newest first, one `fetch` (a query page after the given start key,
/// returning its items and last evaluated key) at a time, until it has `limit` matches,
/// runs out, or has used its rounds (so a selective filter cannot make one request read a
/// whole shard). Items at or above `before` (the cursor's own) are dropped.
async fn read_shard<F, Fut>(
    mut fetch: F,
    limit: usize,
    before: Option<&str>,
) -> Result<ShardPage, StoreError>
where
    F: FnMut(Option<Item>) -> Fut,
    Fut: Future<Output = Result<(Vec<Item>, Option<Item>), StoreError>>,
{
    let mut items: Vec<Item> = Vec::new();
    let mut start: Option<Item> = None;
    for _ in 0..MAX_QUERY_ROUNDS {
        let (page, last) = fetch(start.take()).await?;
        items.extend(
            page.into_iter()
                .filter(|item| before.is_none_or(|before| sort_key(item) < before)),
        );
        start = last;
        if items.len() >= limit {
            if items.len() == limit && start.is_none() {
                return Ok(ShardPage {
                    items,
                    frontier: None,
                });
            }
            items.truncate(limit);
            let frontier = items.last().map(|item| sort_key(item).to_owned());
            return Ok(ShardPage { items, frontier });
        }
        if start.is_none() {
            return Ok(ShardPage {
                items,
                frontier: None,
            });
        }
    }
    let frontier = start.as_ref().map(|key| sort_key(key).to_owned());
    Ok(ShardPage { items, frontier })
}

/// Merges shard pages into one page of at most `limit` items, newest first, and the sort
/// key to continue below. Only items above every shard's frontier are certain to be in
/// order (below it, a shard has not looked yet), so the page stops there.
fn merge_newest_first(pages: Vec<ShardPage>, limit: usize) -> (Vec<Item>, Option<String>) {
    let bound = pages.iter().filter_map(|page| page.frontier.clone()).max();
    let mut items: Vec<Item> = pages
        .into_iter()
        .flat_map(|page| page.items)
        .filter(|item| bound.as_deref().is_none_or(|bound| sort_key(item) >= bound))
        .collect();
    items.sort_by(|a, b| Reverse(sort_key(a)).cmp(&Reverse(sort_key(b))));
    if items.len() >= limit {
        let more = items.len() > limit || bound.is_some();
        items.truncate(limit);
        let next = more.then(|| items.last().map(|item| sort_key(item).to_owned()));
        return (items, next.flatten());
    }
    (items, bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulid_at(ms: u64, n: u32) -> String {
        ulid::Ulid::from_parts(ms, u128::from(n) * 7_919).to_string()
    }

    #[test]
    fn shards_are_stable_and_spread_evenly() {
        // Fixed values (FNV-1a test vectors and a computed id): a change here would orphan
        // every stored record.
        let org = OrgId::parse("acme").unwrap();
        assert_eq!(
            record_pk(&org, "EMAIL", "01JDQ3Z6KX5N1V8W0E2R4T6Y8A"),
            "ORG#acme#EMAIL#3"
        );
        assert_eq!(shard_of(""), 0x811c_9dc5 % RECORD_SHARDS);
        assert_eq!(shard_of("a"), 0xe40c_292c % RECORD_SHARDS);

        // Ids made in the same millisecond (a bulk) spread over every shard about evenly.
        let mut counts = vec![0usize; RECORD_SHARDS as usize];
        for n in 0..16_000 {
            let id = ulid::Ulid::from_parts(1_732_000_000_000, rand_like(n)).to_string();
            counts[shard_of(&id) as usize] += 1;
        }
        for (shard, count) in counts.iter().enumerate() {
            assert!(
                (800..=1200).contains(count),
                "shard {shard} got {count} of 16000"
            );
        }
    }

    /// Deterministic, well-mixed 80-bit randomness parts for test ids.
    fn rand_like(n: u32) -> u128 {
        let mut x = u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        x ^= x >> 61;
        x & ((1 << 80) - 1)
    }

    #[test]
    fn partitions_name_every_shard_once() {
        let org = OrgId::parse("acme").unwrap();
        let all = record_partitions(&org, "SMS");
        assert_eq!(all.len(), RECORD_SHARDS as usize);
        let id = ulid_at(1, 1);
        assert!(all.contains(&record_pk(&org, "SMS", &id)));
    }

    fn item(sk: &str, matches: bool) -> Item {
        Item::from([
            ("sk".to_owned(), s(sk)),
            ("match".to_owned(), AttributeValue::Bool(matches)),
        ])
    }

    /// [`read_shard`] over an in-memory stand-in for one shard's DynamoDB query: newest
    /// first, the key condition's upper bound inclusive (so the cursor's own item comes
    /// back), `page_size` items examined per call, the filter applied after the limit, and
    /// a last evaluated key whenever the limit was reached (as DynamoDB does).
    fn read_memory_shard(
        shard: &[Item],
        limit: usize,
        before: Option<&str>,
        page_size: usize,
    ) -> ShardPage {
        let mut newest_first: Vec<&Item> = shard
            .iter()
            .filter(|item| before.is_none_or(|b| sort_key(item) <= b))
            .collect();
        newest_first.sort_by(|a, b| sort_key(b).cmp(sort_key(a)));
        let fetch = |start: Option<Item>| {
            let from = start.map_or(0, |key| {
                1 + newest_first
                    .iter()
                    .position(|item| sort_key(item) == sort_key(&key))
                    .expect("the start key is an examined item")
            });
            let chunk = &newest_first[from..(from + page_size).min(newest_first.len())];
            let matches = chunk
                .iter()
                .filter(|item| item["match"] == AttributeValue::Bool(true))
                .map(|item| (*item).clone())
                .collect();
            let last = (chunk.len() == page_size).then(|| (*chunk[page_size - 1]).clone());
            std::future::ready(Ok((matches, last)))
        };
        futures::executor::block_on(read_shard(fetch, limit, before)).unwrap()
    }

    /// Pages through `shards` with the merge until no cursor is left.
    fn page_through(
        shards: &[Vec<Item>],
        limit: usize,
        page_size: usize,
    ) -> (Vec<String>, Vec<usize>) {
        let mut listed = Vec::new();
        let mut before: Option<String> = None;
        let mut pages = Vec::new();
        loop {
            assert!(pages.len() < 10_000, "paging never ends");
            let reads = shards
                .iter()
                .map(|shard| read_memory_shard(shard, limit, before.as_deref(), page_size))
                .collect();
            let (items, next) = merge_newest_first(reads, limit);
            assert!(items.len() <= limit);
            pages.push(items.len());
            listed.extend(items.iter().map(|i| sort_key(i).to_owned()));
            match next {
                Some(next) => {
                    assert!(
                        before.as_ref().is_none_or(|b| next < *b),
                        "the cursor moves down"
                    );
                    before = Some(next);
                }
                None => return (listed, pages),
            }
        }
    }

    /// Shards of uneven sizes: shard `i` holds `sizes[i]` ids; every third id does not match.
    fn uneven_shards(sizes: &[usize]) -> (Vec<Vec<Item>>, Vec<String>) {
        let mut shards = Vec::new();
        let mut expected = Vec::new();
        let mut n = 0u32;
        for (shard, size) in sizes.iter().enumerate() {
            let mut items = Vec::new();
            for _ in 0..*size {
                n += 1;
                // Interleave shards in time so the merge really has to merge.
                let sk = format!(
                    "EMAIL#{}",
                    ulid_at(u64::from(n) * 13 % 997 + shard as u64, n)
                );
                let matches = !n.is_multiple_of(3);
                if matches {
                    expected.push(sk.clone());
                }
                items.push(item(&sk, matches));
            }
            shards.push(items);
        }
        expected.sort_by(|a, b| b.cmp(a));
        (shards, expected)
    }

    #[test]
    fn merge_pages_through_uneven_shards_newest_first_without_gaps_or_repeats() {
        let (shards, expected) =
            uneven_shards(&[0, 1, 57, 3, 0, 120, 9, 2, 0, 0, 33, 1, 0, 7, 64, 5]);
        for limit in [1, 2, 7, 20, 100] {
            let (listed, pages) = page_through(&shards, limit, 25);
            assert_eq!(listed, expected, "limit {limit}");
            // Full pages whenever more matches exist: only the last page may be short (or
            // empty, when the last full page could not know nothing older matched).
            let full = pages.iter().take_while(|size| **size == limit).count();
            assert!(full + 1 >= pages.len(), "limit {limit}: pages {pages:?}");
            assert!(
                pages.len() <= expected.len().div_ceil(limit) + 1,
                "limit {limit}"
            );
        }
    }

    #[test]
    fn a_selective_filter_that_runs_out_of_rounds_still_lists_everything_once() {
        // Three matches among 400 items: shard 0 holds five old items (one matching) and is
        // read to its end at once, while the three big shards use up their rounds
        // (`MAX_QUERY_ROUNDS` pages of 3) far above it; its old match must wait for them.
        let mut shards = vec![Vec::new(); 4];
        let mut expected = Vec::new();
        for n in 0..400u32 {
            let sk = format!("SMS#{}", ulid_at(u64::from(n), n));
            let matches = matches!(n, 8 | 200 | 395);
            if matches {
                expected.push(sk.clone());
            }
            let shard = if n < 40 && n.is_multiple_of(8) {
                0
            } else {
                1 + n % 3
            };
            shards[shard as usize].push(item(&sk, matches));
        }
        expected.sort_by(|a, b| b.cmp(a));
        let (listed, pages) = page_through(&shards, 10, 3);
        assert_eq!(listed, expected);
        assert!(
            pages.len() > 1,
            "the rounds ran out and a cursor carried on"
        );
    }

    #[test]
    fn exactly_a_full_page_ends_without_a_cursor() {
        let (shards, expected) = uneven_shards(&[3, 3]);
        let limit = expected.len();
        let reads = shards
            .iter()
            .map(|shard| read_memory_shard(shard, limit, None, 25))
            .collect();
        let (items, next) = merge_newest_first(reads, limit);
        assert_eq!(items.len(), limit);
        assert_eq!(next, None);
    }
}
