//! Sending: to one number, a list of recipients, or a phonebook's contacts; a body or an
//! SMS template rendered per recipient. Records are stored `queued` and their job enqueued.

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use shared::auth::Caller;
use shared::bulk::{Bulk, BulkChannel};
use shared::consent::Channel;
use shared::domain::RecordId;
use shared::domain::sms_message::{MAX_BODY_CHARS, PhoneNumber, SmsRecord, parse_sender};
use shared::domain::template::{TemplateContent, TemplateKind};
use shared::events::Event;
use shared::http::{self, ApiError, FieldErrorCollector};
use shared::queue::{BulkSpan, Envelope, Job, SMS_SEND_JOB_IDS, send_job_names};
use shared::render::{self, Escape, RenderError};
use shared::store::StoreError;

use super::SmsApi;
use super::targets::{Audience, BulkRecipient, Target};
use shared::providers::twilio::TwilioSettings;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendRequest {
    pub(super) to: Option<String>,
    pub(super) body: Option<String>,
    pub(super) from: Option<String>,
    pub(super) template_id: Option<String>,
    pub(super) variables: Option<Value>,
    pub(super) recipients: Option<Vec<BulkRecipient>>,
    pub(super) phonebook_id: Option<String>,
    /// A consent topic of the organization for SMS: numbers opted out of it (or never in,
    /// for a topic out by default) end `suppressed` (issue 19).
    pub(super) topic: Option<String>,
}

impl SendRequest {
    pub(super) fn is_bulk(&self) -> bool {
        self.recipients.is_some() || self.phonebook_id.is_some()
    }

    pub(super) fn variables(&self) -> Value {
        self.variables.clone().unwrap_or_else(|| json!({}))
    }
}

/// The text a send shares: the template's or the request's, and whether it is rendered
/// per recipient.
#[derive(Default)]
pub(super) struct Content {
    pub(super) template_id: Option<String>,
    pub(super) text: Option<String>,
    render: bool,
}

/// A send's request with its checked content and sender (`None` where an error was noted).
pub(super) struct AcceptedSend<'a> {
    pub(super) body: &'a SendRequest,
    pub(super) content: Content,
    pub(super) from: Option<String>,
}

/// What every record of one send has in common.
struct Send<'a> {
    body: &'a SendRequest,
    caller: &'a Caller,
    content: Content,
    from: Option<String>,
    bulk_id: Option<String>,
    now: chrono::DateTime<chrono::Utc>,
}

impl Send<'_> {
    /// The `queued` record for `target`, or `None` with what is wrong noted in `errors`.
    fn record_for(&self, target: &Target, errors: &mut FieldErrorCollector) -> Option<SmsRecord> {
        let to = PhoneNumber::parse(&target.to)
            .map_err(|m| errors.add(target.field("to"), m))
            .ok()?;
        if !target.variables.is_object() {
            errors.add(target.field("variables"), "must be an object");
            return None;
        }
        let text = self.text_for(target, errors)?;
        if text.chars().count() > MAX_BODY_CHARS {
            let field = if self.bulk_id.is_some() {
                target.field("body")
            } else {
                "body".to_owned()
            };
            errors.add(
                field,
                format!("must be at most {MAX_BODY_CHARS} characters"),
            );
            return None;
        }
        let from = self.from.clone()?;
        let mut record = SmsRecord::queued(self.caller.org.clone(), to, Some(from), text, self.now);
        record.template_id.clone_from(&self.content.template_id);
        record.bulk_id.clone_from(&self.bulk_id);
        record.phonebook_id.clone_from(&self.body.phonebook_id);
        record.topic.clone_from(&self.body.topic);
        Some(record)
    }

    /// The text `target` receives: the shared text, rendered with its variables when the
    /// send renders per recipient.
    fn text_for(&self, target: &Target, errors: &mut FieldErrorCollector) -> Option<String> {
        let content = self.content.text.as_ref()?;
        if !self.content.render {
            return Some(content.clone());
        }
        match render::render(content, &target.variables, Escape::None) {
            Ok(text) => Some(text),
            Err(RenderError::MissingVariable(name)) => {
                errors.add(
                    target.field("variables"),
                    format!("missing variable: {name}"),
                );
                None
            }
            Err(RenderError::Template(message)) => {
                errors.add(
                    "template_id",
                    format!("the body cannot be rendered: {message}"),
                );
                None
            }
        }
    }
}

/// The sender: the request's, else the configured default.
fn sender(
    body: &SendRequest,
    twilio: &TwilioSettings,
    errors: &mut FieldErrorCollector,
) -> Option<String> {
    match body.from.as_deref().or(twilio.default_from.as_deref()) {
        Some(from) => parse_sender(from).map_err(|m| errors.add("from", m)).ok(),
        None => {
            errors.add("from", "is required (no default sender is configured)");
            None
        }
    }
}

