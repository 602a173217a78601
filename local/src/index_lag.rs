//! Makes DynamoDB's global secondary indexes lag writes, as they do on AWS.
//!
//! moto answers a GSI `Query` from the table itself, so an item is on its indexes the moment
//! it is written. DynamoDB propagates to a GSI asynchronously: "Global secondary indexes
//! support eventually consistent reads only … changes to the table data are propagated to
//! the global secondary indexes within a fraction of a second, under normal conditions"
//! and longer under load (Amazon DynamoDB Developer Guide, "Using Global Secondary Indexes
//! in DynamoDB", section "Read consistency for global secondary indexes";
//! `ConsistentRead` on a GSI query is a `ValidationException`). Code that reads an index
//! right after writing it passes on moto and loses records on AWS (issue 15, defect 1).
//!
//! [`IndexLag`] is an SDK interceptor on the functions' DynamoDB client: it notes when each
//! item is written (`PutItem`, `UpdateItem`, `DeleteItem`, `BatchWriteItem`,
//! `TransactWriteItems`) and removes from the answer of every `Query` on an index
//! (`IndexName` set) the items written less than the lag ago, matched by primary key
//! (`pk`/`sk`) when the answer carries it, else by the `id` attribute. It also refuses
//! `ConsistentRead` on an index with DynamoDB's own error. Base-table reads are untouched.
//! The lag is `HERALD_LOCAL_GSI_LAG_MS` (the tests turn it on; see `tests/tests/api/helpers.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::interceptors::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextMut,
};
use aws_sdk_dynamodb::config::{ConfigBag, RuntimeComponents};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use shared::aws::{AwsClients, LazyClient};

type Item = HashMap<String, AttributeValue>;

/// The write times the interceptor has seen, by `pk|sk` and by `id`.
#[derive(Debug)]
pub struct IndexLag {
    lag: Duration,
    written: Mutex<HashMap<String, Instant>>,
}

impl IndexLag {
    pub fn new(lag: Duration) -> Arc<Self> {
        Arc::new(Self {
            lag,
            written: Mutex::new(HashMap::new()),
        })
    }

    /// `aws` with the DynamoDB client lagging its indexes (a zero lag returns it unchanged).
    pub fn instrument(self: &Arc<Self>, aws: &AwsClients) -> AwsClients {
        if self.lag.is_zero() {
            return aws.clone();
        }
        let mut lagging = aws.clone();
        lagging.dynamodb = LazyClient::ready(aws_sdk_dynamodb::Client::from_conf(
            aws.dynamodb
                .config()
                .to_builder()
                .interceptor(LagInterceptor(Arc::clone(self)))
                .build(),
        ));
        lagging
    }

    fn note_written(&self, keys: Vec<String>) {
        let now = Instant::now();
        if let Ok(mut written) = self.written.lock() {
            // Forget what is past the lag, so the map stays the size of the last lag's writes.
            written.retain(|_, at| now.duration_since(*at) < self.lag);
            for key in keys {
                written.insert(key, now);
            }
        }
    }

    fn is_fresh(&self, item: &Item) -> bool {
        let Ok(written) = self.written.lock() else {
            return false;
        };
        item_keys(item)
            .iter()
            .filter_map(|key| written.get(key))
            .any(|at| at.elapsed() < self.lag)
    }
}

/// The names an item is noted under: its primary key, and its `id`.
fn item_keys(item: &Item) -> Vec<String> {
    let text = |name: &str| match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value.as_str()),
        _ => None,
    };
    let mut keys = Vec::new();
    if let (Some(pk), Some(sk)) = (text("pk"), text("sk")) {
        keys.push(format!("key:{pk}|{sk}"));
    }
    if let Some(id) = text("id") {
        keys.push(format!("id:{id}"));
    }
    keys
}

/// Set in the config bag of a `Query` on an index, read back when its answer arrives.
#[derive(Debug, Clone)]
struct IndexQuery;

impl Storable for IndexQuery {
    type Storer = StoreReplace<Self>;
}

#[derive(Debug, Clone)]
struct LagInterceptor(Arc<IndexLag>);

impl Intercept for LagInterceptor {
    fn name(&self) -> &'static str {
        "HeraldIndexLag"
    }

    fn read_before_serialization(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        use aws_sdk_dynamodb::operation::query::QueryInput;
        let input = context.input();
        if let Some(query) = input.downcast_ref::<QueryInput>() {
            if query.index_name().is_some() {
                if query.consistent_read() == Some(true) {
                    // DynamoDB: "Consistent reads are not supported on global secondary indexes".
                    return Err("ValidationException: Consistent reads are not supported on global secondary indexes".into());
                }
                cfg.interceptor_state().store_put(IndexQuery);
            }
            return Ok(());
        }
        self.0.note_written(written_keys(context));
        Ok(())
    }

    fn modify_before_completion(
        &self,
        context: &mut FinalizerInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        use aws_sdk_dynamodb::operation::query::QueryOutput;
        if cfg.load::<IndexQuery>().is_none() {
            return Ok(());
        }
        let Some(Ok(output)) = context.output_or_error_mut() else {
            return Ok(());
        };
        let Some(query) = output.downcast_mut::<QueryOutput>() else {
            return Ok(());
        };
        if let Some(items) = query.items.as_mut() {
            items.retain(|item| !self.0.is_fresh(item));
            query.count = i32::try_from(items.len()).unwrap_or(i32::MAX);
        }
        Ok(())
    }
}

/// The keys of the items a write operation writes (empty for anything else).
fn written_keys(context: &BeforeSerializationInterceptorContextRef<'_>) -> Vec<String> {
    use aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemInput;
    use aws_sdk_dynamodb::operation::delete_item::DeleteItemInput;
    use aws_sdk_dynamodb::operation::put_item::PutItemInput;
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
    use aws_sdk_dynamodb::operation::update_item::UpdateItemInput;

    let input = context.input();
    let of = |item: Option<&Item>| item.map(item_keys).unwrap_or_default();
    if let Some(put) = input.downcast_ref::<PutItemInput>() {
        return of(put.item());
    }
    if let Some(update) = input.downcast_ref::<UpdateItemInput>() {
        return of(update.key());
    }
    if let Some(delete) = input.downcast_ref::<DeleteItemInput>() {
        return of(delete.key());
    }
    if let Some(batch) = input.downcast_ref::<BatchWriteItemInput>() {
        return batch
            .request_items()
            .into_iter()
            .flat_map(HashMap::values)
            .flatten()
            .flat_map(|request| {
                let put = request.put_request().map(|p| p.item());
                let delete = request.delete_request().map(|d| d.key());
                [put, delete].into_iter().flatten().flat_map(item_keys)
            })
            .collect();
    }
    if let Some(transaction) = input.downcast_ref::<TransactWriteItemsInput>() {
        return transaction
            .transact_items()
            .iter()
            .flat_map(|item| {
                let put = item.put().map(|p| p.item());
                let update = item.update().map(|u| u.key());
                let delete = item.delete().map(|d| d.key());
                [put, update, delete]
                    .into_iter()
                    .flatten()
                    .flat_map(item_keys)
            })
            .collect();
    }
    Vec::new()
}
