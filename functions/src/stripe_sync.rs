//! The daily Stripe sync (SPEC §8, 03:00 UTC): repairs what lost webhooks left behind.
//!
//! - Normally it reads Stripe's Events API (`GET /v1/events`, every type Herald handles,
//!   created since the last complete run began) and applies each event through the same
//!   reconciler as the webhook, once per event id: a refund made in the Stripe dashboard or
//!   a deletion whose webhook was dropped is repaired however old its object is.
//! - Stripe keeps events for 30 days only (docs.stripe.com/api/events/list: "going back up
//!   to 30 days"). Without a complete run within that reach (the first run, or after a long
//!   outage) it reads the object lists instead: customers, subscriptions, invoices and
//!   payment intents created since the last complete run (less a look-back), or all of them.
//!
//! It pages with `starting_after` and saves a checkpoint after every page, so a run that
//! nears its time budget stops cleanly and the next run (or a re-run) resumes where it
//! stopped. Only objects with `metadata.org_id` (or that Herald can map to an organization)
//! are imported.

use std::time::{Duration, Instant};

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use serde_json::{Value, json};

use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::events::EventPublisher;
use shared::payments::reconcile::{
    Applied, EventApplied, HANDLED_EVENTS, PaymentChange, Reconciler,
};
use shared::providers::stripe::{ListPage, MAX_PAGE_SIZE, StripeClient, StripeError, StripeEvent};
use shared::store::{PaymentStore, SyncCheckpoint};

use crate::runtime::{BoxFuture, ScheduledFunction};

/// What a run reads, by checkpoint step: the events (step 0, a run of its own), or the
/// object lists in order (customers first, so the others can be linked to Herald's
/// customers). Subscriptions are listed with `status=all`, or Stripe leaves out canceled
/// ones.
const STEPS: &[(&str, &str)] = &[
    ("/v1/events", ""),
    ("/v1/customers", ""),
    ("/v1/subscriptions", "all"),
    ("/v1/invoices", ""),
    ("/v1/payment_intents", ""),
];

/// The step that reads the Events API.
const EVENTS: usize = 0;

/// How far back the events reach, with a day to spare for a long run and clock skew.
const EVENTS_REACH_SECONDS: i64 = 29 * 86_400;

/// Events read again from before the last complete run began: Stripe's clock and ours may
/// differ by a little, and an event applied twice is recognised by its id.
const EVENTS_OVERLAP_SECONDS: i64 = 300;

pub struct StripeSync {
    store: PaymentStore,
    reconciler: Reconciler,
    events: EventPublisher,
    /// `None` when Stripe is not configured.
    stripe: OnFirstUse<Option<StripeClient>>,
    page_size: u32,
    /// Stop starting pages once this much of the run has passed (the function's timeout
    /// less a margin for the page in flight).
    budget: Duration,
    lookback_seconds: i64,
    /// Pages per run at most (0: no limit besides the budget); lets tests and operators
    /// cut a run short deterministically.
    max_pages: u64,
}

impl ScheduledFunction for StripeSync {
    fn call(&self, _event: EventBridgeEvent) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(shared::logging::invocation("stripe-sync", "", async move {
            let outcome = self.run(Instant::now()).await;
            let runs = &shared::metrics::STRIPE_SYNC_RUNS;
            let label = if outcome.is_ok() { "ok" } else { "failed" };
            shared::metrics::count(runs, &[label], 1, None);
            outcome.map_err(|error| format!("{error:#}"))
        }))
    }
}

