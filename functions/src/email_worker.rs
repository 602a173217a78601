//! The email send worker (SPEC §7): takes `email.send` jobs from the send queue and sends
//! their emails through SendGrid, up to 1,000 recipients per API call.
//!
//! A message of a send job (`Envelope::send_job`: the emails were created in it) is claimed
//! once, in one conditional write on the job, and its emails stay `queued` until their
//! outcome is written, conditional on still naming the job; any other email is claimed
//! itself (`queued → sending`, conditional). Either way a duplicate delivery of the same
//! message finds nothing left to send (issue 20 §5: three writes per email, not four).
//! Transient failures put the
//! emails back in `queued` and the message back on the queue with backoff and jitter; the
//! last allowed attempt records `failed` before SQS moves the message to the DLQ. Permanent
//! failures are recorded at once and not retried.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};

use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::consent::{ALL_TOPICS, Channel, UnsubscribeClaim, UnsubscribeKeys};
use shared::domain::OrgId;
use shared::domain::email::{BodyKind, EmailRecord, EmailStatus, FailureKind};
use shared::events::{Event, EventKind, EventPublisher};
use shared::providers::sendgrid::{
    Accepted, Address, Content, MAX_PERSONALIZATIONS, MAX_SUBSTITUTION_BYTES, MailSend,
    Personalization, SendError, SendGridClient,
};
use shared::queue::{Envelope, Job, QueuePublisher, RetryDelay};
use shared::store::{ConsentStore, EmailStore, SendOutcome, Taken};

use crate::runtime::{BoxFuture, JobError, SqsFunction, process_batch};

/// How long a claim holds before another delivery may take the email over; longer than
/// one SendGrid call with its timeout, shorter than the queue's visibility timeout.
/// `EMAIL_CLAIM_LEASE_SECONDS` overrides it (the fault-injection run shortens both).
const CLAIM_LEASE_SECONDS: i64 = 60;
const HTML_TOKEN: &str = "%herald_html%";
const TEXT_TOKEN: &str = "%herald_text%";

pub struct EmailWorker {
    emails: EmailStore,
    consent: ConsentStore,
    /// Signs the one-click unsubscribe links; `None` when the secret holds no key.
    unsubscribe_keys: OnFirstUse<Option<UnsubscribeKeys>>,
    /// The unsubscribe function's public URL, which the links point at.
    unsubscribe_url: Option<String>,
    /// The address whose mail SendGrid's Inbound Parse posts to the unsubscribe function
    /// (`UNSUBSCRIBE_MAILBOX`); `None`: the links carry no `mailto:`.
    unsubscribe_mailbox: Option<String>,
    /// `None` when SendGrid is not configured.
    sendgrid: OnFirstUse<Option<SendGridClient>>,
    retry: RetryDelay,
    events: EventPublisher,
    max_receives: u32,
    claim_lease: chrono::Duration,
    queue: QueuePublisher,
    send_queue: String,
    /// How long one invocation starts new SendGrid calls before it hands the rest back.
    send_budget: Duration,
}

/// Calls are started for this long, then the rest of the job goes back on the queue: the
/// function's timeout is 60 s and a SendGrid call may take `SENDGRID_TIMEOUT_MS` (10 s), so
/// a job whose emails cannot share calls (a bulk with a cc: one call per email) is handed
/// on in slices instead of being killed mid-way and retried towards the DLQ (issue 15).
const SEND_BUDGET_SECONDS: u64 = 30;

/// SendGrid calls one job has in flight at once. A bulk with a cc takes one call per email
/// (SendGrid refuses an address twice in one request — "Each unique email address in the
/// personalizations array should only be included once", Mail Send errors reference), so a
/// 1,000-email job is 1,000 calls: one at a time they outlast the send budget and the job
/// is handed on in slices, each hand-back rewriting the rest of its emails. Mail Send is
/// outside SendGrid's per-user request limit (changelog 2019-10-10) and a 429 is retried
/// with the rest of the job, so the bound is ours: eight calls keep a job's 1,000 calls
/// inside a few budgets without opening hundreds of connections per worker.
const CALLS_IN_FLIGHT: usize = 8;

/// SendGrid calls one delivery of a job makes at most (eight rounds of [`CALLS_IN_FLIGHT`]),
/// well inside the send budget at SendGrid's usual answer times; the rest of a job is passed
/// on before anything is claimed ([`EmailWorker::this_delivery`]). A 1,000-email job whose
/// emails share one call is one call, untouched by this.
const CALLS_PER_DELIVERY: usize = 64;

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

impl PlannedMail {
    /// The call split in two, each half with its emails' personalizations.
    fn halves(mut self) -> (Self, Self) {
        let middle = self.ids.len() / 2;
        let mut second = self.mail.clone();
        second.personalizations = self.mail.personalizations.split_off(middle);
        let second_ids = self.ids.split_off(middle);
        (
            self,
            Self {
                mail: second,
                ids: second_ids,
            },
        )
    }
}

/// What one delivery of a send job holds: its organization, the send job it claimed, and
/// the emails it took in that job without claiming each (the others it claimed each).
struct Delivery {
    org: OrgId,
    job: Option<String>,
    in_job: std::collections::HashSet<String>,
}

