//! Emails once sent: the list, one email with its timeline, a bulk's progress, deletion,
//! and resending the ones that failed for a transient reason.

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use shared::auth::Caller;
use shared::bulk::{self, BulkChannel};
use shared::domain::RecordId;
use shared::domain::email::EmailStatus;
use shared::http::{self, ApiError, PageRequest};
use shared::queue::{EMAIL_SEND_JOB_IDS, Envelope, Job};
use shared::store::{EmailListQuery, StoreError};

use super::EmailApi;

/// Emails one resend requeues at most.
const MAX_RESEND: usize = 10_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResendRequest {
    campaign: Option<String>,
    created_after: Option<chrono::DateTime<chrono::Utc>>,
    created_before: Option<chrono::DateTime<chrono::Utc>>,
}

impl EmailApi {
    /// `GET /services/email/bulk/{id}/`: how many of a bulk's emails are where.
    pub(super) async fn get_bulk(
        &self,
        caller: &Caller,
        id: RecordId,
    ) -> Result<Response<Body>, ApiError> {
        let bulk = match self
            .bulks
            .get(&caller.org, BulkChannel::Email, &id.to_string())
            .await
        {
            Ok(bulk) => bulk,
            Err(StoreError::NotFound) => return Err(ApiError::NotFound),
            Err(other) => return Err(other.into()),
        };
        let statuses = self.bulks.status_counts(&bulk).await?;
        http::json(200, &bulk::progress(&bulk, &statuses))
    }

    pub(super) async fn list(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let status = params
            .get("status")
            .map(|s| {
                EmailStatus::parse(s)
                    .ok_or_else(|| ApiError::field("status", "is not an email status"))
            })
            .transpose()?;
        let query = EmailListQuery {
            status,
            to: params.get("to").cloned(),
            campaign: params.get("campaign").cloned(),
            created_after: http::query_time(&params, "created_after")?,
            created_before: http::query_time(&params, "created_before")?,
        };
        let org = caller.listed_org(&params)?;
        let page = PageRequest::from_query(&params, org.as_str())?;
        let (records, next) = self.emails.list(&org, &query, &page).await?;
        let items: Vec<Value> = records.iter().map(|r| r.to_json(false)).collect();
        http::page(&page, &items, next)
    }

    pub(super) async fn get(
        &self,
        caller: &Caller,
        id: RecordId,
    ) -> Result<Response<Body>, ApiError> {
        let record = self.emails.get_with_bodies(&caller.org, id).await?;
        http::json(200, &record.to_json(true))
    }

    pub(super) async fn delete(
        &self,
        request: &Request,
        caller: &Caller,
        id: RecordId,
    ) -> Result<Response<Body>, ApiError> {
        self.emails
            .delete(&caller.org, id, chrono::Utc::now())
            .await?;
        self.audit(request, caller, "email.delete", format!("email/{id}"), &[])
            .await;
        Ok(http::no_content())
    }

    pub(super) async fn resend_failed(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let filters: ResendRequest = if http::body_bytes(request)
            .iter()
            .all(u8::is_ascii_whitespace)
        {
            ResendRequest::default()
        } else {
            http::parse_json(request)?
        };
        self.require_provider().await?;
        let query = EmailListQuery {
            campaign: filters.campaign,
            created_after: filters.created_after,
            created_before: filters.created_before,
            ..EmailListQuery::default()
        };
        let ids = self
            .emails
            .requeue_transient_failures(&caller.org, &query, MAX_RESEND, chrono::Utc::now())
            .await?;
        let jobs: Vec<Envelope> = ids
            .chunks(EMAIL_SEND_JOB_IDS)
            .map(|chunk| {
                let job = Job::EmailSend {
                    ids: chunk.to_vec(),
                };
                Envelope::new(caller.org.clone(), job)
            })
            .collect();
        self.queue
            .send_all(&self.send_queue, &jobs)
            .await
            .map_err(ApiError::internal)?;
        tracing::info!(requeued = ids.len(), "failed emails requeued");
        self.audit(
            request,
            caller,
            "email.resend_failed",
            "email".to_owned(),
            &ids,
        )
        .await;
        http::json(200, &json!({"requeued": ids.len(), "ids": ids}))
    }
}
