//! The SMS API (SPEC §4 "SMS"): send (simple, template, bulk to recipients or a phonebook),
//! list, read with timeline, delete, the Twilio balance, and phonebooks with contact import
//! (JSON or CSV, with a per-row report). Sending happens in the SMS worker; this function
//! validates, measures and stores `queued` records and enqueues them.
//!
//! One file per resource: [`send`] (its [`targets`]) and [`messages`] (reading them),
//! [`bulks`] (sends to a phonebook, a bulk's progress), [`phonebooks`].

mod bulks;
mod messages;
mod phonebooks;
mod send;
mod targets;

use lambda_http::{Body, Request, Response};
use serde_json::Value;

use shared::auth::{Caller, ClaimNames};
use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::domain::RecordId;
use shared::events::EventPublisher;
use shared::http::idempotency::run_once;
use shared::http::{self, ApiError, Route, RouteMatch};
use shared::queue::QueuePublisher;
use shared::store::{
    BulkStore, ConsentStore, IdempotencyStore, PhonebookStore, SmsStore, TemplateStore,
};

use crate::runtime::{BoxFuture, HttpFunction};
use shared::providers::twilio::TwilioSettings;

shared::operations! {
    /// Every operation of the SMS and phonebook API, with the role it needs.
    pub enum SmsOperation {
        Send = "POST" "/services/sms" Member,
        List = "GET" "/services/sms" Member,
        Balance = "GET" "/services/sms/balance" Member,
        ListInbound = "GET" "/services/sms/inbound" Member,
        GetBulk = "GET" "/services/sms/bulk/{id}" Member,
        Get = "GET" "/services/sms/{id}" Member,
        Delete = "DELETE" "/services/sms/{id}" Admin,
        CreatePhonebook = "POST" "/services/phonebooks" Member,
        ListPhonebooks = "GET" "/services/phonebooks" Member,
        GetPhonebook = "GET" "/services/phonebooks/{id}" Member,
        DeletePhonebook = "DELETE" "/services/phonebooks/{id}" Admin,
        ImportContacts = "POST" "/services/phonebooks/{id}/contacts" Member,
        ListContacts = "GET" "/services/phonebooks/{id}/contacts" Member,
        GetImport = "GET" "/services/phonebooks/{id}/imports/{import_id}" Member,
    }
}

pub const ROUTES: &[Route] = SmsOperation::ROUTES;

pub struct SmsApi {
    sms: SmsStore,
    bulks: BulkStore,
    consent: ConsentStore,
    phonebooks: PhonebookStore,
    templates: TemplateStore,
    idempotency: IdempotencyStore,
    queue: QueuePublisher,
    events: EventPublisher,
    send_queue: String,
    bulk_queue: String,
    /// `None` when Twilio is not configured.
    twilio: OnFirstUse<Option<TwilioSettings>>,
    claims: ClaimNames,
}

impl HttpFunction for SmsApi {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

impl SmsApi {
    /// No I/O: the Twilio credentials are read by the first request that needs them.
    ///
    /// # Errors
    /// When a required variable is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let table = env.required("TABLE_NAME")?;
        Ok(Self {
            sms: SmsStore::new(aws.dynamodb.clone(), &table),
            bulks: BulkStore::new(aws.dynamodb.clone(), &table),
            consent: ConsentStore::new(aws.dynamodb.clone(), &table),
            phonebooks: PhonebookStore::new(aws.dynamodb.clone(), &table),
            templates: TemplateStore::new(aws.dynamodb.clone(), &table),
            idempotency: IdempotencyStore::new(aws.dynamodb.clone(), &table),
            queue: QueuePublisher::new(aws.sqs.clone()),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            send_queue: env.required("SMS_SEND_QUEUE_URL")?,
            bulk_queue: env.required("SMS_BULK_QUEUE_URL")?,
            twilio: TwilioSettings::on_first_use(aws, env)?,
            claims: ClaimNames::from_env(env),
        })
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond("sms-api", &request, || self.dispatch(&request)).await
    }

    async fn dispatch(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        use SmsOperation as Op;
        let (operation, found, caller) = SmsOperation::authorize(request, &self.claims)?;
        // A send, a phonebook or an import runs once per Idempotency-Key (scope: its route).
        let scope = operation.idempotency_scope();
        macro_rules! once {
            ($handler:expr) => {
                run_once(&self.idempotency, &caller.org, &scope, request, || $handler).await
            };
        }
        let caller = &caller;
        match operation {
            Op::Send => once!(self.send(request, caller)),
            Op::List => self.list(request, caller).await,
            Op::Balance => self.balance(caller).await,
            Op::ListInbound => self.list_inbound(request, caller).await,
            Op::GetBulk => self.get_bulk(caller, &record_id(&found)?).await,
            Op::Get => self.get(caller, &record_id(&found)?).await,
            Op::Delete => self.delete(request, caller, &record_id(&found)?).await,
            Op::CreatePhonebook => once!(self.create_phonebook(request, caller)),
            Op::ListPhonebooks => self.list_phonebooks(request, caller).await,
            Op::GetPhonebook => self.get_phonebook(caller, &record_id(&found)?).await,
            Op::DeletePhonebook => {
                let id = record_id(&found)?;
                self.delete_phonebook(request, caller, &id).await
            }
            Op::ImportContacts => {
                let id = record_id(&found)?;
                once!(self.import_contacts(request, caller, &id))
            }
            Op::GetImport => {
                let id = record_id(&found)?;
                let import = RecordId::parse(found.param("import_id")).ok_or(ApiError::NotFound)?;
                self.get_import(caller, &id, &import.to_string()).await
            }
            Op::ListContacts => {
                let id = record_id(&found)?;
                self.list_contacts(request, caller, &id).await
            }
        }
    }

    /// Twilio as configured. Checked before anything is stored: a send that cannot happen is
    /// never recorded. Credentials that cannot be read answer 500 (and are read again by the
    /// next request).
    async fn twilio(&self) -> Result<&TwilioSettings, ApiError> {
        self.twilio
            .get()
            .await
            .map_err(ApiError::internal)?
            .as_ref()
            .ok_or(ApiError::ProviderNotConfigured("Twilio"))
    }

    /// Publishes the audit entry of a change made in this request.
    async fn audit(
        &self,
        request: &Request,
        caller: &Caller,
        action: &str,
        resource: String,
        detail: Value,
    ) {
        let request_id = http::request_id(request);
        self.events
            .audit(caller, &request_id, action, resource, detail)
            .await;
    }
}

fn record_id(found: &RouteMatch) -> Result<String, ApiError> {
    RecordId::parse(found.param("id"))
        .map(|id| id.to_string())
        .ok_or(ApiError::NotFound)
}