impl Delivery {
    fn taken(&self, id: &str) -> Taken {
        match &self.job {
            Some(job) if self.in_job.contains(id) => Taken::InJob(job.clone()),
            _ => Taken::Claimed,
        }
    }
}

/// Statuses with which SendGrid refuses a request for what it contains (400 a rule of
/// Mail Send, 413 its size), as opposed to who sent it (401, 403).
fn refuses_the_request(status: u16) -> bool {
    matches!(status, 400 | 413)
}

impl EmailWorker {
    /// No I/O: the SendGrid key is read by the first job that sends.
    ///
    /// # Errors
    /// When a required variable is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let table = env.required("TABLE_NAME")?;
        let send_queue = env.required("EMAIL_SEND_QUEUE_URL")?;
        Ok(Self {
            queue: QueuePublisher::new(aws.sqs.clone()),
            send_budget: Duration::from_secs(
                env.number("EMAIL_SEND_BUDGET_SECONDS", SEND_BUDGET_SECONDS)?,
            ),
            emails: EmailStore::new(aws.dynamodb.clone(), &table),
            consent: ConsentStore::new(aws.dynamodb.clone(), table),
            unsubscribe_keys: UnsubscribeKeys::on_first_use(aws, env),
            unsubscribe_url: env.optional("UNSUBSCRIBE_URL"),
            unsubscribe_mailbox: env.optional("UNSUBSCRIBE_MAILBOX"),
            sendgrid: SendGridClient::on_first_use(aws, env)?,
            retry: RetryDelay::from_env(aws.sqs.clone(), send_queue.clone(), env)?,
            send_queue,
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            max_receives: env.number("MAX_RECEIVES", 3)?,
            claim_lease: chrono::Duration::seconds(
                env.number("EMAIL_CLAIM_LEASE_SECONDS", CLAIM_LEASE_SECONDS)?,
            ),
        })
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        shared::logging::invocation(
            "email-worker",
            "",
            process_batch(
                "email-worker",
                self.max_receives,
                &event.records,
                |message| async move { self.process(message).await },
            ),
        )
        .await
    }

    async fn process(&self, message: &SqsMessage) -> Result<(), JobError> {
        let body = message.body.as_deref().unwrap_or_default();
        let envelope = Envelope::parse(body)
            .map_err(|e| JobError::Permanent(format!("unreadable message: {e:#}")))?;
        tracing::Span::current().record("org", envelope.org.as_str());
        let Job::EmailSend { ids } = envelope.job else {
            return Err(JobError::Permanent("not an email.send job".to_owned()));
        };
        let org = envelope.org;
        let job = envelope.send_job;
        if let Some(job) = &job {
            let now = chrono::Utc::now();
            let claimed = self
                .emails
                .claim_job(&org, job, now, self.claim_lease)
                .await;
            if !claimed.map_err(|e| JobError::Retry(format!("{e:#}")))? {
                // Another delivery of this job is sending it; this one returns once that
                // delivery's lease has run out, in case it died.
                let lease = u64::try_from(self.claim_lease.num_seconds()).unwrap_or(60);
                self.retry.delay_by(message, lease + 1).await;
                return Err(JobError::Retry(format!(
                    "send job {job} is held by another delivery"
                )));
            }
        }
        let result = self.send_job(message, &org, job.as_deref(), &ids).await;
        if let (Err(_), Some(job)) = (&result, &job) {
            // Its emails moved on or are back in `queued` on their own: a retry of this
            // message need not wait for the lease.
            if let Err(error) = self.emails.release_job(&org, job).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "could not release the send job"
                );
            }
        }
        result
    }

    /// Sends the job's emails this delivery takes (all of them, unless another delivery
    /// holds some); `job` is the send job this delivery claimed.
    async fn send_job(
        &self,
        message: &SqsMessage,
        org: &OrgId,
        job: Option<&str>,
        ids: &[String],
    ) -> Result<(), JobError> {
        let last_attempt = RetryDelay::receives(message) >= self.max_receives;
        let mut records = self
            .emails
            .get_many(org, ids)
            .await
            .map_err(|e| JobError::Retry(format!("{e:#}")))?;
        if records.len() > 1 {
            records = self.this_delivery(org, job, records).await?;
        }
        let taken = self
            .emails
            .claim_all(&records, job, chrono::Utc::now(), self.claim_lease)
            .await
            .map_err(|e| JobError::Retry(format!("{e:#}")))?;
        // Emails another delivery holds a live claim on: if that invocation dies before
        // recording its outcome, only this message is left to bring them back, so it
        // returns once the claim has run out rather than being deleted. (An email waiting
        // in another send job is that job's to send, or the sweep's.)
        let held_elsewhere = records
            .iter()
            .filter(|r| matches!(r.status, EmailStatus::Queued | EmailStatus::Sending))
            .filter(|r| r.send_job.is_none())
            .filter(|r| !taken.iter().any(|c| c.id == r.id))
            .count();
        let delivery = Delivery {
            org: org.clone(),
            job: job.map(str::to_owned),
            in_job: records
                .iter()
                .filter(|r| r.in_send_job(job))
                .map(|r| r.id.clone())
                .collect(),
        };
        let result = self
            .send_claimed(&delivery, taken, last_attempt, message)
            .await;
        if held_elsewhere > 0 && result.is_ok() {
            let lease = u64::try_from(self.claim_lease.num_seconds()).unwrap_or(60);
            self.retry.delay_by(message, lease + 1).await;
            return Err(JobError::Retry(format!(
                "{held_elsewhere} emails are claimed by another delivery"
            )));
        }
        result
    }

    /// The emails this delivery sends: those of the job's first [`CALLS_PER_DELIVERY`]
    /// planned calls. The rest go back on the queue as a job of their own before anything is
    /// claimed, so they stay `queued` without a write: a job whose emails cannot share calls
    /// (a bulk with a cc) moves on 64 calls a delivery at two writes per email, where
    /// claiming all 1,000 and handing back what the budget did not reach rewrote the rest on
    /// every slice. Bodies are read first, as the plan depends on them.
    async fn this_delivery(
        &self,
        org: &OrgId,
        job: Option<&str>,
        mut records: Vec<EmailRecord>,
    ) -> Result<Vec<EmailRecord>, JobError> {
        records.retain(|r| matches!(r.status, EmailStatus::Queued | EmailStatus::Sending));
        self.emails
            .attach_bodies(&mut records)
            .await
            .map_err(|e| JobError::Retry(format!("{e:#}")))?;
        let calls = plan_mails(&records);
        if calls.len() <= CALLS_PER_DELIVERY {
            return Ok(records);
        }
        let rest: Vec<String> = calls[CALLS_PER_DELIVERY..]
            .iter()
            .flat_map(|call| call.ids.iter().cloned())
            .collect();
        let rest_set: std::collections::HashSet<&str> = rest.iter().map(String::as_str).collect();
        if let Some(job) = job {
            // The rest goes on as a message of its own while this delivery holds the job.
            self.emails
                .leave_job(org, &rest, job)
                .await
                .map_err(|e| JobError::Retry(format!("{e:#}")))?;
        }
        let rest_job = Envelope::new(org.clone(), Job::EmailSend { ids: rest.clone() });
        self.queue
            .send_all(&self.send_queue, &[rest_job])
            .await
            .map_err(|error| {
                JobError::Retry(format!("passing the rest of the job on failed: {error:#}"))
            })?;
        tracing::info!(
            emails = rest.len(),
            calls = calls.len() - CALLS_PER_DELIVERY,
            "more calls than one delivery makes: the rest passed on as a job"
        );
        records.retain(|r| !rest_set.contains(r.id.as_str()));
        Ok(records)
    }

    /// Sends what this delivery claimed, recording each email's outcome.
    async fn send_claimed(
        &self,
        delivery: &Delivery,
        claimed: Vec<EmailRecord>,
        last_attempt: bool,
        message: &SqsMessage,
    ) -> Result<(), JobError> {
        if claimed.is_empty() {
            return Ok(()); // a duplicate delivery, or everything already moved on
        }
        let org = &delivery.org;
        let blocked = match self.blocked(org, &claimed).await {
            Ok(blocked) => blocked,
            Err(error) => {
                let reason = format!("{error:#}");
                return self
                    .settle(delivery, &claimed, last_attempt, reason, message)
                    .await;
            }
        };
        let (blocked, to_send): (Vec<EmailRecord>, Vec<EmailRecord>) =
            claimed.into_iter().partition(|r| blocked.contains(&r.id));
        let blocked_ids = blocked.iter().map(|r| r.id.as_str());
        self.finish_all(delivery, blocked_ids, &SendOutcome::Suppressed)
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
                let reason = reason.to_owned();
                return self
                    .settle(delivery, &to_send, last_attempt, reason, message)
                    .await;
            }
        };
        let links = match self.unsubscribe_links(&to_send).await {
            Ok(links) => links,
            Err(reason) => {
                return self
                    .settle(delivery, &to_send, last_attempt, reason, message)
                    .await;
            }
        };
        let mut calls = plan_mails(&to_send);
        attach_headers(&mut calls, &links);
        let retry = self
            .make_calls(delivery, sendgrid, calls, last_attempt)
            .await?;
        match retry {
            None => Ok(()),
            Some(reason) => {
                self.retry.delay(message).await;
                Err(JobError::Retry(reason))
            }
        }
    }

    /// The ids of the claimed emails nobody may send: a suppressed address, or a person
    /// opted out (of everything, or of the email's topic) in the consent ledger.
    async fn blocked(
        &self,
        org: &OrgId,
        claimed: &[EmailRecord],
    ) -> Result<std::collections::HashSet<String>, shared::store::StoreError> {
        let addresses: Vec<_> = claimed.iter().map(|r| &r.to).collect();
        let suppressed = self.emails.suppressed(org, &addresses).await?;
        let messages: Vec<shared::store::Addressed> = claimed
            .iter()
            .map(|r| shared::store::Addressed {
                id: r.id.clone(),
                subject: r.to.suppression_key(),
                topic: r.topic.clone(),
            })
            .collect();
        let mut blocked = self
            .consent
            .blocked_messages(org, Channel::Email, &messages)
            .await?;
        let by_address = claimed
            .iter()
            .filter(|r| suppressed.contains(&r.to.suppression_key()));
        blocked.extend(by_address.map(|r| r.id.clone()));
        Ok(blocked)
    }

    /// Makes the planned calls, [`CALLS_IN_FLIGHT`] at a time, recording each round's
    /// outcomes; what the send budget leaves unsent is handed back as a new job. Answers the
    /// first reason the job must be tried again, if any.
    async fn make_calls(
        &self,
        delivery: &Delivery,
        sendgrid: &SendGridClient,
        mut calls: Vec<PlannedMail>,
        last_attempt: bool,
    ) -> Result<Option<String>, JobError> {
        calls.reverse(); // sent in plan order, popped from the end
        let deadline = tokio::time::Instant::now() + self.send_budget;
        let mut retry = None;
        let mut made_a_call = false;
        while !calls.is_empty() {
            // At least one round per delivery, so a handed-back job always moves on.
            if made_a_call && tokio::time::Instant::now() >= deadline {
                let rest: Vec<String> = calls.iter().flat_map(|c| c.ids.clone()).collect();
                self.hand_back(delivery, rest).await?;
                break;
            }
            let round: Vec<PlannedMail> = (0..CALLS_IN_FLIGHT).map_while(|_| calls.pop()).collect();
            let results =
                futures::future::join_all(round.iter().map(|p| sendgrid.send(&p.mail))).await;
            made_a_call = true;
            let mut finished = Vec::new();
            for (planned, result) in round.into_iter().zip(results) {
                // A refused call of several emails may be refused for one of them: send it
                // again in halves, so one bad email fails alone and its call-mates go out
                // (a bad email costs at most ten more calls, log2 of 1,000).
                if let Err(SendError::Permanent { status, message }) = &result
                    && planned.ids.len() > 1
                    && refuses_the_request(*status)
                {
                    tracing::warn!(
                        status,
                        message,
                        emails = planned.ids.len(),
                        "SendGrid refused a call: splitting it"
                    );
                    let (first, second) = planned.halves();
                    calls.push(second);
                    calls.push(first);
                    continue;
                }
                let outcome = self.outcome_of(result, last_attempt, &mut retry);
                tracing::info!(emails = planned.ids.len(), outcome = ?outcome, "SendGrid call");
                finished.push((planned.ids, outcome));
            }
            self.record_calls(delivery, finished).await?;
        }
        Ok(retry)
    }

    /// What one SendGrid answer means for the emails of its call; `retry` keeps the first
    /// reason the job must be tried again.
    fn outcome_of(
        &self,
        result: Result<Accepted, SendError>,
        last_attempt: bool,
        retry: &mut Option<String>,
    ) -> SendOutcome {
        match result {
            Ok(accepted) => SendOutcome::Sent {
                message_id: accepted.message_id,
            },
            // The key, not the email: wrong, revoked (a rotation this execution environment
            // has not seen) or without the `mail.send` scope. Read the secret again (once)
            // and retry; only the last attempt fails the emails.
            Err(SendError::Permanent {
                status: status @ (401 | 403),
                message,
            }) => {
                tracing::error!(
                    status,
                    message,
                    alarm = "provider-credentials",
                    "SendGrid refused Herald's API key: re-reading the secret"
                );
                self.sendgrid.rebuild_once();
                let reason = format!("SendGrid refused the API key ({status}): {message}");
                retry.get_or_insert(reason.clone());
                SendOutcome::transient(reason, last_attempt)
            }
            Err(SendError::Permanent { status, message }) => SendOutcome::Failed {
                kind: FailureKind::Permanent,
                reason: format!("SendGrid {status}: {message}"),
            },
            Err(error) => {
                let reason = error.to_string();
                retry.get_or_insert(reason.clone());
                SendOutcome::transient(reason, last_attempt)
            }
        }
    }

    /// Records the outcomes of one round of calls: one provider event per call, published
    /// together, and each call's emails moved on (the rounds' writes run side by side).
    async fn record_calls(
        &self,
        delivery: &Delivery,
        finished: Vec<(Vec<String>, SendOutcome)>,
    ) -> Result<(), JobError> {
        let calls = finished
            .iter()
            .map(|(ids, outcome)| {
                Event::new(&delivery.org, EventKind::Provider, "sendgrid.mail_send").with_detail(
                    serde_json::json!({
                        "recipients": ids.len(),
                        "outcome": format!("{outcome:?}"),
                    }),
                )
            })
            .collect();
        self.events.publish(calls).await;
        let writes = finished.iter().map(|(ids, outcome)| {
            self.finish_all(delivery, ids.iter().map(String::as_str), outcome)
        });
        futures::future::join_all(writes)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, JobError>>()?;
        Ok(())
    }

    /// The `List-Unsubscribe` headers (RFC 2369, with RFC 8058's one-click POST) of every
    /// email that needs them, by email id: emails of a topic (the link opts out of it) and
    /// bulk emails without one (the link opts out of everything). Mailbox providers throttle
    /// bulk mail without them, so a missing key or URL fails the job rather than sending
    /// without.
    async fn unsubscribe_links(
        &self,
        records: &[EmailRecord],
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
        let needing: Vec<&EmailRecord> = records
            .iter()
            .filter(|r| r.topic.is_some() || r.bulk_id.is_some())
            .collect();
        if needing.is_empty() {
            return Ok(BTreeMap::new());
        }
        let keys = match self.unsubscribe_keys.get().await {
            Ok(Some(keys)) => keys,
            Ok(None) => return Err("no unsubscribe signing key is configured".to_owned()),
            Err(error) => return Err(format!("the unsubscribe signing key: {error:#}")),
        };
        let Some(base) = &self.unsubscribe_url else {
            return Err("UNSUBSCRIBE_URL is not set".to_owned());
        };
        let base = base.trim_end_matches('/');
        Ok(needing
            .into_iter()
            .map(|record| {
                let token = keys.sign(&UnsubscribeClaim {
                    org: record.org_id.clone(),
                    channel: Channel::Email,
                    subject: record.to.suppression_key(),
                    topic: record
                        .topic
                        .clone()
                        .unwrap_or_else(|| ALL_TOPICS.to_owned()),
                    message_id: record.id.clone(),
                });
                // RFC 2369 lists the URIs in order of preference; RFC 8058 needs the https
                // one, and mail clients without one-click use the mailto: (the subject
                // carries the token; base64url and dots need no escaping in a URI query).
                let list = match &self.unsubscribe_mailbox {
                    Some(mailbox) => format!(
                        "<{base}/{token}>, <mailto:{mailbox}?subject=unsubscribe%20{token}>"
                    ),
                    None => format!("<{base}/{token}>"),
                };
                let headers = BTreeMap::from([
                    ("List-Unsubscribe".to_owned(), list),
                    (
                        "List-Unsubscribe-Post".to_owned(),
                        "List-Unsubscribe=One-Click".to_owned(),
                    ),
                ]);
                (record.id.clone(), headers)
            })
            .collect())
    }

    /// Puts the emails this delivery did not get to back in `queued` and on the queue as a
    /// job of their own; the delivery itself then ends well.
    async fn hand_back(&self, delivery: &Delivery, ids: Vec<String>) -> Result<(), JobError> {
        let org = &delivery.org;
        let outcome = SendOutcome::Retry {
            reason: "handed back: this invocation's send budget ran out".to_owned(),
        };
        self.finish_all(delivery, ids.iter().map(String::as_str), &outcome)
            .await?;
        tracing::info!(
            org = org.as_str(),
            emails = ids.len(),
            "send budget spent: rest of the job handed back"
        );
        let job = Envelope::new(org.clone(), Job::EmailSend { ids });
        self.queue
            .send_all(&self.send_queue, &[job])
            .await
            // The emails are `queued` with no job: the sweep brings them back.
            .map_err(|error| JobError::Retry(format!("handing the job back failed: {error:#}")))
    }

    /// A failure before any send: the emails go back to `queued` (or `failed` on the last
    /// attempt) and the message is retried.
    async fn settle(
        &self,
        delivery: &Delivery,
        records: &[EmailRecord],
        last_attempt: bool,
        reason: String,
        message: &SqsMessage,
    ) -> Result<(), JobError> {
        let outcome = SendOutcome::transient(reason.clone(), last_attempt);
        self.finish_all(delivery, records.iter().map(|r| r.id.as_str()), &outcome)
            .await?;
        self.retry.delay(message).await;
        Err(JobError::Retry(reason))
    }

    async fn finish_all<'a>(
        &self,
        delivery: &Delivery,
        ids: impl Iterator<Item = &'a str>,
        outcome: &SendOutcome,
    ) -> Result<(), JobError> {
        let org = &delivery.org;
        let ids: Vec<(String, Taken)> = ids.map(|id| (id.to_owned(), delivery.taken(id))).collect();
        let written = self
            .emails
            .finish_all(org, &ids, outcome, chrono::Utc::now())
            .await
            // The claim lease runs out and a retry picks the emails up again.
            .map_err(|error| JobError::Retry(format!("recording the outcome failed: {error:#}")))?;
        // Only the changes this wrote: where a webhook got there first, it reported its own.
        let event = |id: &String| {
            let resource = format!("email/{id}");
            match outcome {
                SendOutcome::Sent { .. } => Some(Event::delivery(org, "email", resource, "sent")),
                SendOutcome::Failed { kind, .. } => {
                    Some(Event::failed(org, "email", resource, *kind))
                }
                SendOutcome::Suppressed => {
                    Some(Event::delivery(org, "email", resource, "suppressed"))
                }
                SendOutcome::Retry { .. } => None,
            }
        };
        if matches!(outcome, SendOutcome::Retry { .. }) {
            shared::metrics::messages_retried("email", written.len(), org.as_str());
        }
        let events = written.iter().filter_map(event).collect();
        self.events.publish(events).await;
        Ok(())
    }
}

