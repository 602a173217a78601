//! The email API (SPEC §4): send (simple, template, bulk), list, read with timeline,
//! delete, resend failed, suppressions. Sending happens in the email worker; this function
//! validates, stores `queued` records and enqueues them.

use std::collections::BTreeMap;

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use shared::auth::{Caller, ClaimNames};
use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::consent::{ALL_TOPICS, Channel, ConsentSource, ConsentState};
use shared::domain::RecordId;
use shared::domain::email::{EmailAddress, EmailRecord, EmailStatus, TimelineEntry};
use shared::domain::template::{TemplateContent, TemplateKind};
use shared::events::{Event, EventPublisher};
use shared::http::idempotency::{decode_segment, run_once};
use shared::http::{self, ApiError, FieldErrorCollector, PageRequest, Route, RouteMatch};
use shared::queue::{BulkSpan, EMAIL_SEND_JOB_IDS, Envelope, Job, QueuePublisher};

use shared::render::{self, Escape, RenderError};
use shared::store::{
    ConsentChange, ConsentStore, EmailListQuery, EmailStore, IdempotencyStore, TemplateStore,
};

use crate::registry::{BoxFuture, HttpFunction};

/// The most an email's rendered html and text may hold together. Both go in one body item,
/// and "the maximum item size in DynamoDB is 400 KB, which includes both attribute name
/// binary length (UTF-8 length) and attribute value lengths" (DynamoDB Developer Guide,
/// "Quotas", "Item size"): 400 KB = 409,600 bytes, less room for the keys and names.
pub const MAX_EMAIL_BODY_BYTES: usize = 400_000;

shared::operations! {
    /// Every operation of the email API, with the role it needs.
    pub enum EmailOperation {
        Send = "POST" "/services/email" Member,
        List = "GET" "/services/email" Member,
        ListSuppressions = "GET" "/services/email/suppressions" Member,
        DeleteSuppression = "DELETE" "/services/email/suppressions/{address}" Admin,
        ResendFailed = "POST" "/services/email/resend-failed" Admin,
        Get = "GET" "/services/email/{id}" Member,
        Delete = "DELETE" "/services/email/{id}" Admin,
    }
}

pub const ROUTES: &[Route] = EmailOperation::ROUTES;

pub const MAX_BULK_RECIPIENTS: usize = 10_000;
const MAX_RESEND: usize = 10_000;

