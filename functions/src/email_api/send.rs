//! Sending: one address or a bulk of recipients, literal content or a stored template
//! rendered per recipient. Records are stored `queued` and their job enqueued.

use std::collections::BTreeMap;

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use shared::auth::Caller;
use shared::bulk::{Bulk, BulkChannel};
use shared::consent::Channel;
use shared::domain::RecordId;
use shared::domain::email::{EmailAddress, EmailRecord, SendShared};
use shared::http::{self, ApiError, FieldErrorCollector};
use shared::queue::{BulkSpan, EMAIL_SEND_JOB_IDS, Envelope, Job, send_job_names};
use shared::render::RenderError;

use super::EmailApi;
use super::content::{BulkSplit, ContentSource};

/// The most an email's rendered html and text may hold together. Both go in one body item,
/// and "the maximum item size in DynamoDB is 400 KB, which includes both attribute name
/// binary length (UTF-8 length) and attribute value lengths" (DynamoDB Developer Guide,
/// "Quotas", "Item size"): 400 KB = 409,600 bytes, less room for the keys and names.
pub const MAX_EMAIL_BODY_BYTES: usize = 400_000;
pub const MAX_BULK_RECIPIENTS: usize = 10_000;
/// Addresses a `cc` or `bcc` list may hold.
const MAX_COPIES: usize = 50;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendRequest {
    /// The address of a simple or template send.
    pub(super) to: Option<String>,
    pub(super) subject: Option<String>,
    pub(super) text: Option<String>,
    pub(super) html: Option<String>,
    pub(super) from: Option<String>,
    pub(super) from_name: Option<String>,
    pub(super) reply_to: Option<String>,
    #[serde(default)]
    pub(super) cc: Vec<String>,
    #[serde(default)]
    pub(super) bcc: Vec<String>,
    #[serde(default)]
    pub(super) metadata: BTreeMap<String, String>,
    pub(super) template_id: Option<String>,
    pub(super) variables: Option<Value>,
    pub(super) recipients: Option<Vec<BulkRecipient>>,
    pub(super) campaign: Option<String>,
    /// A consent topic of the organization: the email then carries a one-click unsubscribe
    /// link and skips whoever opted out of the topic (issue 19).
    pub(super) topic: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkRecipient {
    to: String,
    #[serde(default)]
    variables: Option<Value>,
}

/// One recipient before rendering: where its fields are in the request, its address and
/// variables.
struct Recipient {
    /// `recipients[3]` in a bulk; `None` for the `to` of a simple send.
    field: Option<String>,
    to: String,
    variables: Value,
}

impl Recipient {
    /// The name of `field` of this recipient in a field error (`recipients[3].to`).
    fn field(&self, field: &str) -> String {
        match &self.field {
            Some(prefix) => format!("{prefix}.{field}"),
            None => field.to_owned(),
        }
    }
}

/// Who receives the send: the recipients of a bulk, or `to`.
fn recipients(body: &SendRequest, errors: &mut FieldErrorCollector) -> Vec<Recipient> {
    if body.recipients.is_none() && body.variables.is_some() && body.template_id.is_none() {
        errors.add("variables", "variables apply to template sends");
    }
    let Some(list) = &body.recipients else {
        let Some(to) = &body.to else {
            errors.add("to", "is required");
            return Vec::new();
        };
        return vec![Recipient {
            field: None,
            to: to.clone(),
            variables: body.variables.clone().unwrap_or_else(|| json!({})),
        }];
    };
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
        .map(|(i, r)| Recipient {
            field: Some(format!("recipients[{i}]")),
            to: r.to.clone(),
            variables: r.variables.clone().unwrap_or_else(|| json!({})),
        })
        .collect()
}

fn parse_list(
    values: &[String],
    field: &str,
    errors: &mut FieldErrorCollector,
) -> Vec<EmailAddress> {
    if values.len() > MAX_COPIES {
        errors.add(field, format!("at most {MAX_COPIES} addresses"));
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

/// What every email of the send shares, checked (the template id comes with the content).
fn send_shared(body: &SendRequest, errors: &mut FieldErrorCollector) -> SendShared {
    let reply_to = body.reply_to.as_deref().and_then(|r| {
        EmailAddress::parse(r)
            .map_err(|m| errors.add("reply_to", m))
            .ok()
    });
    let metadata_too_big = body.metadata.len() > 20
        || body
            .metadata
            .iter()
            .any(|(k, v)| k.len() > 64 || v.len() > 512);
    if metadata_too_big {
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
    SendShared {
        from_name: body.from_name.clone(),
        reply_to,
        cc: parse_list(&body.cc, "cc", errors),
        bcc: parse_list(&body.bcc, "bcc", errors),
        metadata: body.metadata.clone(),
        template_id: None,
        campaign: body.campaign.clone(),
        topic: body.topic.clone(),
        bulk_id: body
            .recipients
            .as_ref()
            .map(|_| RecordId::new().to_string()),
    }
}

/// What one send makes of each recipient.
struct Send<'a> {
    caller: &'a Caller,
    from: Option<EmailAddress>,
    content: Option<ContentSource>,
    /// A bulk's bodies split into shared text and varying parts, where they split.
    split: Option<BulkSplit>,
    shared: SendShared,
    now: chrono::DateTime<chrono::Utc>,
}

impl Send<'_> {
    /// The `queued` email for `recipient`, or `None` with what is wrong noted in `errors`.
    fn record_for(
        &self,
        recipient: &Recipient,
        errors: &mut FieldErrorCollector,
    ) -> Option<EmailRecord> {
        let address = EmailAddress::parse(&recipient.to)
            .map_err(|m| errors.add(recipient.field("to"), m))
            .ok()?;
        if !recipient.variables.is_object() {
            errors.add(recipient.field("variables"), "must be an object");
            return None;
        }
        let content = match self.content.as_ref()?.render_for(&recipient.variables) {
            Ok(content) => content,
            Err(RenderError::MissingVariable(name)) => {
                errors.add(
                    recipient.field("variables"),
                    format!("missing variable: {name}"),
                );
                return None;
            }
            Err(RenderError::Template(message)) => {
                errors.add(
                    "template_id",
                    format!("the template cannot be rendered: {message}"),
                );
                return None;
            }
        };
        let body_bytes = content.body_bytes();
        if body_bytes > MAX_EMAIL_BODY_BYTES {
            errors.add(
                recipient.field("html"),
                format!("html and text together must be at most {MAX_EMAIL_BODY_BYTES} bytes (rendered: {body_bytes})"),
            );
            return None;
        }
        let from = self.from.clone()?;
        let org = self.caller.org.clone();
        let parts = self
            .split
            .as_ref()
            .and_then(|split| split.parts_for(&recipient.variables, &content));
        let mut record = EmailRecord::queued(org, from, address, &self.shared, content, self.now);
        if parts.is_some() {
            (record.html, record.text, record.parts) = (None, None, parts);
        }
        Some(record)
    }
}

impl EmailApi {
    pub(super) async fn send(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        self.require_provider().await?;
        let body: SendRequest = http::parse_json(request)?;
        let mut errors = FieldErrorCollector::new();
        let from = self.sender(&body, &mut errors);
        let mut shared = send_shared(&body, &mut errors);
        if let Some(topic) = &body.topic
            && let Some(refusal) = self
                .consent
                .topic_refusal(&caller.org, topic, Channel::Email)
                .await?
        {
            errors.add("topic", refusal);
        }
        let content = self.content_source(&body, caller, &mut errors).await?;
        let recipients = recipients(&body, &mut errors);
        shared.template_id = content.as_ref().and_then(|c| c.template_id.clone());
        let split = match (&content, &shared.bulk_id) {
            (Some(content), Some(bulk_id)) if recipients.len() > 1 => content.split(bulk_id),
            _ => None,
        }
        // The reply-to is substituted too (Mail Send API reference, `substitutions`).
        .filter(|split| {
            let prefix = split.shared.token_prefix();
            !shared
                .reply_to
                .as_ref()
                .is_some_and(|r| r.as_str().contains(&prefix))
        });
        let send = Send {
            caller,
            from,
            content,
            split,
            shared,
            now: chrono::Utc::now(),
        };
        let mut records: Vec<EmailRecord> = recipients
            .iter()
            .filter_map(|recipient| send.record_for(recipient, &mut errors))
            .collect();
        errors.finish()?;
        assign_send_jobs(&mut records, send.shared.bulk_id.as_deref());
        if let Some(split) = &send.split
            && records.iter().any(|r| r.parts.is_some())
        {
            self.emails
                .put_shared_body(&caller.org, &split.bulk_id, &split.shared)
                .await?;
        }
        self.emails.create_all(&records).await?;
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        match &send.shared.bulk_id {
            Some(bulk_id) => self.enqueue_bulk(request, caller, bulk_id, ids).await,
            None => self.enqueue_one(request, caller, ids).await,
        }
    }

    /// The sender: the request's, else the deployment's default.
    fn sender(&self, body: &SendRequest, errors: &mut FieldErrorCollector) -> Option<EmailAddress> {
        match body.from.as_deref().or(self.default_from.as_deref()) {
            Some(from) => EmailAddress::parse(from)
                .map_err(|m| errors.add("from", m))
                .ok(),
            None => {
                errors.add("from", "is required (no default sender is configured)");
                None
            }
        }
    }

    async fn enqueue_bulk(
        &self,
        request: &Request,
        caller: &Caller,
        bulk_id: &str,
        ids: Vec<String>,
    ) -> Result<Response<Body>, ApiError> {
        let Some(span) = BulkSpan::of(&ids) else {
            return Err(ApiError::field(
                "recipients",
                "must name at least one recipient",
            ));
        };
        let bulk = Bulk::of_recipients(
            caller.org.clone(),
            bulk_id,
            BulkChannel::Email,
            &ids,
            chrono::Utc::now(),
        );
        if let Some(bulk) = bulk {
            self.bulks.create(&bulk).await?;
        }
        let job = Job::EmailBulk {
            bulk_id: bulk_id.to_owned(),
            span,
        };
        self.queue
            .send_all(&self.bulk_queue, &[Envelope::new(caller.org.clone(), job)])
            .await
            .map_err(ApiError::internal)?;
        tracing::info!(bulk_id, recipients = ids.len(), "bulk email queued");
        self.audit(
            request,
            caller,
            "email.send",
            format!("bulk/{bulk_id}"),
            &ids,
        )
        .await;
        http::json(
            202,
            &json!({"bulk_id": bulk_id, "ids": ids, "count": ids.len(), "status": "queued"}),
        )
    }

    async fn enqueue_one(
        &self,
        request: &Request,
        caller: &Caller,
        ids: Vec<String>,
    ) -> Result<Response<Body>, ApiError> {
        let lowest = ids.iter().min().cloned().unwrap_or_default();
        let job = Envelope::new(caller.org.clone(), Job::EmailSend { ids: ids.clone() })
            .of_send_job(lowest);
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
            &ids,
        )
        .await;
        http::json(202, &json!({"id": ids[0], "status": "queued"}))
    }
}

/// Puts each new email in the send job it will be enqueued in (`EmailRecord::send_job`), so
/// the job's delivery claims the job once instead of each email: a single send (its emails
/// go in one message) is one job; a bulk's emails make jobs of [`EMAIL_SEND_JOB_IDS`] in id
/// order, the order the bulk worker reads them in.
fn assign_send_jobs(records: &mut [EmailRecord], bulk_id: Option<&str>) {
    let per_job = if bulk_id.is_some() {
        EMAIL_SEND_JOB_IDS
    } else {
        records.len()
    };
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let names = send_job_names(&ids, per_job);
    for (record, name) in records.iter_mut().zip(names) {
        record.send_job = Some(name);
    }
}
