//! Reading messages: the list, one message with its timeline, deletion, inbound messages,
//! and the Twilio balance.

use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};

use shared::auth::Caller;
use shared::domain::sms_message::SmsStatus;
use shared::events::{Event, EventKind};
use shared::http::{self, ApiError, PageRequest};
use shared::store::SmsListQuery;

use super::SmsApi;

impl SmsApi {
    pub(super) async fn list(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let status = params
            .get("status")
            .map(|s| {
                SmsStatus::parse(s).ok_or_else(|| ApiError::field("status", "is not an SMS status"))
            })
            .transpose()?;
        let query = SmsListQuery {
            status,
            to: params.get("to").cloned(),
            bulk_id: params.get("bulk_id").cloned(),
            created_after: http::query_time(&params, "created_after")?,
            created_before: http::query_time(&params, "created_before")?,
        };
        let org = caller.listed_org(&params)?;
        let page = PageRequest::from_query(&params, org.as_str())?;
        let (records, next) = self.sms.list(&org, &query, &page).await?;
        let items: Vec<Value> = records.iter().map(|r| r.to_json(false)).collect();
        http::page(&page, &items, next)
    }

    pub(super) async fn list_inbound(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let org = caller.listed_org(&params)?;
        let page = PageRequest::from_query(&params, org.as_str())?;
        let from = params.get("from").map(String::as_str);
        let (entries, next) = self.sms.list_inbound(&org, from, &page).await?;
        http::page(&page, &entries, next)
    }

    pub(super) async fn get(&self, caller: &Caller, id: &str) -> Result<Response<Body>, ApiError> {
        let record = self.sms.get(&caller.org, id).await?;
        http::json(200, &record.to_json(true))
    }

    pub(super) async fn delete(
        &self,
        request: &Request,
        caller: &Caller,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        self.sms.delete(&caller.org, id, chrono::Utc::now()).await?;
        self.audit(
            request,
            caller,
            "sms.delete",
            format!("sms/{id}"),
            json!({}),
        )
        .await;
        Ok(http::no_content())
    }

    pub(super) async fn balance(&self, caller: &Caller) -> Result<Response<Body>, ApiError> {
        let twilio = self.twilio().await?;
        let result = twilio.client.balance().await;
        let call = Event::new(&caller.org, EventKind::Provider, "twilio.balance").with_detail(
            json!({"outcome": match &result { Ok(_) => "ok".to_owned(), Err(e) => e.to_string() }}),
        );
        self.events.publish(vec![call]).await;
        let balance = result.map_err(|e| ApiError::internal(anyhow::anyhow!(e)))?;
        http::json(
            200,
            &json!({"balance": balance.balance, "currency": balance.currency}),
        )
    }
}
