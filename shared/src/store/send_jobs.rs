//! Send jobs: a message's records are created in the send job they are enqueued in (their
//! `send_job`), and a delivery claims the job in one conditional write instead of claiming
//! each record (issue 20 §5). Every message of a job serializes on that claim; a record
//! still naming its job cannot be claimed on its own, and is taken out of the job only while
//! no delivery holds it ([`leave_idle_job`], for the sweep).
//!
//! | item | `pk` / `sk` |
//! |---|---|
//! | send job claim | `SENDJOB#<org>#<job>` / `SENDJOB` (`claim_until`; expires a day on) |

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, TransactWriteItem, Update};
use chrono::{DateTime, Utc};

use super::{StoreError, cancelled_by_a_condition, is_condition_failure, s};
use crate::domain::OrgId;

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn job_pk(org: &OrgId, job: &str) -> String {
    format!("SENDJOB#{org}#{job}")
}

const JOB_SK: &str = "SENDJOB";

/// Claims send job `job`: it is new, or the delivery that held it stopped (its lease ran
/// out). `false`: another delivery holds it now.
pub(crate) async fn claim(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    org: &OrgId,
    job: &str,
    now: DateTime<Utc>,
    lease: chrono::Duration,
) -> Result<bool, StoreError> {
    let result = dynamodb
        .put_item()
        .table_name(table)
        .item("pk", s(job_pk(org, job)))
        .item("sk", s(JOB_SK))
        .item("claim_until", n((now + lease).timestamp()))
        .item(
            "expires_at",
            n((now + chrono::Duration::days(1)).timestamp()),
        )
        .condition_expression("attribute_not_exists(pk) OR claim_until < :epoch")
        .expression_attribute_values(":epoch", n(now.timestamp()))
        .send()
        .await;
    match result {
        Ok(_) => Ok(true),
        Err(error) if is_condition_failure(&error) => Ok(false),
        Err(error) => Err(anyhow::Error::new(error)
            .context("PutItem send job claim")
            .into()),
    }
}

/// Lets go of send job `job` early, so the next message of the job takes it at once.
pub(crate) async fn release(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    org: &OrgId,
    job: &str,
) -> Result<(), StoreError> {
    dynamodb
        .delete_item()
        .table_name(table)
        .key("pk", s(job_pk(org, job)))
        .key("sk", s(JOB_SK))
        .send()
        .await
        .context("DeleteItem send job claim")?;
    Ok(())
}

/// Takes the record at `key` out of the send job it waits in, so the sweep can enqueue it
/// on its own, but only while no delivery holds that job: the job's claim is checked and
/// the record's job removed in one transaction. `false`: a delivery holds the job (it may
/// be sending the record now). `true` also when the record names no job.
pub(crate) async fn leave_idle_job(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    org: &OrgId,
    key: (String, String),
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let (pk, sk) = key;
    let item = dynamodb
        .get_item()
        .table_name(table)
        .key("pk", s(&pk))
        .key("sk", s(&sk))
        .projection_expression("send_job")
        .consistent_read(true)
        .send()
        .await
        .context("GetItem send job of a record")?
        .item;
    let Some(job) = item
        .as_ref()
        .and_then(|i| i.get("send_job"))
        .and_then(|j| j.as_s().ok())
    else {
        return Ok(true);
    };
    let idle = ConditionCheck::builder()
        .table_name(table)
        .key("pk", s(job_pk(org, job)))
        .key("sk", s(JOB_SK))
        .condition_expression("attribute_not_exists(pk) OR claim_until < :epoch")
        .expression_attribute_values(":epoch", n(now.timestamp()))
        .build()
        .context("ConditionCheck send job")?;
    let leave = Update::builder()
        .table_name(table)
        .key("pk", s(pk))
        .key("sk", s(sk))
        .update_expression("REMOVE send_job")
        .condition_expression("send_job = :job")
        .expression_attribute_values(":job", s(job))
        .build()
        .context("Update record send job")?;
    let result = dynamodb
        .transact_write_items()
        .transact_items(TransactWriteItem::builder().condition_check(idle).build())
        .transact_items(TransactWriteItem::builder().update(leave).build())
        .send()
        .await;
    match result {
        Ok(_) => Ok(true),
        Err(error) if cancelled_by_a_condition(&error) => Ok(false),
        Err(error) => Err(anyhow::Error::new(error)
            .context("TransactWriteItems record out of its send job")
            .into()),
    }
}

/// How a delivery took a record for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Claimed itself: `sending` under this delivery's lease.
    Claimed,
    /// Still `queued` in this send job, which the delivery holds.
    InJob(String),
}
