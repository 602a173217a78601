//! Counts the AWS SDK operations the bundle's functions make, for the bulk-efficiency figures
//! (docs/PERFORMANCE.md). The runner gives every function clients carrying
//! [`SdkCallCounter`] as an SDK interceptor; the deployed functions build their clients in
//! `shared::aws` without it, so counting never runs on Lambda. The runner's own calls
//! (creating resources, polling queues) use separate clients and are not counted.
//!
//! Beside calls per service and operation it counts what the calls carry: SQS messages sent
//! (`SendMessage` one, `SendMessageBatch` its entries) per queue, and DynamoDB item writes
//! (`PutItem`/`UpdateItem`/`DeleteItem` one, `BatchWriteItem` its requests,
//! `TransactWriteItems` its items). Counted once per operation, before the SDK's retries, so
//! a throttled call that the SDK retries counts once; a write whose condition fails still
//! counts (DynamoDB bills it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use shared::aws::{AwsClients, LazyClient};

/// Calls of one operation and the items they carried (messages, writes; equal to `calls`
/// for operations that carry one or none).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OperationCount {
    pub calls: u64,
    pub items: u64,
}

/// What the functions asked of AWS since the counter was last reset.
#[derive(Debug, Default, Clone)]
pub struct SdkCallCounts {
    /// By (service, operation), e.g. `("DynamoDB", "UpdateItem")`.
    pub operations: BTreeMap<(String, String), OperationCount>,
    /// SQS messages sent, by queue name.
    pub messages_by_queue: BTreeMap<String, u64>,
    /// DynamoDB item writes by the kind of item written: the first `#` segment of its sort
    /// key (`EMAIL`, `SMS`, `WINDOW`, `SID`, …), so a figure says what the writes were.
    pub writes_by_item: BTreeMap<String, u64>,
}

/// DynamoDB operations that write items.
const DYNAMODB_WRITES: &[&str] = &[
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "BatchWriteItem",
    "TransactWriteItems",
];

impl SdkCallCounts {
    pub fn get(&self, service: &str, operation: &str) -> OperationCount {
        self.operations
            .get(&(service.to_owned(), operation.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// SQS messages sent by every `SendMessage` and `SendMessageBatch`.
    pub fn sqs_messages_sent(&self) -> u64 {
        self.messages_by_queue.values().sum()
    }

    /// DynamoDB item writes, by write operation (only those that happened).
    pub fn dynamodb_writes(&self) -> BTreeMap<&'static str, OperationCount> {
        DYNAMODB_WRITES
            .iter()
            .map(|operation| (*operation, self.get("DynamoDB", operation)))
            .filter(|(_, count)| count.calls > 0)
            .collect()
    }

    /// Every DynamoDB item write.
    pub fn dynamodb_items_written(&self) -> u64 {
        self.dynamodb_writes().values().map(|c| c.items).sum()
    }
}

/// The interceptor, shared by every instrumented client.
#[derive(Debug, Default)]
pub struct SdkCallCounter {
    counts: Mutex<SdkCallCounts>,
}

impl SdkCallCounter {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn snapshot(&self) -> SdkCallCounts {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Starts counting from zero (after a measurement's setup).
    pub fn reset(&self) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts = SdkCallCounts::default();
        }
    }

    /// `aws` with every client also reporting to this counter. The clients keep their
    /// configuration (endpoint, region, S3 path style) and connection pool settings.
    pub fn instrument(self: &Arc<Self>, aws: &AwsClients) -> AwsClients {
        with_interceptor(aws, CountingInterceptor(Arc::clone(self)))
    }

    fn record_writes(&self, kinds: &[String]) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        for kind in kinds {
            *counts.writes_by_item.entry(kind.clone()).or_default() += 1;
        }
    }

    fn record(&self, service: &str, operation: &str, items: u64, queue: Option<String>) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let count = counts
            .operations
            .entry((service.to_owned(), operation.to_owned()))
            .or_default();
        count.calls += 1;
        count.items += items;
        if let Some(queue) = queue {
            *counts.messages_by_queue.entry(queue).or_default() += items;
        }
    }
}

/// `aws` with `interceptor` added to every client (this counter, the local IAM check). The
/// clients keep their configuration (endpoint, region, S3 path style), their other
/// interceptors and their connection pool.
pub fn with_interceptor<I>(aws: &AwsClients, interceptor: I) -> AwsClients
where
    I: Intercept + Clone + 'static,
{
    AwsClients {
        config: aws.config.clone(),
        dynamodb: LazyClient::ready(aws_sdk_dynamodb::Client::from_conf(
            aws.dynamodb
                .config()
                .to_builder()
                .interceptor(interceptor.clone())
                .build(),
        )),
        sqs: LazyClient::ready(aws_sdk_sqs::Client::from_conf(
            aws.sqs
                .config()
                .to_builder()
                .interceptor(interceptor.clone())
                .build(),
        )),
        s3: LazyClient::ready(aws_sdk_s3::Client::from_conf(
            aws.s3
                .config()
                .to_builder()
                .interceptor(interceptor.clone())
                .build(),
        )),
        secrets: LazyClient::ready(aws_sdk_secretsmanager::Client::from_conf(
            aws.secrets
                .config()
                .to_builder()
                .interceptor(interceptor.clone())
                .build(),
        )),
        scheduler: LazyClient::ready(aws_sdk_scheduler::Client::from_conf(
            aws.scheduler
                .config()
                .to_builder()
                .interceptor(interceptor)
                .build(),
        )),
    }
}

