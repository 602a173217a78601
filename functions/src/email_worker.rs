//! The email send worker (SPEC §7): takes `email.send` jobs from the send queue and sends
//! their emails through SendGrid, up to 1,000 recipients per API call.
//!
//! Each email is claimed before sending (`queued → sending`, conditional), so a duplicate
//! delivery of the same message finds nothing left to send. Transient failures put the
//! emails back in `queued` and the message back on the queue with backoff and jitter; the
//! last allowed attempt records `failed` before SQS moves the message to the DLQ. Permanent
//! failures are recorded at once and not retried.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::Instrument;

use shared::aws::{AwsClients, SecretsClient};
use shared::config::{Env, OnFirstUse};
use shared::domain::OrgId;
use shared::domain::email::{EmailRecord, EmailStatus, FailureKind};
use shared::events::{Event, EventKind, EventPublisher};
use shared::providers::sendgrid::{
    Address, Content, MAX_PERSONALIZATIONS, MAX_SUBSTITUTION_BYTES, MailSend, Personalization,
    SendError, SendGridClient,
};
use shared::queue::{Envelope, Job, RetryDelay};
use shared::store::{EmailStore, SendOutcome};

use crate::registry::{BoxFuture, SqsFunction, process_batch};

/// How long a claim holds before another delivery may take the email over; longer than
/// one SendGrid call with its timeout, shorter than the queue's visibility timeout.
/// `EMAIL_CLAIM_LEASE_SECONDS` overrides it (the fault-injection run shortens both).
const CLAIM_LEASE_SECONDS: i64 = 60;
const HTML_TOKEN: &str = "%herald_html%";
const TEXT_TOKEN: &str = "%herald_text%";

pub struct EmailWorker {
    emails: EmailStore,
    /// `None` when SendGrid is not configured.
    sendgrid: OnFirstUse<Option<SendGridClient>>,
    retry: RetryDelay,
    events: EventPublisher,
    max_receives: u32,
    claim_lease: chrono::Duration,
}

impl SqsFunction for EmailWorker {
    fn call(&self, event: SqsEvent) -> BoxFuture<'_, SqsBatchResponse> {
        Box::pin(self.handle(event))
    }
}

/// One SendGrid call and the emails it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedMail {
    pub mail: MailSend,
    pub ids: Vec<String>,
}

/// Why one queue message must be retried.
#[derive(Debug)]
struct Retry(String);

