//! Inbound messages: kept as conversation entries of the organization that owns them;
//! STOP/START change the opt-out list and the consent ledger, HELP is answered with the
//! organization's help text.

use lambda_http::{Body, Response};
use serde_json::json;

use shared::consent::{ALL_TOPICS, Channel, ConsentSource, ConsentState};
use shared::domain::OrgId;
use shared::domain::sms_message::{Keyword, PhoneNumber};
use shared::events::{Event, EventKind};
use shared::http::ApiError;
use shared::metrics;
use shared::store::{ConsentChange, InboundSms, StoreError};

use super::{TwilioWebhook, twiml, twiml_message};

impl TwilioWebhook {
    /// Keeps a HELP in the number's ledger history with the answer it got (once per
    /// message SID): it changes no consent, so the entry carries the state it found.
    async fn note_help(
        &self,
        org: &OrgId,
        number: &PhoneNumber,
        sid: &str,
        body: &str,
        answer: &str,
    ) -> Result<(), StoreError> {
        let subject = number.to_string();
        let current = self
            .consent
            .state(org, Channel::Sms, &subject, ALL_TOPICS)
            .await?
            .map_or(ConsentState::OptedIn, |c| c.state);
        let entry = ConsentChange {
            channel: Channel::Sms,
            subject: subject.clone(),
            topic: ALL_TOPICS.to_owned(),
            state: current,
            source: ConsentSource::SmsKeyword,
            actor: subject,
            evidence: std::collections::BTreeMap::from([
                ("message_sid".to_owned(), sid.to_owned()),
                ("keyword".to_owned(), body.trim().to_ascii_uppercase()),
                ("answer".to_owned(), answer.to_owned()),
            ]),
            at: chrono::Utc::now(),
        };
        self.consent
            .note(org, &entry, Some(&format!("twilio#{sid}")))
            .await?;
        Ok(())
    }

    /// The organization's own HELP answer (`PUT /services/consent/sms-help/`), else the
    /// deployment's. A storage failure answers with the deployment's: CTIA asks that HELP
    /// is always answered, and Twilio would not retry a 5xx inbound answer as a reply.
    async fn help_text_of(&self, org: &OrgId) -> String {
        let own = self
            .consent
            .sms_help_text(org)
            .await
            .unwrap_or_else(|error| {
                tracing::error!(error = format!("{error:#}"), "reading the SMS help text");
                None
            });
        own.unwrap_or_else(|| {
            shared::consent::deployment_sms_help_text(self.help_text.as_deref(), org)
        })
    }

    pub(super) async fn inbound<'a>(
        &self,
        sid: &str,
        param: &impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Response<Body>, ApiError> {
        let (Some(from), Some(to)) = (param("From"), param("To")) else {
            return Err(ApiError::field("From", "From and To are required"));
        };
        let body = param("Body").unwrap_or_default();
        let from_number = PhoneNumber::parse(from).ok();
        let Some(org) = self.org_of_inbound(to, from_number.as_ref()).await? else {
            tracing::warn!(sid, "inbound SMS for no known organization acknowledged");
            metrics::webhook_events("twilio", "ignored", 1);
            return Ok(twiml());
        };
        let keyword = Keyword::of(body);
        let entry = InboundSms {
            id: shared::domain::RecordId::new().to_string(),
            message_sid: sid.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            body: body.to_owned(),
            keyword: keyword.map(|_| body.trim().to_ascii_uppercase()),
            received_at: chrono::Utc::now(),
        };
        if !self.sms.record_inbound(&org, &entry).await? {
            tracing::info!(sid, "repeated inbound SMS ignored");
            metrics::webhook_events("twilio", "duplicate", 1);
            return Ok(twiml());
        }
        let mut events = vec![
            Event {
                resource: Some(format!("sms/inbound/{sid}")),
                channel: Some("sms".to_owned()),
                status: Some("received".to_owned()),
                ..Event::new(&org, EventKind::Webhook, "sms.inbound")
            }
            .with_detail(json!({"from": from, "to": to, "keyword": entry.keyword})),
        ];
        if keyword == Some(Keyword::Help) {
            let answer = self.help_text_of(&org).await;
            if let Some(number) = &from_number
                && let Err(error) = self.note_help(&org, number, sid, body, &answer).await
            {
                // HELP is answered all the same: CTIA asks that it always is.
                tracing::error!(
                    error = format!("{error:#}"),
                    "keeping the HELP in the ledger"
                );
            }
            self.events.publish(events).await;
            return Ok(twiml_message(&answer));
        }
        if let (Some(keyword), Some(number)) = (keyword, &from_number) {
            let opted_out = keyword == Keyword::OptOut;
            events.push(
                self.apply_keyword(&org, number, opted_out, sid, body)
                    .await?,
            );
        }
        self.events.publish(events).await;
        Ok(twiml())
    }

    /// The organization an inbound SMS is for: the one owning the number it was sent to,
    /// else the one that last texted the sender from this deployment (a reply).
    async fn org_of_inbound(
        &self,
        to: &str,
        from: Option<&PhoneNumber>,
    ) -> Result<Option<OrgId>, ApiError> {
        let to_key = PhoneNumber::parse(to)
            .map(|n| n.to_string())
            .unwrap_or_else(|_| to.to_owned());
        if let Some(org) = self.number_orgs.get(&to_key) {
            return Ok(Some(org.clone()));
        }
        match from {
            Some(number) => Ok(self.sms.peer_org(number).await?),
            None => Ok(None),
        }
    }

    /// STOP or START from `number`: the opt-out list and the consent ledger (keyed by the
    /// message SID, so a redelivery records it once); answers the audit event.
    async fn apply_keyword(
        &self,
        org: &OrgId,
        number: &PhoneNumber,
        opted_out: bool,
        sid: &str,
        body: &str,
    ) -> Result<Event, ApiError> {
        let now = chrono::Utc::now();
        self.sms
            .set_opted_out(org, number, opted_out, body, now)
            .await?;
        let change = ConsentChange {
            channel: Channel::Sms,
            subject: number.to_string(),
            topic: ALL_TOPICS.to_owned(),
            state: if opted_out {
                ConsentState::OptedOut
            } else {
                ConsentState::OptedIn
            },
            source: ConsentSource::SmsKeyword,
            actor: number.to_string(),
            evidence: std::collections::BTreeMap::from([
                ("message_sid".to_owned(), sid.to_owned()),
                ("keyword".to_owned(), body.trim().to_ascii_uppercase()),
            ]),
            at: now,
        };
        self.consent
            .record(org, &change, Some(&format!("twilio#{sid}")))
            .await?;
        let action = if opted_out {
            "sms.opt_out"
        } else {
            "sms.opt_in"
        };
        tracing::info!(org = org.as_str(), action, "SMS opt-out list changed");
        Ok(Event {
            actor: Some(number.to_string()),
            resource: Some(format!("sms/opt-out/{number}")),
            channel: Some("sms".to_owned()),
            ..Event::new(org, EventKind::Audit, action)
        })
    }
}
