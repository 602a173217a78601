//! Bulk items ([`crate::bulk`]): what a bulk send asked for and how far its records are made.
//!
//! | item | `pk` / `sk` |
//! |---|---|
//! | bulk | `ORG#<org>` / `BULK#<ulid>` |
//!
//! One write when the API accepts the bulk and one per page of a phonebook fan-out: the
//! statuses of its records are counted from the records themselves
//! ([`BulkStore::status_counts`]), never kept on this item.

use std::collections::BTreeMap;

use anyhow::Context;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use super::shards::bulk_status_counts;
use super::{Item, StoreError, get_live, is_condition_failure, s};
use crate::aws::DynamoDbClient;
use crate::bulk::{Bulk, BulkChannel};
use crate::domain::OrgId;

#[derive(Debug, Clone)]
pub struct BulkStore {
    dynamodb: DynamoDbClient,
    table: String,
}

fn key(org: &OrgId, id: &str) -> (String, String) {
    (format!("ORG#{org}"), format!("BULK#{id}"))
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

impl BulkStore {
    pub fn new(dynamodb: DynamoDbClient, table: impl Into<String>) -> Self {
        Self {
            dynamodb,
            table: table.into(),
        }
    }

    /// # Errors
    /// Storage failures only (bulk ids are fresh).
    pub async fn create(&self, bulk: &Bulk) -> Result<(), StoreError> {
        let mut item: Item = serde_dynamo::to_item(bulk).context("encoding bulk")?;
        let (pk, sk) = key(&bulk.org_id, &bulk.id);
        item.insert("pk".into(), s(pk));
        item.insert("sk".into(), s(sk));
        item.insert("entity".into(), s("bulk"));
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .context("PutItem bulk")?;
        Ok(())
    }

    /// A bulk of `channel`, read consistently (the fan-out resumes from what it says).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when missing, another organization's or another channel's.
    pub async fn get(
        &self,
        org: &OrgId,
        channel: BulkChannel,
        id: &str,
    ) -> Result<Bulk, StoreError> {
        let (pk, sk) = key(org, id);
        let item = get_live(&self.dynamodb, &self.table, pk, sk, "bulk").await?;
        let bulk: Bulk = serde_dynamo::from_item(item).context("malformed bulk")?;
        if bulk.channel != channel {
            return Err(StoreError::NotFound);
        }
        Ok(bulk)
    }

    /// Records that the records of every contact through `number` are made, `created` in
    /// all. Forward only: `false` when a job ahead of this one recorded a later number.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn checkpoint(
        &self,
        bulk: &Bulk,
        number: &str,
        created: u64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (pk, sk) = key(&bulk.org_id, &bulk.id);
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression("SET done_through = :number, created = :created, updated_at = :now")
            .condition_expression(
                "attribute_exists(pk) AND (attribute_not_exists(done_through) OR done_through < :number)",
            )
            .expression_attribute_values(":number", s(number))
            .expression_attribute_values(":created", n(created))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if is_condition_failure(&error) => Ok(false),
            Err(error) => Err(anyhow::Error::new(error)
                .context("UpdateItem bulk checkpoint")
                .into()),
        }
    }

    /// Marks every record of the bulk made: `created` of them, which is now its total.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn finish(
        &self,
        bulk: &Bulk,
        created: u64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (pk, sk) = key(&bulk.org_id, &bulk.id);
        self.dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression(
                "SET #state = :created_state, #total = :created, created = :created, updated_at = :now",
            )
            .condition_expression("attribute_exists(pk)")
            // Both are DynamoDB reserved words.
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#total", "total")
            .expression_attribute_values(":created_state", s("created"))
            .expression_attribute_values(":created", n(created))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .send()
            .await
            .context("UpdateItem bulk finished")?;
        Ok(())
    }

    /// How many of the bulk's records are in each status.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn status_counts(&self, bulk: &Bulk) -> Result<BTreeMap<String, u64>, StoreError> {
        let kind = match bulk.channel {
            BulkChannel::Email => "EMAIL",
            BulkChannel::Sms => "SMS",
        };
        bulk_status_counts(
            &self.dynamodb,
            &self.table,
            kind,
            &bulk.org_id,
            &bulk.id,
            &bulk.span(),
        )
        .await
    }
}
