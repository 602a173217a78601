//! The sweep of records that wait too long (issue 15): an email or SMS left `queued` or
//! `sending` — its enqueue failed after the API's 202, its job was lost, a bug dropped it
//! from a job — is found on the store's pending index and enqueued again, or given up on.
//!
//! The bounds, stated once:
//! - A record waiting more than [`SWEEP_AFTER`] (15 minutes, `PENDING_SWEEP_AFTER_MINUTES`)
//!   since it was queued or last retried is enqueued again, and its clock restarts. A send
//!   job that is merely slow (rate-capped SMS, a retry with backoff) may then be delivered
//!   twice; the send workers' claims make the second delivery send nothing.
//! - A record still waiting [`GIVE_UP_AFTER`] (48 hours, `PENDING_GIVE_UP_HOURS`) after it
//!   was created is recorded `failed` (transient, so `resend-failed` can bring it back).
//!
//! It runs in each channel's status check (email every 5 minutes, SMS hourly), logs one
//! line per record it acts on (`stuck record swept`, with the action), and reports its
//! counts in the run's result.

use std::collections::BTreeMap;

use serde_json::json;

use shared::config::Env;
use shared::domain::OrgId;
use shared::domain::email::FailureKind;
use shared::events::{Event, EventPublisher};
use shared::queue::{Envelope, Job, QueuePublisher};
use shared::store::{StoreError, StuckInSent, Swept, Unsettled};

use crate::runtime::BoxFuture;

/// Records swept per run, so a run stays well inside the function timeout.
const MAX_PER_RUN: usize = 1_000;
const SWEEP_AFTER: chrono::Duration = chrono::Duration::minutes(15);
const GIVE_UP_AFTER: chrono::Duration = chrono::Duration::hours(48);

/// A store whose records can wait on a pending index (the email and SMS stores).
pub trait PendingRecords: Send + Sync {
    fn pending_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<StuckInSent>, StoreError>>;

    fn sweep<'a>(
        &'a self,
        org: &'a OrgId,
        id: &'a str,
        now: chrono::DateTime<chrono::Utc>,
        give_up_before: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'a, Result<Swept, StoreError>>;
}

/// The email and SMS stores have the same two methods; the trait names them.
macro_rules! pending_records {
    ($store:ty) => {
        impl PendingRecords for $store {
            fn pending_before(
                &self,
                cutoff: chrono::DateTime<chrono::Utc>,
                max: usize,
            ) -> BoxFuture<'_, Result<Vec<StuckInSent>, StoreError>> {
                Box::pin(self.pending_before(cutoff, max))
            }

            fn sweep<'a>(
                &'a self,
                org: &'a OrgId,
                id: &'a str,
                now: chrono::DateTime<chrono::Utc>,
                give_up_before: chrono::DateTime<chrono::Utc>,
            ) -> BoxFuture<'a, Result<Swept, StoreError>> {
                Box::pin(self.sweep(org, id, now, give_up_before))
            }
        }
    };
}

pending_records!(shared::store::EmailStore);
pending_records!(shared::store::SmsStore);

/// One channel's sweep: where its send jobs go and how they look.
pub struct Sweep {
    channel: &'static str,
    queue: QueuePublisher,
    send_queue: String,
    job_size: usize,
    job: fn(Vec<String>) -> Job,
    events: EventPublisher,
    sweep_after: chrono::Duration,
    give_up_after: chrono::Duration,
}

impl Sweep {
    /// `send_queue_variable` names the variable holding the channel's send queue URL.
    ///
    /// # Errors
    /// When that variable is missing.
    pub fn new(
        channel: &'static str,
        queue: QueuePublisher,
        events: EventPublisher,
        env: &Env,
        send_queue_variable: &str,
        job_size: usize,
        job: fn(Vec<String>) -> Job,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            channel,
            queue,
            send_queue: env.required(send_queue_variable)?,
            job_size,
            job,
            events,
            sweep_after: chrono::Duration::minutes(
                env.number("PENDING_SWEEP_AFTER_MINUTES", SWEEP_AFTER.num_minutes())?,
            ),
            give_up_after: chrono::Duration::hours(
                env.number("PENDING_GIVE_UP_HOURS", GIVE_UP_AFTER.num_hours())?,
            ),
        })
    }

    /// Sweeps once: `{"requeued": n, "gave_up": n, "cleared": n}`.
    ///
    /// # Errors
    /// When the pending index cannot be read or a job cannot be enqueued (the records
    /// keep their reset clocks and are found again after the bound).
    pub async fn run(&self, store: &dyn PendingRecords) -> anyhow::Result<serde_json::Value> {
        let now = chrono::Utc::now();
        let waiting = store
            .pending_before(now - self.sweep_after, MAX_PER_RUN)
            .await?;
        let mut requeue: BTreeMap<OrgId, Vec<String>> = BTreeMap::new();
        let (mut gave_up, mut cleared) = (0, 0);
        for StuckInSent { org_id, id, .. } in waiting {
            let swept = store
                .sweep(&org_id, &id, now, now - self.give_up_after)
                .await?;
            if swept != Swept::Busy {
                tracing::warn!(
                    channel = self.channel,
                    org = org_id.as_str(),
                    id,
                    action = ?swept,
                    "stuck record swept"
                );
                let action = match swept {
                    Swept::Requeue => "requeued",
                    Swept::GaveUp => "failed",
                    _ => "cleared",
                };
                let metric = &shared::metrics::STUCK_RECORDS;
                shared::metrics::count(metric, &[self.channel, action], 1, Some(org_id.as_str()));
            }
            match swept {
                Swept::Requeue => requeue.entry(org_id).or_default().push(id),
                Swept::GaveUp => {
                    gave_up += 1;
                    let resource = format!("{}/{id}", self.channel);
                    let kind = FailureKind::Transient;
                    let event = Event::failed(&org_id, self.channel, resource, kind);
                    self.events.publish(vec![event]).await;
                }
                Swept::Cleared => cleared += 1,
                Swept::Busy => {}
            }
        }
        let requeued: usize = requeue.values().map(Vec::len).sum();
        let jobs: Vec<Envelope> = requeue
            .into_iter()
            .flat_map(|(org, ids)| {
                ids.chunks(self.job_size)
                    .map(|chunk| Envelope::new(org.clone(), (self.job)(chunk.to_vec())))
                    .collect::<Vec<_>>()
            })
            .collect();
        self.queue.send_all(&self.send_queue, &jobs).await?;
        Ok(json!({"requeued": requeued, "gave_up": gave_up, "cleared": cleared}))
    }
}

/// What the status checks do with a lookup that settled nothing (the store has put the
/// record at the back of the line): `true` when it was the last of `max_lookups`, so the
/// record is left `sent` for good. A failure to note it is logged and counts as not the last.
pub(crate) fn gave_up(
    noted: Result<Option<Unsettled>, StoreError>,
    channel: &'static str,
    id: &str,
    max_lookups: u32,
) -> bool {
    match noted {
        Ok(Some(Unsettled::GaveUp)) => {
            tracing::warn!(
                channel,
                id,
                "no final status after {max_lookups} lookups: left sent"
            );
            true
        }
        Ok(_) => false,
        Err(error) => {
            tracing::warn!(
                channel,
                id,
                error = format!("{error:#}"),
                "could not note the lookup"
            );
            false
        }
    }
}