impl SmsApi {
    pub(super) async fn send(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let twilio = self.twilio().await?;
        let body: SendRequest = http::parse_json(request)?;
        let mut errors = FieldErrorCollector::new();
        let from = sender(&body, twilio, &mut errors);
        if let Some(topic) = &body.topic
            && let Some(refusal) = self
                .consent
                .topic_refusal(&caller.org, topic, Channel::Sms)
                .await?
        {
            errors.add("topic", refusal);
        }
        let content = self.content(&body, caller, &mut errors).await?;
        let targets = match self.audience(&body, caller, &mut errors).await? {
            Audience::Targets(targets) => targets,
            Audience::Phonebook(book) => {
                let accepted = AcceptedSend {
                    body: &body,
                    content,
                    from,
                };
                return self
                    .send_to_phonebook(request, caller, accepted, &book, errors)
                    .await;
            }
        };
        let send = Send {
            body: &body,
            caller,
            content,
            from,
            bulk_id: body.is_bulk().then(|| RecordId::new().to_string()),
            now: chrono::Utc::now(),
        };
        let mut records: Vec<SmsRecord> = targets
            .iter()
            .filter_map(|target| send.record_for(target, &mut errors))
            .collect();
        errors.finish()?;
        // Each in the send job it will be enqueued in, claimed once by the job's delivery:
        // a bulk's in jobs of SMS_SEND_JOB_IDS (the bulk worker's), a single send's in one.
        let per_job = if send.bulk_id.is_some() {
            SMS_SEND_JOB_IDS
        } else {
            records.len()
        };
        let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        let names = send_job_names(&ids, per_job);
        for (record, name) in records.iter_mut().zip(names) {
            record.send_job = Some(name);
        }
        self.sms.create_all(&records).await?;
        if let Some(bulk_id) = &send.bulk_id {
            let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
            if let Some(bulk) = Bulk::of_recipients(
                caller.org.clone(),
                bulk_id,
                BulkChannel::Sms,
                &ids,
                send.now,
            ) {
                self.bulks.create(&bulk).await?;
            }
        }
        self.enqueue(request, caller, &records, send.bulk_id.as_deref())
            .await?;
        http::json(202, &send_answer(&records, send.bulk_id.as_deref()))
    }

    /// The text the send shares (the body or the template's), checked.
    async fn content(
        &self,
        body: &SendRequest,
        caller: &Caller,
        errors: &mut FieldErrorCollector,
    ) -> Result<Content, ApiError> {
        if body.template_id.is_none() && !body.is_bulk() && body.variables.is_some() {
            errors.add("variables", "variables apply to template sends");
        }
        Ok(match (&body.template_id, &body.body) {
            (Some(_), Some(_)) => {
                errors.add(
                    "body",
                    "comes from the template; do not send it with template_id",
                );
                Content::default()
            }
            (Some(template_id), None) => {
                match self.template_body(caller, template_id, errors).await? {
                    Some(text) => Content {
                        template_id: Some(template_id.clone()),
                        text: Some(text),
                        render: true,
                    },
                    None => Content::default(),
                }
            }
            (None, Some(text)) => {
                if text.trim().is_empty() {
                    errors.add("body", "must not be empty");
                }
                Content {
                    template_id: None,
                    text: Some(text.clone()),
                    render: body.is_bulk(),
                }
            }
            (None, None) => {
                errors.add("body", "body or template_id is required");
                Content::default()
            }
        })
    }

    /// Sends the stored records' job (a bulk job for a bulk) and publishes the
    /// audit entry and each record's `queued`.
    async fn enqueue(
        &self,
        request: &Request,
        caller: &Caller,
        records: &[SmsRecord],
        bulk_id: Option<&str>,
    ) -> Result<(), ApiError> {
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        let segments: usize = records.iter().map(|r| r.segments).sum();
        let (queue, job, resource) = match (bulk_id, BulkSpan::of(&ids)) {
            (Some(bulk_id), Some(span)) => (
                &self.bulk_queue,
                Job::SmsBulk {
                    bulk_id: bulk_id.to_owned(),
                    span,
                },
                format!("sms-bulk/{bulk_id}"),
            ),
            _ => (
                &self.send_queue,
                Job::SmsSend { ids: ids.clone() },
                format!("sms/{}", ids[0]),
            ),
        };
        let mut envelope = Envelope::new(caller.org.clone(), job);
        if bulk_id.is_none() {
            envelope.send_job = records.first().and_then(|r| r.send_job.clone());
        }
        self.queue
            .send_all(queue, &[envelope])
            .await
            .map_err(ApiError::internal)?;
        tracing::info!(messages = ids.len(), segments, "SMS queued");
        let mut events = vec![
            Event::audit(caller, &http::request_id(request), "sms.send", resource)
                .with_detail(json!({"messages": ids.len(), "segments": segments})),
        ];
        events.extend(
            ids.iter()
                .map(|id| Event::delivery(&caller.org, "sms", format!("sms/{id}"), "queued")),
        );
        self.events.publish(events).await;
        Ok(())
    }

    /// The body of an active SMS template of the caller's organization.
    async fn template_body(
        &self,
        caller: &Caller,
        template_id: &str,
        errors: &mut FieldErrorCollector,
    ) -> Result<Option<String>, ApiError> {
        let Some(id) = RecordId::parse(template_id) else {
            errors.add("template_id", "no such SMS template");
            return Ok(None);
        };
        let template = match self.templates.get(&caller.org, TemplateKind::Sms, id).await {
            Ok(template) => template,
            Err(StoreError::NotFound) => {
                errors.add("template_id", "no such SMS template");
                return Ok(None);
            }
            Err(other) => return Err(other.into()),
        };
        if !template.is_active {
            errors.add("template_id", "the template is not active");
            return Ok(None);
        }
        match template.content {
            TemplateContent::Sms { body } => Ok(Some(body)),
            _ => Err(ApiError::internal(anyhow::anyhow!(
                "SMS template {id} has non-SMS content"
            ))),
        }
    }
}

/// The 202 of a send: the bulk's id and its records, or the one record's measure.
fn send_answer(records: &[SmsRecord], bulk_id: Option<&str>) -> Value {
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let segments: usize = records.iter().map(|r| r.segments).sum();
    match bulk_id {
        Some(bulk_id) => {
            json!({"bulk_id": bulk_id, "ids": ids, "count": ids.len(), "segments": segments, "status": "queued"})
        }
        None => {
            let record = &records[0];
            json!({"id": record.id, "status": "queued", "encoding": record.encoding, "segments": record.segments, "characters": record.characters})
        }
    }
}
