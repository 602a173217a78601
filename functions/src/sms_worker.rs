//! The SMS send worker (SPEC §7): takes `sms.send` jobs and sends each record through the
//! Twilio Messages API with a `StatusCallback` to the Twilio webhook.
//!
//! - Each record is claimed before its call (`queued → sending`, conditional), so a
//!   duplicate delivery of the same job finds nothing left to send.
//! - Opted-out numbers end `suppressed` without a call.
//! - Every call goes at a send time booked in the organization's send window in DynamoDB
//!   (`shared::store::SendRate`: one conditional write books up to a second's worth), so
//!   the cap (`SMS_RATE_PER_SECOND`) holds over every sliding second across any number of
//!   concurrent workers. Each send sleeps until its booked time, the sends of a booking
//!   concurrently, so a slow Twilio call does not make the next one late; when no time
//!   within its wait budget is left the job hands the rest back to the queue (as a new
//!   message, delayed a second) instead of burning the Lambda's time.
//! - Permanent Twilio errors (e.g. 21211 invalid number, 21610 unsubscribed) are recorded as
//!   `failed` at once; transient ones (429, 20429, 5xx, timeouts) put the record back in
//!   `queued` and the job back on the queue with backoff, and the last allowed attempt
//!   records `failed` before SQS moves the job to the DLQ.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};

use shared::aws::{AwsClients, SqsClient};
use shared::config::{Env, OnFirstUse};
use shared::consent::Channel;
use shared::domain::OrgId;
use shared::domain::email::FailureKind;
use shared::domain::sms_message::{SmsRecord, SmsStatus};
use shared::events::{Event, EventKind, EventPublisher};
use shared::providers::twilio::{OutboundSms, Sender, TwilioError, TwilioSettings};
use shared::queue::{Envelope, Job, RetryDelay};
use shared::store::{Booking, ConsentStore, SendOutcome, SendRate, SmsStore, Taken, Window};

use crate::runtime::{BoxFuture, JobError, SqsFunction, process_batch};

/// How long a claim holds before another delivery may take the record over.
const CLAIM_LEASE: chrono::Duration = chrono::Duration::seconds(60);

/// The longest `SMS_RATE_WAIT_SECONDS`: a record is claimed before it waits for its send
/// time, so the wait and the call must end well inside [`CLAIM_LEASE`] (and inside the
/// function's 60 s timeout).
const MAX_RATE_WAIT_SECONDS: u64 = 30;

/// How late a send may wake for its booked time and still go (more, and it books again).
const LATE_GRACE_MS: i64 = 20;

pub struct SmsWorker {
    sms: SmsStore,
    /// The consent ledger: a number opted out of everything (a STOP, or `PUT` with a
    /// source) gets nothing.
    consent: ConsentStore,
    /// `None` when Twilio is not configured.
    twilio: OnFirstUse<Option<TwilioSettings>>,
    retry: RetryDelay,
    events: EventPublisher,
    sqs: SqsClient,
    send_queue: String,
    status_callback: Option<String>,
    max_receives: u32,
    rate_per_second: u32,
    rate_wait: Duration,
    send_rate: SendRate,
    /// Each organization's send window as this worker last saw it: current whenever the
    /// worker is its organization's only sender, which makes a booking one write.
    windows: Mutex<HashMap<OrgId, Window>>,
    /// Taken by a send that woke late to book again: one booking at a time, each with the
    /// window the one before left, rather than a job's late sends refusing each other's
    /// bookings (each refusal a write) on a loaded machine.
    rebooking: tokio::sync::Mutex<()>,
    /// How long the last booking's write took (ms): times are booked from that far ahead,
    /// or a slow write (a loaded store) would leave its first sends late before they start.
    booking_ms: std::sync::atomic::AtomicI64,
    /// The sender numbers that belong to one organization each (`TWILIO_NUMBER_ORGS`).
    number_orgs: HashMap<String, OrgId>,
}

impl SqsFunction for SmsWorker {
    fn call(&self, event: SqsEvent) -> BoxFuture<'_, SqsBatchResponse> {
        Box::pin(self.handle(event))
    }
}

/// What a job has met so far that decides how it ends.
#[derive(Debug, Default)]
struct Progress {
    /// The first reason the job must be tried again.
    retry: Option<String>,
    /// Records another delivery holds a live claim on.
    held_elsewhere: Vec<String>,
}

