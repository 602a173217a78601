//! The template store: templates of every kind in the Herald table.

use anyhow::Context;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Item, PartitionKey, StoreError, get_live, paged_query, s};
use crate::aws::DynamoDbClient;
use crate::domain::template::{Template, TemplateContent, TemplateKind};
use crate::domain::{OrgId, RecordId};
use crate::pagination::{Cursor, PageRequest};

#[derive(Debug, Clone)]
pub struct TemplateStore {
    dynamodb: DynamoDbClient,
    table: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TemplateOrder {
    #[default]
    NewestFirst,
    OldestFirst,
    NameAscending,
    NameDescending,
}

impl TemplateOrder {
    /// The `ordering` query parameter: `-created_at` (default), `created_at`, `name`, `-name`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "-created_at" => Some(Self::NewestFirst),
            "created_at" => Some(Self::OldestFirst),
            "name" => Some(Self::NameAscending),
            "-name" => Some(Self::NameDescending),
            _ => None,
        }
    }

    pub fn by_name(self) -> bool {
        matches!(self, Self::NameAscending | Self::NameDescending)
    }
}

/// A list request. `org: None` lists every organization (superusers only; the caller checks).
#[derive(Debug, Clone)]
pub struct TemplateListQuery {
    pub kind: TemplateKind,
    pub org: Option<OrgId>,
    pub search: Option<String>,
    pub is_active: Option<bool>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub order: TemplateOrder,
}

/// The stored shape of a template.
#[derive(Debug, Serialize, Deserialize)]
struct TemplateItem {
    pk: String,
    sk: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gsi1pk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gsi1sk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gsi2pk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gsi2sk: Option<String>,
    entity: String,
    id: String,
    org_id: String,
    kind: TemplateKind,
    name: String,
    is_active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    variables: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_urls: Option<Vec<String>>,
    search: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleted_at: Option<DateTime<Utc>>,
    version: u64,
}

fn org_pk(org: &OrgId) -> String {
    format!("ORG#{org}")
}

fn template_sk(kind: TemplateKind, id: &str) -> String {
    format!("TPL#{}#{id}", kind.as_str())
}

fn kind_pk(kind: TemplateKind) -> String {
    format!("TPL#{}", kind.as_str())
}

fn name_pk(org: &OrgId, kind: TemplateKind) -> String {
    format!("ORG#{org}#TPL#{}", kind.as_str())
}

impl TemplateItem {
    fn from_template(template: &Template) -> Self {
        let id = template.id.to_string();
        let (subject, html, text, variables, body, media_urls) = match &template.content {
            TemplateContent::Email {
                subject,
                html,
                text,
                variables,
            } => (
                Some(subject.clone()),
                html.clone(),
                text.clone(),
                Some(variables.clone()),
                None,
                None,
            ),
            TemplateContent::Sms { body } => (None, None, None, None, Some(body.clone()), None),
            TemplateContent::Message { body, media_urls } => (
                None,
                None,
                None,
                None,
                Some(body.clone()),
                Some(media_urls.clone()),
            ),
        };
        let kind = template.kind();
        Self {
            pk: org_pk(&template.org),
            sk: template_sk(kind, &id),
            gsi1pk: Some(kind_pk(kind)),
            gsi1sk: Some(id.clone()),
            gsi2pk: Some(name_pk(&template.org, kind)),
            gsi2sk: Some(format!("{}#{id}", template.name.to_lowercase())),
            entity: "template".to_owned(),
            org_id: template.org.to_string(),
            kind,
            name: template.name.clone(),
            is_active: template.is_active,
            subject,
            html,
            text,
            variables,
            body,
            media_urls,
            search: template.search_text(),
            created_at: template.created_at,
            updated_at: template.updated_at,
            deleted_at: None,
            version: template.version,
            id,
        }
    }

    fn into_template(self) -> anyhow::Result<Template> {
        let content = match self.kind {
            TemplateKind::Email => TemplateContent::Email {
                subject: self.subject.unwrap_or_default(),
                html: self.html,
                text: self.text,
                variables: self.variables.unwrap_or_default(),
            },
            TemplateKind::Sms => TemplateContent::Sms {
                body: self.body.unwrap_or_default(),
            },
            TemplateKind::Message => TemplateContent::Message {
                body: self.body.unwrap_or_default(),
                media_urls: self.media_urls.unwrap_or_default(),
            },
        };
        Ok(Template {
            id: RecordId::parse(&self.id).context("stored template id is not a ULID")?,
            org: OrgId::parse(&self.org_id).map_err(anyhow::Error::msg)?,
            name: self.name,
            is_active: self.is_active,
            content,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        })
    }
}

fn decode(item: Item) -> Result<Template, StoreError> {
    let item: TemplateItem = serde_dynamo::from_item(item).context("malformed template item")?;
    Ok(item.into_template()?)
}

impl TemplateStore {
    pub fn new(dynamodb: DynamoDbClient, table: impl Into<String>) -> Self {
        Self {
            dynamodb,
            table: table.into(),
        }
    }

