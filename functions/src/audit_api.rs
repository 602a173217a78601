//! The audit log and analytics API (SPEC §10): `GET /services/audit-logs/` and
//! `GET /services/analytics/`, read from MongoDB. Organization-scoped; superusers read
//! across organizations and may filter by `organization`.

use lambda_http::{Body, Request, Response};
use serde_json::json;

use shared::auth::{Caller, ClaimNames};
use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::domain::OrgId;
use shared::http::{self, ApiError, Cursor, PageRequest, Route};
use shared::store::{AuditQuery, EventStore};

use crate::runtime::{BoxFuture, HttpFunction};

shared::operations! {
    /// Every operation of the audit and analytics API, with the role it needs.
    pub enum AuditOperation {
        AuditLogs = "GET" "/services/audit-logs" Admin,
        Analytics = "GET" "/services/analytics" Member,
    }
}

pub const ROUTES: &[Route] = AuditOperation::ROUTES;
/// The longest analytics range one request may ask for.
const MAX_RANGE_DAYS: i64 = 366;

pub struct AuditApi {
    store: OnFirstUse<EventStore>,
    claims: ClaimNames,
}

impl HttpFunction for AuditApi {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

impl AuditApi {
    /// No I/O: the MongoDB URI is read on first use, and a failure to read or use it
    /// answers 500 for that request.
    pub fn new(aws: &AwsClients, env: &Env) -> Self {
        Self {
            store: env.on_first_use(&aws.secrets, |env, secrets| async move {
                EventStore::from_env(&env, &secrets).await
            }),
            claims: ClaimNames::from_env(env),
        }
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond("audit-api", &request, || self.dispatch(&request)).await
    }

    async fn store(&self) -> Result<&EventStore, ApiError> {
        self.store.get().await.map_err(ApiError::internal)
    }

    async fn dispatch(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        use AuditOperation as Op;
        let (operation, _, caller) = AuditOperation::authorize(request, &self.claims)?;
        let params = http::query_map(request);
        let org = scope(&caller, &params)?;
        match operation {
            Op::AuditLogs => self.audit_logs(&params, org).await,
            Op::Analytics => self.analytics(&params, org).await,
        }
    }

    /// `GET /services/audit-logs`: newest first, keyset-paged by (time, id).
    async fn audit_logs(
        &self,
        params: &std::collections::BTreeMap<String, String>,
        org: Option<OrgId>,
    ) -> Result<Response<Body>, ApiError> {
        let query = AuditQuery {
            org: org.clone(),
            actor: params.get("actor").cloned(),
            action: params.get("action").cloned(),
            resource: params.get("resource").cloned(),
            after: http::query_time(params, "created_after")?,
            before: http::query_time(params, "created_before")?,
        };
        let page = PageRequest::from_query(
            params,
            &org.as_ref().map_or("*".to_owned(), OrgId::to_string),
        )?;
        let after = match &page.after {
            Some(position) => Some((
                position
                    .get("t")
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| ApiError::field("cursor", "is not a cursor for this list"))?,
                position.get("i").cloned().unwrap_or_default(),
            )),
            None => None,
        };
        let mut items = self
            .store()
            .await?
            .audit_page(&query, after, page.limit + 1)
            .await?;
        let next = if items.len() > page.limit {
            items.truncate(page.limit);
            items.last().map(|last| {
                let millis = last["created_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map_or(0, |t| t.timestamp_millis());
                page.next_cursor(Cursor::from([
                    ("t".to_owned(), millis.to_string()),
                    (
                        "i".to_owned(),
                        last["id"].as_str().unwrap_or_default().to_owned(),
                    ),
                ]))
            })
        } else {
            None
        };
        http::json(200, &json!({"items": items, "next_cursor": next}))
    }

    /// `GET /services/analytics`: counts per hour or day, per channel and event.
    async fn analytics(
        &self,
        params: &std::collections::BTreeMap<String, String>,
        org: Option<OrgId>,
    ) -> Result<Response<Body>, ApiError> {
        let granularity = params.get("granularity").map_or("day", String::as_str);
        if granularity != "hour" && granularity != "day" {
            return Err(ApiError::field("granularity", "must be hour or day"));
        }
        let to = http::query_time(params, "created_before")?.unwrap_or_else(chrono::Utc::now);
        let from =
            http::query_time(params, "created_after")?.unwrap_or(to - chrono::Duration::days(7));
        if from >= to || to - from > chrono::Duration::days(MAX_RANGE_DAYS) {
            return Err(ApiError::field(
                "created_after",
                format!("the range must be positive and at most {MAX_RANGE_DAYS} days"),
            ));
        }
        let channel = params.get("channel").map(String::as_str);
        let series = self
            .store()
            .await?
            .series(org.as_ref(), granularity, from, to, channel)
            .await?;
        http::json(
            200,
            &json!({"granularity": granularity, "from": from, "to": to, "series": series}),
        )
    }
}

/// Whose events the caller reads: their own organization; a superuser's choice (or all).
fn scope(
    caller: &Caller,
    params: &std::collections::BTreeMap<String, String>,
) -> Result<Option<OrgId>, ApiError> {
    match caller.organization_filter(params)? {
        None if !caller.is_superuser() => Ok(Some(caller.org.clone())),
        filter => Ok(filter),
    }
}
