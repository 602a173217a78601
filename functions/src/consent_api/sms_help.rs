//! The organization's answer to an SMS HELP: read, set, reset.

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;

use shared::auth::Caller;
use shared::http::{self, ApiError};

use super::ConsentApi;

impl ConsentApi {
    /// `GET /services/consent/sms-help/`: what an inbound HELP or INFO is answered with, and
    /// whether the organization set it or it is the deployment's.
    pub(super) async fn sms_help(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let org = caller.listed_org(&http::query_map(request))?;
        let (text, set_by) = match self.store.sms_help_text(&org).await? {
            Some(text) => (text, "organization"),
            None => (
                shared::consent::deployment_sms_help_text(self.sms_help_text.as_deref(), &org),
                "deployment",
            ),
        };
        http::json(200, &json!({ "text": text, "set_by": set_by }))
    }

    /// `DELETE /services/consent/sms-help/`: back to the deployment's answer.
    pub(super) async fn reset_sms_help(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        self.store
            .set_sms_help_text(&caller.org, None, chrono::Utc::now())
            .await?;
        self.audit(
            request,
            caller,
            "consent.sms_help.reset",
            "consent/sms-help".to_owned(),
        )
        .await;
        Ok(http::no_content())
    }

    /// `PUT /services/consent/sms-help/` with `{"text": …}`: the organization's own answer.
    pub(super) async fn set_sms_help(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct HelpInput {
            text: Option<String>,
        }
        let input: HelpInput = http::parse_json(request)?;
        let text = input.text.unwrap_or_default();
        if let Some(problem) = shared::consent::sms_help_text_problem(&text) {
            return Err(ApiError::field("text", problem));
        }
        self.store
            .set_sms_help_text(&caller.org, Some(&text), chrono::Utc::now())
            .await?;
        self.audit(
            request,
            caller,
            "consent.sms_help.set",
            "consent/sms-help".to_owned(),
        )
        .await;
        http::json(200, &json!({ "text": text, "set_by": "organization" }))
    }
}
