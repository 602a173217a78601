//! SMS records and phone numbers (SPEC §4 "SMS").
//!
//! A phone number is validated as E.164 with the `phonenumber` crate (Google's libphonenumber
//! metadata), so "+1 555 0100" style inputs are normalized and unassigned ranges rejected.
//! An SMS status only moves forward, like an email's: late or repeated Twilio callbacks can
//! never move a record back.

use serde::{Deserialize, Serialize};

use super::OrgId;
use super::email::{FailureKind, TimelineEntry};
use super::sms::{Encoding, SmsMeasure};

/// Twilio's own limit on a message body (Messages resource, `Body`: "can be up to 1,600
/// characters in length").
pub const MAX_BODY_CHARS: usize = 1600;

/// A validated phone number in E.164 form (`+14155550100`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Parses an international number (it must start with `+` and the country code).
    ///
    /// # Errors
    /// A message saying what is wrong with the number.
    pub fn parse(value: &str) -> Result<Self, String> {
        let trimmed = value.trim();
        if !trimmed.starts_with('+') {
            return Err("must be an E.164 number starting with + and the country code".to_owned());
        }
        // libphonenumber would read letters as a keypad's digits (vanity numbers); a number
        // given to an API is digits, with spaces, dashes, dots or parentheses at most.
        if trimmed.len() > 32
            || !trimmed[1..]
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))
        {
            return Err("is not a phone number".to_owned());
        }
        let number =
            phonenumber::parse(None, trimmed).map_err(|_| "is not a phone number".to_owned())?;
        if !phonenumber::is_valid(&number) {
            return Err("is not a valid phone number".to_owned());
        }
        Ok(Self(
            number.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a sender: an E.164 number (normalized), a Messaging Service SID (`MG…`) or an
/// alphanumeric sender ID (up to 11 letters, digits and spaces, at least one letter).
///
/// # Errors
/// A message saying what a sender must be.
pub fn parse_sender(from: &str) -> Result<String, String> {
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

impl TryFrom<String> for PhoneNumber {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        // Stored values were validated when written; re-validating would make old records
        // unreadable after a metadata update, so only the shape is checked here.
        if value.starts_with('+') && value[1..].chars().all(|c| c.is_ascii_digit()) {
            Ok(Self(value))
        } else {
            Err(format!("{value} is not an E.164 number"))
        }
    }
}

impl From<PhoneNumber> for String {
    fn from(value: PhoneNumber) -> Self {
        value.0
    }
}

impl std::fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an SMS is. `sending` is Herald's own claim (a worker is calling Twilio); `sent`
/// means Twilio accepted it (Twilio's `queued`, `accepted`, `sending`, `sent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmsStatus {
    Queued,
    Sending,
    Sent,
    Delivered,
    Undelivered,
    Failed,
    Suppressed,
}

impl SmsStatus {
    pub const ALL: [Self; 7] = [
        Self::Queued,
        Self::Sending,
        Self::Sent,
        Self::Delivered,
        Self::Undelivered,
        Self::Failed,
        Self::Suppressed,
    ];

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Undelivered => "undelivered",
            Self::Failed => "failed",
            Self::Suppressed => "suppressed",
        }
    }

    pub fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Sending => 1,
            Self::Sent => 2,
            Self::Delivered | Self::Undelivered | Self::Failed | Self::Suppressed => 3,
        }
    }

    pub fn is_final(self) -> bool {
        self.rank() == 3
    }

    /// Forward only, and a final status never changes.
    pub fn can_become(self, next: Self) -> bool {
        !self.is_final() && next.rank() > self.rank()
    }

    /// What a Twilio message status means for Herald; `None` for statuses that say nothing
    /// new (`receiving`, `received` belong to inbound messages).
    pub fn from_twilio(status: &str) -> Option<Self> {
        match status {
            "accepted" | "scheduled" | "queued" | "sending" | "sent" => Some(Self::Sent),
            "delivered" | "read" => Some(Self::Delivered),
            "undelivered" => Some(Self::Undelivered),
            "failed" | "canceled" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// An SMS record: one recipient of one send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsRecord {
    pub id: String,
    pub org_id: OrgId,
    pub to: PhoneNumber,
    /// The sender asked for; `None` uses the configured default (`TWILIO_FROM`).
    #[serde(default)]
    pub from: Option<String>,
    pub body: String,
    pub encoding: Encoding,
    pub segments: usize,
    pub characters: usize,
    #[serde(default)]
    pub template_id: Option<String>,
    #[serde(default)]
    pub bulk_id: Option<String>,
    #[serde(default)]
    pub phonebook_id: Option<String>,
    /// The send job this SMS was created in, while it waits in it: the job's delivery
    /// claims the job once instead of this SMS (`shared::store` send jobs). Removed when it
    /// leaves `queued` the first time; an SMS without one is claimed itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_job: Option<String>,
    /// The consent topic of the send (issue 19); `None` is a transactional SMS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub status: SmsStatus,
    /// Twilio's own last reported status (`queued`, `sent`, `delivered`, ...).
    #[serde(default)]
    pub twilio_status: Option<String>,
    #[serde(default)]
    pub error_code: Option<i64>,
    pub timeline: Vec<TimelineEntry>,
    pub attempts: u32,
    #[serde(default)]
    pub failure_kind: Option<FailureKind>,
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// Twilio's message SID (`SM…`).
    #[serde(default)]
    pub provider_message_id: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
    pub version: u64,
    /// Callback keys already applied (dedupe of repeated Twilio callbacks).
    #[serde(default)]
    pub applied_events: Vec<String>,
}

impl SmsRecord {
    /// A new `queued` record with its body measured.
    pub fn queued(
        org: OrgId,
        to: PhoneNumber,
        from: Option<String>,
        body: String,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        let SmsMeasure {
            characters,
            encoding,
            segments,
        } = super::sms::measure(&body);
        Self {
            id: super::RecordId::new().to_string(),
            org_id: org,
            to,
            from,
            body,
            encoding,
            segments,
            characters,
            template_id: None,
            bulk_id: None,
            phonebook_id: None,
            send_job: None,
            topic: None,
            status: SmsStatus::Queued,
            twilio_status: None,
            error_code: None,
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

    /// Whether this SMS waits, `queued`, in send job `job`.
    pub fn in_send_job(&self, job: Option<&str>) -> bool {
        self.status == SmsStatus::Queued && job.is_some() && self.send_job.as_deref() == job
    }

    pub fn to_json(&self, with_timeline: bool) -> serde_json::Value {
        let mut value = serde_json::json!({
            "id": self.id,
            "to": self.to,
            "from": self.from,
            "body": self.body,
            "encoding": self.encoding,
            "segments": self.segments,
            "characters": self.characters,
            "template_id": self.template_id,
            "bulk_id": self.bulk_id,
            "phonebook_id": self.phonebook_id,
            "status": self.status,
            "twilio_status": self.twilio_status,
            "error_code": self.error_code,
            "attempts": self.attempts,
            "failure_kind": self.failure_kind,
            "failure_reason": self.failure_reason,
            "provider_message_id": self.provider_message_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "sent_at": self.sent_at,
        });
        if with_timeline {
            value["timeline"] = serde_json::json!(self.timeline);
        }
        value
    }
}

/// Inbound keywords (Twilio's Advanced Opt-Out defaults): what they do to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    OptOut,
    OptIn,
    /// `HELP`/`INFO`: answered with the help text (CTIA's messaging principles require an
    /// answer naming the sender and how to opt out); changes nothing.
    Help,
}

impl Keyword {
    /// The keyword an inbound body is, if it is one (whole body, any case, trimmed).
    pub fn of(body: &str) -> Option<Self> {
        match body.trim().to_ascii_uppercase().as_str() {
            "STOP" | "STOPALL" | "UNSUBSCRIBE" | "CANCEL" | "END" | "QUIT" => Some(Self::OptOut),
            "START" | "UNSTOP" | "YES" => Some(Self::OptIn),
            "HELP" | "INFO" => Some(Self::Help),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders() {
        assert_eq!(parse_sender("+1 415 555 2671").unwrap(), "+14155552671");
        assert!(parse_sender("MG0123456789abcdef0123456789abcdef").is_ok());
        assert!(parse_sender("Herald").is_ok());
        assert!(parse_sender("12345").is_err());
        assert!(parse_sender("A very long sender").is_err());
        assert!(parse_sender("").is_err());
    }

    #[test]
    fn numbers_are_validated_and_normalized_to_e164() {
        assert_eq!(
            PhoneNumber::parse(" +1 415 555 2671 ").unwrap().as_str(),
            "+14155552671"
        );
        assert_eq!(
            PhoneNumber::parse("+44 20 7946 0958").unwrap().as_str(),
            "+442079460958"
        );
        for bad in [
            "",
            "4155552671",
            "+1",
            "+999123",
            "+1 000 000 0000",
            "+1415abc2671",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses_move_forward_only() {
        assert!(SmsStatus::Queued.can_become(SmsStatus::Sending));
        assert!(SmsStatus::Sent.can_become(SmsStatus::Delivered));
        assert!(!SmsStatus::Delivered.can_become(SmsStatus::Sent));
        assert!(!SmsStatus::Delivered.can_become(SmsStatus::Undelivered));
        assert!(!SmsStatus::Sent.can_become(SmsStatus::Sent));
        assert_eq!(SmsStatus::from_twilio("queued"), Some(SmsStatus::Sent));
        assert_eq!(
            SmsStatus::from_twilio("undelivered"),
            Some(SmsStatus::Undelivered)
        );
        assert_eq!(SmsStatus::from_twilio("receiving"), None);
    }

    #[test]
    fn keywords() {
        for word in [
            "STOP",
            " stop ",
            "StopAll",
            "UNSUBSCRIBE",
            "cancel",
            "END",
            "quit",
        ] {
            assert_eq!(Keyword::of(word), Some(Keyword::OptOut), "{word}");
        }
        for word in ["START", "unstop", "Yes"] {
            assert_eq!(Keyword::of(word), Some(Keyword::OptIn), "{word}");
        }
        assert_eq!(Keyword::of(" help "), Some(Keyword::Help));
        assert_eq!(Keyword::of("Info"), Some(Keyword::Help));
        assert_eq!(Keyword::of("please stop"), None);
    }

    #[test]
    fn records_carry_their_measure() {
        let org = OrgId::parse("acme").unwrap();
        let to = PhoneNumber::parse("+14155552671").unwrap();
        let record = SmsRecord::queued(org, to, None, "Привет 👋".to_owned(), chrono::Utc::now());
        assert_eq!(record.encoding, Encoding::Ucs2);
        assert_eq!(record.segments, 1);
        assert_eq!(record.characters, 8);
    }
}
