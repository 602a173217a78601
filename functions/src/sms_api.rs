//! The SMS API (SPEC §4 "SMS"): send (simple, template, bulk to recipients or a phonebook),
//! list, read with timeline, delete, the Twilio balance, and phonebooks with contact import
//! (JSON or CSV, with a per-row report). Sending happens in the SMS worker; this function
//! validates, measures and stores `queued` records and enqueues them.

use std::collections::{BTreeMap, HashMap};

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use shared::auth::{Caller, ClaimNames};
use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::consent::Channel;
use shared::domain::RecordId;
use shared::domain::sms_message::{PhoneNumber, SmsRecord, SmsStatus};
use shared::domain::template::{TemplateContent, TemplateKind};
use shared::events::{Event, EventKind, EventPublisher};
use shared::http::idempotency::run_once;
use shared::http::{
    self, ApiError, FieldErrorCollector, FieldErrors, PageRequest, Route, RouteMatch,
};
use shared::queue::{BulkSpan, Envelope, Job, QueuePublisher};
use shared::render::{self, Escape, RenderError};
use shared::store::{
    ConsentStore, Contact, IdempotencyStore, Phonebook, PhonebookStore, SmsListQuery, SmsStore,
    StoreError, TemplateStore,
};

use crate::registry::{BoxFuture, HttpFunction};
use crate::sms_worker::{TwilioSettings, twilio_on_first_use};

shared::operations! {
    /// Every operation of the SMS and phonebook API, with the role it needs.
    pub enum SmsOperation {
        Send = "POST" "/services/sms" Member,
        List = "GET" "/services/sms" Member,
        Balance = "GET" "/services/sms/balance" Member,
        ListInbound = "GET" "/services/sms/inbound" Member,
        Get = "GET" "/services/sms/{id}" Member,
        Delete = "DELETE" "/services/sms/{id}" Admin,
        CreatePhonebook = "POST" "/services/phonebooks" Member,
        ListPhonebooks = "GET" "/services/phonebooks" Member,
        GetPhonebook = "GET" "/services/phonebooks/{id}" Member,
        DeletePhonebook = "DELETE" "/services/phonebooks/{id}" Admin,
        ImportContacts = "POST" "/services/phonebooks/{id}/contacts" Member,
        ListContacts = "GET" "/services/phonebooks/{id}/contacts" Member,
    }
}

pub const ROUTES: &[Route] = SmsOperation::ROUTES;

pub const MAX_BULK_RECIPIENTS: usize = 10_000;
/// Twilio's own limit on a message body.
pub const MAX_BODY_CHARS: usize = 1600;
const MAX_CONTACTS_PER_IMPORT: usize = 10_000;

