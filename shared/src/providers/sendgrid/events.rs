//! The Event Webhook body: a JSON array of delivery and engagement events.
//!
//! SendGrid POSTs batches of events and retries the whole batch until it is accepted, so
//! parsing is lenient wherever strictness would only lose a batch: an event type this code
//! does not know becomes [`EventKind::Other`], and an informational field of an unexpected
//! JSON type is read as text or dropped. Only the fields an event cannot be used without
//! (`sg_event_id`, `event`, `email`, `timestamp`) are required.
//!
//! The `custom_args` set at send time come back as top-level fields of each event, mixed with
//! SendGrid's own; [`SendGridEvent::custom_args`] holds the string-valued fields that are
//! neither modelled here nor SendGrid's documented event properties.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// What happened to a message (SendGrid's `event` field).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum EventKind {
    Processed,
    Delivered,
    Deferred,
    Dropped,
    Bounce,
    Open,
    Click,
    SpamReport,
    Unsubscribe,
    GroupUnsubscribe,
    GroupResubscribe,
    /// An event type SendGrid added after this code was written; kept, not rejected.
    Other(String),
}

/// One event from the Event Webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RawEvent")]
pub struct SendGridEvent {
    /// Unique per event: the key for deduplicating SendGrid's retries.
    pub sg_event_id: String,
    /// Starts with the `X-Message-Id` the send returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sg_message_id: Option<String>,
    pub event: EventKind,
    pub email: String,
    /// Unix seconds.
    pub timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The SMTP status code of a bounce, e.g. `5.0.0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The receiving server's answer on `delivered` and `deferred`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// `bounce` or `blocked` on a bounce event.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub bounce_type: Option<String>,
    /// The link followed, on `click`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(flatten)]
    pub custom_args: BTreeMap<String, String>,
}

/// Parses one webhook body.
///
/// # Errors
/// When the body is not a JSON array of objects, or an event lacks `sg_event_id`, `event`,
/// `email` or an integer `timestamp`.
pub fn parse_batch(body: &[u8]) -> Result<Vec<SendGridEvent>, serde_json::Error> {
    serde_json::from_slice(body)
}

impl EventKind {
    /// SendGrid's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Processed => "processed",
            Self::Delivered => "delivered",
            Self::Deferred => "deferred",
            Self::Dropped => "dropped",
            Self::Bounce => "bounce",
            Self::Open => "open",
            Self::Click => "click",
            Self::SpamReport => "spamreport",
            Self::Unsubscribe => "unsubscribe",
            Self::GroupUnsubscribe => "group_unsubscribe",
            Self::GroupResubscribe => "group_resubscribe",
            Self::Other(other) => other,
        }
    }
}

impl From<String> for EventKind {
    fn from(value: String) -> Self {
        match value.as_str() {
            "processed" => Self::Processed,
            "delivered" => Self::Delivered,
            "deferred" => Self::Deferred,
            "dropped" => Self::Dropped,
            "bounce" => Self::Bounce,
            "open" => Self::Open,
            "click" => Self::Click,
            "spamreport" => Self::SpamReport,
            "unsubscribe" => Self::Unsubscribe,
            "group_unsubscribe" => Self::GroupUnsubscribe,
            "group_resubscribe" => Self::GroupResubscribe,
            _ => Self::Other(value),
        }
    }
}

impl From<EventKind> for String {
    fn from(value: EventKind) -> Self {
        match value {
            EventKind::Other(other) => other,
            known => known.as_str().to_owned(),
        }
    }
}

impl SendGridEvent {
    /// When the event happened; `None` for a timestamp outside chrono's range.
    pub fn occurred_at(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(self.timestamp, 0)
    }
}

/// Event properties SendGrid itself sets (Event Webhook reference). They are not custom
/// arguments, even when their value is a string.
const SENDGRID_FIELDS: &[&str] = &[
    "asm_group_id",
    "attempt",
    "bounce_classification",
    "category",
    "cert_err",
    "ip",
    "marketing_campaign_id",
    "marketing_campaign_name",
    "marketing_campaign_split_id",
    "marketing_campaign_version",
    "mc_stats",
    "phase_id",
    "pool",
    "post_type",
    "send_at",
    "sg_content_type",
    "sg_machine_open",
    "sg_template_id",
    "sg_template_name",
    "singlesend_id",
    "singlesend_name",
    "smtp-id",
    "template_id",
    "tls",
    "url_offset",
    "useragent",
];

#[derive(Deserialize)]
struct RawEvent {
    sg_event_id: String,
    #[serde(default, deserialize_with = "lenient_text")]
    sg_message_id: Option<String>,
    event: EventKind,
    email: String,
    timestamp: i64,
    #[serde(default, deserialize_with = "lenient_text")]
    reason: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    status: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    response: Option<String>,
    #[serde(rename = "type", default, deserialize_with = "lenient_text")]
    bounce_type: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    url: Option<String>,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

impl From<RawEvent> for SendGridEvent {
    fn from(raw: RawEvent) -> Self {
        // Custom arguments are strings by SendGrid's rules, so anything else is SendGrid's.
        let custom_args = raw
            .rest
            .into_iter()
            .filter(|(key, _)| !SENDGRID_FIELDS.contains(&key.as_str()))
            .filter_map(|(key, value)| match value {
                Value::String(text) => Some((key, text)),
                _ => None,
            })
            .collect();
        Self {
            sg_event_id: raw.sg_event_id,
            sg_message_id: raw.sg_message_id,
            event: raw.event,
            email: raw.email,
            timestamp: raw.timestamp,
            reason: raw.reason,
            status: raw.status,
            response: raw.response,
            bounce_type: raw.bounce_type,
            url: raw.url,
            custom_args,
        }
    }
}

/// Text if the value is text, a number or a boolean; `None` otherwise. These fields only
/// inform, so an unexpected type must not cost the batch.
fn lenient_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(text) => Some(text),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// The shape of the example in SendGrid's Event Webhook reference, with Herald's custom
    /// arguments (`org_id`, `email_id`) as SendGrid echoes them.
    const BATCH: &str = r#"[
      {"email":"example@test.com","timestamp":1513299569,"smtp-id":"<14c5d75ce93.dfd.64b469@ismtpd-555>","event":"processed","category":"cat facts","sg_event_id":"rbtnWrG1DVDGGGFHFyun0A==","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000","org_id":"acme","email_id":"01HZX3K6Q9V2"},
      {"email":"example@test.com","timestamp":1513299569,"smtp-id":"<14c5d75ce93.dfd.64b469@ismtpd-555>","event":"deferred","category":"cat facts","sg_event_id":"t7LEShmowp86DTdUW8M-GQ==","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000","response":"400 try again later","attempt":"5","org_id":"acme","email_id":"01HZX3K6Q9V2"},
      {"email":"example@test.com","timestamp":1513299569,"smtp-id":"<14c5d75ce93.dfd.64b469@ismtpd-555>","event":"delivered","category":["cat facts","welcome"],"sg_event_id":"rWVYmVk90MjZJ9iohOBa3w==","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000","response":"250 OK","tls":1,"org_id":"acme","email_id":"01HZX3K6Q9V2"},
      {"email":"example@test.com","timestamp":1513299569,"smtp-id":"<14c5d75ce93.dfd.64b469@ismtpd-555>","event":"bounce","category":"cat facts","sg_event_id":"6g4ZI7SA-xmRDv57GoPIPw==","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000","reason":"500 unknown recipient","status":"5.0.0","type":"bounce","bounce_classification":"Invalid Address"},
      {"email":"example@test.com","timestamp":1513299569,"smtp-id":"<14c5d75ce93.dfd.64b469@ismtpd-555>","event":"dropped","category":"cat facts","sg_event_id":"zmzJhfJgAfUSOW80yEbPyw==","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000","reason":"Bounced Address","status":"5.0.0"},
      {"email":"example@test.com","timestamp":1513299569,"event":"open","sg_machine_open":false,"category":"cat facts","sg_event_id":"FOTFFO0ecsBE-zxFXfs6WA==","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000","useragent":"Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322; .NET CLR 2.0.50727)","ip":"255.255.255.255"},
      {"email":"example@test.com","timestamp":1513299569,"event":"click","category":"cat facts","sg_event_id":"kCAi1KttyQdEKHhdC-nuEA==","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000","useragent":"Mozilla/4.0","ip":"255.255.255.255","url":"http://www.sendgrid.com/","url_offset":{"index":0,"type":"html"}},
      {"email":"example@test.com","timestamp":1513299569,"event":"spamreport","sg_event_id":"37nvH5QBz858KGVYCM4uOA==","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000"},
      {"email":"example@test.com","timestamp":1513299569,"event":"unsubscribe","category":"cat facts","sg_event_id":"zz_BjPgU_5pS-J8vlfB1sg==","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000"},
      {"email":"example@test.com","timestamp":1513299569,"event":"group_unsubscribe","category":"cat facts","sg_event_id":"ahSCB7xYcXFb-hEaawsPRw==","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000","useragent":"Mozilla/4.0","ip":"255.255.255.255","url":"http://www.sendgrid.com/","asm_group_id":10},
      {"email":"example@test.com","timestamp":1513299569,"event":"group_resubscribe","category":"cat facts","sg_event_id":"w_u0vJhLT-OFfprar5N93g==","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000","useragent":"Mozilla/4.0","ip":"255.255.255.255","url":"http://www.sendgrid.com/","asm_group_id":10}
    ]"#;

    #[test]
    fn a_documented_batch_parses() {
        let events = parse_batch(BATCH.as_bytes()).unwrap();

        let kinds: Vec<EventKind> = events.iter().map(|event| event.event.clone()).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Processed,
                EventKind::Deferred,
                EventKind::Delivered,
                EventKind::Bounce,
                EventKind::Dropped,
                EventKind::Open,
                EventKind::Click,
                EventKind::SpamReport,
                EventKind::Unsubscribe,
                EventKind::GroupUnsubscribe,
                EventKind::GroupResubscribe,
            ]
        );
        let bounce = &events[3];
        assert_eq!(bounce.sg_event_id, "6g4ZI7SA-xmRDv57GoPIPw==");
        assert_eq!(bounce.email, "example@test.com");
        assert_eq!(bounce.reason.as_deref(), Some("500 unknown recipient"));
        assert_eq!(bounce.status.as_deref(), Some("5.0.0"));
        assert_eq!(bounce.bounce_type.as_deref(), Some("bounce"));
        assert_eq!(events[1].response.as_deref(), Some("400 try again later"));
        assert_eq!(events[6].url.as_deref(), Some("http://www.sendgrid.com/"));
        assert_eq!(
            events[0].occurred_at().map(|at| at.to_rfc3339()).as_deref(),
            Some("2017-12-15T00:59:29+00:00")
        );
    }

    #[test]
    fn custom_args_are_collected_and_sendgrid_fields_are_not() {
        let events = parse_batch(BATCH.as_bytes()).unwrap();

        let expected = BTreeMap::from([
            ("email_id".to_owned(), "01HZX3K6Q9V2".to_owned()),
            ("org_id".to_owned(), "acme".to_owned()),
        ]);
        for event in &events[..3] {
            assert_eq!(event.custom_args, expected, "{:?}", event.event);
        }
        for event in &events[3..] {
            assert!(
                event.custom_args.is_empty(),
                "{:?}: {:?}",
                event.event,
                event.custom_args
            );
        }
    }

    #[test]
    fn unknown_event_types_are_kept() {
        let body = br#"[
            {"email":"a@example.com","timestamp":1700000000,"event":"machine_opened","sg_event_id":"e1"},
            {"email":"a@example.com","timestamp":1700000000,"event":"delivered","sg_event_id":"e2"}
        ]"#;

        let events = parse_batch(body).unwrap();

        assert_eq!(events[0].event, EventKind::Other("machine_opened".into()));
        assert_eq!(events[0].event.as_str(), "machine_opened");
        assert_eq!(events[1].event, EventKind::Delivered);
    }

    #[test]
    fn informational_fields_of_another_type_do_not_fail_the_batch() {
        let body = br#"[{"email":"a@example.com","timestamp":1700000000,"event":"bounce","sg_event_id":"e1",
            "status":550,"reason":null,"type":["bounce"],"retries":3,"org_id":"acme"}]"#;

        let events = parse_batch(body).unwrap();

        assert_eq!(events[0].status.as_deref(), Some("550"));
        assert_eq!(events[0].reason, None);
        assert_eq!(events[0].bounce_type, None);
        assert_eq!(
            events[0].custom_args,
            BTreeMap::from([("org_id".to_owned(), "acme".to_owned())])
        );
    }

    #[test]
    fn events_without_required_fields_or_non_arrays_are_errors() {
        assert!(
            parse_batch(br#"[{"email":"a@example.com","timestamp":1,"event":"open"}]"#).is_err()
        );
        assert!(parse_batch(br#"[{"sg_event_id":"e","timestamp":1,"event":"open"}]"#).is_err());
        assert!(parse_batch(br#"[{"sg_event_id":"e","email":"a@example.com","timestamp":"soon","event":"open"}]"#).is_err());
        assert!(
            parse_batch(
                br#"{"sg_event_id":"e","email":"a@example.com","timestamp":1,"event":"open"}"#
            )
            .is_err()
        );
        assert!(parse_batch(b"").is_err());
        assert_eq!(parse_batch(b"[]").unwrap(), []);
    }

    #[test]
    fn serialized_events_parse_back_for_the_sandbox() {
        let events = parse_batch(BATCH.as_bytes()).unwrap();

        let body = serde_json::to_vec(&events).unwrap();

        assert_eq!(parse_batch(&body).unwrap(), events);
    }

    fn event_kind() -> impl Strategy<Value = EventKind> {
        prop_oneof![
            Just(EventKind::Processed),
            Just(EventKind::Delivered),
            Just(EventKind::Bounce),
            Just(EventKind::SpamReport),
            Just(EventKind::GroupResubscribe),
            "[a-z_]{1,12}".prop_map(EventKind::from),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_batch(&body);
        }

        #[test]
        fn arbitrary_text_never_panics(body in r#"[\[\]{}",:0-9a-z_ -]{0,256}"#) {
            let _ = parse_batch(body.as_bytes());
        }

        #[test]
        fn generated_events_round_trip(
            kind in event_kind(),
            id in "[A-Za-z0-9=_-]{1,24}",
            timestamp in any::<i64>(),
            reason in proptest::option::of(".{0,40}"),
            args in proptest::collection::btree_map("x_[a-z]{1,8}", ".{0,16}", 0..4),
        ) {
            let event = SendGridEvent {
                sg_event_id: id,
                sg_message_id: None,
                event: kind,
                email: "a@example.com".into(),
                timestamp,
                reason,
                status: None,
                response: None,
                bounce_type: None,
                url: None,
                custom_args: args,
            };
            let body = serde_json::to_vec(&[&event]).unwrap();
            prop_assert_eq!(parse_batch(&body).unwrap(), vec![event]);
        }
    }
}