impl StripeSync {
    /// No I/O: the Stripe key is read by the first run.
    ///
    /// # Errors
    /// When `TABLE_NAME` is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let store = PaymentStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?);
        Ok(Self {
            reconciler: Reconciler::new(store.clone()),
            store,
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            stripe: StripeClient::on_first_use(aws, env)?,
            page_size: u32::try_from(
                env.number::<u64>("STRIPE_SYNC_PAGE_SIZE", u64::from(MAX_PAGE_SIZE))?,
            )
            .unwrap_or(MAX_PAGE_SIZE)
            .clamp(1, MAX_PAGE_SIZE),
            budget: Duration::from_secs(env.number::<u64>("STRIPE_SYNC_BUDGET_SECONDS", 780)?),
            lookback_seconds: i64::try_from(
                env.number::<u64>("STRIPE_SYNC_LOOKBACK_DAYS", 7)? * 86_400,
            )
            .unwrap_or(0),
            max_pages: env.number::<u64>("STRIPE_SYNC_MAX_PAGES", 0)?,
        })
    }

    /// Runs until its step(s) are read or the budget is spent.
    ///
    /// # Errors
    /// Stripe or storage failures, or a Stripe key that cannot be read (the checkpoint keeps
    /// the progress made).
    pub async fn run(&self, started: Instant) -> anyhow::Result<Value> {
        let Some(stripe) = self.stripe.get().await? else {
            tracing::warn!("Stripe is not configured; nothing to sync");
            return Ok(json!({"complete": false, "configured": false}));
        };
        let mut checkpoint = self.store.checkpoint().await?;
        if !checkpoint.in_progress {
            checkpoint = self.next_run(&checkpoint, chrono::Utc::now().timestamp());
            self.store.save_checkpoint(&mut checkpoint).await?;
        }
        let mut tally = Tally::default();
        loop {
            // A checkpoint from an older version may name a step this one lacks: an error
            // (the operator resets the checkpoint), never a panic of the function.
            let &(path, status) = STEPS.get(checkpoint.resource).ok_or_else(|| {
                anyhow::anyhow!("checkpoint step {} unknown", checkpoint.resource)
            })?;
            if started.elapsed() >= self.budget
                || (self.max_pages > 0 && tally.pages >= self.max_pages)
            {
                tracing::info!(
                    pages = tally.pages,
                    resource = path,
                    "run budget spent; the next run resumes"
                );
                return Ok(tally.report(false));
            }
            let page = self.list_page(stripe, path, status, &checkpoint).await?;
            self.apply_page(&page, checkpoint.resource == EVENTS, &mut tally)
                .await?;
            tally.pages += 1;
            let run_done = advance(&mut checkpoint, page.next_after());
            self.store.save_checkpoint(&mut checkpoint).await?;
            if run_done {
                break;
            }
        }
        tracing::info!(
            pages = tally.pages,
            seen = tally.seen,
            imported = tally.imported,
            ignored = tally.ignored,
            "Stripe sync complete"
        );
        Ok(tally.report(true))
    }

    /// One page of the step's list after the checkpoint's position. A 401 (a key rolled in
    /// the Dashboard) makes the next run read the secret again; EventBridge Scheduler
    /// retries a failed run, and it resumes from the checkpoint.
    async fn list_page(
        &self,
        stripe: &StripeClient,
        path: &str,
        status: &str,
        checkpoint: &SyncCheckpoint,
    ) -> anyhow::Result<ListPage> {
        let mut filters = json!({});
        if checkpoint.since > 0 {
            filters["created"] = json!({"gte": checkpoint.since});
        }
        if !status.is_empty() {
            filters["status"] = json!(status);
        }
        if checkpoint.resource == EVENTS {
            filters["types"] = json!(HANDLED_EVENTS);
        }
        let after = checkpoint.after.as_deref();
        let listed = stripe.list(path, &filters, self.page_size, after).await;
        if let Err(StripeError::Rejected { status: 401, .. }) = &listed {
            tracing::error!(
                alarm = "provider-credentials",
                "Stripe refused Herald's key: the next run re-reads the secret"
            );
            self.stripe.rebuild_once();
        }
        listed.map_err(|e| anyhow::anyhow!("listing {path}: {e}"))
    }

    /// Applies a page's objects (or events) as the webhook would, and publishes the
    /// payment status changes they made.
    async fn apply_page(
        &self,
        page: &ListPage,
        events: bool,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        // The state read now is Stripe's state as of now.
        let read_at = chrono::Utc::now().timestamp();
        let mut deliveries = Vec::new();
        for object in &page.data {
            let applied = if events {
                self.apply_event(object).await?
            } else {
                Some(self.reconciler.apply(object, read_at).await?)
            };
            tally.count(applied.as_ref());
            if let Some(applied) = applied {
                deliveries.extend(applied.payment_changes.iter().map(PaymentChange::delivery));
            }
        }
        self.events.publish(deliveries).await;
        Ok(())
    }

    /// A new run's checkpoint: the events since the last complete run, when they reach
    /// back that far; else the lists.
    fn next_run(&self, last: &SyncCheckpoint, now: i64) -> SyncCheckpoint {
        let (resource, since) = match last.last_complete {
            Some(last) if last >= now - EVENTS_REACH_SECONDS => {
                (EVENTS, (last - EVENTS_OVERLAP_SECONDS).max(0))
            }
            Some(last) => (EVENTS + 1, (last - self.lookback_seconds).max(0)),
            None => (EVENTS + 1, 0),
        };
        SyncCheckpoint {
            since,
            run_started: now,
            resource,
            after: None,
            in_progress: true,
            last_complete: last.last_complete,
            version: last.version,
        }
    }

    /// Applies one listed event; `None` when it was applied before (by the webhook or an
    /// earlier run) or is of a type Herald does not act on.
    async fn apply_event(&self, object: &Value) -> anyhow::Result<Option<Applied>> {
        let event: StripeEvent = serde_json::from_value(object.clone())
            .map_err(|e| anyhow::anyhow!("not a Stripe event: {e}"))?;
        Ok(match self.reconciler.apply_event(&event).await? {
            EventApplied::Applied(applied) => Some(applied),
            EventApplied::Duplicate | EventApplied::NotHandled => None,
        })
    }
}

/// What a run read and did.
#[derive(Debug, Default)]
struct Tally {
    pages: u64,
    seen: u64,
    imported: u64,
    ignored: u64,
}

impl Tally {
    fn count(&mut self, applied: Option<&Applied>) {
        self.seen += 1;
        match applied {
            Some(applied) if applied.skipped.is_some() => self.ignored += 1,
            Some(applied) if applied.changed => self.imported += 1,
            _ => {}
        }
    }

    fn report(&self, complete: bool) -> Value {
        json!({"complete": complete, "pages": self.pages, "seen": self.seen, "imported": self.imported, "ignored": self.ignored})
    }
}

/// Moves the checkpoint past a page (`next` is the position after it, if the list goes on):
/// to the step's next page, the next step, or the end of the run. Answers whether the run
/// is complete — the events are a run of their own; the lists run to the last one.
fn advance(checkpoint: &mut SyncCheckpoint, next: Option<String>) -> bool {
    let step_done = match next {
        Some(after) => {
            checkpoint.after = Some(after);
            false
        }
        None => true,
    };
    let run_done =
        step_done && (checkpoint.resource == EVENTS || checkpoint.resource + 1 == STEPS.len());
    if run_done {
        checkpoint.in_progress = false;
        checkpoint.last_complete = Some(checkpoint.run_started);
    } else if step_done {
        checkpoint.resource += 1;
        checkpoint.after = None;
    }
    run_done
}
