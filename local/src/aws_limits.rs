//! Refuses the AWS requests the real services refuse for their size, where moto does not.
//!
//! An SDK interceptor on the functions' clients checks each request before it is sent and
//! fails it with the service's own error code in the message (the request never reaches
//! moto, so nothing is half done). The limits, each from the service's reference:
//!
//! | service | limit | error code | source |
//! |---|---|---|---|
//! | SQS | a message body at most 262,144 bytes | `InvalidParameterValue` | SQS API Reference, `SendMessage`, `MessageBody` |
//! | SQS | a batch at most 10 entries | `TooManyEntriesInBatchRequest` | SQS API Reference, `SendMessageBatch` |
//! | SQS | a batch's bodies at most 262,144 bytes together | `BatchRequestTooLong` | SQS API Reference, `SendMessageBatch` |
//! | DynamoDB | an item at most 400 KB (names and values) | `ValidationException` | DynamoDB Developer Guide, "Quotas", "Item size" |
//! | DynamoDB | `BatchWriteItem` at most 25 requests | `ValidationException` | DynamoDB API Reference, `BatchWriteItem` |
//! | DynamoDB | `TransactWriteItems` at most 100 items | `ValidationException` | DynamoDB API Reference, `TransactWriteItems` |
//! | DynamoDB | `BatchGetItem` at most 100 keys | `ValidationException` | DynamoDB API Reference, `BatchGetItem` |
//!
//! S3's 5 MiB minimum part size is left to moto, which enforces it at
//! `CompleteMultipartUpload` (`EntityTooSmall`).

use std::collections::HashMap;

use aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, RuntimeComponents};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use shared::aws::{AwsClients, LazyClient};

pub const SQS_MAX_MESSAGE_BYTES: usize = 262_144;
const SQS_MAX_BATCH_ENTRIES: usize = 10;
/// 400 KB, as DynamoDB counts it (1 KB = 1,024 bytes).
pub const DYNAMODB_MAX_ITEM_BYTES: usize = 400 * 1024;
const DYNAMODB_MAX_BATCH_WRITES: usize = 25;
const DYNAMODB_MAX_TRANSACTION_ITEMS: usize = 100;
const DYNAMODB_MAX_BATCH_GETS: usize = 100;

/// `aws` with the SQS and DynamoDB clients refusing what AWS refuses.
pub fn instrument(aws: &AwsClients) -> AwsClients {
    let mut strict = aws.clone();
    strict.dynamodb = LazyClient::ready(aws_sdk_dynamodb::Client::from_conf(
        aws.dynamodb
            .config()
            .to_builder()
            .interceptor(AwsLimits)
            .build(),
    ));
    strict.sqs = LazyClient::ready(aws_sdk_sqs::Client::from_conf(
        aws.sqs.config().to_builder().interceptor(AwsLimits).build(),
    ));
    strict
}

#[derive(Debug, Clone, Copy)]
struct AwsLimits;

impl Intercept for AwsLimits {
    fn name(&self) -> &'static str {
        "HeraldAwsLimits"
    }

    fn read_before_serialization(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        match refusal(context) {
            Some(refusal) => Err(refusal.into()),
            None => Ok(()),
        }
    }
}

