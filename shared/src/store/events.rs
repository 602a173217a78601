//! The MongoDB event store: one `events` collection, `_id` = event id, indexed by
//! organization and time, with a TTL index for retention. Indexes are created on first use.

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use serde_json::Value;

use super::StoreError;
use crate::domain::OrgId;
use crate::events::{Event, EventKind};

const COLLECTION: &str = "events";

#[derive(Debug, Clone)]
pub struct EventStore {
    pub(super) collection: Collection<Document>,
    retention_days: u32,
}

/// What to list: one organization (or all, for superusers) and filters.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub org: Option<OrgId>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub after: Option<DateTime<Utc>>,
    pub before: Option<DateTime<Utc>>,
}

/// One point of an analytics series.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SeriesPoint {
    pub bucket: String,
    pub channel: String,
    pub status: String,
    pub count: i64,
}

impl EventStore {
    /// Connects lazily (no I/O here): a small pool and short timeouts, so a Lambda fails
    /// fast when MongoDB is away instead of hanging until its own timeout.
    ///
    /// # Errors
    /// When the URI does not parse.
    pub async fn connect(uri: &str, database: &str, retention_days: u32) -> anyhow::Result<Self> {
        let mut options = ClientOptions::parse(uri)
            .await
            .context("MONGODB_URI does not parse")?;
        options.max_pool_size = Some(2);
        options.min_pool_size = Some(0);
        options.server_selection_timeout = Some(std::time::Duration::from_secs(2));
        options.connect_timeout = Some(std::time::Duration::from_secs(2));
        options.app_name = Some("herald".to_owned());
        let client = Client::with_options(options).context("MongoDB client")?;
        Ok(Self {
            collection: client.database(database).collection(COLLECTION),
            retention_days,
        })
    }

    /// The store from `MONGODB_URI` (a secret), `MONGODB_DATABASE` (default `herald`) and
    /// `EVENT_RETENTION_DAYS` (default 400). Functions build it on first use
    /// ([`crate::config::OnFirstUse`]): reading the secret is a network call.
    ///
    /// # Errors
    /// When the URI is not configured, cannot be read or does not parse.
    pub async fn from_env(
        env: &crate::config::Env,
        secrets: &aws_sdk_secretsmanager::Client,
    ) -> anyhow::Result<Self> {
        let uri = env
            .secret("MONGODB_URI", secrets)
            .await?
            .ok_or_else(|| anyhow::anyhow!("MONGODB_URI is not configured"))?;
        let database = env
            .optional("MONGODB_DATABASE")
            .unwrap_or_else(|| "herald".to_owned());
        let retention = env.number("EVENT_RETENTION_DAYS", 400)?;
        Self::connect(
            secrecy::ExposeSecret::expose_secret(&uri),
            &database,
            retention,
        )
        .await
    }

