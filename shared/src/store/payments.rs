//! Payment records (customers, subscriptions, payments, invoices), webhook dedupe marks and
//! the Stripe sync checkpoint.
//!
//! | item | `pk` / `sk` | indexes |
//! |---|---|---|
//! | customer | `ORG#<org>` / `CUSTOMER#<ulid>` | |
//! | subscription | `ORG#<org>` / `SUBSCRIPTION#<ulid>` | |
//! | payment | `ORG#<org>` / `PAYMENT#<ulid>` | |
//! | invoice | `ORG#<org>` / `INVOICE#<ulid>` | |
//! | Stripe link | `STRIPE#<cus_…/sub_…/pi_…/in_…>` / `<PREFIX>#<org>#<ulid>` | |
//! | create request | `ORG#<org>` / `REQUEST#<kind>#<sha256 of the request key>` (TTL 24 h) | |
//! | webhook event seen | `STRIPE_EVENT#<evt_…>` / `EVENT` (TTL 30 days) | |
//! | sync checkpoint | `STRIPE_SYNC` / `CHECKPOINT` | |
//!
//! A Stripe link finds a record from a Stripe id (webhook events and the sync) with a
//! consistent read; its sort key names the organization, which the caller checks against
//! the object's `metadata.org_id`. (Until issue 15 this was an index, `GSI1`, which a
//! webhook arriving right after the create could miss.)
//! A create request names the record a create makes for one client request (its
//! `Idempotency-Key`), so a retry of that request, even after the invocation that began it
//! was killed, works on the same record and sends Stripe the same parameters under the same
//! Stripe `Idempotency-Key` (issue 16).
//! Writes are conditional on the `version` the writer read, so a webhook and the sync
//! racing on one record cannot lose either's change.

use anyhow::Context;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Item, PartitionKey, StoreError, is_condition_failure, paged_query, s};
use crate::aws::DynamoDbClient;
use crate::domain::{OrgId, RecordId};
use crate::pagination::{Cursor, PageRequest};
use crate::payments::records::{CustomerRecord, InvoiceRecord, PaymentRecord, SubscriptionRecord};

/// How long a webhook event id is remembered: Stripe retries for three days.
const EVENT_MEMORY_DAYS: i64 = 30;

/// A record kind of the payments store.
pub trait PaymentEntity: Serialize + DeserializeOwned + Send + Sync {
    const PREFIX: &'static str;
    fn id(&self) -> &str;
    fn org(&self) -> &OrgId;
    fn stripe_id(&self) -> Option<&str>;
    fn version(&self) -> u64;
    fn set_version(&mut self, version: u64);
}

macro_rules! entity {
    ($type:ty, $prefix:literal, |$record:ident| $stripe:expr) => {
        impl PaymentEntity for $type {
            const PREFIX: &'static str = $prefix;
            fn id(&self) -> &str {
                &self.id
            }
            fn org(&self) -> &OrgId {
                &self.org_id
            }
            fn stripe_id(&self) -> Option<&str> {
                let $record = self;
                $stripe
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn set_version(&mut self, version: u64) {
                self.version = version;
            }
        }
    };
}

entity!(CustomerRecord, "CUSTOMER", |r| r.stripe_id.as_deref());
entity!(SubscriptionRecord, "SUBSCRIPTION", |r| r
    .stripe_id
    .as_deref());
entity!(PaymentRecord, "PAYMENT", |r| r.stripe_id.as_deref());
entity!(InvoiceRecord, "INVOICE", |r| Some(r.stripe_id.as_str()));

/// How long a create request is remembered: as long as Stripe keeps an idempotency key
/// ("keys … at least 24 hours old" may be pruned, docs.stripe.com/api/idempotent_requests)
/// and Herald keeps the HTTP `Idempotency-Key`.
const REQUEST_MEMORY_HOURS: i64 = 24;

/// What [`PaymentStore::claim_request`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestClaim {
    /// First time: the record is the one proposed.
    New,
    /// A retry of the same request: the record the first attempt named.
    Existing(String),
    /// The key was used for a different request.
    Mismatch,
}

/// Where the Stripe sync stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncCheckpoint {
    /// `created[gte]` of the run in progress (unix seconds); 0 reads everything.
    pub since: i64,
    /// When the run in progress started; becomes the next run's base once it completes.
    pub run_started: i64,
    /// Index into the synced resources of the one being read.
    pub resource: usize,
    /// The last object id read of that resource (`starting_after`).
    pub after: Option<String>,
    /// Whether a run is in progress (else the next run starts afresh).
    pub in_progress: bool,
    /// When the last complete run started.
    pub last_complete: Option<i64>,
    #[serde(default)]
    pub version: u64,
}

