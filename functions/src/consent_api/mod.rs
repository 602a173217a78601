//! Topics and the consent ledger (issue 19): `/services/topics/…` and `/services/consent/`.
//!
//! Members read; admins define topics and record consent given or withdrawn elsewhere
//! (`PUT`, with the source required). Every change is an audit event. The ledger also takes
//! Herald's own observations (one-click unsubscribes, provider unsubscribes, bounces, SMS
//! keywords), which no caller can write here.
//!
//! One file per resource: [`topics`], [`ledger`] (show, record, export), [`sms_help`].

mod ledger;
mod sms_help;
mod topics;

use lambda_http::{Body, Request, Response};

use shared::auth::{Caller, ClaimNames};
use shared::aws::AwsClients;
use shared::config::{ConfigError, Env};
use shared::events::EventPublisher;
use shared::http::{self, ApiError, Route};
use shared::store::ConsentStore;

use crate::runtime::{BoxFuture, HttpFunction};

shared::operations! {
    /// Every operation of the consent API, with the role it needs.
    pub enum ConsentOperation {
        ListTopics = "GET" "/services/topics" Member,
        CreateTopic = "POST" "/services/topics" Admin,
        GetTopic = "GET" "/services/topics/{key}" Member,
        UpdateTopic = "PATCH" "/services/topics/{key}" Admin,
        DeleteTopic = "DELETE" "/services/topics/{key}" Admin,
        ShowConsent = "GET" "/services/consent" Member,
        RecordConsent = "PUT" "/services/consent" Admin,
        ExportConsent = "GET" "/services/consent/export" Admin,
        GetSmsHelp = "GET" "/services/consent/sms-help" Member,
        SetSmsHelp = "PUT" "/services/consent/sms-help" Admin,
        ResetSmsHelp = "DELETE" "/services/consent/sms-help" Admin,
    }
}

pub const ROUTES: &[Route] = ConsentOperation::ROUTES;

pub use ledger::EXPORT_PAGE_ROWS;

pub struct ConsentApi {
    store: ConsentStore,
    events: EventPublisher,
    claims: ClaimNames,
    /// The deployment's HELP answer (`SMS_HELP_TEXT`), shown for organizations without one.
    sms_help_text: Option<String>,
}

impl HttpFunction for ConsentApi {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

impl ConsentApi {
    /// # Errors
    /// When `TABLE_NAME` is not set.
    pub fn new(aws: &AwsClients, env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            store: ConsentStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            claims: ClaimNames::from_env(env),
            sms_help_text: env.optional("SMS_HELP_TEXT"),
        })
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond("consent-api", &request, || self.dispatch(&request)).await
    }

    async fn dispatch(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        use ConsentOperation as Op;
        let (operation, found, caller) = ConsentOperation::authorize(request, &self.claims)?;
        let key = found.param("key");
        match operation {
            Op::ListTopics => self.list_topics(request, &caller).await,
            Op::CreateTopic => self.create_topic(request, &caller).await,
            Op::GetTopic => http::json(200, &self.store.topic(&caller.org, key).await?),
            Op::UpdateTopic => self.update_topic(request, &caller, key).await,
            Op::DeleteTopic => self.delete_topic(request, &caller, key).await,
            Op::ShowConsent => self.show(request, &caller).await,
            Op::RecordConsent => self.put(request, &caller).await,
            Op::ExportConsent => self.export(request, &caller).await,
            Op::GetSmsHelp => self.sms_help(request, &caller).await,
            Op::SetSmsHelp => self.set_sms_help(request, &caller).await,
            Op::ResetSmsHelp => self.reset_sms_help(request, &caller).await,
        }
    }

    async fn audit(&self, request: &Request, caller: &Caller, action: &str, resource: String) {
        let request_id = http::request_id(request);
        self.events
            .audit(
                caller,
                &request_id,
                action,
                resource,
                serde_json::Value::Null,
            )
            .await;
    }
}