pub struct EmailApi {
    emails: EmailStore,
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

/// `to` of a simple or template send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    to: Option<String>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    from: Option<String>,
    from_name: Option<String>,
    reply_to: Option<String>,
    #[serde(default)]
    cc: Vec<String>,
    #[serde(default)]
    bcc: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    template_id: Option<String>,
    variables: Option<Value>,
    recipients: Option<Vec<BulkRecipient>>,
    campaign: Option<String>,
    /// A consent topic of the organization: the email then carries a one-click unsubscribe
    /// link and skips whoever opted out of the topic (issue 19).
    topic: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkRecipient {
    to: String,
    #[serde(default)]
    variables: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResendRequest {
    campaign: Option<String>,
    created_after: Option<chrono::DateTime<chrono::Utc>>,
    created_before: Option<chrono::DateTime<chrono::Utc>>,
}

/// The content every recipient of one send shares, before per-recipient variables.
struct ContentSource {
    subject: String,
    html: Option<String>,
    text: Option<String>,
    /// Literal content (a simple send) is not rendered.
    render: bool,
    template_id: Option<String>,
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

    /// Lifting a suppression re-enables the address in the consent ledger too, when what
    /// took it out of everything was a bounce. A person's own choice (a spam report, an
    /// unsubscribe, a one-click link) stays: only a new choice, recorded with its source
    /// (`PUT /services/consent/`), changes it.
    async fn lift_bounce_in_ledger(&self, caller: &Caller, address: &str) -> Result<(), ApiError> {
        let subject = address.to_lowercase();
        let states = self
            .consent
            .states(&caller.org, Channel::Email, &subject)
            .await?;
        let bounced = states.iter().any(|c| {
            c.topic == ALL_TOPICS
                && c.state == ConsentState::OptedOut
                && c.source == ConsentSource::Bounce
        });
        if bounced {
            let change = ConsentChange {
                channel: Channel::Email,
                subject,
                topic: ALL_TOPICS.to_owned(),
                state: ConsentState::OptedIn,
                source: ConsentSource::Api,
                actor: caller.user.clone(),
                evidence: BTreeMap::from([("action".to_owned(), "suppression lifted".to_owned())]),
                at: chrono::Utc::now(),
            };
            self.consent.record(&caller.org, &change, None).await?;
        }
        Ok(())
    }

    async fn dispatch(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        use EmailOperation as Op;
        let (operation, found) =
            EmailOperation::find(request.method().as_str(), request.uri().path())?;
        let caller = Caller::from_request(request, &self.claims)?;
        tracing::Span::current().record("org", caller.org.as_str());
        caller.require(operation.role())?;
        match operation {
            Op::Send => {
                run_once(
                    &self.idempotency,
                    &caller.org,
                    "POST /services/email",
                    request,
                    || self.send(request, &caller),
                )
                .await
            }
            Op::List => self.list(request, &caller).await,
            Op::ListSuppressions => self.list_suppressions(request, &caller).await,
            Op::DeleteSuppression => {
                let address = decode_segment(found.param("address"));
                self.emails
                    .delete_suppression(&caller.org, &address)
                    .await?;
                self.lift_bounce_in_ledger(&caller, &address).await?;
                self.audit(
                    request,
                    &caller,
                    "email.suppression.delete",
                    format!("suppression/{address}"),
                    Vec::new(),
                )
                .await;
                Ok(http::no_content())
            }
            Op::ResendFailed => {
                run_once(
                    &self.idempotency,
                    &caller.org,
                    "POST /services/email/resend-failed",
                    request,
                    || self.resend_failed(request, &caller),
                )
                .await
            }
            Op::Get => {
                let record = self
                    .emails
                    .get_with_bodies(&caller.org, record_id(&found)?)
                    .await?;
                http::json(200, &record.to_json(true))
            }
            Op::Delete => {
                let id = record_id(&found)?;
                self.emails
                    .delete(&caller.org, id, chrono::Utc::now())
                    .await?;
                self.audit(
                    request,
                    &caller,
                    "email.delete",
                    format!("email/{id}"),
                    Vec::new(),
                )
                .await;
                Ok(http::no_content())
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

    async fn send(&self, request: &Request, caller: &Caller) -> Result<Response<Body>, ApiError> {
        self.require_provider().await?;
        let body: SendRequest = http::parse_json(request)?;
        let now = chrono::Utc::now();
        let mut errors = FieldErrorCollector::new();

        let from = match body.from.as_deref().or(self.default_from.as_deref()) {
            Some(from) => EmailAddress::parse(from)
                .map_err(|m| errors.add("from", m))
                .ok(),
            None => {
                errors.add("from", "is required (no default sender is configured)");
                None
            }
        };
        let reply_to = body.reply_to.as_deref().and_then(|r| {
            EmailAddress::parse(r)
                .map_err(|m| errors.add("reply_to", m))
                .ok()
        });
        let cc = parse_list(&body.cc, "cc", &mut errors);
        let bcc = parse_list(&body.bcc, "bcc", &mut errors);
        if body.metadata.len() > 20
            || body
                .metadata
                .iter()
                .any(|(k, v)| k.len() > 64 || v.len() > 512)
        {
            errors.add(
                "metadata",
                "at most 20 entries, keys up to 64 and values up to 512 characters",
            );
        }
        if body
            .campaign
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 100)
        {
            errors.add("campaign", "must be 1 to 100 characters");
        }
        if let Some(topic) = &body.topic
            && let Some(refusal) = self
                .consent
                .topic_refusal(&caller.org, topic, Channel::Email)
                .await?
        {
            errors.add("topic", refusal);
        }
        let content = self.content_source(&body, caller, &mut errors).await?;

        // Who receives what: (address, variables).
        let recipients: Vec<(String, String, Value)> = match &body.recipients {
            Some(list) => {
                if body.to.is_some() {
                    errors.add("to", "use either to or recipients");
                }
                if list.is_empty() || list.len() > MAX_BULK_RECIPIENTS {
                    errors.add(
                        "recipients",
                        format!("must hold 1 to {MAX_BULK_RECIPIENTS} recipients"),
                    );
                }
                list.iter()
                    .enumerate()
                    .map(|(i, r)| {
                        (
                            format!("recipients[{i}]"),
                            r.to.clone(),
                            r.variables.clone().unwrap_or_else(|| json!({})),
                        )
                    })
                    .collect()
            }
            None => match &body.to {
                Some(to) => vec![(
                    "to".to_owned(),
                    to.clone(),
                    body.variables.clone().unwrap_or_else(|| json!({})),
                )],
                None => {
                    errors.add("to", "is required");
                    Vec::new()
                }
            },
        };
        if body.recipients.is_none() && body.variables.is_some() && body.template_id.is_none() {
            errors.add("variables", "variables apply to template sends");
        }

        let bulk_id = body
            .recipients
            .as_ref()
            .map(|_| RecordId::new().to_string());
        let mut records = Vec::with_capacity(recipients.len());
        for (field, to, variables) in &recipients {
            let address = match EmailAddress::parse(to) {
                Ok(address) => address,
                Err(message) => {
                    errors.add(
                        if field == "to" {
                            "to".to_owned()
                        } else {
                            format!("{field}.to")
                        },
                        message,
                    );
                    continue;
                }
            };
            if !variables.is_object() {
                errors.add(
                    format!(
                        "{}variables",
                        if field == "to" {
                            String::new()
                        } else {
                            format!("{field}.")
                        }
                    ),
                    "must be an object",
                );
                continue;
            }
            let Some(content) = &content else { continue };
            let rendered = match render_content(content, variables) {
                Ok(rendered) => rendered,
                Err(RenderError::MissingVariable(name)) => {
                    let field = if field == "to" {
                        "variables".to_owned()
                    } else {
                        format!("{field}.variables")
                    };
                    errors.add(field, format!("missing variable: {name}"));
                    continue;
                }
                Err(RenderError::Template(message)) => {
                    errors.add(
                        "template_id",
                        format!("the template cannot be rendered: {message}"),
                    );
                    continue;
                }
            };
            let body_bytes = rendered.1.as_ref().map_or(0, String::len)
                + rendered.2.as_ref().map_or(0, String::len);
            if body_bytes > MAX_EMAIL_BODY_BYTES {
                let field = if field == "to" {
                    "html".to_owned()
                } else {
                    format!("{field}.html")
                };
                errors.add(
                    field,
                    format!("html and text together must be at most {MAX_EMAIL_BODY_BYTES} bytes (rendered: {body_bytes})"),
                );
                continue;
            }
            let Some(from) = &from else { continue };
            records.push(EmailRecord {
                id: RecordId::new().to_string(),
                org_id: caller.org.clone(),
                to: address,
                cc: cc.clone(),
                bcc: bcc.clone(),
                from: from.clone(),
                from_name: body.from_name.clone(),
                reply_to: reply_to.clone(),
                subject: rendered.0,
                html: rendered.1,
                text: rendered.2,
                metadata: body.metadata.clone(),
                template_id: content.template_id.clone(),
                campaign: body.campaign.clone(),
                topic: body.topic.clone(),
                bulk_id: bulk_id.clone(),
                status: EmailStatus::Queued,
                engagement: Vec::new(),
                timeline: vec![TimelineEntry::new(now, "queued", None)],
                attempts: 0,
                failure_kind: None,
                failure_reason: None,
                provider_message_id: None,
                created_at: now,
                updated_at: now,
                sent_at: None,
                version: 1,
                applied_events: Vec::new(),
            });
        }
        errors.finish()?;

        self.emails.create_all(&records).await?;
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        match &bulk_id {
            Some(bulk_id) => {
                let Some(span) = BulkSpan::of(&ids) else {
                    return Err(ApiError::field(
                        "recipients",
                        "must name at least one recipient",
                    ));
                };
                let job = Envelope::new(
                    caller.org.clone(),
                    Job::EmailBulk {
                        bulk_id: bulk_id.clone(),
                        span,
                    },
                );
                self.queue
                    .send_all(&self.bulk_queue, &[job])
                    .await
                    .map_err(ApiError::internal)?;
                tracing::info!(bulk_id, recipients = ids.len(), "bulk email queued");
                self.audit(
                    request,
                    caller,
                    "email.send",
                    format!("bulk/{bulk_id}"),
                    ids.clone(),
                )
                .await;
                http::json(
                    202,
                    &json!({"bulk_id": bulk_id, "ids": ids, "count": ids.len(), "status": "queued"}),
                )
            }
            None => {
                let job = Envelope::new(caller.org.clone(), Job::EmailSend { ids: ids.clone() });
                self.queue
                    .send_all(&self.send_queue, &[job])
                    .await
                    .map_err(ApiError::internal)?;
                tracing::info!(email = %ids[0], "email queued");
                self.audit(
                    request,
                    caller,
                    "email.send",
                    format!("email/{}", ids[0]),
                    ids.clone(),
                )
                .await;
                http::json(202, &json!({"id": ids[0], "status": "queued"}))
            }
        }
    }

    /// The shared content: a stored template (active, the caller's) or the request's own
    /// subject and bodies.
    async fn content_source(
        &self,
        body: &SendRequest,
        caller: &Caller,
        errors: &mut FieldErrorCollector,
    ) -> Result<Option<ContentSource>, ApiError> {
        if let Some(template_id) = &body.template_id {
            for (field, present) in [
                ("subject", body.subject.is_some()),
                ("html", body.html.is_some()),
                ("text", body.text.is_some()),
            ] {
                if present {
                    errors.add(
                        field,
                        "comes from the template; do not send it with template_id",
                    );
                }
            }
            let Some(id) = RecordId::parse(template_id) else {
                errors.add("template_id", "no such email template");
                return Ok(None);
            };
            let template = match self
                .templates
                .get(&caller.org, TemplateKind::Email, id)
                .await
            {
                Ok(template) => template,
                Err(shared::store::StoreError::NotFound) => {
                    errors.add("template_id", "no such email template");
                    return Ok(None);
                }
                Err(other) => return Err(other.into()),
            };
            if !template.is_active {
                errors.add("template_id", "the template is not active");
                return Ok(None);
            }
            let TemplateContent::Email {
                subject,
                html,
                text,
                ..
            } = template.content
            else {
                return Err(ApiError::internal(anyhow::anyhow!(
                    "email template {id} has non-email content"
                )));
            };
            return Ok(Some(ContentSource {
                subject,
                html,
                text,
                render: true,
                template_id: Some(template_id.clone()),
            }));
        }
        let subject = body.subject.clone().unwrap_or_default();
        if subject.trim().is_empty() {
            errors.add("subject", "is required");
        } else if subject.chars().count() > 998 || subject.contains(['\r', '\n']) {
            errors.add("subject", "must be one line of at most 998 characters");
        }
        let html = body.html.clone().filter(|h| !h.trim().is_empty());
        let text = body.text.clone().filter(|t| !t.trim().is_empty());
        if html.is_none() && text.is_none() {
            errors.add("text", "text or html is required");
        }
        for (field, value) in [("html", &html), ("text", &text)] {
            if value.as_ref().is_some_and(|v| v.len() > 256 * 1024) {
                errors.add(field, "must be at most 256 KiB");
            }
        }
        // A bulk send's own subject and bodies are templates over each recipient's variables.
        Ok(Some(ContentSource {
            subject,
            html,
            text,
            render: body.recipients.is_some(),
            template_id: None,
        }))
    }

    /// Publishes the audit entry of a change and a `queued` delivery event per email it queued.
    async fn audit(
        &self,
        request: &Request,
        caller: &Caller,
        action: &str,
        resource: String,
        queued: Vec<String>,
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

    async fn list(&self, request: &Request, caller: &Caller) -> Result<Response<Body>, ApiError> {
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
        http::json(
            200,
            &json!({"items": items, "next_cursor": next.map(|p| page.next_cursor(p))}),
        )
    }

    async fn list_suppressions(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let org = caller.listed_org(&params)?;
        let page = PageRequest::from_query(&params, org.as_str())?;
        let (entries, next) = self.emails.list_suppressions(&org, &page).await?;
        http::json(
            200,
            &json!({"items": entries, "next_cursor": next.map(|p| page.next_cursor(p))}),
        )
    }

    async fn resend_failed(
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
                Envelope::new(
                    caller.org.clone(),
                    Job::EmailSend {
                        ids: chunk.to_vec(),
                    },
                )
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
            ids.clone(),
        )
        .await;
        http::json(200, &json!({"requeued": ids.len(), "ids": ids}))
    }
}

fn record_id(found: &RouteMatch) -> Result<RecordId, ApiError> {
    RecordId::parse(found.param("id")).ok_or(ApiError::NotFound)
}

fn parse_list(
    values: &[String],
    field: &str,
    errors: &mut FieldErrorCollector,
) -> Vec<EmailAddress> {
    if values.len() > 50 {
        errors.add(field, "at most 50 addresses");
    }
    values
        .iter()
        .filter_map(|v| {
            EmailAddress::parse(v)
                .map_err(|m| errors.add(field, m))
                .ok()
        })
        .collect()
}

/// Subject, html, text for one recipient. Subjects and text are not HTML-escaped.
fn render_content(
    content: &ContentSource,
    variables: &Value,
) -> Result<(String, Option<String>, Option<String>), RenderError> {
    if !content.render {
        return Ok((
            content.subject.clone(),
            content.html.clone(),
            content.text.clone(),
        ));
    }
    Ok((
        render::render(&content.subject, variables, Escape::None)?,
        content
            .html
            .as_deref()
            .map(|h| render::render(h, variables, Escape::Html))
            .transpose()?,
        content
            .text
            .as_deref()
            .map(|t| render::render(t, variables, Escape::None))
            .transpose()?,
    ))
}