/// Rounds of [`PaymentStore::update`] before it gives up on a record that keeps changing.
pub const UPDATE_ATTEMPTS: usize = 4;

/// A record after [`PaymentStore::update`]: as saved, or as found when nothing changed.
#[derive(Debug)]
pub struct Updated<T> {
    pub record: T,
    pub changed: bool,
}

#[derive(Debug, Clone)]
pub struct PaymentStore {
    dynamodb: DynamoDbClient,
    table: String,
}

fn org_pk(org: &OrgId) -> String {
    format!("ORG#{org}")
}

fn sk<T: PaymentEntity>(id: &str) -> String {
    format!("{}#{id}", T::PREFIX)
}

/// The partition of a Stripe id's links.
fn link_pk(stripe_id: &str) -> String {
    format!("STRIPE#{stripe_id}")
}

impl PaymentStore {
    pub fn new(dynamodb: DynamoDbClient, table: impl Into<String>) -> Self {
        Self {
            dynamodb,
            table: table.into(),
        }
    }

    fn item_of<T: PaymentEntity>(record: &T) -> Result<Item, StoreError> {
        let mut item: Item = serde_dynamo::to_item(record).context("encoding payment record")?;
        item.insert("pk".into(), s(org_pk(record.org())));
        item.insert("sk".into(), s(sk::<T>(record.id())));
        item.insert("entity".into(), s(T::PREFIX.to_ascii_lowercase()));
        Ok(item)
    }

    /// The item that finds `record` from its Stripe id: `STRIPE#<stripe id>` /
    /// `<PREFIX>#<org>#<id>`, in the table itself rather than an index, so a webhook that
    /// arrives a moment after the record was written finds it ("a query on a global
    /// secondary index might not return the most recent data", DynamoDB Developer Guide;
    /// issue 15).
    fn link_of<T: PaymentEntity>(record: &T) -> Option<Item> {
        let stripe = record.stripe_id()?;
        Some(Item::from([
            ("pk".to_owned(), s(link_pk(stripe))),
            (
                "sk".to_owned(),
                s(format!("{}#{}#{}", T::PREFIX, record.org(), record.id())),
            ),
            ("entity".to_owned(), s("stripe_link")),
            ("id".to_owned(), s(record.id())),
        ]))
    }