    /// Stores a new template.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the id is taken (never for fresh ULIDs).
    pub async fn create(&self, template: &Template) -> Result<(), StoreError> {
        let item = serde_dynamo::to_item(TemplateItem::from_template(template))
            .context("encoding template")?;
        let result = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::Conflict(
                    "a template with this id exists".to_owned(),
                ))
            }
            Err(error) => Err(anyhow::Error::new(error).context("PutItem template").into()),
        }
    }

    /// Fetches a live (not deleted) template of `org`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when it is missing, deleted or another organization's.
    pub async fn get(
        &self,
        org: &OrgId,
        kind: TemplateKind,
        id: RecordId,
    ) -> Result<Template, StoreError> {
        let item = get_live(
            &self.dynamodb,
            &self.table,
            org_pk(org),
            template_sk(kind, &id.to_string()),
            "template",
        )
        .await?;
        decode(item)
    }

    /// Finds which organization owns a template (superuser access by id).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when no live template has this id.
    pub async fn owner_of(&self, kind: TemplateKind, id: RecordId) -> Result<OrgId, StoreError> {
        let output = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .index_name("GSI1")
            .key_condition_expression("gsi1pk = :pk AND gsi1sk = :sk")
            .expression_attribute_values(":pk", s(kind_pk(kind)))
            .expression_attribute_values(":sk", s(id.to_string()))
            .send()
            .await
            .context("Query GSI1 template owner")?;
        let item = output
            .items
            .unwrap_or_default()
            .into_iter()
            .next()
            .ok_or(StoreError::NotFound)?;
        Ok(decode(item)?.org)
    }

    /// Replaces a template if it is still at `expected_version` and not deleted.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when it was deleted meanwhile; [`StoreError::Conflict`] when
    /// someone else changed it first.
    pub async fn replace(
        &self,
        template: &Template,
        expected_version: u64,
    ) -> Result<(), StoreError> {
        let item = serde_dynamo::to_item(TemplateItem::from_template(template))
            .context("encoding template")?;
        let result = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(deleted_at) AND version = :v",
            )
            .expression_attribute_values(":v", AttributeValue::N(expected_version.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                match self.get(&template.org, template.kind(), template.id).await {
                    Ok(_) => Err(StoreError::Conflict(
                        "the template was changed by another request; reload and retry".to_owned(),
                    )),
                    Err(other) => Err(other),
                }
            }
            Err(error) => Err(anyhow::Error::new(error)
                .context("PutItem template replace")
                .into()),
        }
    }

    /// Soft-deletes a template: it keeps its base keys and fields for audit, gains
    /// `deleted_at` and leaves the secondary indexes.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when it is missing or already deleted.
    pub async fn delete(
        &self,
        org: &OrgId,
        kind: TemplateKind,
        id: RecordId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(template_sk(kind, &id.to_string())))
            .update_expression("SET deleted_at = :at REMOVE gsi1pk, gsi1sk, gsi2pk, gsi2sk")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(deleted_at)")
            .expression_attribute_values(":at", s(at.to_rfc3339()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::NotFound)
            }
            Err(error) => Err(anyhow::Error::new(error)
                .context("UpdateItem template delete")
                .into()),
        }
    }

    /// Lists templates matching `query`, one page at a time. Returns the page and, when more
    /// may follow, the position to resume after.
    ///
    /// # Errors
    /// [`StoreError::InvalidCursor`] for a cursor that does not belong to this query's partition.
    pub async fn list(
        &self,
        query: &TemplateListQuery,
        page: &PageRequest,
    ) -> Result<(Vec<Template>, Option<Cursor>), StoreError> {
        let (lowest, highest) = RecordId::range(query.created_after, query.created_before);
        let kind = query.kind;

        let mut request = self.dynamodb.query().table_name(&self.table);
        let mut filters = vec!["attribute_not_exists(deleted_at)".to_owned()];
        let (partition_attr, partition_value, key_names): (&str, String, &[&str]) =
            match (&query.org, query.order.by_name()) {
                (Some(org), false) => {
                    request = request
                        .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                        .expression_attribute_values(":lo", s(template_sk(kind, &lowest)))
                        .expression_attribute_values(":hi", s(template_sk(kind, &highest)));
                    ("pk", org_pk(org), &["pk", "sk"])
                }
                (None, false) => {
                    request = request
                        .index_name("GSI1")
                        .key_condition_expression("gsi1pk = :pk AND gsi1sk BETWEEN :lo AND :hi")
                        .expression_attribute_values(":lo", s(lowest))
                        .expression_attribute_values(":hi", s(highest));
                    ("gsi1pk", kind_pk(kind), &["pk", "sk", "gsi1pk", "gsi1sk"])
                }
                (Some(org), true) => {
                    request = request
                        .index_name("GSI2")
                        .key_condition_expression("gsi2pk = :pk");
                    if query.created_after.is_some() || query.created_before.is_some() {
                        filters.push("id BETWEEN :lo AND :hi".to_owned());
                        request = request
                            .expression_attribute_values(":lo", s(lowest))
                            .expression_attribute_values(":hi", s(highest));
                    }
                    (
                        "gsi2pk",
                        name_pk(org, kind),
                        &["pk", "sk", "gsi2pk", "gsi2sk"],
                    )
                }
                (None, true) => {
                    return Err(anyhow::anyhow!("ordering by name needs an organization").into());
                }
            };
        request = request.expression_attribute_values(":pk", s(partition_value.clone()));
        if let Some(active) = query.is_active {
            filters.push("is_active = :active".to_owned());
            request = request.expression_attribute_values(":active", AttributeValue::Bool(active));
        }
        if let Some(search) = query
            .search
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            filters.push("contains(#search, :search)".to_owned());
            request = request
                .expression_attribute_names("#search", "search")
                .expression_attribute_values(":search", s(search.to_lowercase()));
        }
        let ascending = matches!(
            query.order,
            TemplateOrder::OldestFirst | TemplateOrder::NameAscending
        );
        request = request
            .filter_expression(filters.join(" AND "))
            .scan_index_forward(ascending);

        let (items, next) = paged_query(
            request,
            page,
            PartitionKey {
                attribute: partition_attr,
                value: &partition_value,
            },
            key_names,
        )
        .await?;
        Ok((
            items.into_iter().map(decode).collect::<Result<_, _>>()?,
            next,
        ))
    }
}