impl SmsWorker {
    /// No I/O: the Twilio credentials are read by the first job that sends.
    ///
    /// # Errors
    /// When a required variable is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let send_queue = env.required("SMS_SEND_QUEUE_URL")?;
        Ok(Self {
            sms: SmsStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            consent: ConsentStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            twilio: TwilioSettings::on_first_use(aws, env)?,
            retry: RetryDelay::from_env(aws.sqs.clone(), &send_queue, env)?,
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            sqs: aws.sqs.clone(),
            send_queue,
            status_callback: env.optional("TWILIO_WEBHOOK_URL"),
            max_receives: env.number("MAX_RECEIVES", 3)?,
            rate_per_second: env.number("SMS_RATE_PER_SECOND", 10)?.max(1),
            rate_wait: rate_wait(env)?,
            send_rate: SendRate::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            windows: Mutex::default(),
            rebooking: tokio::sync::Mutex::new(()),
            booking_ms: std::sync::atomic::AtomicI64::new(0),
            number_orgs: shared::providers::twilio::parse_number_orgs(
                &env.optional("TWILIO_NUMBER_ORGS").unwrap_or_default(),
            )?,
        })
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        shared::logging::invocation(
            "sms-worker",
            "",
            process_batch(
                "sms-worker",
                self.max_receives,
                &event.records,
                |message| async move { self.process(message).await },
            ),
        )
        .await
    }

    async fn process(&self, message: &SqsMessage) -> Result<(), JobError> {
        let envelope = Envelope::parse(message.body.as_deref().unwrap_or_default())
            .map_err(|e| JobError::Permanent(format!("unreadable message: {e:#}")))?;
        tracing::Span::current().record("org", envelope.org.as_str());
        let Job::SmsSend { ids } = envelope.job else {
            return Err(JobError::Permanent("not an sms.send job".to_owned()));
        };
        let org = envelope.org;
        let Some(job) = envelope.send_job else {
            return self.send_job(message, &org, None, &ids).await;
        };
        let claimed = self
            .sms
            .claim_job(&org, &job, chrono::Utc::now(), CLAIM_LEASE)
            .await
            .map_err(|e| JobError::Retry(format!("{e:#}")))?;
        if !claimed {
            // Another delivery of this job is sending it; this one returns once that
            // delivery's lease has run out, in case it died.
            let lease = u64::try_from(CLAIM_LEASE.num_seconds()).unwrap_or(60);
            self.retry.delay_by(message, lease + 1).await;
            return Err(JobError::Retry(format!(
                "send job {job} is held by another delivery"
            )));
        }
        let result = self.send_job(message, &org, Some(&job), &ids).await;
        // What it did not send is back in `queued`, or handed on in a message of the job.
        if let Err(error) = self.sms.release_job(&org, &job).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "could not release the send job"
            );
        }
        result
    }

    /// Sends the job's records this delivery takes; `job` is the send job it claimed.
    async fn send_job(
        &self,
        message: &SqsMessage,
        org: &OrgId,
        job: Option<&str>,
        ids: &[String],
    ) -> Result<(), JobError> {
        let org = org.clone();
        let last_attempt = RetryDelay::receives(message) >= self.max_receives;
        let records = self
            .sms
            .get_many(&org, ids)
            .await
            .map_err(|e| JobError::Retry(format!("{e:#}")))?;
        // Another send job's records are that job's to send (or the sweep's).
        let records: Vec<SmsRecord> = records
            .into_iter()
            .filter(|r| r.send_job.is_none() || r.send_job.as_deref() == job)
            .collect();
        // Once per job, not per record: an unreadable secret is one failed read, not hundreds.
        let twilio = self.twilio().await;
        let deadline = tokio::time::Instant::now() + self.rate_wait;
        let mut progress = Progress::default();
        let to_send = self
            .triage(&org, &records, twilio, last_attempt, &mut progress)
            .await?;
        let unsent = self
            .send_in_window(&org, &to_send, deadline, last_attempt, &mut progress)
            .await?;
        if let Some(rest) = unsent {
            // Records this delivery already set back to `queued` are not in the rest:
            // handing back only the rest would leave them `queued` for good. Retry the
            // whole job instead (with backoff, counting towards the DLQ); the records it
            // already sent are skipped as duplicates.
            if let Some(reason) = progress.retry {
                self.retry.delay(message).await;
                return Err(JobError::Retry(reason));
            }
            // Those another delivery holds go back too, in case that delivery died.
            let rest = progress.held_elsewhere.into_iter().chain(rest).collect();
            return self.hand_back(&org, job, rest).await;
        }
        self.conclude(progress, message).await
    }

    /// First what needs no send slot: duplicates (skipped), opted-out numbers
    /// (`suppressed`), no Twilio (a transient failure). Answers the records to send.
    async fn triage<'a>(
        &self,
        org: &OrgId,
        records: &'a [SmsRecord],
        twilio: Result<&'a TwilioSettings, &'static str>,
        last_attempt: bool,
        progress: &mut Progress,
    ) -> Result<Vec<(&'a SmsRecord, &'a TwilioSettings)>, JobError> {
        let messages: Vec<shared::store::Addressed> = records
            .iter()
            .map(|r| shared::store::Addressed {
                id: r.id.clone(),
                subject: r.to.to_string(),
                topic: r.topic.clone(),
            })
            .collect();
        let blocked = self
            .consent
            .blocked_messages(org, Channel::Sms, &messages)
            .await
            .map_err(|e| JobError::Retry(format!("{e:#}")))?;
        let mut to_send = Vec::new();
        for record in records {
            if !matches!(record.status, SmsStatus::Queued | SmsStatus::Sending) {
                continue; // already sent or final: a duplicate delivery
            }
            let opted_out = blocked.contains(&record.id)
                || self
                    .sms
                    .is_opted_out(org, &record.to)
                    .await
                    .map_err(|e| JobError::Retry(format!("{e:#}")))?;
            if opted_out {
                if self.take(org, record).await?.is_some() {
                    self.finish(org, record, &SendOutcome::Suppressed, None, None)
                        .await?;
                }
                continue;
            }
            match twilio {
                Ok(twilio) => to_send.push((record, twilio)),
                Err(reason) => {
                    if self.take(org, record).await?.is_some() {
                        let reason = reason.to_owned();
                        progress.retry.get_or_insert(reason.clone());
                        let outcome = SendOutcome::transient(reason, last_attempt);
                        self.finish(org, record, &outcome, None, None).await?;
                    }
                }
            }
        }
        Ok(to_send)
    }

    /// The sends, each at a time booked in the organization's send window, up to a second's
    /// worth (the cap) at a time: claimed first, then booked, so the claims' round trips
    /// are not spent out of the booked times (a send that wakes late books again: one more
    /// write on the window). `Some(ids)`: the window had no slot before `deadline` for
    /// these (any claim this delivery took on them given back).
    async fn send_in_window(
        &self,
        org: &OrgId,
        to_send: &[(&SmsRecord, &TwilioSettings)],
        deadline: tokio::time::Instant,
        last_attempt: bool,
        progress: &mut Progress,
    ) -> Result<Option<Vec<String>>, JobError> {
        let per_group = usize::try_from(self.rate_per_second).unwrap_or(1).max(1);
        for (index, group) in to_send.chunks(per_group).enumerate() {
            let claimed = self.claim_group(org, group, progress).await?;
            let mut waiting = claimed.as_slice();
            while !waiting.is_empty() {
                let times = self.book_send_times(org, deadline, waiting.len()).await?;
                if times.is_empty() {
                    for (record, _) in waiting {
                        self.release(org, record).await?;
                    }
                    let later = to_send
                        .iter()
                        .skip((index + 1) * per_group)
                        .map(|(r, _)| *r);
                    let rest = waiting.iter().map(|(r, _)| r).chain(later);
                    return Ok(Some(rest.map(|r| r.id.clone()).collect()));
                }
                let (booked, rest) = waiting.split_at(times.len());
                // Each send leaves at its own time, so the booked times are kept even when
                // a Twilio call takes longer than the gap to the next.
                let sends = booked.iter().zip(&times).map(|((record, twilio), at)| {
                    self.send_at(*at, deadline, (org, twilio), record, last_attempt)
                });
                for result in futures::future::join_all(sends).await {
                    if let Some(reason) = result? {
                        progress.retry.get_or_insert(reason);
                    }
                }
                waiting = rest;
            }
        }
        Ok(None)
    }

    /// Claims a group's records at once; those another delivery holds go to `progress`.
    async fn claim_group<'a>(
        &self,
        org: &OrgId,
        group: &[(&SmsRecord, &'a TwilioSettings)],
        progress: &mut Progress,
    ) -> Result<Vec<(SmsRecord, &'a TwilioSettings)>, JobError> {
        let claims = futures::future::join_all(group.iter().map(|(r, _)| self.take(org, r)));
        let mut claimed = Vec::new();
        for ((record, twilio), claim) in group.iter().zip(claims.await) {
            match claim? {
                Some(record) => claimed.push((record, *twilio)),
                None => progress.held_elsewhere.push(record.id.clone()),
            }
        }
        Ok(claimed)
    }

    /// How the job ends once every record had its turn.
    async fn conclude(&self, progress: Progress, message: &SqsMessage) -> Result<(), JobError> {
        match progress.retry {
            Some(reason) => {
                self.retry.delay(message).await;
                Err(JobError::Retry(reason))
            }
            // Had the delivery holding those claims died, only this message would be left to
            // bring its messages back: it returns once the claims have run out.
            None if !progress.held_elsewhere.is_empty() => {
                let lease = u64::try_from(CLAIM_LEASE.num_seconds()).unwrap_or(60);
                self.retry.delay_by(message, lease + 1).await;
                Err(JobError::Retry(format!(
                    "{} messages are claimed by another delivery",
                    progress.held_elsewhere.len()
                )))
            }
            None => Ok(()),
        }
    }

    /// The Twilio settings, or why there are none (the records wait for a retry).
    async fn twilio(&self) -> Result<&TwilioSettings, &'static str> {
        match self.twilio.get().await {
            Ok(Some(twilio)) => Ok(twilio),
            Ok(None) => Err("Twilio is not configured"),
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "Twilio settings");
                Err("the Twilio settings could not be read")
            }
        }
    }

    /// One Twilio call; `Some(reason)` when the job must be retried.
    async fn send_one(
        &self,
        org: &OrgId,
        twilio: &TwilioSettings,
        record: &SmsRecord,
        last_attempt: bool,
    ) -> Result<Option<String>, JobError> {
        let Some(from) = record.from.clone().or_else(|| twilio.default_from.clone()) else {
            let outcome = SendOutcome::Failed {
                kind: FailureKind::Permanent,
                reason: "no sender: set from or TWILIO_FROM".to_owned(),
            };
            self.finish(org, record, &outcome, None, None).await?;
            return Ok(None);
        };
        let sms = OutboundSms {
            to: record.to.to_string(),
            sender: Sender::parse(&from),
            body: record.body.clone(),
            status_callback: self.status_callback.as_deref().map(|base| {
                shared::providers::twilio::callback::status_callback_url(base, org, &record.id)
            }),
        };
        let result = twilio.client.send(&sms).await;
        let call = Event::new(org, EventKind::Provider, "twilio.messages.create").with_detail(
            serde_json::json!({
                "sms": record.id,
                "segments": record.segments,
                "outcome": match &result { Ok(m) => format!("accepted {} ({})", m.sid, m.status), Err(e) => e.to_string() },
            }),
        );
        self.events.publish(vec![call]).await;
        let route_replies = !self.is_own_number(org, &from);
        self.settle_send(org, record, result, route_replies, last_attempt)
            .await
    }

    /// Whether `from` is one of `org`'s own numbers (`TWILIO_NUMBER_ORGS`): replies to it
    /// are routed to `org` by the number itself, so a send from it needs no reply route.
    fn is_own_number(&self, org: &OrgId, from: &str) -> bool {
        shared::domain::sms_message::PhoneNumber::parse(from)
            .ok()
            .and_then(|number| self.number_orgs.get(&number.to_string()))
            == Some(org)
    }

    /// Records what Twilio answered; `Some(reason)` when the job must be retried.
    async fn settle_send(
        &self,
        org: &OrgId,
        record: &SmsRecord,
        result: Result<shared::providers::twilio::MessageResource, TwilioError>,
        route_replies: bool,
        last_attempt: bool,
    ) -> Result<Option<String>, JobError> {
        let now = chrono::Utc::now();
        match result {
            Ok(accepted) => {
                let noted = match route_replies {
                    true => self.sms.remember_peer(&record.to, org, now).await,
                    false => Ok(()),
                };
                if let Err(error) = noted {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "could not note the reply route"
                    );
                }
                let outcome = SendOutcome::Sent {
                    message_id: Some(accepted.sid.clone()),
                };
                self.finish(org, record, &outcome, Some(&accepted.status), None)
                    .await?;
                Ok(None)
            }
            // The credentials, not the message (20003 "Authenticate"): a rotated or revoked
            // token. Read the secret again (once) and retry; only the last attempt fails.
            Err(TwilioError::Permanent {
                status: status @ (401 | 403),
                code,
                message,
            }) => {
                tracing::error!(
                    status,
                    code,
                    message,
                    alarm = "provider-credentials",
                    "Twilio refused Herald's credentials: re-reading the secret"
                );
                self.twilio.rebuild_once();
                let reason = format!("Twilio refused the credentials ({status}): {message}");
                let outcome = SendOutcome::transient(reason.clone(), last_attempt);
                self.finish(org, record, &outcome, None, code).await?;
                Ok(Some(reason))
            }
            Err(TwilioError::Permanent {
                status,
                code,
                message,
            }) => {
                let outcome = SendOutcome::Failed {
                    kind: FailureKind::Permanent,
                    reason: TwilioError::Permanent {
                        status,
                        code,
                        message,
                    }
                    .to_string(),
                };
                self.finish(org, record, &outcome, None, code).await?;
                Ok(None)
            }
            Err(error) => {
                let reason = error.to_string();
                let outcome = SendOutcome::transient(reason.clone(), last_attempt);
                self.finish(org, record, &outcome, None, error.code())
                    .await?;
                Ok(Some(reason))
            }
        }
    }

    /// Takes `record` for sending: as it is when it waits in the delivery's send job (the
    /// job is claimed, see `process`), else by claiming it. `None`: another delivery has it.
    async fn take(&self, org: &OrgId, record: &SmsRecord) -> Result<Option<SmsRecord>, JobError> {
        if matches!(taken(record), Taken::InJob(_)) {
            return Ok(Some(record.clone()));
        }
        self.sms
            .claim(org, &record.id, chrono::Utc::now(), CLAIM_LEASE)
            .await
            .map_err(|e| JobError::Retry(format!("{e:#}")))
    }

    /// Gives back a claim this delivery took and did not use (no send time was left); a
    /// record taken in its job stays in it.
    async fn release(&self, org: &OrgId, record: &SmsRecord) -> Result<(), JobError> {
        if matches!(taken(record), Taken::InJob(_)) {
            return Ok(());
        }
        self.sms
            .release(org, &record.id, chrono::Utc::now())
            .await
            .map_err(|e| JobError::Retry(format!("{e:#}")))
    }

    async fn finish(
        &self,
        org: &OrgId,
        record: &SmsRecord,
        outcome: &SendOutcome,
        twilio_status: Option<&str>,
        error_code: Option<i64>,
    ) -> Result<(), JobError> {
        let written = self
            .sms
            .finish(
                org,
                &record.id,
                &taken(record),
                outcome,
                twilio_status,
                error_code,
                chrono::Utc::now(),
            )
            .await
            // The claim lease runs out and a retry picks the record up again.
            .map_err(|e| JobError::Retry(format!("recording the outcome failed: {e:#}")))?;
        if !written {
            return Ok(());
        }
        let resource = format!("sms/{}", record.id);
        let event = match outcome {
            SendOutcome::Sent { .. } => Event::delivery(org, "sms", resource, "sent"),
            SendOutcome::Failed { kind, .. } => Event::failed(org, "sms", resource, *kind),
            SendOutcome::Suppressed => Event::delivery(org, "sms", resource, "suppressed"),
            SendOutcome::Retry { .. } => {
                shared::metrics::messages_retried("sms", 1, org.as_str());
                return Ok(());
            }
        };
        self.events.publish(vec![event]).await;
        Ok(())
    }

    /// Books the times of up to `wanted` sends of `org` (`shared::store::SendRate`: the cap
    /// holds over every sliding second); none when no time before `deadline` is left.
    async fn book_send_times(
        &self,
        org: &OrgId,
        deadline: tokio::time::Instant,
        wanted: usize,
    ) -> Result<Vec<i64>, JobError> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let latest = now_ms() + i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
        let mut window = self.window_of(org);
        loop {
            let ahead = self.booking_ms.load(std::sync::atomic::Ordering::Relaxed);
            let times = window.next_times(wanted, now_ms() + ahead, latest);
            if times.is_empty() {
                self.remember_window(org, window);
                return Ok(times);
            }
            let started = tokio::time::Instant::now();
            let booking = self.send_rate.book(org, &window, &times).await;
            let took = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
            self.booking_ms
                .store(took.min(1_000), std::sync::atomic::Ordering::Relaxed);
            match booking {
                Ok(Booking::Booked(after)) => {
                    self.remember_window(org, after);
                    return Ok(times);
                }
                Ok(Booking::Changed(current)) => window = current,
                Err(error) => return Err(JobError::Retry(format!("{error:#}"))),
            }
        }
    }

    /// Sleeps until unix ms `at` and sends the claimed `record`: nothing but the wake-up
    /// stands between the booked time and the call. A send that wakes more than
    /// [`LATE_GRACE_MS`] late books a new time if one is left before `deadline`: the slot's
    /// next send is booked a second after `at`, so going late could put two of its sends
    /// under a second apart. `Some(reason)` when the job must be retried.
    async fn send_at(
        &self,
        mut at: i64,
        deadline: tokio::time::Instant,
        booking: (&OrgId, &TwilioSettings),
        record: &SmsRecord,
        last_attempt: bool,
    ) -> Result<Option<String>, JobError> {
        let (org, twilio) = booking;
        loop {
            let wait = u64::try_from(at - now_ms()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let late = now_ms() - at;
            if late <= LATE_GRACE_MS {
                break;
            }
            let rebooking = self.rebooking.lock().await;
            let later = self.book_send_times(org, deadline, 1).await?;
            drop(rebooking);
            match later.first() {
                Some(&later) => at = later,
                None => {
                    tracing::warn!(
                        sms = record.id,
                        late_ms = late,
                        "no later send time left: sent late"
                    );
                    break;
                }
            }
        }
        self.send_one(org, twilio, record, last_attempt).await
    }

    fn window_of(&self, org: &OrgId) -> Window {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows
            .get(org)
            .cloned()
            .unwrap_or_else(|| Window::unseen(self.rate_per_second))
    }

    fn remember_window(&self, org: &OrgId, window: Window) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows.insert(org.clone(), window);
    }

    /// Puts the unsent rest of a job back on the queue as a new message, a second out.
    async fn hand_back(
        &self,
        org: &OrgId,
        job: Option<&str>,
        ids: Vec<String>,
    ) -> Result<(), JobError> {
        let count = ids.len();
        // A message of the same send job: the records still waiting in it stay there. This
        // delivery sends nothing more, so it lets go of the job first: the handed-back
        // message, a second out, would otherwise find the job held and wait out the lease.
        let envelope = Envelope::new(org.clone(), Job::SmsSend { ids });
        let envelope = match job {
            Some(job) => {
                self.sms
                    .release_job(org, job)
                    .await
                    .map_err(|e| JobError::Retry(format!("{e:#}")))?;
                envelope.of_send_job(job)
            }
            None => envelope,
        };
        let body = serde_json::to_string(&envelope).map_err(|e| JobError::Retry(e.to_string()))?;
        self.sqs
            .send_message()
            .queue_url(&self.send_queue)
            .message_body(body)
            .delay_seconds(1)
            .send()
            .await
            .map_err(|e| {
                JobError::Retry(format!(
                    "handing the job back failed: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                ))
            })?;
        tracing::info!(
            org = org.as_str(),
            count,
            "rate cap reached: rest of the job handed back"
        );
        Ok(())
    }
}

/// How a delivery holding the record's send job takes it: as it is while it waits `queued`
/// in the job (the job's messages only read records of their own job or of none), else by
/// a claim of its own (the record as read, or as the claim returned it).
fn taken(record: &SmsRecord) -> Taken {
    match (&record.send_job, record.status) {
        (Some(job), SmsStatus::Queued) => Taken::InJob(job.clone()),
        _ => Taken::Claimed,
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `SMS_RATE_WAIT_SECONDS`, at most [`MAX_RATE_WAIT_SECONDS`].
fn rate_wait(env: &Env) -> anyhow::Result<Duration> {
    let seconds = env.number("SMS_RATE_WAIT_SECONDS", 20)?;
    anyhow::ensure!(
        seconds <= MAX_RATE_WAIT_SECONDS,
        "SMS_RATE_WAIT_SECONDS is {seconds}: at most {MAX_RATE_WAIT_SECONDS}, so a claimed \
         record is sent before its claim lapses"
    );
    Ok(Duration::from_secs(seconds))
}
