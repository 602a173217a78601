//! The email API (SPEC §4): send (simple, template, bulk), list, read with timeline,
//! delete, resend failed, suppressions. Sending happens in the email worker; this function
//! validates, stores `queued` records and enqueues them.
//!
//! One file per resource: [`send`] (its [`content`]), [`messages`] (reading, deleting and
//! resending them; a bulk's progress), [`suppressions`].

mod content;
mod messages;
mod send;
mod suppressions;

use lambda_http::{Body, Request, Response};
use serde_json::json;

use shared::auth::{Caller, ClaimNames};
use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::domain::RecordId;
use shared::events::{Event, EventPublisher};
use shared::http::idempotency::{decode_segment, run_once};
use shared::http::{self, ApiError, Route, RouteMatch};
use shared::queue::QueuePublisher;
use shared::store::{BulkStore, ConsentStore, EmailStore, IdempotencyStore, TemplateStore};

use crate::runtime::{BoxFuture, HttpFunction};

shared::operations! {
    /// Every operation of the email API, with the role it needs.
    pub enum EmailOperation {
        Send = "POST" "/services/email" Member,
        List = "GET" "/services/email" Member,
        ListSuppressions = "GET" "/services/email/suppressions" Member,
        DeleteSuppression = "DELETE" "/services/email/suppressions/{address}" Admin,
        ResendFailed = "POST" "/services/email/resend-failed" Admin,
        GetBulk = "GET" "/services/email/bulk/{id}" Member,
        Get = "GET" "/services/email/{id}" Member,
        Delete = "DELETE" "/services/email/{id}" Admin,
    }
}

pub const ROUTES: &[Route] = EmailOperation::ROUTES;

pub struct EmailApi {
    emails: EmailStore,
    bulks: BulkStore,
    templates: TemplateStore,
    consent: ConsentStore,
    idempotency: IdempotencyStore,
    queue: QueuePublisher,
    events: EventPublisher,
    send_queue: String,
    bulk_queue: String,
    default_from: Option<String>,
    /// Whether the SendGrid secret has a value (`DescribeSecret`, never the key), asked on
    /// first use.
    provider_configured: OnFirstUse<bool>,
    claims: ClaimNames,
}

impl HttpFunction for EmailApi {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

impl EmailApi {
    /// No I/O: whether SendGrid is configured is read by the first request that sends.
    ///
    /// # Errors
    /// When a required variable is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let table = env.required("TABLE_NAME")?;
        Ok(Self {
            emails: EmailStore::new(aws.dynamodb.clone(), &table),
            bulks: BulkStore::new(aws.dynamodb.clone(), &table),
            templates: TemplateStore::new(aws.dynamodb.clone(), &table),
            consent: ConsentStore::new(aws.dynamodb.clone(), &table),
            idempotency: IdempotencyStore::new(aws.dynamodb.clone(), &table),
            queue: QueuePublisher::new(aws.sqs.clone()),
            send_queue: env.required("EMAIL_SEND_QUEUE_URL")?,
            bulk_queue: env.required("EMAIL_BULK_QUEUE_URL")?,
            default_from: env.optional("EMAIL_DEFAULT_FROM"),
            provider_configured: env.on_first_use(&aws.secrets, |env, secrets| async move {
                Ok(env.secret_is_set("SENDGRID_API_KEY", &secrets).await?)
            }),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            claims: ClaimNames::from_env(env),
        })
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond("email-api", &request, || self.dispatch(&request)).await
    }

    async fn dispatch(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        use EmailOperation as Op;
        let (operation, found, caller) = EmailOperation::authorize(request, &self.claims)?;
        // A send or a resend runs once per Idempotency-Key (scope: its method and route).
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
            Op::Get => self.get(caller, record_id(&found)?).await,
            Op::Delete => self.delete(request, caller, record_id(&found)?).await,
            Op::ResendFailed => once!(self.resend_failed(request, caller)),
            Op::GetBulk => self.get_bulk(caller, record_id(&found)?).await,
            Op::ListSuppressions => self.list_suppressions(request, caller).await,
            Op::DeleteSuppression => {
                let address = decode_segment(found.param("address"));
                self.delete_suppression(request, caller, &address).await
            }
        }
    }

    /// Checked before anything is stored: a send that cannot happen is never recorded. A
    /// secret that cannot be described answers 500 (and is asked again by the next request).
    async fn require_provider(&self) -> Result<(), ApiError> {
        if *self
            .provider_configured
            .get()
            .await
            .map_err(ApiError::internal)?
        {
            Ok(())
        } else {
            Err(ApiError::ProviderNotConfigured("SendGrid"))
        }
    }

    /// Publishes the audit entry of a change and a `queued` delivery event per email it queued.
    async fn audit(
        &self,
        request: &Request,
        caller: &Caller,
        action: &str,
        resource: String,
        queued: &[String],
    ) {
        let mut events = vec![
            Event::audit(caller, &http::request_id(request), action, resource)
                .with_detail(json!({"emails": queued.len()})),
        ];
        events.extend(
            queued
                .iter()
                .map(|id| Event::delivery(&caller.org, "email", format!("email/{id}"), "queued")),
        );
        self.events.publish(events).await;
    }
}

fn record_id(found: &RouteMatch) -> Result<RecordId, ApiError> {
    RecordId::parse(found.param("id")).ok_or(ApiError::NotFound)
}
