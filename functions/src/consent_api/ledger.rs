//! The consent ledger: a person's current consent, a change recorded with its source and
//! evidence, and the export.

use std::collections::BTreeMap;

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;

use shared::auth::Caller;
use shared::consent::{ALL_TOPICS, Channel, ConsentSource, ConsentState};
use shared::domain::email::EmailAddress;
use shared::domain::sms_message::PhoneNumber;
use shared::http::{self, ApiError, FieldErrorCollector};
use shared::store::ConsentChange;

use super::ConsentApi;

/// Ledger entries per export page: about 1.5 MB of CSV, well inside Lambda's 6 MB response.
pub const EXPORT_PAGE_ROWS: usize = 10_000;

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
    /// `GET /services/consent/?address=` or `?phone=`: every topic's state and the whole
    /// history, oldest first. An address nobody recorded anything for answers empty lists,
    /// exactly like one that exists.
    pub(super) async fn show(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
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
    pub(super) async fn export(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
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

    /// `PUT /services/consent/`: records a choice made elsewhere, with its source.
    pub(super) async fn put(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
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