    /// Stores `record` if its `version` is still the stored one (0: it must be new), and
    /// bumps the version.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when someone else wrote it first.
    pub async fn save<T: PaymentEntity>(&self, record: &mut T) -> Result<(), StoreError> {
        // The link first: one pointing at a record whose write then fails leads nowhere
        // (`find_by_stripe` reads the record itself), never the other way round.
        if let Some(link) = Self::link_of(record) {
            self.dynamodb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(link))
                .send()
                .await
                .context("PutItem Stripe link")?;
        }
        let expected = record.version();
        record.set_version(expected + 1);
        let item = Self::item_of(record)?;
        let mut request = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        request = if expected == 0 {
            request.condition_expression("attribute_not_exists(pk)")
        } else {
            request
                .condition_expression("version = :v")
                .expression_attribute_values(":v", AttributeValue::N(expected.to_string()))
        };
        match request.send().await {
            Ok(_) => Ok(()),
            Err(error) => {
                record.set_version(expected);
                if is_condition_failure(&error) {
                    Err(StoreError::Conflict(
                        "the record changed concurrently".to_owned(),
                    ))
                } else {
                    Err(anyhow::Error::new(error)
                        .context("PutItem payment record")
                        .into())
                }
            }
        }
    }

    /// Lets `change` edit record `id` and saves it; when another writer saved in between,
    /// reads it again and repeats (optimistic concurrency on `version`). The first round
    /// starts from `current` when the caller has just read it, else reads it. `change`
    /// answers `false` to leave the record as it found it.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for no such record, [`StoreError::Conflict`] when it kept
    /// changing for [`UPDATE_ATTEMPTS`] rounds.
    pub async fn update<T: PaymentEntity>(
        &self,
        org: &OrgId,
        id: &str,
        mut current: Option<T>,
        mut change: impl FnMut(&mut T) -> bool,
    ) -> Result<Updated<T>, StoreError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let mut record: T = match current.take() {
                Some(record) => record,
                None => self.get(org, id).await?,
            };
            if !change(&mut record) {
                return Ok(Updated {
                    record,
                    changed: false,
                });
            }
            match self.save(&mut record).await {
                Ok(()) => {
                    return Ok(Updated {
                        record,
                        changed: true,
                    });
                }
                Err(StoreError::Conflict(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Err(StoreError::Conflict(
            "the record kept changing; retry".to_owned(),
        ))
    }

    /// # Errors
    /// [`StoreError::NotFound`] when missing or another organization's.
    pub async fn get<T: PaymentEntity>(&self, org: &OrgId, id: &str) -> Result<T, StoreError> {
        if RecordId::parse(id).is_none() {
            return Err(StoreError::NotFound);
        }
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(sk::<T>(id)))
            .consistent_read(true)
            .send()
            .await
            .context("GetItem payment record")?
            .item
            .ok_or(StoreError::NotFound)?;
        Ok(serde_dynamo::from_item(item).context("malformed payment record")?)
    }

    /// The record of `org` mirroring the Stripe object `stripe_id`, if Herald has one.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn find_by_stripe<T: PaymentEntity>(
        &self,
        org: &OrgId,
        stripe_id: &str,
    ) -> Result<Option<T>, StoreError> {
        let links = self
            .stripe_links(stripe_id, &format!("{}#{org}#", T::PREFIX))
            .await?;
        let Some(item) = links.into_iter().next() else {
            return Ok(None);
        };
        let id = match item.get("id") {
            Some(AttributeValue::S(id)) => id.clone(),
            _ => return Ok(None),
        };
        match self.get::<T>(org, &id).await {
            Ok(record) => Ok(Some(record)),
            Err(StoreError::NotFound) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// The organization whose record of kind `T` mirrors `stripe_id`, when exactly one
    /// organization's does (a Stripe object Herald created belongs to one organization; an
    /// id linked in two is trusted for neither). For Stripe objects without
    /// `metadata.org_id`, such as the charges of subscription invoices (issue 16, defect 5).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn org_by_stripe<T: PaymentEntity>(
        &self,
        stripe_id: &str,
    ) -> Result<Option<OrgId>, StoreError> {
        let mut found: Option<(OrgId, String)> = None;
        for item in self
            .stripe_links(stripe_id, &format!("{}#", T::PREFIX))
            .await?
        {
            let Some((org, id)) = item
                .get("sk")
                .and_then(|sk| sk.as_s().ok())
                .and_then(|sk| sk.strip_prefix(T::PREFIX)?.strip_prefix('#'))
                .and_then(|rest| rest.rsplit_once('#'))
                .and_then(|(org, id)| Some((OrgId::parse(org).ok()?, id.to_owned())))
            else {
                continue;
            };
            match &found {
                Some((first, _)) if *first != org => return Ok(None),
                Some(_) => {}
                None => found = Some((org, id)),
            }
        }
        let Some((org, id)) = found else {
            return Ok(None);
        };
        // A link whose record write failed leads nowhere.
        match self.get::<T>(&org, &id).await {
            Ok(_) => Ok(Some(org)),
            Err(StoreError::NotFound) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// The Stripe links of `stripe_id` whose sort key starts with `sk_prefix`, read
    /// consistently (see [`Self::link_of`]).
    async fn stripe_links(
        &self,
        stripe_id: &str,
        sk_prefix: &str,
    ) -> Result<Vec<Item>, StoreError> {
        let output = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(link_pk(stripe_id)))
            .expression_attribute_values(":prefix", s(sk_prefix))
            .consistent_read(true)
            .send()
            .await
            .context("Query the Stripe links")?;
        Ok(output.items.unwrap_or_default())
    }

    /// Lists an organization's records newest first; `filters` are attribute = value.
    ///
    /// # Errors
    /// [`StoreError::InvalidCursor`] for a cursor of another partition.
    pub async fn list<T: PaymentEntity>(
        &self,
        org: &OrgId,
        filters: &[(&str, String)],
        page: &PageRequest,
    ) -> Result<(Vec<T>, Option<Cursor>), StoreError> {
        let partition = org_pk(org);
        let mut request = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(&partition))
            .expression_attribute_values(":lo", s(format!("{}#0", T::PREFIX)))
            .expression_attribute_values(":hi", s(format!("{}#~", T::PREFIX)))
            .scan_index_forward(false);
        let mut conditions = Vec::new();
        for (index, (attribute, value)) in filters.iter().enumerate() {
            conditions.push(format!("#f{index} = :f{index}"));
            request = request
                .expression_attribute_names(format!("#f{index}"), *attribute)
                .expression_attribute_values(format!(":f{index}"), s(value));
        }
        if !conditions.is_empty() {
            request = request.filter_expression(conditions.join(" AND "));
        }
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
        let records = items
            .into_iter()
            .map(|item| serde_dynamo::from_item(item).context("malformed payment record"))
            .collect::<Result<Vec<T>, _>>()?;
        Ok((records, next))
    }

    /// Names the record of the create request `request` (a hash of the organization's request
    /// key) of `kind`: `id` when the request is new, else the one named first. `request_hash`
    /// is the request's content, so one key cannot stand for two different requests.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn claim_request(
        &self,
        org: &OrgId,
        kind: &str,
        request: &str,
        id: &str,
        request_hash: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<RequestClaim, StoreError> {
        let sk = format!("REQUEST#{kind}#{request}");
        let expires = now + chrono::Duration::hours(REQUEST_MEMORY_HOURS);
        let result = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", s(org_pk(org)))
            .item("sk", s(&sk))
            .item("entity", s("payment_request"))
            .item("id", s(id))
            .item("request_hash", s(request_hash))
            .item(
                "expires_at",
                AttributeValue::N(expires.timestamp().to_string()),
            )
            // TTL deletes lazily: an expired request is free again.
            .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
            .expression_attribute_values(":now", AttributeValue::N(now.timestamp().to_string()))
            .send()
            .await;
        match result {
            Ok(_) => return Ok(RequestClaim::New),
            Err(error) if is_condition_failure(&error) => {}
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context("PutItem create request")
                    .into());
            }
        }
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(&sk))
            .consistent_read(true)
            .send()
            .await
            .context("GetItem create request")?
            .item
            .ok_or_else(|| StoreError::Conflict("the create request changed; retry".to_owned()))?;
        let text = |name: &str| match item.get(name) {
            Some(AttributeValue::S(value)) => value.clone(),
            _ => String::new(),
        };
        if text("request_hash") != request_hash {
            return Ok(RequestClaim::Mismatch);
        }
        Ok(RequestClaim::Existing(text("id")))
    }

    /// Whether the webhook already applied the event `event_id`.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn event_seen(&self, event_id: &str) -> Result<bool, StoreError> {
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("STRIPE_EVENT#{event_id}")))
            .key("sk", s("EVENT"))
            .consistent_read(true)
            .send()
            .await
            .context("GetItem Stripe event")?;
        Ok(output.item.is_some())
    }

    /// Remembers that `event_id` was applied. `false` when it already was.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn mark_event(
        &self,
        event_id: &str,
        kind: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let expires = now + chrono::Duration::days(EVENT_MEMORY_DAYS);
        let result = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("STRIPE_EVENT#{event_id}")))
            .item("sk", s("EVENT"))
            .item("entity", s("stripe_event"))
            .item("type", s(kind))
            .item("received_at", s(now.to_rfc3339()))
            .item(
                "expires_at",
                AttributeValue::N(expires.timestamp().to_string()),
            )
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if is_condition_failure(&error) => Ok(false),
            Err(error) => Err(anyhow::Error::new(error)
                .context("PutItem Stripe event")
                .into()),
        }
    }

    /// # Errors
    /// Storage failures.
    pub async fn checkpoint(&self) -> Result<SyncCheckpoint, StoreError> {
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s("STRIPE_SYNC"))
            .key("sk", s("CHECKPOINT"))
            .consistent_read(true)
            .send()
            .await
            .context("GetItem sync checkpoint")?;
        match output.item {
            Some(item) => Ok(serde_dynamo::from_item(item).context("malformed checkpoint")?),
            None => Ok(SyncCheckpoint::default()),
        }
    }

    /// Saves the checkpoint if nobody else moved it since it was read.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when another run saved one in between.
    pub async fn save_checkpoint(&self, checkpoint: &mut SyncCheckpoint) -> Result<(), StoreError> {
        let expected = checkpoint.version;
        checkpoint.version += 1;
        let mut item: Item = serde_dynamo::to_item(&*checkpoint).context("encoding checkpoint")?;
        item.insert("pk".into(), s("STRIPE_SYNC"));
        item.insert("sk".into(), s("CHECKPOINT"));
        let result = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR version = :v")
            .expression_attribute_values(":v", AttributeValue::N(expected.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => {
                checkpoint.version = expected;
                Err(StoreError::Conflict(
                    "another sync run moved the checkpoint".to_owned(),
                ))
            }
            Err(error) => Err(anyhow::Error::new(error)
                .context("PutItem checkpoint")
                .into()),
        }
    }
}
