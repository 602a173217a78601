//! Email domain: addresses, the forward-only status machine and engagement (SPEC §4).

use std::fmt;

use serde::{Deserialize, Serialize};

/// An email address, checked at the edge.
///
/// The check is deliberately the practical one providers apply (one `@`, a dotted domain,
/// no spaces or control characters, RFC 5321 lengths) rather than the full RFC 5322
/// grammar, which accepts addresses no provider will deliver to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    /// # Errors
    /// A message saying what is wrong with the address.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        let Some((local, domain)) = value.rsplit_once('@') else {
            return Err(format!("{value:?} is not an email address"));
        };
        let bad_char = |c: char| {
            c.is_whitespace()
                || c.is_control()
                || matches!(
                    c,
                    '<' | '>' | ',' | ';' | '"' | '(' | ')' | '[' | ']' | '\\'
                )
        };
        let domain_ok = domain.contains('.')
            && !domain.starts_with(['.', '-'])
            && !domain.ends_with(['.', '-'])
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
        if local.is_empty()
            || local.len() > 64
            || value.len() > 254
            || local.contains('@')
            || local.chars().any(bad_char)
            || !domain_ok
        {
            return Err(format!("{value:?} is not an email address"));
        }
        // Domains are case-insensitive; local parts are left as given.
        Ok(Self(format!("{local}@{}", domain.to_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form suppression lists are keyed by: case-insensitive as mailbox providers treat it.
    pub fn suppression_key(&self) -> String {
        self.0.to_lowercase()
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<EmailAddress> for String {
    fn from(value: EmailAddress) -> Self {
        value.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an email is. Statuses only move forward (see [`EmailStatus::can_become`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailStatus {
    Queued,
    Sending,
    Sent,
    Deferred,
    Delivered,
    Bounced,
    Dropped,
    Failed,
    Suppressed,
}

impl EmailStatus {
    pub const ALL: [Self; 9] = [
        Self::Queued,
        Self::Sending,
        Self::Sent,
        Self::Deferred,
        Self::Delivered,
        Self::Bounced,
        Self::Dropped,
        Self::Failed,
        Self::Suppressed,
    ];

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Deferred => "deferred",
            Self::Delivered => "delivered",
            Self::Bounced => "bounced",
            Self::Dropped => "dropped",
            Self::Failed => "failed",
            Self::Suppressed => "suppressed",
        }
    }

    /// How far along the pipeline a status is. Terminal statuses share the top rank.
    pub fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Sending => 1,
            Self::Sent => 2,
            Self::Deferred => 3,
            Self::Delivered | Self::Bounced | Self::Dropped | Self::Failed | Self::Suppressed => 4,
        }
    }

    pub fn is_final(self) -> bool {
        self.rank() == 4
    }

    /// Forward-only: a late or repeated event never moves an email backwards, and nothing
    /// moves it out of a final status. The worker's own retry (`sending` back to `queued`)
    /// is the one exception and does not go through here.
    pub fn can_become(self, next: Self) -> bool {
        !self.is_final() && next.rank() > self.rank()
    }
}

/// Engagement recorded on top of the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engagement {
    Opened,
    Clicked,
    Unsubscribed,
    SpamReported,
}

impl Engagement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Clicked => "clicked",
            Self::Unsubscribed => "unsubscribed",
            Self::SpamReported => "spam_reported",
        }
    }
}

/// Why a send failed, which decides whether `resend-failed` may retry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Transient,
    Permanent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_providers_word_overrides_only_a_transient_give_up() {
        let failed = |kind| {
            let mut record: EmailRecord = serde_json::from_value(serde_json::json!({
                "id": "01JDZ3Q6W6K8M0000000000001", "org_id": "acme", "to": "a@example.com",
                "from": "n@acme.test", "subject": "Hi", "status": "failed",
                "created_at": "2026-11-24T10:00:00Z", "updated_at": "2026-11-24T10:00:00Z",
            }))
            .unwrap();
            record.failure_kind = Some(kind);
            record
        };
        let gave_up = failed(FailureKind::Transient);
        assert!(gave_up.accepts_provider_status(EmailStatus::Delivered));
        assert!(gave_up.accepts_provider_status(EmailStatus::Bounced));
        assert!(!gave_up.accepts_provider_status(EmailStatus::Failed));
        assert!(!gave_up.accepts_provider_status(EmailStatus::Queued));
        let refused = failed(FailureKind::Permanent);
        assert!(!refused.accepts_provider_status(EmailStatus::Delivered));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            EmailAddress::parse(" Ann@Example.COM ").unwrap().as_str(),
            "Ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@x.com",
            "a b@x.com",
            "ann@x",
            "ann@x..com",
            "a<b>@x.com",
            "ann@-x.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn final_statuses_never_move() {
        assert!(EmailStatus::Sent.can_become(EmailStatus::Delivered));
        assert!(EmailStatus::Sent.can_become(EmailStatus::Deferred));
        assert!(EmailStatus::Deferred.can_become(EmailStatus::Bounced));
        assert!(!EmailStatus::Delivered.can_become(EmailStatus::Bounced));
        assert!(!EmailStatus::Delivered.can_become(EmailStatus::Sent));
        assert!(!EmailStatus::Deferred.can_become(EmailStatus::Sent));
    }

    proptest! {
        #[test]
        fn any_event_sequence_only_moves_forward(steps in proptest::collection::vec(0usize..9, 0..30)) {
            let mut status = EmailStatus::Queued;
            for step in steps {
                let next = EmailStatus::ALL[step];
                let before = status;
                if status.can_become(next) {
                    status = next;
                }
                prop_assert!(status.rank() >= before.rank());
                if before.is_final() {
                    prop_assert_eq!(status, before);
                }
            }
        }
    }
}