/// Groups emails into SendGrid calls. Emails with the same sender share a call:
/// - a bulk's emails stored as parts of one shared body: the call carries that body once,
///   a token in place of each part, and each personalization its own subject and parts as
///   substitutions (issue 20);
/// - emails with identical content, whatever its size: one literal content;
/// - other emails whose bodies fit SendGrid's substitution limit: each personalization
///   carries its whole bodies as the substitutions of one token each.
///
/// So every recipient gets exactly the content Herald rendered for them, and only an email
/// too large to substitute and like no other goes in a call of its own.
///
/// Every call keeps within the Mail Send rules (Twilio SendGrid, "Mail Send errors",
/// `twilio.com/docs/sendgrid/api-reference/mail-send/errors`; the sandbox enforces the same):
/// at most [`MAX_PERSONALIZATIONS`] personalizations and [`MAX_RECIPIENTS`] recipients
/// counting `to`, `cc` and `bcc` over all of them, and "each unique email address in the
/// personalizations array should only be included once". So an email's cc or bcc equal to
/// its `to` (or to each other) is dropped from its personalization (the person receives
/// the email once), and emails that share an address — a bulk's common cc, or the same
/// recipient listed twice — go in different calls.
pub fn plan_mails(records: &[EmailRecord]) -> Vec<PlannedMail> {
    type GroupKey = (String, Option<String>, Option<String>, bool, bool);
    type ContentKey<'a> = (GroupKey, &'a str, Option<&'a str>, Option<&'a str>);
    let mut groups: BTreeMap<GroupKey, Vec<&EmailRecord>> = BTreeMap::new();
    // Bodies too large to substitute go out as literal content, so only emails with the
    // same content can share a call: a newsletter identical for every recipient still
    // takes one call per 1,000 recipients, whatever its size (issue 20).
    let mut identical: BTreeMap<ContentKey<'_>, Vec<&EmailRecord>> = BTreeMap::new();
    let mut shared_bodies: BTreeMap<(GroupKey, &str), Vec<&EmailRecord>> = BTreeMap::new();
    let mut planned = Vec::new();
    for record in records {
        if let Some(parts) = &record.parts
            && parts.body.is_some()
        {
            let key = (sender_key(record), parts.shared.as_str());
            shared_bodies.entry(key).or_default().push(record);
            continue;
        }
        let bytes = record.html.as_ref().map_or(0, String::len)
            + record.text.as_ref().map_or(0, String::len);
        if bytes + HTML_TOKEN.len() + TEXT_TOKEN.len() > MAX_SUBSTITUTION_BYTES {
            let key = (
                sender_key(record),
                record.subject.as_str(),
                record.html.as_deref(),
                record.text.as_deref(),
            );
            identical.entry(key).or_default().push(record);
            continue;
        }
        groups.entry(sender_key(record)).or_default().push(record);
    }
    for same in identical.values() {
        planned.extend(pack_calls(same).iter().map(|call| literal_mail(call)));
    }
    for bulk in shared_bodies.values() {
        planned.extend(
            pack_calls(bulk)
                .iter()
                .filter_map(|call| shared_body_mail(call)),
        );
    }
    for group in groups.values() {
        for call in pack_calls(group) {
            let first = call[0];
            let identical = call.iter().all(|r| {
                r.subject == first.subject && r.html == first.html && r.text == first.text
            });
            planned.push(if identical {
                literal_mail(&call)
            } else {
                substituted_mail(&call)
            });
        }
    }
    planned
}

