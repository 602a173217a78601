//! Reports and report schedules.
//!
//! | item | `pk` / `sk` | indexes |
//! |---|---|---|
//! | report | `ORG#<org>` / `REPORT#<ulid>` | `GSI1` `REPORT` / `<ulid>`: every organization's reports by age, for the retention cleanup |
//! | schedule | `ORG#<org>` / `RSCHED#<ulid>` | |
//!
//! A deleted report keeps its item (audit) until the cleanup purges it with the others
//! past retention; its S3 object goes at once.

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use chrono::{DateTime, Utc};

use super::{Item, PartitionKey, StoreError, get_live, is_condition_failure, paged_query, s};
use crate::aws::DynamoDbClient;
use crate::domain::{OrgId, RecordId};
use crate::pagination::{Cursor, PageRequest};
use crate::reports::{Report, ReportSchedule, ReportStatus};

#[derive(Debug, Clone)]
pub struct ReportStore {
    dynamodb: DynamoDbClient,
    table: String,
}

/// A report past retention: enough to delete its object and item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredReport {
    pub org: String,
    pub id: String,
    pub key: String,
}

fn org_pk(org: &OrgId) -> String {
    format!("ORG#{org}")
}

fn report_sk(id: &str) -> String {
    format!("REPORT#{id}")
}

fn schedule_sk(id: &str) -> String {
    format!("RSCHED#{id}")
}

fn decode_report(item: Item) -> Result<Report, StoreError> {
    Ok(serde_dynamo::from_item(item).context("malformed report item")?)
}

fn decode_schedule(item: Item) -> Result<ReportSchedule, StoreError> {
    Ok(serde_dynamo::from_item(item).context("malformed report schedule item")?)
}

/// One conditional update of a report.
struct ReportUpdate<'a> {
    expression: &'a str,
    condition: &'a str,
    names: Vec<(&'a str, &'a str)>,
    values: Vec<(&'a str, AttributeValue)>,
}

impl ReportStore {
    pub fn new(dynamodb: DynamoDbClient, table: impl Into<String>) -> Self {
        Self {
            dynamodb,
            table: table.into(),
        }
    }

    /// # Errors
    /// Storage failures only.
    pub async fn create(&self, report: &Report) -> Result<(), StoreError> {
        let mut item: Item = serde_dynamo::to_item(report).context("encoding report")?;
        item.insert("pk".into(), s(org_pk(&report.org_id)));
        item.insert("sk".into(), s(report_sk(&report.id)));
        item.insert("entity".into(), s("report"));
        item.insert("gsi1pk".into(), s("REPORT"));
        item.insert("gsi1sk".into(), s(&report.id));
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .context("PutItem report")?;
        Ok(())
    }

    /// # Errors
    /// [`StoreError::NotFound`] when missing, deleted or another organization's.
    pub async fn get(&self, org: &OrgId, id: RecordId) -> Result<Report, StoreError> {
        let item = get_live(
            &self.dynamodb,
            &self.table,
            org_pk(org),
            report_sk(&id.to_string()),
            "report",
        )
        .await?;
        decode_report(item)
    }

    /// An organization's live reports, newest first.
    ///
    /// # Errors
    /// [`StoreError::InvalidCursor`] for a cursor of another partition.
    pub async fn list(
        &self,
        org: &OrgId,
        page: &PageRequest,
    ) -> Result<(Vec<Report>, Option<Cursor>), StoreError> {
        let partition = org_pk(org);
        let request = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .filter_expression("attribute_not_exists(deleted_at)")
            .expression_attribute_values(":pk", s(&partition))
            .expression_attribute_values(":prefix", s("REPORT#"))
            .scan_index_forward(false);
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
        Ok((
            items
                .into_iter()
                .map(decode_report)
                .collect::<Result<_, _>>()?,
            next,
        ))
    }