/// One step in an email's delivery timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: chrono::DateTime<chrono::Utc>,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl TimelineEntry {
    pub fn new(
        at: chrono::DateTime<chrono::Utc>,
        event: impl Into<String>,
        detail: Option<String>,
    ) -> Self {
        Self {
            at,
            event: event.into(),
            detail,
        }
    }
}

/// An email record: one recipient of one send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailRecord {
    pub id: String,
    pub org_id: super::OrgId,
    pub to: EmailAddress,
    #[serde(default)]
    pub cc: Vec<EmailAddress>,
    #[serde(default)]
    pub bcc: Vec<EmailAddress>,
    pub from: EmailAddress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<EmailAddress>,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A bulk email's bodies as the parts that vary around its bulk's [`SharedBody`]
    /// (`html` and `text` are then `None` until filled in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<BodyParts>,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// The consent topic of the send (issue 19); `None` is a transactional email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk_id: Option<String>,
    /// The send job this email was created in, while it waits in it: the job's delivery
    /// claims the job once instead of this email (`EmailStore::claim_job`). Removed when
    /// the email leaves `queued` the first time; an email without one is claimed itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_job: Option<String>,
    pub status: EmailStatus,
    #[serde(default)]
    pub engagement: Vec<Engagement>,
    #[serde(default)]
    pub timeline: Vec<TimelineEntry>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_kind: Option<FailureKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub version: u64,
    /// Provider event ids already applied: the dedupe record, kept with what it protects.
    #[serde(default)]
    pub applied_events: Vec<String>,
}

/// Who an email of one send is from and who else gets it, and what labels it: what every
/// recipient of the send shares.
#[derive(Debug, Clone, Default)]
pub struct SendShared {
    pub from_name: Option<String>,
    pub reply_to: Option<EmailAddress>,
    pub cc: Vec<EmailAddress>,
    pub bcc: Vec<EmailAddress>,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub template_id: Option<String>,
    pub campaign: Option<String>,
    pub topic: Option<String>,
    pub bulk_id: Option<String>,
}

/// A bulk's bodies as every recipient shares them: the literal text around the parts that
/// vary per recipient ([`BodyParts`]). Stored once per bulk instead of each recipient's
/// whole rendering; SendGrid gets it once per call, with each recipient's parts as
/// substitutions (issue 20), so a 60 KB newsletter to 1,000 people is one 60 KB body plus
/// their names, not 60 MB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedBody {
    /// Makes the substitution tokens unique: no piece, and no part or subject of an email
    /// that uses this body, contains [`SharedBody::token_prefix`].
    pub nonce: String,
    /// `pieces` of each body: one more than its parts.
    pub html: Option<Vec<String>>,
    pub text: Option<Vec<String>>,
}

/// Which body of an email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Html,
    Text,
}

impl SharedBody {
    /// What every token of this body starts with. `%h` never occurs in percent-encoded
    /// text, ids or base64url, so headers and custom args cannot hold it by chance.
    pub fn token_prefix(&self) -> String {
        format!("%hx{}", self.nonce)
    }

    /// The substitution token standing for part `index` of the `kind` body.
    pub fn token(&self, kind: BodyKind, index: usize) -> String {
        let letter = match kind {
            BodyKind::Html => 'h',
            BodyKind::Text => 't',
        };
        format!("{}{letter}{index}%", self.token_prefix())
    }

    /// The `kind` body with a token in place of each part (what a Mail Send call's content
    /// carries).
    pub fn with_tokens(&self, kind: BodyKind) -> Option<String> {
        let pieces = self.pieces(kind)?;
        let tokens: Vec<String> = (0..pieces.len().saturating_sub(1))
            .map(|index| self.token(kind, index))
            .collect();
        Some(crate::render::fill(pieces, &tokens))
    }

    /// An email's bodies: the pieces with its parts between them.
    pub fn fill(&self, parts: &BodyParts) -> (Option<String>, Option<String>) {
        let fill = |kind, own: &[String]| {
            self.pieces(kind)
                .map(|pieces| crate::render::fill(pieces, own))
        };
        (
            fill(BodyKind::Html, &parts.html),
            fill(BodyKind::Text, &parts.text),
        )
    }