/// Why AWS would refuse this request, if it would.
fn refusal(context: &BeforeSerializationInterceptorContextRef<'_>) -> Option<String> {
    use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemInput;
    use aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemInput;
    use aws_sdk_dynamodb::operation::put_item::PutItemInput;
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
    use aws_sdk_sqs::operation::send_message::SendMessageInput;
    use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchInput;

    let input = context.input();
    if let Some(send) = input.downcast_ref::<SendMessageInput>() {
        let bytes = send.message_body().map_or(0, str::len);
        return (bytes > SQS_MAX_MESSAGE_BYTES).then(|| {
            format!("InvalidParameterValue: One or more parameters are invalid. Reason: Message must be shorter than {SQS_MAX_MESSAGE_BYTES} bytes ({bytes}).")
        });
    }
    if let Some(batch) = input.downcast_ref::<SendMessageBatchInput>() {
        let entries = batch.entries();
        if entries.len() > SQS_MAX_BATCH_ENTRIES {
            return Some(format!(
                "TooManyEntriesInBatchRequest: Maximum number of entries per request are {SQS_MAX_BATCH_ENTRIES}. You have sent {}.",
                entries.len()
            ));
        }
        let bytes: usize = entries.iter().map(|e| e.message_body().len()).sum();
        return (bytes > SQS_MAX_MESSAGE_BYTES).then(|| {
            format!("BatchRequestTooLong: Batch requests cannot be longer than {SQS_MAX_MESSAGE_BYTES} bytes. You have sent {bytes} bytes.")
        });
    }
    if let Some(put) = input.downcast_ref::<PutItemInput>() {
        return put.item().and_then(oversized);
    }
    if let Some(batch) = input.downcast_ref::<BatchWriteItemInput>() {
        let requests: Vec<_> = batch
            .request_items()
            .into_iter()
            .flat_map(HashMap::values)
            .flatten()
            .collect();
        if requests.len() > DYNAMODB_MAX_BATCH_WRITES {
            return Some(format!(
                "ValidationException: Too many items requested for the BatchWriteItem call ({} > {DYNAMODB_MAX_BATCH_WRITES})",
                requests.len()
            ));
        }
        return requests
            .iter()
            .filter_map(|request| request.put_request())
            .find_map(|put| oversized(put.item()));
    }
    if let Some(transaction) = input.downcast_ref::<TransactWriteItemsInput>() {
        let items = transaction.transact_items();
        if items.len() > DYNAMODB_MAX_TRANSACTION_ITEMS {
            return Some(format!(
                "ValidationException: Member must have length less than or equal to {DYNAMODB_MAX_TRANSACTION_ITEMS} ({})",
                items.len()
            ));
        }
        return items
            .iter()
            .filter_map(|item| item.put())
            .find_map(|put| oversized(put.item()));
    }
    if let Some(batch) = input.downcast_ref::<BatchGetItemInput>() {
        let keys: usize = batch
            .request_items()
            .into_iter()
            .flat_map(HashMap::values)
            .map(|table| table.keys().len())
            .sum();
        return (keys > DYNAMODB_MAX_BATCH_GETS).then(|| {
            format!("ValidationException: Too many items requested for the BatchGetItem call ({keys} > {DYNAMODB_MAX_BATCH_GETS})")
        });
    }
    None
}

fn oversized(item: &HashMap<String, AttributeValue>) -> Option<String> {
    let bytes = item_bytes(item);
    (bytes > DYNAMODB_MAX_ITEM_BYTES).then(|| {
        format!(
            "ValidationException: Item size has exceeded the maximum allowed size ({bytes} bytes)"
        )
    })
}

/// An item's size as DynamoDB counts it: each attribute's name and value, in UTF-8 bytes
/// ("Item size and format" in the Developer Guide; numbers are approximated by their text).
pub fn item_bytes(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value_bytes(value))
        .sum()
}

fn value_bytes(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(text) | AttributeValue::N(text) => text.len(),
        AttributeValue::B(blob) => blob.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(texts) | AttributeValue::Ns(texts) => {
            texts.iter().map(String::len).sum()
        }
        AttributeValue::Bs(blobs) => blobs.iter().map(|b| b.as_ref().len()).sum(),
        // Three bytes of overhead per list or map, one per element (the Developer Guide).
        AttributeValue::L(values) => 3 + values.iter().map(|v| 1 + value_bytes(v)).sum::<usize>(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(name, v)| 1 + name.len() + value_bytes(v))
                .sum::<usize>()
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_size_counts_names_and_values() {
        let item = HashMap::from([
            ("pk".to_owned(), AttributeValue::S("ORG#a".to_owned())),
            ("html".to_owned(), AttributeValue::S("x".repeat(100))),
        ]);
        assert_eq!(item_bytes(&item), 2 + 5 + 4 + 100);
        let big = HashMap::from([(
            "html".to_owned(),
            AttributeValue::S("x".repeat(DYNAMODB_MAX_ITEM_BYTES)),
        )]);
        assert!(oversized(&big).unwrap().starts_with("ValidationException"));
    }
}