    /// Applies an update if its condition holds; the record after it, or `None`.
    async fn update(
        &self,
        org: &OrgId,
        id: &str,
        update: ReportUpdate<'_>,
    ) -> Result<Option<Report>, StoreError> {
        let mut request = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(report_sk(id)))
            .update_expression(update.expression)
            .condition_expression(format!(
                "attribute_exists(pk) AND attribute_not_exists(deleted_at) AND ({})",
                update.condition
            ))
            .expression_attribute_names("#status", "status")
            .return_values(ReturnValue::AllNew);
        for (name, attribute) in update.names {
            request = request.expression_attribute_names(name, attribute);
        }
        for (name, value) in update.values {
            request = request.expression_attribute_values(name, value);
        }
        match request.send().await {
            Ok(output) => Ok(Some(decode_report(output.attributes.unwrap_or_default())?)),
            Err(error) if is_condition_failure(&error) => Ok(None),
            Err(error) => Err(anyhow::Error::new(error)
                .context("UpdateItem report")
                .into()),
        }
    }

    /// Takes a report for generation: `queued`, or `generating` whose previous claim lapsed
    /// (its worker died). `None` when another delivery has it or it moved on.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn claim_generation(
        &self,
        org: &OrgId,
        id: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<Option<Report>, StoreError> {
        self.update(
            org,
            id,
            ReportUpdate {
                expression: "SET #status = :generating, claim_until = :lease, updated_at = :now",
                condition: "#status = :queued OR (#status = :generating AND claim_until < :epoch)",
                names: vec![],
                values: vec![
                    (":generating", s("generating")),
                    (":queued", s("queued")),
                    (
                        ":lease",
                        AttributeValue::N((now + lease).timestamp().to_string()),
                    ),
                    (":epoch", AttributeValue::N(now.timestamp().to_string())),
                    (":now", s(now.to_rfc3339())),
                ],
            },
        )
        .await
    }

    /// Gives a failed generation back (`generating` → `queued`), so the message's retry can
    /// claim it again instead of waiting out the lease.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn release_generation(&self, org: &OrgId, id: &str) -> Result<(), StoreError> {
        self.update(
            org,
            id,
            ReportUpdate {
                expression: "SET #status = :queued REMOVE claim_until",
                condition: "#status = :generating",
                names: vec![],
                values: vec![(":queued", s("queued")), (":generating", s("generating"))],
            },
        )
        .await?;
        Ok(())
    }

    /// `generating` → `generated`: the file is in S3.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn mark_generated(
        &self,
        org: &OrgId,
        id: &str,
        rows: u64,
        bytes: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<Report>, StoreError> {
        self.update(
            org,
            id,
            ReportUpdate {
                expression: "SET #status = :generated, #rows = :rows, #bytes = :bytes, updated_at = :now REMOVE claim_until",
                condition: "#status = :generating",
                names: vec![("#rows", "rows"), ("#bytes", "bytes")],
                values: vec![
                    (":generated", s("generated")),
                    (":generating", s("generating")),
                    (":rows", AttributeValue::N(rows.to_string())),
                    (":bytes", AttributeValue::N(bytes.to_string())),
                    (":now", s(now.to_rfc3339())),
                ],
            },
        )
        .await
    }

    /// `generated` → `ready` (idempotent: a report already `ready` is returned as it is).
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn mark_ready(
        &self,
        org: &OrgId,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Report>, StoreError> {
        self.update(
            org,
            id,
            ReportUpdate {
                expression: "SET #status = :ready, ready_at = if_not_exists(ready_at, :now), updated_at = :now",
                condition: "#status = :generated OR #status = :ready",
                names: vec![],
                values: vec![
                    (":ready", s("ready")),
                    (":generated", s("generated")),
                    (":now", s(now.to_rfc3339())),
                ],
            },
        )
        .await
    }

    /// Records that the schedule's recipients are being emailed; `false` when an earlier
    /// delivery of the message already did, so a link is never mailed twice.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn claim_notification(
        &self,
        org: &OrgId,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .update(
                org,
                id,
                ReportUpdate {
                    expression: "SET notified_at = :now",
                    condition: "attribute_not_exists(notified_at) AND #status = :ready",
                    names: vec![],
                    values: vec![(":now", s(now.to_rfc3339())), (":ready", s("ready"))],
                },
            )
            .await?
            .is_some())
    }

    /// Undoes [`Self::claim_notification`] after the emails could not be queued (the
    /// message's retry tries again).
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn release_notification(&self, org: &OrgId, id: &str) -> Result<(), StoreError> {
        self.update(
            org,
            id,
            ReportUpdate {
                expression: "REMOVE notified_at",
                condition: "#status = :ready",
                names: vec![],
                values: vec![(":ready", s("ready"))],
            },
        )
        .await?;
        Ok(())
    }

    /// Records a failure (never over a `ready` report).
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn mark_failed(
        &self,
        org: &OrgId,
        id: &str,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Report>, StoreError> {
        self.update(
            org,
            id,
            ReportUpdate {
                expression: "SET #status = :failed, #error = :error, updated_at = :now REMOVE claim_until",
                condition: "#status <> :ready",
                names: vec![("#error", "error")],
                values: vec![
                    (":failed", s(ReportStatus::Failed.as_str())),
                    (":ready", s("ready")),
                    (":error", s(error)),
                    (":now", s(now.to_rfc3339())),
                ],
            },
        )
        .await
    }

    /// Soft-deletes a report and returns it (the caller deletes its object).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when missing or already deleted.
    pub async fn delete(
        &self,
        org: &OrgId,
        id: RecordId,
        now: DateTime<Utc>,
    ) -> Result<Report, StoreError> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(report_sk(&id.to_string())))
            .update_expression("SET deleted_at = :now")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(deleted_at)")
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => decode_report(output.attributes.unwrap_or_default()),
            Err(error) if is_condition_failure(&error) => Err(StoreError::NotFound),
            Err(error) => Err(anyhow::Error::new(error)
                .context("UpdateItem report delete")
                .into()),
        }
    }

    /// Reports of every organization created before `cutoff` (deleted ones too), oldest
    /// first, one page at a time: pass the returned position back to continue.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn created_before(
        &self,
        cutoff: DateTime<Utc>,
        after: Option<Item>,
    ) -> Result<(Vec<ExpiredReport>, Option<Item>), StoreError> {
        let output = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .index_name("GSI1")
            .key_condition_expression("gsi1pk = :pk AND gsi1sk < :cutoff")
            .expression_attribute_values(":pk", s("REPORT"))
            .expression_attribute_values(":cutoff", s(RecordId::lowest_at(cutoff).to_string()))
            .projection_expression("org_id, id, #key")
            .expression_attribute_names("#key", "key")
            .set_exclusive_start_key(after)
            .limit(100)
            .send()
            .await
            .context("Query reports past retention")?;
        let text = |item: &Item, name: &str| match item.get(name) {
            Some(AttributeValue::S(value)) => value.clone(),
            _ => String::new(),
        };
        let reports = output
            .items
            .unwrap_or_default()
            .iter()
            .map(|item| ExpiredReport {
                org: text(item, "org_id"),
                id: text(item, "id"),
                key: text(item, "key"),
            })
            .collect();
        Ok((reports, output.last_evaluated_key))
    }

    /// Removes a report's item for good (retention).
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn purge(&self, org: &str, id: &str) -> Result<(), StoreError> {
        self.dynamodb
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(format!("ORG#{org}")))
            .key("sk", s(report_sk(id)))
            .send()
            .await
            .context("DeleteItem report")?;
        Ok(())
    }

    /// # Errors
    /// Storage failures only.
    pub async fn create_schedule(&self, schedule: &ReportSchedule) -> Result<(), StoreError> {
        let mut item: Item = serde_dynamo::to_item(schedule).context("encoding schedule")?;
        item.insert("pk".into(), s(org_pk(&schedule.org_id)));
        item.insert("sk".into(), s(schedule_sk(&schedule.id)));
        item.insert("entity".into(), s("report_schedule"));
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .context("PutItem report schedule")?;
        Ok(())
    }

    /// # Errors
    /// [`StoreError::NotFound`] when missing, deleted or another organization's.
    pub async fn get_schedule(&self, org: &OrgId, id: &str) -> Result<ReportSchedule, StoreError> {
        let item = get_live(
            &self.dynamodb,
            &self.table,
            org_pk(org),
            schedule_sk(id),
            "report schedule",
        )
        .await?;
        decode_schedule(item)
    }

    /// An organization's live schedules, newest first.
    ///
    /// # Errors
    /// [`StoreError::InvalidCursor`] for a cursor of another partition.
    pub async fn list_schedules(
        &self,
        org: &OrgId,
        page: &PageRequest,
    ) -> Result<(Vec<ReportSchedule>, Option<Cursor>), StoreError> {
        let partition = org_pk(org);
        let request = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .filter_expression("attribute_not_exists(deleted_at)")
            .expression_attribute_values(":pk", s(&partition))
            .expression_attribute_values(":prefix", s("RSCHED#"))
            .scan_index_forward(false);
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
        Ok((
            items
                .into_iter()
                .map(decode_schedule)
                .collect::<Result<_, _>>()?,
            next,
        ))
    }

    /// Soft-deletes a schedule and returns it (the caller deletes its Scheduler schedule).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when missing or already deleted.
    pub async fn delete_schedule(
        &self,
        org: &OrgId,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReportSchedule, StoreError> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(schedule_sk(id)))
            .update_expression("SET deleted_at = :now")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(deleted_at)")
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => decode_schedule(output.attributes.unwrap_or_default()),
            Err(error) if is_condition_failure(&error) => Err(StoreError::NotFound),
            Err(error) => Err(anyhow::Error::new(error)
                .context("UpdateItem report schedule delete")
                .into()),
        }
    }
}
