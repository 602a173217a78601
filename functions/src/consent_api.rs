//! Topics and the consent ledger (issue 19): `/services/topics/…` and `/services/consent/`.
//!
//! Members read; admins define topics and record consent given or withdrawn elsewhere
//! (`PUT`, with the source required). Every change is an audit event. The ledger also takes
//! Herald's own observations (one-click unsubscribes, provider unsubscribes, bounces, SMS
//! keywords), which no caller can write here.

use std::collections::BTreeMap;

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;

use shared::auth::{Caller, ClaimNames};
use shared::aws::AwsClients;
use shared::config::{ConfigError, Env};
use shared::consent::{ALL_TOPICS, Channel, ConsentSource, ConsentState, valid_topic_key};
use shared::domain::email::EmailAddress;
use shared::domain::sms_message::PhoneNumber;
use shared::events::EventPublisher;
use shared::http::{self, ApiError, FieldErrorCollector, Route};
use shared::store::{ConsentChange, ConsentStore, Topic};

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

/// Ledger entries per export page: about 1.5 MB of CSV, well inside Lambda's 6 MB response.
pub const EXPORT_PAGE_ROWS: usize = 10_000;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicInput {
    key: Option<String>,
    name: Option<String>,
    description: Option<String>,
    channels: Option<Vec<String>>,
    default_opted_in: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentInput {
    address: Option<String>,
    phone: Option<String>,
    topic: Option<String>,
    state: Option<String>,
    source: Option<String>,
    #[serde(default)]
    evidence: BTreeMap<String, String>,
}

/// Evidence a caller attaches: a few short strings (a form id, a URL, a note).
const MAX_EVIDENCE_ENTRIES: usize = 10;
const MAX_EVIDENCE_CHARS: usize = 500;

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

    async fn list_topics(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let org = caller.listed_org(&http::query_map(request))?;
        let topics = self.store.topics(&org).await?;
        http::json(200, &json!({ "items": topics, "next_cursor": null }))
    }

    async fn create_topic(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let input: TopicInput = http::parse_json(request)?;
        let now = chrono::Utc::now();
        let topic = topic_from(input, None, now)?;
        self.store.create_topic(&caller.org, &topic).await?;
        self.audit(
            request,
            caller,
            "topic.create",
            format!("topic/{}", topic.key),
        )
        .await;
        http::json(201, &topic)
    }

    async fn update_topic(
        &self,
        request: &Request,
        caller: &Caller,
        key: &str,
    ) -> Result<Response<Body>, ApiError> {
        let current = self.store.topic(&caller.org, key).await?;
        let input: TopicInput = http::parse_json(request)?;
        if input.key.as_deref().is_some_and(|k| k != key) {
            return Err(ApiError::field("key", "cannot change: it names the topic"));
        }
        let topic = topic_from(input, Some(&current), chrono::Utc::now())?;
        self.store.replace_topic(&caller.org, &topic).await?;
        self.audit(request, caller, "topic.update", format!("topic/{key}"))
            .await;
        http::json(200, &topic)
    }

    async fn delete_topic(
        &self,
        request: &Request,
        caller: &Caller,
        key: &str,
    ) -> Result<Response<Body>, ApiError> {
        self.store.delete_topic(&caller.org, key).await?;
        self.audit(request, caller, "topic.delete", format!("topic/{key}"))
            .await;
        Ok(http::no_content())
    }

    /// `GET /services/consent/?address=` or `?phone=`: every topic's state and the whole
    /// history, oldest first. An address nobody recorded anything for answers empty lists,
    /// exactly like one that exists.
    async fn show(&self, request: &Request, caller: &Caller) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let org = caller.listed_org(&params)?;
        let (channel, subject) = subject_of(
            params.get("address").map(String::as_str),
            params.get("phone").map(String::as_str),
        )?;
        let states = self.store.states(&org, channel, &subject).await?;
        let history = self.store.history(&org, channel, &subject).await?;
        http::json(
            200,
            &json!({
                "channel": channel,
                "subject": subject,
                "states": states,
                "history": history,
            }),
        )
    }

    /// `GET /services/consent/export/`: the whole ledger history as CSV (the reports' RFC 4180
    /// writer, formula cells guarded), [`EXPORT_PAGE_ROWS`] entries a page; a `Link` header
    /// (`rel="next"`) names the next page while there is one.
    async fn export(&self, request: &Request, caller: &Caller) -> Result<Response<Body>, ApiError> {
        use shared::reports::{Cell, csv};
        let params = http::query_map(request);
        let org = caller.listed_org(&params)?;
        // The cursor is the last entry's key in the organization's partition: a key of
        // another partition cannot be named, since the query's partition is the caller's.
        let after = params.get("cursor").map(String::as_str);
        let (changes, next) = self
            .store
            .history_page(&org, after, EXPORT_PAGE_ROWS)
            .await?;
        let columns = [
            "at", "channel", "subject", "topic", "state", "source", "actor", "evidence",
        ];
        let mut out = Vec::new();
        csv::write_header(&mut out, &columns.map(str::to_owned));
        for change in &changes {
            let evidence = change
                .evidence
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let text = |value: &str| Cell::text(value);
            csv::write_row(
                &mut out,
                &[
                    text(&change.at.to_rfc3339()),
                    text(change.channel.as_str()),
                    text(&change.subject),
                    text(&change.topic),
                    text(json!(change.state).as_str().unwrap_or_default()),
                    text(json!(change.source).as_str().unwrap_or_default()),
                    text(&change.actor),
                    text(&evidence),
                ],
            );
        }
        let mut response = Response::builder()
            .status(200)
            .header("content-type", "text/csv; charset=utf-8")
            .header(
                "content-disposition",
                "attachment; filename=\"consent-ledger.csv\"",
            );
        if let Some(next) = next {
            let cursor: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
            response = response.header(
                "link",
                format!("</services/consent/export/?cursor={cursor}>; rel=\"next\""),
            );
        }
        response
            .body(Body::Binary(out))
            .map_err(|e| ApiError::internal(anyhow::Error::new(e)))
    }

    /// `GET /services/consent/sms-help/`: what an inbound HELP or INFO is answered with, and
    /// whether the organization set it or it is the deployment's.
    async fn sms_help(
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
    async fn reset_sms_help(
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
    async fn set_sms_help(
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

    /// `PUT /services/consent/`: records a choice made elsewhere, with its source.
    async fn put(&self, request: &Request, caller: &Caller) -> Result<Response<Body>, ApiError> {
        let input: ConsentInput = http::parse_json(request)?;
        let (channel, subject) = subject_of(input.address.as_deref(), input.phone.as_deref())?;
        let mut errors = FieldErrorCollector::new();
        let topic = input.topic.unwrap_or_else(|| ALL_TOPICS.to_owned());
        let state = match input.state.as_deref() {
            Some("opted_in") => Some(ConsentState::OptedIn),
            Some("opted_out") => Some(ConsentState::OptedOut),
            _ => {
                errors.add("state", "must be opted_in or opted_out");
                None
            }
        };
        let source = match input
            .source
            .as_deref()
            .and_then(ConsentSource::parse_declared)
        {
            Some(source) => Some(source),
            None => {
                errors.add(
                    "source",
                    "is required: api (a choice made elsewhere) or import",
                );
                None
            }
        };
        if input.evidence.len() > MAX_EVIDENCE_ENTRIES
            || input
                .evidence
                .iter()
                .any(|(k, v)| k.chars().count() + v.chars().count() > MAX_EVIDENCE_CHARS)
        {
            errors.add(
                "evidence",
                "at most 10 entries of at most 500 characters each",
            );
        }
        errors.finish()?;
        // A missing state or source was noted above, so both are here.
        let (Some(state), Some(source)) = (state, source) else {
            return Err(ApiError::field("state", "state and source are required"));
        };
        if topic != ALL_TOPICS {
            let known = self.store.topic(&caller.org, &topic).await;
            if matches!(known, Err(shared::store::StoreError::NotFound)) {
                return Err(ApiError::field(
                    "topic",
                    "is not a topic of this organization",
                ));
            }
            known?;
        }
        let change = ConsentChange {
            channel,
            subject: subject.clone(),
            topic: topic.clone(),
            state,
            source,
            actor: caller.user.clone(),
            evidence: input.evidence,
            at: chrono::Utc::now(),
        };
        self.store.record(&caller.org, &change, None).await?;
        self.audit(
            request,
            caller,
            "consent.record",
            format!("consent/{}/{subject}/{topic}", channel.as_str()),
        )
        .await;
        http::json(200, &change)
    }
}

/// The channel and ledger subject a request names: exactly one of `address` and `phone`.
fn subject_of(address: Option<&str>, phone: Option<&str>) -> Result<(Channel, String), ApiError> {
    match (address, phone) {
        (Some(address), None) => EmailAddress::parse(address)
            .map(|a| (Channel::Email, a.suppression_key()))
            .map_err(|e| ApiError::field("address", e)),
        (None, Some(phone)) => PhoneNumber::parse(phone)
            .map(|p| (Channel::Sms, p.as_str().to_owned()))
            .map_err(|e| ApiError::field("phone", e)),
        _ => Err(ApiError::field(
            "address",
            "give exactly one of address and phone",
        )),
    }
}

/// A topic from a create (`current` is `None`) or a partial update of `current`.
fn topic_from(
    input: TopicInput,
    current: Option<&Topic>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Topic, ApiError> {
    let mut errors = FieldErrorCollector::new();
    let key = match (current, input.key) {
        (Some(current), _) => current.key.clone(),
        (None, Some(key)) if valid_topic_key(&key) => key,
        (None, _) => {
            errors.add(
                "key",
                "is required: 1-64 of a-z, 0-9, - and _ (and not \"all\")",
            );
            String::new()
        }
    };
    let name = input
        .name
        .or_else(|| current.map(|c| c.name.clone()))
        .unwrap_or_default();
    if name.trim().is_empty() || name.chars().count() > 200 {
        errors.add("name", "is required, at most 200 characters");
    }
    let description = input
        .description
        .or_else(|| current.map(|c| c.description.clone()))
        .unwrap_or_default();
    if description.chars().count() > 2000 {
        errors.add("description", "at most 2000 characters");
    }
    let channels = match input.channels {
        Some(names) => {
            let parsed: Vec<Option<Channel>> = names.iter().map(|n| Channel::parse(n)).collect();
            if parsed.is_empty() || parsed.iter().any(Option::is_none) {
                errors.add("channels", "must list email and/or sms");
            }
            let mut channels: Vec<Channel> = parsed.into_iter().flatten().collect();
            channels.sort();
            channels.dedup();
            channels
        }
        None => current.map_or_else(|| vec![Channel::Email], |c| c.channels.clone()),
    };
    let default_opted_in = input
        .default_opted_in
        .or(current.map(|c| c.default_opted_in))
        .unwrap_or(true);
    errors.finish()?;
    Ok(Topic {
        key,
        name,
        description,
        channels,
        default_opted_in,
        created_at: current.map_or(now, |c| c.created_at),
        updated_at: now,
    })
}