    /// Creates the indexes if they are missing (idempotent).
    ///
    /// # Errors
    /// When MongoDB cannot be reached.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let ttl = IndexOptions::builder()
            .name("retention".to_owned())
            .expire_after(std::time::Duration::from_secs(
                u64::from(self.retention_days) * 86_400,
            ))
            .build();
        let indexes = vec![
            IndexModel::builder()
                .keys(doc! {"org_id": 1, "created_at": -1})
                .build(),
            IndexModel::builder()
                .keys(doc! {"org_id": 1, "kind": 1, "created_at": -1})
                .build(),
            IndexModel::builder()
                .keys(doc! {"created_at": 1})
                .options(ttl)
                .build(),
        ];
        self.collection
            .create_indexes(indexes)
            .await
            .context("creating event indexes")?;
        Ok(())
    }

    /// Stores events, skipping those already stored. Returns the ids that failed for another
    /// reason (to retry).
    ///
    /// # Errors
    /// When MongoDB cannot be reached at all.
    pub async fn record(&self, events: &[Event]) -> Result<Vec<String>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let documents = events
            .iter()
            .map(to_document)
            .collect::<Result<Vec<_>, _>>()?;
        match self.collection.insert_many(documents).ordered(false).await {
            Ok(_) => Ok(Vec::new()),
            Err(error) => match *error.kind {
                mongodb::error::ErrorKind::InsertMany(ref failure) => {
                    let failed = failure
                        .write_errors
                        .iter()
                        .flatten()
                        .filter(|e| e.code != 11000) // duplicate key: recorded before
                        .filter_map(|e| events.get(e.index).map(|event| event.id.clone()))
                        .collect::<Vec<_>>();
                    if failure.write_concern_error.is_some() {
                        return Err(anyhow::Error::new(error).context("insert events").into());
                    }
                    Ok(failed)
                }
                _ => Err(anyhow::Error::new(error).context("insert events").into()),
            },
        }
    }

    /// Audit entries, newest first, after `position` (created_at millis, id).
    ///
    /// # Errors
    /// When MongoDB cannot be reached.
    pub async fn audit_page(
        &self,
        query: &AuditQuery,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<Value>, StoreError> {
        let mut filter = doc! {"kind": "audit"};
        if let Some(org) = &query.org {
            filter.insert("org_id", org.as_str());
        }
        for (field, value) in [
            ("actor", &query.actor),
            ("action", &query.action),
            ("resource", &query.resource),
        ] {
            if let Some(value) = value {
                filter.insert(field, value.as_str());
            }
        }
        let mut range = Document::new();
        if let Some(after) = query.after {
            range.insert(
                "$gte",
                bson::DateTime::from_millis(after.timestamp_millis()),
            );
        }
        if let Some(before) = query.before {
            range.insert(
                "$lt",
                bson::DateTime::from_millis(before.timestamp_millis()),
            );
        }
        if !range.is_empty() {
            filter.insert("created_at", range);
        }
        if let Some((millis, id)) = after {
            let at = bson::DateTime::from_millis(millis);
            filter.insert(
                "$or",
                vec![
                    doc! {"created_at": {"$lt": at}},
                    doc! {"created_at": at, "_id": {"$lt": id}},
                ],
            );
        }
        let cursor = self
            .collection
            .find(filter)
            .sort(doc! {"created_at": -1, "_id": -1})
            .limit(i64::try_from(limit).unwrap_or(100))
            .await
            .context("find audit entries")?;
        let documents: Vec<Document> = cursor.try_collect().await.context("read audit entries")?;
        Ok(documents.into_iter().map(to_json).collect())
    }

    /// Delivery counts per bucket (`hour` or `day`), channel and status.
    ///
    /// # Errors
    /// When MongoDB cannot be reached.
    pub async fn series(
        &self,
        org: Option<&OrgId>,
        granularity: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        channel: Option<&str>,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        let mut filter = doc! {
            "kind": "delivery",
            "created_at": {"$gte": bson::DateTime::from_millis(from.timestamp_millis()), "$lt": bson::DateTime::from_millis(to.timestamp_millis())},
        };
        if let Some(org) = org {
            filter.insert("org_id", org.as_str());
        }
        if let Some(channel) = channel {
            filter.insert("channel", channel);
        }
        // Buckets are stored with each event (`hour`, `day`), so the pipeline needs only
        // $match/$group/$sort, which every MongoDB-compatible server supports.
        let bucket = format!("${granularity}");
        let pipeline = vec![
            doc! {"$match": filter},
            doc! {"$group": {"_id": {"bucket": bucket, "channel": "$channel", "status": "$status"}, "count": {"$sum": 1}}},
            doc! {"$sort": {"_id.bucket": 1, "_id.channel": 1, "_id.status": 1}},
        ];
        let cursor = self
            .collection
            .aggregate(pipeline)
            .await
            .context("aggregate analytics")?;
        let groups: Vec<Document> = cursor.try_collect().await.context("read analytics")?;
        let mut points: Vec<SeriesPoint> = groups
            .into_iter()
            .filter_map(|group| {
                let key = group.get_document("_id").ok()?;
                Some(SeriesPoint {
                    bucket: key.get_str("bucket").ok()?.to_owned(),
                    channel: key.get_str("channel").unwrap_or_default().to_owned(),
                    status: key.get_str("status").unwrap_or_default().to_owned(),
                    count: match group.get("count") {
                        Some(Bson::Int32(n)) => i64::from(*n),
                        Some(Bson::Int64(n)) => *n,
                        Some(Bson::Double(n)) => *n as i64,
                        _ => 0,
                    },
                })
            })
            .collect();
        points.sort_by(|a, b| {
            (&a.bucket, &a.channel, &a.status).cmp(&(&b.bucket, &b.channel, &b.status))
        });
        Ok(points)
    }

    /// The collection's indexes (for tests and operators).
    ///
    /// # Errors
    /// When MongoDB cannot be reached.
    pub async fn indexes(&self) -> Result<Vec<Document>, StoreError> {
        let cursor = self
            .collection
            .list_indexes()
            .await
            .context("list indexes")?;
        let models: Vec<IndexModel> = cursor.try_collect().await.context("read indexes")?;
        Ok(models
            .into_iter()
            .map(|model| {
                let mut description = doc! {"key": model.keys};
                if let Some(options) = model.options
                    && let Some(expire) = options.expire_after
                {
                    description.insert(
                        "expireAfterSeconds",
                        i64::try_from(expire.as_secs()).unwrap_or(i64::MAX),
                    );
                }
                description
            })
            .collect())
    }
}

fn to_document(event: &Event) -> Result<Document, StoreError> {
    let kind = match event.kind {
        EventKind::Audit => "audit",
        EventKind::Provider => "provider",
        EventKind::Delivery => "delivery",
        EventKind::Webhook => "webhook",
    };
    let detail = bson::to_bson(&event.detail).context("event detail")?;
    let mut document = doc! {
        "_id": &event.id,
        "org_id": event.org_id.as_str(),
        "kind": kind,
        "action": &event.action,
        "created_at": bson::DateTime::from_millis(event.created_at.timestamp_millis()),
        "hour": event.created_at.format("%Y-%m-%dT%H:00:00Z").to_string(),
        "day": event.created_at.format("%Y-%m-%d").to_string(),
        "detail": detail,
    };
    for (field, value) in [
        ("actor", &event.actor),
        ("resource", &event.resource),
        ("request_id", &event.request_id),
        ("channel", &event.channel),
        ("status", &event.status),
    ] {
        if let Some(value) = value {
            document.insert(field, value.as_str());
        }
    }
    Ok(document)
}

/// The API shape of a stored event.
fn to_json(mut document: Document) -> Value {
    let id = document
        .remove("_id")
        .and_then(|id| id.as_str().map(str::to_owned));
    let created_at = document
        .get_datetime("created_at")
        .ok()
        .and_then(|t| DateTime::<Utc>::from_timestamp_millis(t.timestamp_millis()));
    document.remove("created_at");
    document.remove("hour");
    document.remove("day");
    let mut value = Bson::Document(document).into_relaxed_extjson();
    if let Value::Object(map) = &mut value {
        map.insert("id".into(), serde_json::json!(id));
        map.insert(
            "organization".into(),
            map.get("org_id").cloned().unwrap_or(Value::Null),
        );
        map.remove("org_id");
        map.insert("created_at".into(), serde_json::json!(created_at));
    }
    value
}