/// Gives each personalization its email's headers (found by the `email_id` custom arg).
fn attach_headers(calls: &mut [PlannedMail], headers: &BTreeMap<String, BTreeMap<String, String>>) {
    if headers.is_empty() {
        return;
    }
    for call in calls {
        for personalization in &mut call.mail.personalizations {
            if let Some(found) = personalization
                .custom_args
                .get("email_id")
                .and_then(|id| headers.get(id))
            {
                personalization.headers = found.clone();
            }
        }
    }
}

/// What emails must share to go in one call: sender, sender name, reply-to, and which
/// bodies they have.
fn sender_key(record: &EmailRecord) -> (String, Option<String>, Option<String>, bool, bool) {
    (
        record.from.to_string(),
        record.from_name.clone(),
        record.reply_to.as_ref().map(ToString::to_string),
        record.html.is_some(),
        record.text.is_some(),
    )
}

/// SendGrid's limit on recipients (`to` + `cc` + `bcc`, over every personalization) in one
/// Mail Send request.
pub const MAX_RECIPIENTS: usize = 1000;

/// Packs emails into calls, first fit: a call takes an email while it has room for one more
/// personalization and the email's recipients, and holds none of its addresses yet. An
/// email goes after the last call holding one of its addresses, so emails without shared
/// addresses fill calls in order (1,000 to a call) and the search stays short.
fn pack_calls<'a>(records: &[&'a EmailRecord]) -> Vec<Vec<&'a EmailRecord>> {
    struct Call<'a> {
        emails: Vec<&'a EmailRecord>,
        recipients: usize,
    }
    let mut calls: Vec<Call<'a>> = Vec::new();
    let mut last_call_of: std::collections::HashMap<String, usize> =
        std::collections::HashMap::new();
    let mut first_open = 0;
    for record in records {
        let addresses = recipient_keys(record);
        let after_shared = addresses
            .iter()
            .filter_map(|address| last_call_of.get(address).map(|index| index + 1))
            .max()
            .unwrap_or(0);
        let fits = |call: &Call<'_>| {
            call.emails.len() < MAX_PERSONALIZATIONS
                && call.recipients + addresses.len() <= MAX_RECIPIENTS
        };
        let start = first_open.max(after_shared);
        let index = (start..calls.len())
            .find(|index| fits(&calls[*index]))
            .unwrap_or_else(|| {
                calls.push(Call {
                    emails: Vec::new(),
                    recipients: 0,
                });
                calls.len() - 1
            });
        calls[index].emails.push(record);
        calls[index].recipients += addresses.len();
        for address in addresses {
            last_call_of.insert(address, index);
        }
        while first_open < calls.len() && !fits_any(&calls[first_open]) {
            first_open += 1;
        }
    }
    fn fits_any(call: &Call<'_>) -> bool {
        call.emails.len() < MAX_PERSONALIZATIONS && call.recipients < MAX_RECIPIENTS
    }
    calls.into_iter().map(|call| call.emails).collect()
}

