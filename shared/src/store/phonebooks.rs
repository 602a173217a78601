//! Phonebooks and their contacts (SPEC §4 "SMS").
//!
//! | item | `pk` / `sk` |
//! |---|---|
//! | phonebook | `ORG#<org>` / `PB#<ulid>` |
//! | contact | `ORG#<org>` / `PBC#<phonebook ulid>#<e164>` (one per number: a re-import updates it) |
//! | import of more contacts than one call writes | `ORG#<org>` / `PBIMPORT#<ulid>` |
//!
//! A phonebook's contacts share one partition key, and DynamoDB serves one partition key at
//! most 1,000 write units a second (Developer Guide, "Best practices for designing and using
//! partition keys effectively"): 100,000 contacts take at least 100 s, far past API Gateway's
//! 29 s. So a large import is written by the bulk worker in chunks ([`Import`]), each chunk
//! idempotent (upserts by number) and marked done in a set on the import item, so a
//! redelivered chunk counts once.

use std::collections::BTreeMap;

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, Select};
use chrono::{DateTime, Utc};

use super::sms::put_all;
use super::{Item, PartitionKey, StoreError, get_live, paged_query, s};
use crate::aws::DynamoDbClient;
use crate::domain::OrgId;
use crate::domain::sms_message::PhoneNumber;
use crate::pagination::{Cursor, PageRequest};

#[derive(Debug, Clone)]
pub struct PhonebookStore {
    dynamodb: DynamoDbClient,
    table: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Phonebook {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub contact_count: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contact {
    pub phone: PhoneNumber,
    #[serde(default)]
    pub name: Option<String>,
    /// Further columns of the import, usable as template variables.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
}

/// A large import in progress: how many chunks it was split into and which are written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Import {
    pub id: String,
    pub phonebook_id: String,
    /// `importing`, then `done` once every chunk is written and the phonebook recounted.
    pub state: String,
    /// Rows of the upload, the contacts accepted from them and the rows refused.
    pub rows: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub chunks: u64,
    #[serde(default)]
    pub chunks_done: u64,
    /// The phonebook's count once the import is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_count: Option<u64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn org_pk(org: &OrgId) -> String {
    format!("ORG#{org}")
}

fn contact_prefix(phonebook: &str) -> String {
    format!("PBC#{phonebook}#")
}

impl PhonebookStore {
    pub fn new(dynamodb: DynamoDbClient, table: impl Into<String>) -> Self {
        Self {
            dynamodb,
            table: table.into(),
        }
    }

    /// # Errors
    /// Storage failures only.
    pub async fn create(&self, org: &OrgId, phonebook: &Phonebook) -> Result<(), StoreError> {
        let mut item: Item = serde_dynamo::to_item(phonebook).context("encoding phonebook")?;
        item.insert("pk".into(), s(org_pk(org)));
        item.insert("sk".into(), s(format!("PB#{}", phonebook.id)));
        item.insert("entity".into(), s("phonebook"));
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .context("PutItem phonebook")?;
        Ok(())
    }

    /// # Errors
    /// [`StoreError::NotFound`] when missing, deleted or another organization's.
    pub async fn get(&self, org: &OrgId, id: &str) -> Result<Phonebook, StoreError> {
        let item = get_live(
            &self.dynamodb,
            &self.table,
            org_pk(org),
            format!("PB#{id}"),
            "phonebook",
        )
        .await?;
        Ok(serde_dynamo::from_item(item).context("malformed phonebook")?)
    }

    /// An organization's phonebooks, newest first.
    ///
    /// # Errors
    /// [`StoreError::InvalidCursor`] for a cursor of another partition.
    pub async fn list(
        &self,
        org: &OrgId,
        page: &PageRequest,
    ) -> Result<(Vec<Phonebook>, Option<Cursor>), StoreError> {
        let partition = org_pk(org);
        let request = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .filter_expression("attribute_not_exists(deleted_at)")
            .expression_attribute_values(":pk", s(&partition))
            .expression_attribute_values(":prefix", s("PB#"))
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
        let books = items
            .into_iter()
            .map(|item| serde_dynamo::from_item(item).context("malformed phonebook"))
            .collect::<Result<_, _>>()?;
        Ok((books, next))
    }

