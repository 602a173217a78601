//! The daily Stripe sync (SPEC §8, 03:00 UTC): reconciles customers, subscriptions,
//! invoices and payment intents created since the last complete run (less a look-back, so
//! recent objects whose state moved are read again), in case a webhook was lost.
//!
//! It pages through each list with `starting_after` and saves a checkpoint after every
//! page, so a run that nears its time budget stops cleanly and the next run (or a re-run)
//! resumes where it stopped. Only objects with `metadata.org_id` are imported.

use std::time::{Duration, Instant};

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use serde_json::{Value, json};

use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::events::{Event, EventPublisher};
use shared::payments::reconcile::Reconciler;
use shared::providers::stripe::{MAX_PAGE_SIZE, StripeClient};
use shared::store::{PaymentStore, SyncCheckpoint};

use crate::registry::{BoxFuture, ScheduledFunction};

/// The list endpoints, in the order they are read (customers first, so the others can be
/// linked to Herald's customers). Subscriptions are listed with `status=all`, or Stripe
/// leaves out canceled ones.
pub const RESOURCES: &[(&str, &str)] = &[
    ("/v1/customers", ""),
    ("/v1/subscriptions", "all"),
    ("/v1/invoices", ""),
    ("/v1/payment_intents", ""),
];

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
        use tracing::Instrument;
        let span = shared::logging::invocation_span("stripe-sync", "");
        Box::pin(
            async move {
                self.run(Instant::now())
                    .await
                    .map_err(|error| format!("{error:#}"))
            }
            .instrument(span),
        )
    }
}

impl StripeSync {
    /// No I/O: the Stripe key is read by the first run.
    ///
    /// # Errors
    /// When `TABLE_NAME` is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        let store = PaymentStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?);
        let number = |name: &str, default: u64| {
            env.optional(name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(default)
        };
        Ok(Self {
            reconciler: Reconciler::new(store.clone()),
            store,
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            stripe: env.on_first_use(&aws.secrets, |env, secrets| async move {
                StripeClient::from_env(&env, &secrets).await
            }),
            page_size: u32::try_from(number("STRIPE_SYNC_PAGE_SIZE", u64::from(MAX_PAGE_SIZE)))
                .unwrap_or(MAX_PAGE_SIZE)
                .clamp(1, MAX_PAGE_SIZE),
            budget: Duration::from_secs(number("STRIPE_SYNC_BUDGET_SECONDS", 780)),
            lookback_seconds: i64::try_from(number("STRIPE_SYNC_LOOKBACK_DAYS", 7) * 86_400)
                .unwrap_or(0),
            max_pages: number("STRIPE_SYNC_MAX_PAGES", 0),
        })
    }

    /// Runs until every resource is read or the budget is spent.
    ///
    /// # Errors
    /// Stripe or storage failures, or a Stripe key that cannot be read (the checkpoint keeps
    /// the progress made).
    pub async fn run(&self, started: Instant) -> anyhow::Result<Value> {
        let Some(stripe) = self.stripe.get().await? else {
            tracing::warn!("Stripe is not configured; nothing to sync");
            return Ok(json!({"complete": false, "configured": false}));
        };
        let now = chrono::Utc::now().timestamp();
        let mut checkpoint = self.store.checkpoint().await?;
        if !checkpoint.in_progress {
            checkpoint = SyncCheckpoint {
                since: checkpoint
                    .last_complete
                    .map_or(0, |last| (last - self.lookback_seconds).max(0)),
                run_started: now,
                resource: 0,
                after: None,
                in_progress: true,
                last_complete: checkpoint.last_complete,
                version: checkpoint.version,
            };
            self.store.save_checkpoint(&mut checkpoint).await?;
        }
        let (mut pages, mut seen, mut imported, mut ignored) = (0u64, 0u64, 0u64, 0u64);
        while let Some((path, status)) = RESOURCES.get(checkpoint.resource) {
            if started.elapsed() >= self.budget || (self.max_pages > 0 && pages >= self.max_pages) {
                tracing::info!(
                    pages,
                    resource = path,
                    "run budget spent; the next run resumes"
                );
                return Ok(
                    json!({"complete": false, "pages": pages, "seen": seen, "imported": imported, "ignored": ignored}),
                );
            }
            let mut filters = json!({});
            if checkpoint.since > 0 {
                filters["created"] = json!({"gte": checkpoint.since});
            }
            if !status.is_empty() {
                filters["status"] = json!(status);
            }
            let page = stripe
                .list(path, &filters, self.page_size, checkpoint.after.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!("listing {path}: {e}"))?;
            // The state read now is Stripe's state as of now.
            let read_at = chrono::Utc::now().timestamp();
            let mut deliveries = Vec::new();
            for object in &page.data {
                seen += 1;
                let applied = self.reconciler.apply(object, read_at).await?;
                if applied.skipped.is_some() {
                    ignored += 1;
                } else if applied.changed {
                    imported += 1;
                }
                deliveries.extend(applied.payment_changes.iter().map(|change| {
                    Event::delivery(
                        &change.org,
                        "payment",
                        format!("payment/{}", change.id),
                        change.status.as_str(),
                    )
                    .with_detail(json!({"amount": change.amount, "currency": change.currency}))
                }));
            }
            self.events.publish(deliveries).await;
            pages += 1;
            match page.next_after() {
                Some(after) => checkpoint.after = Some(after),
                None => {
                    checkpoint.resource += 1;
                    checkpoint.after = None;
                }
            }
            if checkpoint.resource >= RESOURCES.len() {
                checkpoint.in_progress = false;
                checkpoint.last_complete = Some(checkpoint.run_started);
            }
            self.store.save_checkpoint(&mut checkpoint).await?;
        }
        tracing::info!(pages, seen, imported, ignored, "Stripe sync complete");
        Ok(
            json!({"complete": true, "pages": pages, "seen": seen, "imported": imported, "ignored": ignored}),
        )
    }
}
