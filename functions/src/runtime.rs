//! What every function's `main` does: start logging, read the environment, build the AWS
//! clients once, then hand the handler to the Lambda runtime for its event type.
//!
//! Init does no network I/O, so a cold start reaches its first poll without a round trip
//! (issue 10): building a client does not connect, the region comes from `AWS_REGION`
//! (always set in Lambda), and every constructor is a plain `fn` — secrets, and the
//! clients and stores built from them, are read by the first invocation that needs them
//! (`shared::config::OnFirstUse`). AWS service clients are built on first use too
//! (`shared::aws::LazyClient`).
//!
//! Every `main` runs on tokio's current-thread runtime: Lambda sends a process one
//! invocation at a time, and below 1,769 MB a function has less than one vCPU, so worker
//! threads would only add thread start-up to every cold start. The concurrency inside an
//! invocation (a batch's messages, a report's queries) is I/O and runs on one thread.
//!
//! The three kinds of handler ([`HttpFunction`], [`SqsFunction`], [`ScheduledFunction`])
//! and how a queue worker runs a batch ([`process_batch`]) live here too: every function
//! module depends on this one, and only the [`crate::registry`] depends on the functions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures::StreamExt;
use lambda_http::{Body, Request, Response};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::aws::AwsClients;
use shared::config::Env;
use shared::metrics::JobOutcome;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A function behind HTTP API routes or a function URL: a request in, a response out
/// (errors are responses).
pub trait HttpFunction: Send + Sync {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>>;
}

/// A queue worker: reports the messages that failed (`ReportBatchItemFailures`).
pub trait SqsFunction: Send + Sync {
    fn call(&self, event: SqsEvent) -> BoxFuture<'_, SqsBatchResponse>;
}

/// A scheduled job. An `Err` makes the invocation fail (and EventBridge retry).
pub trait ScheduledFunction: Send + Sync {
    fn call(&self, event: EventBridgeEvent) -> BoxFuture<'_, Result<serde_json::Value, String>>;
}

/// What kind of event a function takes.
#[derive(Clone)]
pub enum Handler {
    Http(Arc<dyn HttpFunction>),
    Sqs(Arc<dyn SqsFunction>),
    Scheduled(Arc<dyn ScheduledFunction>),
}

/// The batch response naming the messages to retry.
pub fn batch_response(failed_message_ids: Vec<String>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed_message_ids
        .into_iter()
        .map(|id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    response
}

/// How many messages of one batch a send worker works on at once. The messages are
/// independent jobs, so one slow provider call must not hold up its batch-mates: with the
/// template's batch size of 10 and 20 concurrent invocations, up to 200 jobs are in flight
/// (docs/SCALE.md).
pub const MESSAGES_IN_FLIGHT: usize = 10;

/// Why one job of a batch failed. Either way the message is reported failed, so SQS
/// delivers it again and, after the queue's `maxReceiveCount` receives, moves it to the
/// dead-letter queue (where the operations API shows and redrives it): no job is dropped.
/// The kind says whether another delivery can help, in the log and in what an operator
/// reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// A failure another delivery may not meet: a provider or AWS outage or throttle, a
    /// claim another delivery holds, time running out.
    Retry(String),
    /// A message no delivery can help (unreadable, or not a job of this worker): it is
    /// bound for the dead-letter queue.
    Permanent(String),
}

/// Runs `process` over a batch's messages, [`MESSAGES_IN_FLIGHT`] at once, and answers with
/// the messages to retry (`process` says why, which is logged). `max_receives` is
/// the queue's `maxReceiveCount`: a job failing on that receive is counted dead-lettered.
pub async fn process_batch<'a, F, Fut>(
    worker: &'static str,
    max_receives: u32,
    records: &'a [SqsMessage],
    process: F,
) -> SqsBatchResponse
where
    F: Fn(&'a SqsMessage) -> Fut,
    Fut: Future<Output = Result<(), JobError>>,
{
    // The futures are made up front so the stream holds futures, not a closure (which
    // would make the handler's future fail the `Send` check for want of a general lifetime).
    let jobs: Vec<_> = records
        .iter()
        .map(|message| {
            use tracing::Instrument;
            let id = message.message_id.as_deref().unwrap_or_default();
            let outcome = process(message).instrument(shared::logging::job_span(worker, id));
            async move { (message, outcome.await) }
        })
        .collect();
    let outcomes: Vec<(&SqsMessage, Result<(), JobError>)> = futures::stream::iter(jobs)
        .buffer_unordered(MESSAGES_IN_FLIGHT)
        .collect()
        .await;
    let mut failed = Vec::new();
    let mut counted = Vec::new();
    for (message, outcome) in outcomes {
        let receives = shared::queue::RetryDelay::receives(message);
        counted.push(JobOutcome::of(outcome.is_err(), receives, max_receives));
        let Err(error) = outcome else { continue };
        let id = message.message_id.clone().unwrap_or_default();
        match &error {
            JobError::Retry(reason) => {
                tracing::warn!(
                    worker,
                    message_id = id,
                    reason,
                    receives,
                    "the job failed; it is retried"
                );
            }
            JobError::Permanent(reason) => {
                tracing::error!(
                    worker,
                    message_id = id,
                    reason,
                    receives,
                    "the job cannot succeed; it goes to the dead-letter queue"
                );
            }
        }
        failed.push(id);
    }
    shared::metrics::jobs(worker, counted);
    batch_response(failed)
}

/// Logging, environment and AWS clients, once per cold start.
pub async fn cold_start() -> (AwsClients, Env) {
    shared::logging::init_lambda();
    let env = Env::from_process();
    let aws = AwsClients::load(&env).await;
    (aws, env)
}

/// # Errors
/// When the runtime API fails.
pub async fn serve_http(function: impl HttpFunction) -> Result<(), Error> {
    let function = &function;
    lambda_http::run(lambda_http::service_fn(move |request| async move {
        Ok::<_, Error>(function.call(request).await)
    }))
    .await
}

/// # Errors
/// When the runtime API fails.
pub async fn serve_sqs(function: impl SqsFunction) -> Result<(), Error> {
    let function = &function;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let id = event.context.request_id;
        let response = shared::logging::with_lambda_request_id(id, function.call(event.payload));
        Ok::<_, Error>(response.await)
    }))
    .await
}

/// # Errors
/// When the runtime API fails.
pub async fn serve_scheduled(function: impl ScheduledFunction) -> Result<(), Error> {
    let function = &function;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent>| async move {
            let id = event.context.request_id;
            shared::logging::with_lambda_request_id(id, function.call(event.payload))
                .await
                .map_err(Error::from)
        },
    ))
    .await
}