    /// Soft-deletes a phonebook; its contacts become unreachable with it.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when missing, deleted or another organization's.
    pub async fn delete(
        &self,
        org: &OrgId,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(format!("PB#{id}")))
            .update_expression("SET deleted_at = :now")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(deleted_at)")
            .expression_attribute_values(":now", s(now.to_rfc3339()))
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
                .context("UpdateItem phonebook")
                .into()),
        }
    }

    /// Adds or updates contacts (one per number), then stores the phonebook's new count.
    /// Returns the count.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn put_contacts(
        &self,
        org: &OrgId,
        phonebook: &str,
        contacts: &[Contact],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.write_contacts(org, phonebook, contacts).await?;
        self.recount(org, phonebook, now).await
    }

    /// Stores an import to be written in `import.chunks` chunks.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn create_import(&self, org: &OrgId, import: &Import) -> Result<(), StoreError> {
        let mut item: Item = serde_dynamo::to_item(import).context("encoding import")?;
        item.insert("pk".into(), s(org_pk(org)));
        item.insert("sk".into(), s(format!("PBIMPORT#{}", import.id)));
        item.insert("entity".into(), s("phonebook_import"));
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .context("PutItem import")?;
        Ok(())
    }

    /// An import of a phonebook.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when missing, another organization's or another phonebook's.
    pub async fn get_import(
        &self,
        org: &OrgId,
        phonebook: &str,
        id: &str,
    ) -> Result<Import, StoreError> {
        let item = get_live(
            &self.dynamodb,
            &self.table,
            org_pk(org),
            format!("PBIMPORT#{id}"),
            "import",
        )
        .await?;
        let import: Import = serde_dynamo::from_item(item).context("malformed import")?;
        if import.phonebook_id != phonebook {
            return Err(StoreError::NotFound);
        }
        Ok(import)
    }

    /// Writes one chunk of an import and marks it done; the chunk that completes the set
    /// recounts the phonebook and ends the import. A chunk written twice (a redelivered job)
    /// is in the set once, so it neither counts twice nor ends the import early.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn import_chunk(
        &self,
        org: &OrgId,
        import: &str,
        chunk: u32,
        phonebook: &str,
        contacts: &[Contact],
    ) -> Result<(), StoreError> {
        self.write_contacts(org, phonebook, contacts).await?;
        let output = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(format!("PBIMPORT#{import}")))
            .update_expression("ADD chunks_written :chunk")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":chunk", AttributeValue::Ns(vec![chunk.to_string()]))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .context("UpdateItem import chunk")?;
        let attributes = output.attributes.unwrap_or_default();
        let written = match attributes.get("chunks_written") {
            Some(AttributeValue::Ns(set)) => set.len() as u64,
            _ => 0,
        };
        let chunks = match attributes.get("chunks") {
            Some(AttributeValue::N(n)) => n.parse().unwrap_or(u64::MAX),
            _ => u64::MAX,
        };
        let now = Utc::now();
        let mut update = "SET chunks_done = :written, updated_at = :now".to_owned();
        let mut request = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(format!("PBIMPORT#{import}")))
            .expression_attribute_values(":written", AttributeValue::N(written.to_string()))
            .expression_attribute_values(":now", s(now.to_rfc3339()));
        if written >= chunks {
            let count = self.recount(org, phonebook, now).await?;
            update.push_str(", #state = :done, contact_count = :count");
            request = request
                .expression_attribute_names("#state", "state")
                .expression_attribute_values(":done", s("done"))
                .expression_attribute_values(":count", AttributeValue::N(count.to_string()));
        }
        request
            .update_expression(update)
            .send()
            .await
            .context("UpdateItem import progress")?;
        Ok(())
    }

    /// Adds or updates contacts (one per number).
    async fn write_contacts(
        &self,
        org: &OrgId,
        phonebook: &str,
        contacts: &[Contact],
    ) -> Result<(), StoreError> {
        let items = contacts
            .iter()
            .map(|contact| {
                let mut item: Item = serde_dynamo::to_item(contact).context("encoding contact")?;
                item.insert("pk".into(), s(org_pk(org)));
                item.insert(
                    "sk".into(),
                    s(format!("{}{}", contact_prefix(phonebook), contact.phone)),
                );
                item.insert("entity".into(), s("contact"));
                Ok(item)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        put_all(&self.dynamodb, &self.table, items).await
    }

    /// Counts the phonebook's contacts and stores the count on it.
    async fn recount(
        &self,
        org: &OrgId,
        phonebook: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let count = self.count_contacts(org, phonebook).await?;
        self.dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(format!("PB#{phonebook}")))
            .update_expression("SET contact_count = :count, updated_at = :now")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":count", AttributeValue::N(count.to_string()))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .send()
            .await
            .context("UpdateItem phonebook count")?;
        Ok(count)
    }

    async fn count_contacts(&self, org: &OrgId, phonebook: &str) -> Result<u64, StoreError> {
        let mut count = 0u64;
        let mut start = None;
        loop {
            let output = self
                .dynamodb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(org_pk(org)))
                .expression_attribute_values(":prefix", s(contact_prefix(phonebook)))
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .context("Query contact count")?;
            count += u64::try_from(output.count).unwrap_or(0);
            start = output.last_evaluated_key;
            if start.is_none() {
                return Ok(count);
            }
        }
    }

    /// One page of a phonebook's contacts, by number.
    ///
    /// # Errors
    /// [`StoreError::InvalidCursor`] for a cursor of another partition.
    pub async fn list_contacts(
        &self,
        org: &OrgId,
        phonebook: &str,
        page: &PageRequest,
    ) -> Result<(Vec<Contact>, Option<Cursor>), StoreError> {
        let partition = org_pk(org);
        let request = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(&partition))
            .expression_attribute_values(":prefix", s(contact_prefix(phonebook)));
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
        let contacts = items
            .into_iter()
            .map(|item| serde_dynamo::from_item(item).context("malformed contact"))
            .collect::<Result<_, _>>()?;
        Ok((contacts, next))
    }

    /// Up to `limit` contacts of a phonebook after the number `after` (from the first
    /// without), by number, and whether more may follow: a fan-out's page. Read
    /// consistently, so a contact imported before the page is read is in it.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn contacts_after(
        &self,
        org: &OrgId,
        phonebook: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Contact>, bool), StoreError> {
        let prefix = contact_prefix(phonebook);
        // Numbers are `+` and digits, so `~` sorts after all of them; the bound is inclusive,
        // so the contact `after` itself is dropped from the page.
        let output = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", s(org_pk(org)))
            .expression_attribute_values(":from", s(format!("{prefix}{}", after.unwrap_or(""))))
            .expression_attribute_values(":to", s(format!("{prefix}~")))
            .limit(i32::try_from(limit + 1).unwrap_or(i32::MAX))
            .send()
            .await
            .context("Query contacts page")?;
        let more = output.last_evaluated_key.is_some();
        let mut contacts = Vec::new();
        for item in output.items.unwrap_or_default() {
            let contact: Contact = serde_dynamo::from_item(item).context("malformed contact")?;
            if Some(contact.phone.as_str()) != after && contacts.len() < limit {
                contacts.push(contact);
            }
        }
        Ok((contacts, more))
    }
}