#[derive(Debug, Clone)]
struct CountingInterceptor(Arc<SdkCallCounter>);

impl Intercept for CountingInterceptor {
    fn name(&self) -> &'static str {
        "HeraldSdkCallCounter"
    }

    // Before serialization rather than before execution: the operation's metadata is in
    // the config bag by then, and it still runs once per operation (retries come later).
    fn read_before_serialization(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(metadata) = cfg.load::<Metadata>() else {
            return Ok(());
        };
        let (items, queue) = carried(metadata.service(), metadata.name(), context);
        self.0
            .record(metadata.service(), metadata.name(), items, queue);
        if metadata.service() == "DynamoDB" {
            self.0
                .record_writes(&written_kinds(metadata.name(), context));
        }
        Ok(())
    }
}

/// The items one call carries, and for an SQS send the queue it sends to.
fn carried(
    service: &str,
    operation: &str,
    context: &BeforeSerializationInterceptorContextRef<'_>,
) -> (u64, Option<String>) {
    use aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemInput;
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
    use aws_sdk_sqs::operation::send_message::SendMessageInput;
    use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchInput;

    let input = context.input();
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    match (service, operation) {
        ("SQS", "SendMessage") => (
            1,
            input
                .downcast_ref::<SendMessageInput>()
                .and_then(|i| i.queue_url())
                .map(queue_name),
        ),
        ("SQS", "SendMessageBatch") => input
            .downcast_ref::<SendMessageBatchInput>()
            .map_or((0, None), |i| {
                (count(i.entries().len()), i.queue_url().map(queue_name))
            }),
        ("DynamoDB", "BatchWriteItem") => (
            input
                .downcast_ref::<BatchWriteItemInput>()
                .and_then(|i| i.request_items())
                .map_or(0, |tables| count(tables.values().map(Vec::len).sum())),
            None,
        ),
        ("DynamoDB", "TransactWriteItems") => (
            input
                .downcast_ref::<TransactWriteItemsInput>()
                .map_or(0, |i| count(i.transact_items().len())),
            None,
        ),
        _ => (1, None),
    }
}

/// The kinds of the items a DynamoDB write carries (see [`SdkCallCounts::writes_by_item`]);
/// none for reads.
fn written_kinds(
    operation: &str,
    context: &BeforeSerializationInterceptorContextRef<'_>,
) -> Vec<String> {
    use aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemInput;
    use aws_sdk_dynamodb::operation::delete_item::DeleteItemInput;
    use aws_sdk_dynamodb::operation::put_item::PutItemInput;
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
    use aws_sdk_dynamodb::operation::update_item::UpdateItemInput;
    use aws_sdk_dynamodb::types::AttributeValue;
    type Item = std::collections::HashMap<String, AttributeValue>;

    let kind = |item: Option<&Item>| {
        let sk = item.and_then(|i| i.get("sk")).and_then(|v| v.as_s().ok());
        sk.map_or("(no sort key)", |sk| sk.split('#').next().unwrap_or(sk))
            .to_owned()
    };
    let input = context.input();
    match operation {
        "PutItem" => vec![kind(
            input.downcast_ref::<PutItemInput>().and_then(|i| i.item()),
        )],
        "UpdateItem" => vec![kind(
            input
                .downcast_ref::<UpdateItemInput>()
                .and_then(|i| i.key()),
        )],
        "DeleteItem" => vec![kind(
            input
                .downcast_ref::<DeleteItemInput>()
                .and_then(|i| i.key()),
        )],
        "BatchWriteItem" => input
            .downcast_ref::<BatchWriteItemInput>()
            .and_then(|i| i.request_items())
            .into_iter()
            .flat_map(|tables| tables.values().flatten())
            .map(|request| {
                let put = request.put_request().map(|p| p.item());
                kind(put.or_else(|| request.delete_request().map(|d| d.key())))
            })
            .collect(),
        "TransactWriteItems" => input
            .downcast_ref::<TransactWriteItemsInput>()
            .map(|i| i.transact_items())
            .unwrap_or_default()
            .iter()
            .map(|t| {
                let item = t.put().map(|p| p.item());
                let item = item.or_else(|| t.update().map(|u| u.key()));
                kind(item.or_else(|| t.delete().map(|d| d.key())))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The queue's name: the last path segment of its URL.
fn queue_name(url: &str) -> String {
    url.rsplit('/').next().unwrap_or(url).to_owned()
}
