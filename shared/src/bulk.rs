//! Bulk sends (SPEC §4, issue 20): one item per bulk records what was asked and how far its
//! records have been made, so its progress can be read (`GET /services/{sms,email}/bulk/{id}/`)
//! and a send to a phonebook of any size can be answered before a single record exists.
//!
//! A send to recipients listed in the request makes its records in the API call, as before;
//! its bulk item is written complete. A send to a phonebook stores only the bulk item (with
//! what [`PhonebookSend`] needs) and leaves the contacts to the bulk worker, which pages
//! through them, makes each contact's record under an id derived from the bulk and the
//! number ([`RecordId::derived`]) and checkpoints the last number done on the item.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contacts::variables_of;
use crate::domain::email::{FailureKind, TimelineEntry};
use crate::domain::sms_message::{MAX_BODY_CHARS, SmsRecord, SmsStatus};
use crate::domain::{OrgId, RecordId};
use crate::queue::BulkSpan;
use crate::render::{Compiled, RenderError};
use crate::store::Contact;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BulkChannel {
    Email,
    Sms,
}

/// Whether every record of the bulk exists yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FanOutState {
    /// The bulk worker is still making records from the phonebook.
    Creating,
    /// Every record is made (a recipients bulk is born so).
    Created,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bulk {
    pub id: String,
    pub org_id: OrgId,
    pub channel: BulkChannel,
    pub state: FanOutState,
    /// Recipients: those of the request; a phonebook: its contacts when the send was
    /// accepted, made exact when the fan-out ends (contacts can change meanwhile).
    pub total: u64,
    /// Records made so far.
    pub created: u64,
    /// The ids of the bulk's records lie in this range.
    pub lowest_id: String,
    pub highest_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phonebook: Option<PhonebookSend>,
    /// The last contact number whose record is made (the fan-out's checkpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_through: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Bulk {
    /// A bulk whose records the API made (`ids` not empty).
    pub fn of_recipients(
        org: OrgId,
        id: &str,
        channel: BulkChannel,
        ids: &[String],
        now: DateTime<Utc>,
    ) -> Option<Self> {
        let span = BulkSpan::of(ids)?;
        let count = ids.len() as u64;
        Some(Self {
            id: id.to_owned(),
            org_id: org,
            channel,
            state: FanOutState::Created,
            total: count,
            created: count,
            lowest_id: span.lowest_id,
            highest_id: span.highest_id,
            phonebook: None,
            done_through: None,
            created_at: now,
            updated_at: now,
        })
    }

    /// An SMS bulk to a phonebook, its records still to make.
    pub fn of_phonebook(
        org: OrgId,
        id: RecordId,
        send: PhonebookSend,
        contacts: u64,
        now: DateTime<Utc>,
    ) -> Self {
        let at = id.timestamp();
        Self {
            id: id.to_string(),
            org_id: org,
            channel: BulkChannel::Sms,
            state: FanOutState::Creating,
            total: contacts,
            created: 0,
            lowest_id: RecordId::lowest_at(at).to_string(),
            highest_id: RecordId::highest_at(at).to_string(),
            phonebook: Some(send),
            done_through: None,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn span(&self) -> BulkSpan {
        BulkSpan {
            lowest_id: self.lowest_id.clone(),
            highest_id: self.highest_id.clone(),
        }
    }
}

/// What a send to a phonebook asked for, kept on its bulk for the fan-out: the text as it
/// was when the send was accepted (a later template edit does not reach it), rendered per
/// contact with the request's variables under the contact's own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhonebookSend {
    pub phonebook_id: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// The request's variables, as JSON text (an object).
    pub variables: String,
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl PhonebookSend {
    /// The record `contact` gets: `queued` with its rendered text, or `failed` (permanent,
    /// with the reason) when the text cannot be rendered for it or is too long; the API
    /// refused these up front when it rendered every contact itself.
    pub fn record_for(
        &self,
        bulk: &Bulk,
        text: &Compiled,
        contact: &Contact,
        shared: &Value,
    ) -> SmsRecord {
        let mut variables = shared.clone();
        if let (Value::Object(base), Value::Object(own)) = (&mut variables, variables_of(contact)) {
            base.extend(own);
        }
        let rendered = text.render(&variables).map_err(|error| match error {
            RenderError::MissingVariable(name) => format!("missing variable: {name}"),
            RenderError::Template(message) => format!("the body cannot be rendered: {message}"),
        });
        let refusal = match &rendered {
            Ok(body) if body.chars().count() > MAX_BODY_CHARS => Some(format!(
                "the rendered body is over {MAX_BODY_CHARS} characters"
            )),
            Ok(_) => None,
            Err(reason) => Some(reason.clone()),
        };
        let mut record = SmsRecord::queued(
            bulk.org_id.clone(),
            contact.phone.clone(),
            Some(self.from.clone()),
            rendered.unwrap_or_default(),
            bulk.created_at,
        );
        let bulk_id = RecordId::parse(&bulk.id).unwrap_or_default();
        record.id = bulk_id.derived(contact.phone.as_str()).to_string();
        record.template_id.clone_from(&self.template_id);
        record.bulk_id = Some(bulk.id.clone());
        record.phonebook_id = Some(self.phonebook_id.clone());
        record.topic.clone_from(&self.topic);
        if let Some(reason) = refusal {
            record.status = SmsStatus::Failed;
            record.failure_kind = Some(FailureKind::Permanent);
            record.timeline.push(TimelineEntry::new(
                bulk.created_at,
                "failed",
                Some(reason.clone()),
            ));
            record.failure_reason = Some(reason);
        }
        record
    }

    /// The request's variables (an object; anything else reads as none).
    pub fn shared_variables(&self) -> Value {
        serde_json::from_str(&self.variables).unwrap_or_else(|_| Value::Object(Default::default()))
    }
}

/// Where a record's status puts it in a bulk's progress: each record is in exactly one of
/// `queued` (not yet with the provider), `sent` (with the provider, no final word),
/// `delivered`, `failed` (any end short of delivery) or `suppressed` (never sent, by consent).
fn progress_group(status: &str) -> &'static str {
    match status {
        "sent" | "deferred" => "sent",
        "delivered" => "delivered",
        "failed" | "undelivered" | "bounced" | "dropped" => "failed",
        "suppressed" => "suppressed",
        _ => "queued",
    }
}

/// A bulk's progress as the API shows it: what was asked, how many records are made, how
/// many are where (see [`progress_group`]) and every status's own count.
pub fn progress(bulk: &Bulk, statuses: &std::collections::BTreeMap<String, u64>) -> Value {
    let mut groups: std::collections::BTreeMap<&str, u64> =
        ["queued", "sent", "delivered", "failed", "suppressed"]
            .into_iter()
            .map(|group| (group, 0))
            .collect();
    for (status, count) in statuses {
        *groups.entry(progress_group(status)).or_default() += count;
    }
    let mut answer = serde_json::json!({
        "id": bulk.id,
        "channel": bulk.channel,
        "state": bulk.state,
        "total": bulk.total,
        "created": bulk.created,
        "statuses": statuses,
        "created_at": bulk.created_at,
        "updated_at": bulk.updated_at,
    });
    for (group, count) in groups {
        answer[group] = serde_json::json!(count);
    }
    if let Some(send) = &bulk.phonebook {
        answer["phonebook_id"] = serde_json::json!(send.phonebook_id);
    }
    answer
}