    /// The substitutions of one email, token to part: SendGrid counts their keys' and values'
    /// bytes towards its per-personalization limit.
    pub fn substitutions(&self, parts: &BodyParts) -> Vec<(String, String)> {
        let mut substitutions = Vec::with_capacity(parts.html.len() + parts.text.len());
        for (kind, own) in [(BodyKind::Html, &parts.html), (BodyKind::Text, &parts.text)] {
            for (index, part) in own.iter().enumerate() {
                substitutions.push((self.token(kind, index), part.clone()));
            }
        }
        substitutions
    }

    fn pieces(&self, kind: BodyKind) -> Option<&[String]> {
        match kind {
            BodyKind::Html => self.html.as_deref(),
            BodyKind::Text => self.text.as_deref(),
        }
    }
}

/// One bulk email's share of its bulk's [`SharedBody`]: the rendering of each varying part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyParts {
    /// The id of the shared body (the bulk's id).
    pub shared: String,
    #[serde(default)]
    pub html: Vec<String>,
    #[serde(default)]
    pub text: Vec<String>,
    /// The shared body, once read; never stored with the parts.
    #[serde(skip)]
    pub body: Option<std::sync::Arc<SharedBody>>,
}

impl BodyParts {
    /// Bytes of the parts themselves.
    pub fn bytes(&self) -> usize {
        self.html.iter().chain(&self.text).map(String::len).sum()
    }
}

/// What one recipient reads: the subject and bodies, rendered for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailContent {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
}

impl EmailContent {
    /// Bytes of the html and text bodies together (what the body item holds).
    pub fn body_bytes(&self) -> usize {
        self.html.as_ref().map_or(0, String::len) + self.text.as_ref().map_or(0, String::len)
    }
}

impl EmailRecord {
    /// A new email to `to`, `queued` for the worker.
    pub fn queued(
        org_id: super::OrgId,
        from: EmailAddress,
        to: EmailAddress,
        shared: &SendShared,
        content: EmailContent,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        let SendShared {
            from_name,
            reply_to,
            cc,
            bcc,
            metadata,
            template_id,
            campaign,
            topic,
            bulk_id,
        } = shared.clone();
        Self {
            id: super::RecordId::new().to_string(),
            org_id,
            to,
            cc,
            bcc,
            from,
            from_name,
            reply_to,
            subject: content.subject,
            html: content.html,
            text: content.text,
            parts: None,
            metadata,
            template_id,
            campaign,
            topic,
            bulk_id,
            send_job: None,
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
        }
    }

    /// Whether the provider's word may move this email to `next`: forward-only, except that
    /// the provider saying a message went out overrides Herald's own give-up after transient
    /// failures — a call that timed out or lost its connection may still have been carried
    /// out, and the email must not stay `failed` (or be resent) when it was in fact sent.
    pub fn accepts_provider_status(&self, next: EmailStatus) -> bool {
        self.status.can_become(next)
            || (self.status == EmailStatus::Failed
                && self.failure_kind == Some(FailureKind::Transient)
                && next != EmailStatus::Failed
                && next.rank() >= EmailStatus::Sent.rank())
    }

    /// The API representation; `with_content` adds the bodies and the timeline (detail view).
    /// Whether the record carries its bodies (whole or as parts), read or as created.
    pub fn has_bodies(&self) -> bool {
        self.html.is_some() || self.text.is_some() || self.parts.is_some()
    }

    /// Takes `other`'s bodies, whole or as parts.
    pub fn take_bodies_of(&mut self, other: &Self) {
        self.html.clone_from(&other.html);
        self.text.clone_from(&other.text);
        self.parts.clone_from(&other.parts);
    }

    /// Turns parts into whole bodies, when their shared body has been read.
    pub fn fill_bodies(&mut self) {
        if let Some(parts) = &self.parts
            && let Some(body) = &parts.body
        {
            (self.html, self.text) = body.fill(parts);
            self.parts = None;
        }
    }

    /// Whether this email waits, `queued`, in send job `job`.
    pub fn in_send_job(&self, job: Option<&str>) -> bool {
        self.status == EmailStatus::Queued && job.is_some() && self.send_job.as_deref() == job
    }

    pub fn to_json(&self, with_content: bool) -> serde_json::Value {
        let mut view = serde_json::json!({
            "id": self.id,
            "organization": self.org_id.as_str(),
            "to": self.to,
            "from": self.from,
            "subject": self.subject,
            "status": self.status,
            "engagement": self.engagement,
            "campaign": self.campaign,
            "bulk_id": self.bulk_id,
            "template_id": self.template_id,
            "attempts": self.attempts,
            "failure_reason": self.failure_reason,
            "provider_message_id": self.provider_message_id,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "sent_at": self.sent_at,
        });
        if with_content && let serde_json::Value::Object(map) = &mut view {
            map.insert("cc".into(), serde_json::json!(self.cc));
            map.insert("bcc".into(), serde_json::json!(self.bcc));
            map.insert("reply_to".into(), serde_json::json!(self.reply_to));
            map.insert("html".into(), serde_json::json!(self.html));
            map.insert("text".into(), serde_json::json!(self.text));
            map.insert("timeline".into(), serde_json::json!(self.timeline));
        }
        view
    }
}
