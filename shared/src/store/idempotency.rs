//! `Idempotency-Key` records (SPEC §3): the same key with the same body replays the first
//! response; with a different body answers 422; while the first is in progress, 409.
//! Keys belong to the organization (part of the item key), live 24 h, and an in-progress
//! claim expires after a minute so a crashed request does not block its key for a day.

use anyhow::Context;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Duration, Utc};

use super::{StoreError, s};
use crate::aws::DynamoDbClient;
use crate::domain::OrgId;

pub const KEY_LIFETIME: Duration = Duration::hours(24);
const IN_PROGRESS_LEASE: Duration = Duration::seconds(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyStart {
    /// First use: handle the request, then [`IdempotencyStore::complete`].
    New,
    /// Seen and finished: answer this again.
    Replay {
        status: u16,
        body: String,
    },
    InProgress,
    /// Same key, different request.
    Mismatch,
}

#[derive(Debug, Clone)]
pub struct IdempotencyStore {
    dynamodb: DynamoDbClient,
    table: String,
}

fn key(org: &OrgId, scope: &str, key: &str) -> (AttributeValue, AttributeValue) {
    (s(format!("ORG#{org}")), s(format!("IDEM#{scope}#{key}")))
}

impl IdempotencyStore {
    pub fn new(dynamodb: DynamoDbClient, table: impl Into<String>) -> Self {
        Self {
            dynamodb,
            table: table.into(),
        }
    }

    /// Claims `idempotency_key` for a request whose canonical form hashes to `request_hash`.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn begin(
        &self,
        org: &OrgId,
        scope: &str,
        idempotency_key: &str,
        request_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<IdempotencyStart, StoreError> {
        let (pk, sk) = key(org, scope, idempotency_key);
        let result = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", pk.clone())
            .item("sk", sk.clone())
            .item("entity", s("idempotency"))
            .item("request_hash", s(request_hash))
            .item("state", s("in_progress"))
            .item("lease_until", AttributeValue::N((now + IN_PROGRESS_LEASE).timestamp().to_string()))
            .item("expires_at", AttributeValue::N((now + KEY_LIFETIME).timestamp().to_string()))
            // A key is free when unseen, past its lifetime (TTL deletes lazily), or held by a
            // request that died without finishing.
            .condition_expression(
                "attribute_not_exists(pk) OR expires_at < :now OR (#state = :in_progress AND lease_until < :now)",
            )
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":now", AttributeValue::N(now.timestamp().to_string()))
            .expression_attribute_values(":in_progress", s("in_progress"))
            .send()
            .await;
        match result {
            Ok(_) => return Ok(IdempotencyStart::New),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) => {}
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context("PutItem idempotency")
                    .into());
            }
        }
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .consistent_read(true)
            .send()
            .await
            .context("GetItem idempotency")?
            .item
            .ok_or_else(|| {
                StoreError::Conflict("idempotency key changed concurrently; retry".to_owned())
            })?;
        let text = |name: &str| match item.get(name) {
            Some(AttributeValue::S(value)) => value.clone(),
            _ => String::new(),
        };
        // A key still held answers 409 whatever the body: the first request decides.
        if text("state") != "done" {
            return Ok(IdempotencyStart::InProgress);
        }
        if text("request_hash") != request_hash {
            return Ok(IdempotencyStart::Mismatch);
        }
        let status = match item.get("status_code") {
            Some(AttributeValue::N(n)) => n.parse().unwrap_or(200),
            _ => 200,
        };
        Ok(IdempotencyStart::Replay {
            status,
            body: text("response_body"),
        })
    }

    /// Records the response to replay.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn complete(
        &self,
        org: &OrgId,
        scope: &str,
        idempotency_key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        let (pk, sk) = key(org, scope, idempotency_key);
        self.dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .update_expression("SET #state = :done, status_code = :status, response_body = :body")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":done", s("done"))
            .expression_attribute_values(":status", AttributeValue::N(status.to_string()))
            .expression_attribute_values(":body", s(body))
            .send()
            .await
            .context("UpdateItem idempotency complete")?;
        Ok(())
    }

    /// Frees the key after a failure that should not be replayed (a 5xx), so a retry runs.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn abandon(
        &self,
        org: &OrgId,
        scope: &str,
        idempotency_key: &str,
    ) -> Result<(), StoreError> {
        let (pk, sk) = key(org, scope, idempotency_key);
        self.dynamodb
            .delete_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .send()
            .await
            .context("DeleteItem idempotency")?;
        Ok(())
    }
}