impl EmailWorker {
    /// No I/O: the SendGrid key is read by the first job that sends.
    ///
    /// # Errors
    /// When a required variable is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let table = env.required("TABLE_NAME")?;
        Ok(Self {
            emails: EmailStore::new(aws.dynamodb.clone(), table),
            sendgrid: sendgrid_on_first_use(aws, env),
            retry: RetryDelay::from_env(
                aws.sqs.clone(),
                env.required("EMAIL_SEND_QUEUE_URL")?,
                env,
            ),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            max_receives: env
                .optional("MAX_RECEIVES")
                .and_then(|v| v.parse().ok())
                .unwrap_or(3),
            claim_lease: chrono::Duration::seconds(
                env.optional("EMAIL_CLAIM_LEASE_SECONDS")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(CLAIM_LEASE_SECONDS),
            ),
        })
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let span = shared::logging::invocation_span("email-worker", "");
        process_batch("email-worker", &event.records, |message| async move {
            self.process(message).await.map_err(|Retry(reason)| reason)
        })
        .instrument(span)
        .await
    }

    async fn process(&self, message: &SqsMessage) -> Result<(), Retry> {
        let body = message.body.as_deref().unwrap_or_default();
        let envelope =
            Envelope::parse(body).map_err(|e| Retry(format!("unreadable message: {e:#}")))?;
        tracing::Span::current().record("org", envelope.org.as_str());
        let Job::EmailSend { ids } = envelope.job else {
            return Err(Retry("not an email.send job".to_owned()));
        };
        let last_attempt = RetryDelay::receives(message) >= self.max_receives;
        let org = envelope.org;
        let now = chrono::Utc::now();

        let records = self
            .emails
            .get_many(&org, &ids)
            .await
            .map_err(|e| Retry(format!("{e:#}")))?;
        let claimed = self
            .emails
            .claim_all(&records, now, self.claim_lease)
            .await
            .map_err(|e| Retry(format!("{e:#}")))?;
        // Emails another delivery holds a live claim on: if that invocation dies before
        // recording its outcome, only this message is left to bring them back, so it
        // returns once the claim has run out rather than being deleted.
        let held_elsewhere = records
            .iter()
            .filter(|r| matches!(r.status, EmailStatus::Queued | EmailStatus::Sending))
            .filter(|r| !claimed.iter().any(|c| c.id == r.id))
            .count();
        let result = self
            .send_claimed(&org, claimed, last_attempt, message)
            .await;
        if held_elsewhere > 0 && result.is_ok() {
            let lease = u64::try_from(self.claim_lease.num_seconds()).unwrap_or(60);
            self.retry.delay_by(message, lease + 1).await;
            return Err(Retry(format!(
                "{held_elsewhere} emails are claimed by another delivery"
            )));
        }
        result
    }

    /// Sends what this delivery claimed, recording each email's outcome.
    async fn send_claimed(
        &self,
        org: &OrgId,
        claimed: Vec<EmailRecord>,
        last_attempt: bool,
        message: &SqsMessage,
    ) -> Result<(), Retry> {
        if claimed.is_empty() {
            return Ok(()); // a duplicate delivery, or everything already moved on
        }
        let org = org.clone();

        let addresses: Vec<_> = claimed.iter().map(|r| &r.to).collect();
        let suppressed = match self.emails.suppressed(&org, &addresses).await {
            Ok(set) => set,
            Err(error) => {
                return self
                    .settle(&org, &claimed, last_attempt, format!("{error:#}"), message)
                    .await;
            }
        };
        let (blocked, to_send): (Vec<EmailRecord>, Vec<EmailRecord>) = claimed
            .into_iter()
            .partition(|r| suppressed.contains(&r.to.suppression_key()));
        self.finish_all(
            &org,
            blocked.iter().map(|r| r.id.as_str()),
            &SendOutcome::Suppressed,
        )
        .await?;
        if to_send.is_empty() {
            return Ok(());
        }

        let sendgrid = match self.sendgrid.get().await {
            Ok(Some(sendgrid)) => sendgrid,
            unusable => {
                let reason = match unusable {
                    Err(error) => {
                        tracing::error!(error = format!("{error:#}"), "SendGrid settings");
                        "the SendGrid settings could not be read"
                    }
                    Ok(_) => "SendGrid is not configured",
                };
                return self
                    .settle(&org, &to_send, last_attempt, reason.to_owned(), message)
                    .await;
            }
        };
        let mut retry = None;
        for planned in plan_mails(&to_send) {
            let outcome = match sendgrid.send(&planned.mail).await {
                Ok(accepted) => SendOutcome::Sent {
                    message_id: accepted.message_id,
                },
                Err(SendError::Permanent { status, message }) => SendOutcome::Failed {
                    kind: FailureKind::Permanent,
                    reason: format!("SendGrid {status}: {message}"),
                },
                Err(error) => {
                    let reason = error.to_string();
                    retry.get_or_insert(reason.clone());
                    SendOutcome::transient(reason, last_attempt)
                }
            };
            tracing::info!(emails = planned.ids.len(), outcome = ?outcome, "SendGrid call");
            let call = Event::new(&org, EventKind::Provider, "sendgrid.mail_send").with_detail(
                serde_json::json!({
                    "recipients": planned.ids.len(),
                    "outcome": format!("{outcome:?}"),
                }),
            );
            self.events.publish(vec![call]).await;
            self.finish_all(&org, planned.ids.iter().map(String::as_str), &outcome)
                .await?;
        }
        match retry {
            None => Ok(()),
            Some(reason) => {
                self.retry.delay(message).await;
                Err(Retry(reason))
            }
        }
    }

    /// A failure before any send: the emails go back to `queued` (or `failed` on the last
    /// attempt) and the message is retried.
    async fn settle(
        &self,
        org: &OrgId,
        records: &[EmailRecord],
        last_attempt: bool,
        reason: String,
        message: &SqsMessage,
    ) -> Result<(), Retry> {
        let outcome = SendOutcome::transient(reason.clone(), last_attempt);
        self.finish_all(org, records.iter().map(|r| r.id.as_str()), &outcome)
            .await?;
        self.retry.delay(message).await;
        Err(Retry(reason))
    }

    async fn finish_all<'a>(
        &self,
        org: &OrgId,
        ids: impl Iterator<Item = &'a str>,
        outcome: &SendOutcome,
    ) -> Result<(), Retry> {
        let ids: Vec<String> = ids.map(str::to_owned).collect();
        let written = self
            .emails
            .finish_all(org, &ids, outcome, chrono::Utc::now())
            .await
            // The claim lease runs out and a retry picks the emails up again.
            .map_err(|error| Retry(format!("recording the outcome failed: {error:#}")))?;
        let status = match outcome {
            SendOutcome::Sent { .. } => "sent",
            SendOutcome::Failed { .. } => "failed",
            SendOutcome::Suppressed => "suppressed",
            SendOutcome::Retry { .. } => return Ok(()),
        };
        // Only the changes this wrote: where a webhook got there first, it reported its own.
        let events = written
            .iter()
            .map(|id| Event::delivery(org, "email", format!("email/{id}"), status))
            .collect();
        self.events.publish(events).await;
        Ok(())
    }
}