pub struct SmsApi {
    sms: SmsStore,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    to: Option<String>,
    body: Option<String>,
    from: Option<String>,
    template_id: Option<String>,
    variables: Option<Value>,
    recipients: Option<Vec<BulkRecipient>>,
    phonebook_id: Option<String>,
    /// A consent topic of the organization for SMS: numbers opted out of it (or never in,
    /// for a topic out by default) end `suppressed` (issue 19).
    topic: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkRecipient {
    to: String,
    #[serde(default)]
    variables: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PhonebookRequest {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactInput {
    phone: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

/// One recipient before rendering: the field to report errors on, the number, variables.
struct Target {
    field: String,
    to: String,
    variables: Value,
}

/// Accepted import rows with their row numbers.
pub type NumberedContacts = Vec<(usize, Contact)>;

/// A rejected import row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RejectedRow {
    pub row: usize,
    pub reason: String,
}

/// Validates a sender: an E.164 number, a Messaging Service SID (`MG…`) or an alphanumeric
/// sender ID (up to 11 letters, digits and spaces, at least one letter).
pub fn validate_sender(from: &str) -> Result<String, String> {
    let from = from.trim();
    if from.starts_with('+') {
        return PhoneNumber::parse(from).map(|n| n.to_string());
    }
    if from.len() == 34 && from.starts_with("MG") && from.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Ok(from.to_owned());
    }
    let alphanumeric = !from.is_empty()
        && from.len() <= 11
        && from.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ')
        && from.chars().any(|c| c.is_ascii_alphabetic());
    if alphanumeric {
        Ok(from.to_owned())
    } else {
        Err(
            "must be an E.164 number, a Messaging Service SID or an alphanumeric sender ID"
                .to_owned(),
        )
    }
}

/// Parses a CSV upload with a header row. The number column is `phone` (or `to`, `number`,
/// `phone_number`, `mobile`), `name` is the contact's name, and every other column becomes a
/// field (a template variable). Row numbers are file lines: the header is row 1.
///
/// # Errors
/// A message when the file itself is unusable (no header, no number column).
pub fn parse_contacts_csv(
    bytes: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(NumberedContacts, Vec<RejectedRow>), String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| format!("the CSV header row cannot be read: {e}"))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    let phone_column = headers
        .iter()
        .position(|h| {
            matches!(
                h.as_str(),
                "phone" | "to" | "number" | "phone_number" | "mobile"
            )
        })
        .ok_or("the header row needs a phone column (phone, to, number, phone_number or mobile)")?;
    let name_column = headers.iter().position(|h| h == "name");
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for (index, result) in reader.records().enumerate() {
        let fallback_row = index + 2;
        let record = match result {
            Ok(record) => record,
            Err(error) => {
                rejected.push(RejectedRow {
                    row: fallback_row,
                    reason: format!("unreadable row: {error}"),
                });
                continue;
            }
        };
        let row = record
            .position()
            .and_then(|p| usize::try_from(p.line()).ok())
            .unwrap_or(fallback_row);
        if record.iter().all(str::is_empty) {
            continue;
        }
        let input = ContactInput {
            phone: record.get(phone_column).unwrap_or_default().to_owned(),
            name: name_column
                .and_then(|c| record.get(c))
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            fields: headers
                .iter()
                .enumerate()
                .filter(|(c, h)| *c != phone_column && Some(*c) != name_column && !h.is_empty())
                .filter_map(|(c, h)| Some((h.clone(), record.get(c)?.to_owned())))
                .collect(),
        };
        match contact_of(input, now) {
            Ok(contact) => accepted.push((row, contact)),
            Err(reason) => rejected.push(RejectedRow { row, reason }),
        }
    }
    Ok((accepted, rejected))
}

fn contact_of(input: ContactInput, now: chrono::DateTime<chrono::Utc>) -> Result<Contact, String> {
    if input.phone.trim().is_empty() {
        return Err("phone is empty".to_owned());
    }
    let phone = PhoneNumber::parse(&input.phone).map_err(|m| format!("phone {m}"))?;
    if input.name.as_ref().is_some_and(|n| n.chars().count() > 200) {
        return Err("name is longer than 200 characters".to_owned());
    }
    if input.fields.len() > 50
        || input
            .fields
            .iter()
            .any(|(k, v)| k.len() > 64 || v.len() > 1000)
    {
        return Err(
            "at most 50 fields, names up to 64 and values up to 1,000 characters".to_owned(),
        );
    }
    Ok(Contact {
        phone,
        name: input.name,
        fields: input.fields,
        created_at: now,
    })
}

/// Drops repeated numbers (the first row wins) and reports them.
fn dedupe(rows: NumberedContacts, rejected: &mut Vec<RejectedRow>) -> Vec<Contact> {
    let mut seen: HashMap<PhoneNumber, usize> = HashMap::new();
    let mut contacts = Vec::new();
    for (row, contact) in rows {
        if let Some(first) = seen.get(&contact.phone) {
            rejected.push(RejectedRow {
                row,
                reason: format!("duplicate of row {first}"),
            });
            continue;
        }
        seen.insert(contact.phone.clone(), row);
        contacts.push(contact);
    }
    contacts
}

/// A contact's template variables: its fields, `name` and `phone`.
fn contact_variables(contact: &Contact) -> Value {
    let mut map: serde_json::Map<String, Value> = contact
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    map.insert("phone".into(), json!(contact.phone));
    if let Some(name) = &contact.name {
        map.insert("name".into(), json!(name));
    }
    Value::Object(map)
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
            consent: ConsentStore::new(aws.dynamodb.clone(), &table),
            phonebooks: PhonebookStore::new(aws.dynamodb.clone(), &table),
            templates: TemplateStore::new(aws.dynamodb.clone(), &table),
            idempotency: IdempotencyStore::new(aws.dynamodb.clone(), &table),
            queue: QueuePublisher::new(aws.sqs.clone()),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            send_queue: env.required("SMS_SEND_QUEUE_URL")?,
            bulk_queue: env.required("SMS_BULK_QUEUE_URL")?,
            twilio: twilio_on_first_use(aws, env)?,
            claims: ClaimNames::from_env(env),
        })
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond("sms-api", &request, || self.dispatch(&request)).await
    }

    async fn dispatch(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        use SmsOperation as Op;
        let (operation, found) =
            SmsOperation::find(request.method().as_str(), request.uri().path())?;
        let caller = Caller::from_request(request, &self.claims)?;
        tracing::Span::current().record("org", caller.org.as_str());
        caller.require(operation.role())?;
        match operation {
            Op::Send => {
                run_once(
                    &self.idempotency,
                    &caller.org,
                    "POST /services/sms",
                    request,
                    || self.send(request, &caller),
                )
                .await
            }
            Op::List => self.list(request, &caller).await,
            Op::Balance => self.balance(&caller).await,
            Op::ListInbound => {
                let params = http::query_map(request);
                let org = caller.listed_org(&params)?;
                let page = PageRequest::from_query(&params, org.as_str())?;
                let (entries, next) = self
                    .sms
                    .list_inbound(&org, params.get("from").map(String::as_str), &page)
                    .await?;
                http::json(
                    200,
                    &json!({"items": entries, "next_cursor": next.map(|p| page.next_cursor(p))}),
                )
            }
            Op::Get => {
                let record = self.sms.get(&caller.org, &record_id(&found)?).await?;
                http::json(200, &record.to_json(true))
            }
            Op::Delete => {
                let id = record_id(&found)?;
                self.sms
                    .delete(&caller.org, &id, chrono::Utc::now())
                    .await?;
                self.audit(
                    request,
                    &caller,
                    "sms.delete",
                    format!("sms/{id}"),
                    json!({}),
                )
                .await;
                Ok(http::no_content())
            }
            Op::CreatePhonebook => {
                run_once(
                    &self.idempotency,
                    &caller.org,
                    "POST /services/phonebooks",
                    request,
                    || self.create_phonebook(request, &caller),
                )
                .await
            }
            Op::ListPhonebooks => {
                let params = http::query_map(request);
                let org = caller.listed_org(&params)?;
                let page = PageRequest::from_query(&params, org.as_str())?;
                let (books, next) = self.phonebooks.list(&org, &page).await?;
                http::json(
                    200,
                    &json!({"items": books, "next_cursor": next.map(|p| page.next_cursor(p))}),
                )
            }
            Op::GetPhonebook => {
                let book = self
                    .phonebooks
                    .get(&caller.org, &record_id(&found)?)
                    .await?;
                http::json(200, &book)
            }
            Op::DeletePhonebook => {
                let id = record_id(&found)?;
                self.phonebooks
                    .delete(&caller.org, &id, chrono::Utc::now())
                    .await?;
                self.audit(
                    request,
                    &caller,
                    "phonebook.delete",
                    format!("phonebook/{id}"),
                    json!({}),
                )
                .await;
                Ok(http::no_content())
            }
            Op::ImportContacts => {
                let id = record_id(&found)?;
                run_once(
                    &self.idempotency,
                    &caller.org,
                    "POST /services/phonebooks/{id}/contacts",
                    request,
                    || self.import_contacts(request, &caller, &id),
                )
                .await
            }
            Op::ListContacts => {
                let id = record_id(&found)?;
                let params = http::query_map(request);
                let org = caller.listed_org(&params)?;
                self.phonebooks.get(&org, &id).await?;
                let page = PageRequest::from_query(&params, org.as_str())?;
                let (contacts, next) = self.phonebooks.list_contacts(&org, &id, &page).await?;
                http::json(
                    200,
                    &json!({"items": contacts, "next_cursor": next.map(|p| page.next_cursor(p))}),
                )
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

    async fn send(&self, request: &Request, caller: &Caller) -> Result<Response<Body>, ApiError> {
        let twilio = self.twilio().await?;
        let body: SendRequest = http::parse_json(request)?;
        let now = chrono::Utc::now();
        let mut errors = FieldErrorCollector::new();

        let from = match body.from.as_deref().or(twilio.default_from.as_deref()) {
            Some(from) => validate_sender(from)
                .map_err(|m| errors.add("from", m))
                .ok(),
            None => {
                errors.add("from", "is required (no default sender is configured)");
                None
            }
        };

        if let Some(topic) = &body.topic
            && let Some(refusal) = self
                .consent
                .topic_refusal(&caller.org, topic, Channel::Sms)
                .await?
        {
            errors.add("topic", refusal);
        }

        // The shared body, and whether it is rendered per recipient.
        let (template_id, content, render) = match (&body.template_id, &body.body) {
            (Some(_), Some(_)) => {
                errors.add(
                    "body",
                    "comes from the template; do not send it with template_id",
                );
                (None, None, false)
            }
            (Some(template_id), None) => {
                match self.template_body(caller, template_id, &mut errors).await? {
                    Some(text) => (Some(template_id.clone()), Some(text), true),
                    None => (None, None, false),
                }
            }
            (None, Some(text)) => {
                if text.trim().is_empty() {
                    errors.add("body", "must not be empty");
                }
                let bulk = body.recipients.is_some() || body.phonebook_id.is_some();
                (None, Some(text.clone()), bulk)
            }
            (None, None) => {
                errors.add("body", "body or template_id is required");
                (None, None, false)
            }
        };
        if body.template_id.is_none()
            && body.recipients.is_none()
            && body.phonebook_id.is_none()
            && body.variables.is_some()
        {
            errors.add("variables", "variables apply to template sends");
        }

        let targets = self.targets(&body, caller, &mut errors).await?;
        let bulk = body.recipients.is_some() || body.phonebook_id.is_some();
        let bulk_id = bulk.then(|| RecordId::new().to_string());
        let mut records = Vec::with_capacity(targets.len());
        for target in targets {
            let to = match PhoneNumber::parse(&target.to) {
                Ok(to) => to,
                Err(message) => {
                    errors.add(format!("{}to", prefix(&target.field)), message);
                    continue;
                }
            };
            if !target.variables.is_object() {
                errors.add(
                    format!("{}variables", prefix(&target.field)),
                    "must be an object",
                );
                continue;
            }
            let Some(content) = &content else { continue };
            let text = if render {
                match render::render(content, &target.variables, Escape::None) {
                    Ok(text) => text,
                    Err(RenderError::MissingVariable(name)) => {
                        errors.add(
                            format!("{}variables", prefix(&target.field)),
                            format!("missing variable: {name}"),
                        );
                        continue;
                    }
                    Err(RenderError::Template(message)) => {
                        errors.add(
                            "template_id",
                            format!("the body cannot be rendered: {message}"),
                        );
                        continue;
                    }
                }
            } else {
                content.clone()
            };
            if text.chars().count() > MAX_BODY_CHARS {
                errors.add(
                    if bulk {
                        format!("{}body", prefix(&target.field))
                    } else {
                        "body".to_owned()
                    },
                    format!("must be at most {MAX_BODY_CHARS} characters"),
                );
                continue;
            }
            let Some(from) = &from else { continue };
            let mut record =
                SmsRecord::queued(caller.org.clone(), to, Some(from.clone()), text, now);
            record.template_id.clone_from(&template_id);
            record.bulk_id.clone_from(&bulk_id);
            record.phonebook_id.clone_from(&body.phonebook_id);
            record.topic.clone_from(&body.topic);
            records.push(record);
        }
        errors.finish()?;
        if records.is_empty() {
            return Err(ApiError::field(
                "phonebook_id",
                "the phonebook has no contacts",
            ));
        }

        self.sms.create_all(&records).await?;
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        let segments: usize = records.iter().map(|r| r.segments).sum();
        let (queue, job, resource) = match (&bulk_id, BulkSpan::of(&ids)) {
            (Some(bulk_id), Some(span)) => (
                &self.bulk_queue,
                Job::SmsBulk {
                    bulk_id: bulk_id.clone(),
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
        self.queue
            .send_all(queue, &[Envelope::new(caller.org.clone(), job)])
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
        match bulk_id {
            Some(bulk_id) => http::json(
                202,
                &json!({"bulk_id": bulk_id, "ids": ids, "count": ids.len(), "segments": segments, "status": "queued"}),
            ),
            None => {
                let record = &records[0];
                http::json(
                    202,
                    &json!({"id": record.id, "status": "queued", "encoding": record.encoding, "segments": record.segments, "characters": record.characters}),
                )
            }
        }
    }

    /// Who receives the send: `to`, `recipients` or a phonebook's contacts.
    async fn targets(
        &self,
        body: &SendRequest,
        caller: &Caller,
        errors: &mut FieldErrorCollector,
    ) -> Result<Vec<Target>, ApiError> {
        let given = [
            body.to.is_some(),
            body.recipients.is_some(),
            body.phonebook_id.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given > 1 {
            errors.add("to", "use one of to, recipients or phonebook_id");
            return Ok(Vec::new());
        }
        if let Some(list) = &body.recipients {
            if list.is_empty() || list.len() > MAX_BULK_RECIPIENTS {
                errors.add(
                    "recipients",
                    format!("must hold 1 to {MAX_BULK_RECIPIENTS} recipients"),
                );
            }
            return Ok(list
                .iter()
                .enumerate()
                .map(|(i, r)| Target {
                    field: format!("recipients[{i}]"),
                    to: r.to.clone(),
                    variables: r.variables.clone().unwrap_or_else(|| json!({})),
                })
                .collect());
        }
        if let Some(phonebook_id) = &body.phonebook_id {
            let book = match RecordId::parse(phonebook_id) {
                Some(id) => match self.phonebooks.get(&caller.org, &id.to_string()).await {
                    Ok(book) => Some(book),
                    Err(StoreError::NotFound) => None,
                    Err(other) => return Err(other.into()),
                },
                None => None,
            };
            let Some(book) = book else {
                errors.add("phonebook_id", "no such phonebook");
                return Ok(Vec::new());
            };
            let contacts = self
                .phonebooks
                .all_contacts(&caller.org, &book.id, MAX_BULK_RECIPIENTS + 1)
                .await?;
            if contacts.len() > MAX_BULK_RECIPIENTS {
                errors.add(
                    "phonebook_id",
                    format!("a send reaches at most {MAX_BULK_RECIPIENTS} contacts"),
                );
                return Ok(Vec::new());
            }
            // Request variables are shared defaults; each contact's own fields win.
            let shared_variables = body.variables.clone().unwrap_or_else(|| json!({}));
            return Ok(contacts
                .iter()
                .map(|contact| {
                    let mut variables = shared_variables.clone();
                    if let (Value::Object(base), Value::Object(own)) =
                        (&mut variables, contact_variables(contact))
                    {
                        base.extend(own);
                    }
                    Target {
                        field: format!("phonebook[{}]", contact.phone),
                        to: contact.phone.to_string(),
                        variables,
                    }
                })
                .collect());
        }
        match &body.to {
            Some(to) => Ok(vec![Target {
                field: String::new(),
                to: to.clone(),
                variables: body.variables.clone().unwrap_or_else(|| json!({})),
            }]),
            None => {
                errors.add("to", "is required");
                Ok(Vec::new())
            }
        }
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

    async fn list(&self, request: &Request, caller: &Caller) -> Result<Response<Body>, ApiError> {
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
        http::json(
            200,
            &json!({"items": items, "next_cursor": next.map(|p| page.next_cursor(p))}),
        )
    }

    async fn balance(&self, caller: &Caller) -> Result<Response<Body>, ApiError> {
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

    async fn create_phonebook(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let input: PhonebookRequest = http::parse_json(request)?;
        let name = input.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ApiError::field("name", "must be 1 to 100 characters"));
        }
        if input
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 1000)
        {
            return Err(ApiError::field(
                "description",
                "must be at most 1,000 characters",
            ));
        }
        let now = chrono::Utc::now();
        let book = Phonebook {
            id: RecordId::new().to_string(),
            name,
            description: input.description,
            contact_count: 0,
            created_at: now,
            updated_at: now,
        };
        self.phonebooks.create(&caller.org, &book).await?;
        self.audit(
            request,
            caller,
            "phonebook.create",
            format!("phonebook/{}", book.id),
            json!({}),
        )
        .await;
        http::json(201, &book)
    }

    async fn import_contacts(
        &self,
        request: &Request,
        caller: &Caller,
        phonebook: &str,
    ) -> Result<Response<Body>, ApiError> {
        self.phonebooks.get(&caller.org, phonebook).await?;
        let now = chrono::Utc::now();
        let content_type = request
            .headers()
            .get(::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_ascii_lowercase();
        let bytes = http::body_bytes(request);
        if bytes.len() > http::MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge(
                "uploads are limited to 1 MiB".to_owned(),
            ));
        }
        let (rows, mut rejected) = if content_type.starts_with("text/csv") {
            parse_contacts_csv(bytes, now).map_err(|m| ApiError::field("body", m))?
        } else {
            let inputs: Vec<ContactInput> = http::parse_json(request)?;
            let mut rows = Vec::new();
            let mut rejected = Vec::new();
            // JSON rows are numbered from 1 (their position in the list).
            for (index, input) in inputs.into_iter().enumerate() {
                match contact_of(input, now) {
                    Ok(contact) => rows.push((index + 1, contact)),
                    Err(reason) => rejected.push(RejectedRow {
                        row: index + 1,
                        reason,
                    }),
                }
            }
            (rows, rejected)
        };
        if rows.len() + rejected.len() > MAX_CONTACTS_PER_IMPORT {
            return Err(ApiError::field(
                "body",
                format!("at most {MAX_CONTACTS_PER_IMPORT} contacts per upload"),
            ));
        }
        let contacts = dedupe(rows, &mut rejected);
        rejected.sort_by_key(|r| r.row);
        if contacts.is_empty() {
            let mut errors = FieldErrors::new();
            for row in rejected.iter().take(http::MAX_REPORTED_FIELDS) {
                errors.insert(format!("row {}", row.row), vec![row.reason.clone()]);
            }
            if errors.is_empty() {
                errors.insert(
                    "body".to_owned(),
                    vec!["no contacts in the upload".to_owned()],
                );
            }
            return Err(ApiError::invalid(errors));
        }
        let count = self
            .phonebooks
            .put_contacts(&caller.org, phonebook, &contacts, now)
            .await?;
        self.audit(
            request,
            caller,
            "phonebook.contacts.import",
            format!("phonebook/{phonebook}"),
            json!({"accepted": contacts.len(), "rejected": rejected.len()}),
        )
        .await;
        http::json(
            200,
            &json!({"accepted": contacts.len(), "rejected": rejected, "contact_count": count}),
        )
    }

    async fn audit(
        &self,
        request: &Request,
        caller: &Caller,
        action: &str,
        resource: String,
        detail: Value,
    ) {
        self.events
            .publish(vec![
                Event::audit(caller, &http::request_id(request), action, resource)
                    .with_detail(detail),
            ])
            .await;
    }
}

fn prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}.")
    }
}

fn record_id(found: &RouteMatch) -> Result<String, ApiError> {
    RecordId::parse(found.param("id"))
        .map(|id| id.to_string())
        .ok_or(ApiError::NotFound)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_are_reported_by_line() {
        let csv = "phone,name,city\n+14155552671,Ann,Paris\nnot-a-number,Bob,Rome\n+14155552671,Ann again,Oslo\n\n+442079460958,,London\n,Empty,\n";
        let (rows, mut rejected) = parse_contacts_csv(csv.as_bytes(), chrono::Utc::now()).unwrap();
        let contacts = dedupe(rows, &mut rejected);
        rejected.sort_by_key(|r| r.row);
        assert_eq!(contacts.len(), 2);
        assert_eq!(contacts[0].name.as_deref(), Some("Ann"));
        assert_eq!(contacts[0].fields["city"], "Paris");
        assert_eq!(contacts[1].phone.as_str(), "+442079460958");
        let rows: Vec<usize> = rejected.iter().map(|r| r.row).collect();
        assert_eq!(rows, vec![3, 4, 7], "{rejected:?}");
        assert!(rejected[0].reason.contains("phone"));
        assert!(rejected[1].reason.contains("duplicate of row 2"));
    }

    #[test]
    fn csv_needs_a_phone_column() {
        assert!(parse_contacts_csv(b"name,city\nAnn,Paris\n", chrono::Utc::now()).is_err());
    }

    #[test]
    fn senders() {
        assert_eq!(validate_sender("+1 415 555 2671").unwrap(), "+14155552671");
        assert!(validate_sender("MG0123456789abcdef0123456789abcdef").is_ok());
        assert!(validate_sender("Herald").is_ok());
        assert!(validate_sender("12345").is_err());
        assert!(validate_sender("A very long sender").is_err());
        assert!(validate_sender("").is_err());
    }
}