/// An email's distinct recipient addresses, compared as SendGrid does (case-insensitively),
/// `to` first.
fn recipient_keys(record: &EmailRecord) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for address in std::iter::once(&record.to)
        .chain(&record.cc)
        .chain(&record.bcc)
    {
        let key = address.as_str().to_lowercase();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

fn personalization(record: &EmailRecord) -> Personalization {
    let mut seen = vec![record.to.as_str().to_lowercase()];
    let mut unseen = |address: &&shared::domain::email::EmailAddress| {
        let key = address.as_str().to_lowercase();
        let new = !seen.contains(&key);
        if new {
            seen.push(key);
        }
        new
    };
    Personalization {
        to: vec![Address::new(record.to.as_str())],
        cc: record
            .cc
            .iter()
            .filter(&mut unseen)
            .map(|a| Address::new(a.as_str()))
            .collect(),
        bcc: record
            .bcc
            .iter()
            .filter(&mut unseen)
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

/// A call of emails holding parts of one shared body (read): the body once, with tokens, and
/// each email's parts as its personalization's substitutions.
fn shared_body_mail(records: &[&EmailRecord]) -> Option<PlannedMail> {
    let body = records[0].parts.as_ref()?.body.as_ref()?;
    let mut content = Vec::new();
    if let Some(text) = body.with_tokens(BodyKind::Text) {
        content.push(Content::plain(text));
    }
    if let Some(html) = body.with_tokens(BodyKind::Html) {
        content.push(Content::html(html));
    }
    Some(personalized_mail(records, content, |record| {
        record
            .parts
            .as_ref()
            .map(|parts| body.substitutions(parts))
            .unwrap_or_default()
    }))
}

/// A call of emails with their whole bodies as the substitutions of one token each.
fn substituted_mail(records: &[&EmailRecord]) -> PlannedMail {
    let first = records[0];
    let mut content = Vec::new();
    if first.text.is_some() {
        content.push(Content::plain(TEXT_TOKEN));
    }
    if first.html.is_some() {
        content.push(Content::html(HTML_TOKEN));
    }
    personalized_mail(records, content, |record| {
        let text = record
            .text
            .iter()
            .map(|t| (TEXT_TOKEN.to_owned(), t.clone()));
        let html = record
            .html
            .iter()
            .map(|h| (HTML_TOKEN.to_owned(), h.clone()));
        text.chain(html).collect()
    })
}

/// A call whose `content` holds tokens: each personalization gets its email's own subject and
/// `substitutions_of` it.
fn personalized_mail(
    records: &[&EmailRecord],
    content: Vec<Content>,
    substitutions_of: impl Fn(&EmailRecord) -> Vec<(String, String)>,
) -> PlannedMail {
    let first = records[0];
    let personalizations = records
        .iter()
        .map(|record| {
            let mut p = personalization(record);
            p.subject = Some(record.subject.clone());
            p.substitutions.extend(substitutions_of(record));
            p
        })
        .collect();
    PlannedMail {
        // Each personalization's subject wins; the top-level one is for validators that
        // require it whatever the personalizations say (issue 15).
        mail: envelope(
            first,
            personalizations,
            Some(first.subject.clone()),
            content,
        ),
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
            parts: None,
            metadata: BTreeMap::new(),
            template_id: None,
            campaign: None,
            topic: None,
            bulk_id: None,
            send_job: None,
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

    /// A bulk of 2,500 emails of a 60 KB personalized body stored as parts of one shared
    /// body: three calls, each carrying the body once with tokens, and each personalization
    /// rebuilding exactly its email's rendering.
    #[test]
    fn parts_of_a_shared_body_take_one_call_per_thousand_and_rebuild_each_email() {
        use shared::domain::email::{BodyParts, SharedBody};
        let filler = "<p>News</p>".repeat(6_000);
        let body = std::sync::Arc::new(SharedBody {
            nonce: "0".to_owned(),
            html: Some(vec!["<h1>Hi ".to_owned(), format!("</h1>{filler}")]),
            text: Some(vec!["Hi ".to_owned(), ".".to_owned()]),
        });
        let records: Vec<_> = (0..2500)
            .map(|n| {
                let mut r = record(n, "");
                r.html = None;
                r.parts = Some(BodyParts {
                    shared: "bulk1".to_owned(),
                    html: vec![format!("Reader {n}")],
                    text: vec![format!("Reader {n}")],
                    body: Some(body.clone()),
                });
                r
            })
            .collect();
        let planned = plan_mails(&records);
        assert_eq!(planned.len(), 3);
        assert_within_mail_send_rules(&planned);
        let mail = &planned[1].mail;
        assert_eq!(mail.content.len(), 2);
        assert!(mail.content[1].value.len() < filler.len() + 100);
        let p = &mail.personalizations[5];
        let email_id = &p.custom_args["email_id"];
        let rebuilt = p
            .substitutions
            .iter()
            .fold(mail.content[1].value.clone(), |acc, (k, v)| {
                acc.replace(k, v)
            });
        let n: usize = email_id.trim_start_matches("id").parse().unwrap();
        assert_eq!(rebuilt, format!("<h1>Hi Reader {n}</h1>{filler}"));
        assert!(p.substitution_bytes() < 100);
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

    #[test]
    fn a_large_identical_newsletter_takes_one_call_per_thousand_recipients() {
        let newsletter = format!("<html>{}</html>", "<p>Spring news.</p>".repeat(700));
        assert!(newsletter.len() > 12_000);
        let mut records: Vec<_> = (0..2500).map(|n| record(n, &newsletter)).collect();
        records.push(record(9999, &format!("{newsletter}<p>P.S.</p>")));
        let planned = plan_mails(&records);
        assert_eq!(
            planned.len(),
            4,
            "three calls for the 2,500, one for the other content"
        );
        assert_within_mail_send_rules(&planned);
        assert!(
            planned
                .iter()
                .all(|p| p.mail.personalizations[0].substitutions.is_empty())
        );
    }

    /// Every planned call within SendGrid's recipient rules: at most 1,000 recipients
    /// (to + cc + bcc) and no address twice in the request.
    fn assert_within_mail_send_rules(planned: &[PlannedMail]) {
        for call in planned {
            let addresses: Vec<String> = call
                .mail
                .personalizations
                .iter()
                .flat_map(|p| p.to.iter().chain(&p.cc).chain(&p.bcc))
                .map(|a| a.email.to_lowercase())
                .collect();
            assert!(
                addresses.len() <= MAX_RECIPIENTS,
                "{} recipients",
                addresses.len()
            );
            let unique: std::collections::HashSet<_> = addresses.iter().collect();
            assert_eq!(
                unique.len(),
                addresses.len(),
                "an address twice in one call"
            );
            assert_eq!(call.mail.personalizations.len(), call.ids.len());
        }
    }

    #[test]
    fn a_common_cc_never_appears_twice_in_a_call_and_a_recipient_equal_to_it_gets_no_cc() {
        let cc = EmailAddress::parse("Boss@acme.test").unwrap();
        let mut records: Vec<_> = (0..1200)
            .map(|n| {
                let mut r = record(n, &format!("<p>Hi {n}</p>"));
                r.cc = vec![cc.clone()];
                r
            })
            .collect();
        records[5].to = EmailAddress::parse("boss@acme.test").unwrap();
        let planned = plan_mails(&records);
        assert_within_mail_send_rules(&planned);
        assert_eq!(planned.iter().map(|p| p.ids.len()).sum::<usize>(), 1200);
        let own = planned
            .iter()
            .find(|p| p.ids.contains(&"id5".to_owned()))
            .unwrap();
        assert!(own.mail.personalizations[0].cc.is_empty());
    }

    #[test]
    fn recipients_count_cc_and_bcc_and_a_repeated_recipient_goes_in_another_call() {
        let mut records: Vec<_> = (0..900)
            .map(|n| {
                let mut r = record(n, "<p>Same</p>");
                r.bcc = vec![EmailAddress::parse(&format!("archive{n}@acme.test")).unwrap()];
                r
            })
            .collect();
        records.push(record(0, "<p>Same</p>")); // user0 again
        let planned = plan_mails(&records);
        assert_within_mail_send_rules(&planned);
        assert!(planned.len() >= 2, "1,801 recipients cannot go in one call");
        assert_eq!(planned.iter().map(|p| p.ids.len()).sum::<usize>(), 901);
    }

    #[test]
    fn a_refused_call_splits_into_halves_that_keep_their_emails() {
        let records: Vec<_> = (0..5).map(|n| record(n, &format!("<p>{n}</p>"))).collect();
        let planned = plan_mails(&records).remove(0);
        let (first, second) = planned.halves();
        assert_eq!(first.ids, ["id0", "id1"]);
        assert_eq!(second.ids, ["id2", "id3", "id4"]);
        assert_eq!(
            second.mail.personalizations[0].custom_args["email_id"],
            "id2"
        );
        assert_eq!(
            first.mail.subject.as_deref(),
            Some("Hello"),
            "a top-level subject"
        );
    }
}