/// The SendGrid client, built on first use by [`sendgrid_client`].
pub fn sendgrid_on_first_use(aws: &AwsClients, env: &Env) -> OnFirstUse<Option<SendGridClient>> {
    env.on_first_use(&aws.secrets, |env, secrets| async move {
        sendgrid_client(&env, &secrets).await
    })
}

/// Builds the SendGrid client from `SENDGRID_API_KEY` (secret) and `SENDGRID_BASE_URL`;
/// `None` when no key is configured.
///
/// # Errors
/// When the secret cannot be read or the base URL is unusable.
pub async fn sendgrid_client(
    env: &Env,
    secrets: &SecretsClient,
) -> anyhow::Result<Option<SendGridClient>> {
    let Some(key) = env.secret("SENDGRID_API_KEY", secrets).await? else {
        return Ok(None);
    };
    let base = env
        .optional("SENDGRID_BASE_URL")
        .unwrap_or_else(|| "https://api.sendgrid.com".to_owned());
    let timeout = Duration::from_millis(
        env.optional("SENDGRID_TIMEOUT_MS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000),
    );
    Ok(Some(SendGridClient::new(&base, key, timeout)?))
}

/// Groups emails into SendGrid calls. Emails with the same sender share a call (up to 1,000
/// personalizations). When their rendered content differs, each personalization carries its
/// own subject and its bodies as substitutions of one token each, so every recipient gets
/// exactly the content Herald rendered for them; an email whose bodies exceed SendGrid's
/// substitution limit goes in a call of its own.
pub fn plan_mails(records: &[EmailRecord]) -> Vec<PlannedMail> {
    type GroupKey = (String, Option<String>, Option<String>, bool, bool);
    let mut groups: BTreeMap<GroupKey, Vec<&EmailRecord>> = BTreeMap::new();
    let mut planned = Vec::new();
    for record in records {
        let bytes = record.html.as_ref().map_or(0, String::len)
            + record.text.as_ref().map_or(0, String::len);
        if bytes + HTML_TOKEN.len() + TEXT_TOKEN.len() > MAX_SUBSTITUTION_BYTES {
            planned.push(literal_mail(&[record]));
            continue;
        }
        let key = (
            record.from.to_string(),
            record.from_name.clone(),
            record.reply_to.as_ref().map(ToString::to_string),
            record.html.is_some(),
            record.text.is_some(),
        );
        groups.entry(key).or_default().push(record);
    }
    for group in groups.values() {
        for chunk in group.chunks(MAX_PERSONALIZATIONS) {
            let first = chunk[0];
            let identical = chunk.iter().all(|r| {
                r.subject == first.subject && r.html == first.html && r.text == first.text
            });
            planned.push(if identical {
                literal_mail(chunk)
            } else {
                substituted_mail(chunk)
            });
        }
    }
    planned
}

fn personalization(record: &EmailRecord) -> Personalization {
    Personalization {
        to: vec![Address::new(record.to.as_str())],
        cc: record.cc.iter().map(|a| Address::new(a.as_str())).collect(),
        bcc: record
            .bcc
            .iter()
            .map(|a| Address::new(a.as_str()))
            .collect(),
        custom_args: BTreeMap::from([
            ("org_id".to_owned(), record.org_id.to_string()),
            ("email_id".to_owned(), record.id.clone()),
        ]),
        ..Personalization::default()
    }
}

fn envelope(
    first: &EmailRecord,
    personalizations: Vec<Personalization>,
    subject: Option<String>,
    content: Vec<Content>,
) -> MailSend {
    MailSend {
        personalizations,
        from: Address {
            email: first.from.to_string(),
            name: first.from_name.clone(),
        },
        reply_to: first.reply_to.as_ref().map(|r| Address::new(r.as_str())),
        subject,
        content,
        custom_args: None,
    }
}

fn literal_mail(records: &[&EmailRecord]) -> PlannedMail {
    let first = records[0];
    let mut content = Vec::new();
    if let Some(text) = &first.text {
        content.push(Content::plain(text));
    }
    if let Some(html) = &first.html {
        content.push(Content::html(html));
    }
    PlannedMail {
        mail: envelope(
            first,
            records.iter().map(|r| personalization(r)).collect(),
            Some(first.subject.clone()),
            content,
        ),
        ids: records.iter().map(|r| r.id.clone()).collect(),
    }
}

fn substituted_mail(records: &[&EmailRecord]) -> PlannedMail {
    let first = records[0];
    let mut content = Vec::new();
    if first.text.is_some() {
        content.push(Content::plain(TEXT_TOKEN));
    }
    if first.html.is_some() {
        content.push(Content::html(HTML_TOKEN));
    }
    let personalizations = records
        .iter()
        .map(|record| {
            let mut p = personalization(record);
            p.subject = Some(record.subject.clone());
            if let Some(text) = &record.text {
                p.substitutions.insert(TEXT_TOKEN.to_owned(), text.clone());
            }
            if let Some(html) = &record.html {
                p.substitutions.insert(HTML_TOKEN.to_owned(), html.clone());
            }
            p
        })
        .collect();
    PlannedMail {
        mail: envelope(first, personalizations, None, content),
        ids: records.iter().map(|r| r.id.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domain::email::{EmailAddress, EmailStatus};

    fn record(n: usize, html: &str) -> EmailRecord {
        let now = chrono::Utc::now();
        EmailRecord {
            id: format!("id{n}"),
            org_id: OrgId::parse("acme").unwrap(),
            to: EmailAddress::parse(&format!("user{n}@example.com")).unwrap(),
            cc: vec![],
            bcc: vec![],
            from: EmailAddress::parse("news@acme.test").unwrap(),
            from_name: None,
            reply_to: None,
            subject: "Hello".to_owned(),
            html: Some(html.to_owned()),
            text: None,
            metadata: BTreeMap::new(),
            template_id: None,
            campaign: None,
            bulk_id: None,
            status: EmailStatus::Sending,
            engagement: vec![],
            timeline: vec![],
            attempts: 1,
            failure_kind: None,
            failure_reason: None,
            provider_message_id: None,
            created_at: now,
            updated_at: now,
            sent_at: None,
            version: 1,
            applied_events: vec![],
        }
    }

    #[test]
    fn bulk_of_2500_takes_three_calls() {
        let records: Vec<_> = (0..2500)
            .map(|n| record(n, &format!("<p>Hi {n}</p>")))
            .collect();
        let planned = plan_mails(&records);
        assert_eq!(planned.len(), 3);
        assert_eq!(planned.iter().map(|p| p.ids.len()).sum::<usize>(), 2500);
        let p = &planned[0].mail.personalizations[7];
        assert_eq!(p.substitutions[HTML_TOKEN], "<p>Hi 7</p>");
        assert_eq!(p.custom_args["email_id"], "id7");
        assert_eq!(p.custom_args["org_id"], "acme");
        assert_eq!(planned[0].mail.content[0].value, HTML_TOKEN);
    }

    #[test]
    fn identical_content_needs_no_substitutions() {
        let records: Vec<_> = (0..3).map(|n| record(n, "<p>Same</p>")).collect();
        let planned = plan_mails(&records);
        assert_eq!(planned.len(), 1);
        assert!(
            planned[0]
                .mail
                .personalizations
                .iter()
                .all(|p| p.substitutions.is_empty())
        );
        assert_eq!(planned[0].mail.content[0].value, "<p>Same</p>");
    }

    #[test]
    fn oversized_bodies_go_alone() {
        let mut records: Vec<_> = (0..3).map(|n| record(n, &format!("<p>{n}</p>"))).collect();
        records.push(record(9, &"x".repeat(MAX_SUBSTITUTION_BYTES)));
        let planned = plan_mails(&records);
        assert_eq!(planned.len(), 2);
        assert!(planned.iter().any(|p| p.ids == vec!["id9".to_owned()]
            && p.mail.personalizations[0].substitutions.is_empty()));
    }
}
