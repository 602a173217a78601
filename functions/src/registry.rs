//! Every function of the bundle by binary name, so the local runner can build and call the
//! same handlers Lambda runs, and the tests can check the template against the code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures::StreamExt;
use lambda_http::{Body, Request, Response};
use shared::aws::AwsClients;
use shared::config::Env;
use shared::http::Route;
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

/// Runs `process` over a batch's messages, [`MESSAGES_IN_FLIGHT`] at once, and answers with
/// the messages to retry (`process` gives the reason, which is logged). `max_receives` is
/// the queue's `maxReceiveCount`: a job failing on that receive is counted dead-lettered.
pub async fn process_batch<'a, F, Fut>(
    worker: &'static str,
    max_receives: u32,
    records: &'a [SqsMessage],
    process: F,
) -> SqsBatchResponse
where
    F: Fn(&'a SqsMessage) -> Fut,
    Fut: Future<Output = Result<(), String>>,
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
    let outcomes: Vec<(&SqsMessage, Result<(), String>)> = futures::stream::iter(jobs)
        .buffer_unordered(MESSAGES_IN_FLIGHT)
        .collect()
        .await;
    let mut failed = Vec::new();
    let mut counted = Vec::new();
    for (message, outcome) in outcomes {
        let receives = shared::queue::RetryDelay::receives(message);
        counted.push(JobOutcome::of(outcome.is_err(), receives, max_receives));
        if let Err(reason) = outcome {
            let id = message.message_id.clone().unwrap_or_default();
            tracing::warn!(worker, message_id = id, reason, receives, "the job failed");
            failed.push(id);
        }
    }
    shared::metrics::jobs(worker, counted);
    batch_response(failed)
}

/// A function's binary name and the routes its own router answers.
#[derive(Debug, Clone, Copy)]
pub struct FunctionInfo {
    pub binary: &'static str,
    pub routes: &'static [Route],
}

/// Every function binary of the bundle.
pub const FUNCTIONS: &[FunctionInfo] = &[
    FunctionInfo {
        binary: "templates-api",
        routes: crate::templates_api::ROUTES,
    },
    FunctionInfo {
        binary: "email-api",
        routes: crate::email_api::ROUTES,
    },
    FunctionInfo {
        binary: "email-worker",
        routes: &[],
    },
    FunctionInfo {
        binary: "bulk-worker",
        routes: &[],
    },
    FunctionInfo {
        binary: "sendgrid-webhook",
        routes: &[],
    },
    FunctionInfo {
        binary: "email-status-check",
        routes: &[],
    },
    FunctionInfo {
        binary: "event-recorder",
        routes: &[],
    },
    FunctionInfo {
        binary: "audit-api",
        routes: crate::audit_api::ROUTES,
    },
    FunctionInfo {
        binary: "admin-page",
        routes: crate::admin_page::ROUTES,
    },
    FunctionInfo {
        binary: "operations-api",
        routes: crate::operations_api::ROUTES,
    },
    FunctionInfo {
        binary: "reports-api",
        routes: crate::reports_api::ROUTES,
    },
    FunctionInfo {
        binary: "report-worker",
        routes: &[],
    },
    FunctionInfo {
        binary: "report-cleanup",
        routes: &[],
    },
    FunctionInfo {
        binary: "payments-api",
        routes: crate::payments_api::ROUTES,
    },
    FunctionInfo {
        binary: "stripe-webhook",
        routes: &[],
    },
    FunctionInfo {
        binary: "stripe-sync",
        routes: &[],
    },
    FunctionInfo {
        binary: "sms-api",
        routes: crate::sms_api::ROUTES,
    },
    FunctionInfo {
        binary: "sms-worker",
        routes: &[],
    },
    FunctionInfo {
        binary: "twilio-webhook",
        routes: &[],
    },
    FunctionInfo {
        binary: "sms-status-check",
        routes: &[],
    },
    FunctionInfo {
        binary: "consent-api",
        routes: crate::consent_api::ROUTES,
    },
    FunctionInfo {
        binary: "unsubscribe",
        routes: &[],
    },
];

/// Builds the handler for `binary` with its own environment, as its `main` would.
///
/// # Errors
/// When the binary is unknown or its configuration is incomplete.
pub async fn load(binary: &str, aws: &AwsClients, env: &Env) -> anyhow::Result<Handler> {
    Ok(match binary {
        "templates-api" => {
            Handler::Http(Arc::new(crate::templates_api::TemplatesApi::new(aws, env)?))
        }
        "email-api" => Handler::Http(Arc::new(crate::email_api::EmailApi::new(aws, env)?)),
        "operations-api" => Handler::Http(Arc::new(crate::operations_api::OperationsApi::new(
            aws, env,
        )?)),
        "email-worker" => Handler::Sqs(Arc::new(crate::email_worker::EmailWorker::new(aws, env)?)),
        "bulk-worker" => Handler::Sqs(Arc::new(crate::bulk_worker::BulkWorker::new(aws, env)?)),
        "sendgrid-webhook" => Handler::Http(Arc::new(
            crate::sendgrid_webhook::SendGridWebhook::new(aws, env)?,
        )),
        "email-status-check" => Handler::Scheduled(Arc::new(
            crate::email_status_check::EmailStatusCheck::new(aws, env)?,
        )),
        "event-recorder" => Handler::Sqs(Arc::new(crate::event_recorder::EventRecorder::new(
            aws, env,
        )?)),
        "audit-api" => Handler::Http(Arc::new(crate::audit_api::AuditApi::new(aws, env))),
        "admin-page" => Handler::Http(Arc::new(crate::admin_page::AdminPage::new())),
        "reports-api" => Handler::Http(Arc::new(crate::reports_api::ReportsApi::new(aws, env)?)),
        "report-worker" => {
            Handler::Sqs(Arc::new(crate::report_worker::ReportWorker::new(aws, env)?))
        }
        "report-cleanup" => Handler::Scheduled(Arc::new(
            crate::report_cleanup::ReportCleanup::new(aws, env)?,
        )),
        "payments-api" => Handler::Http(Arc::new(crate::payments_api::PaymentsApi::new(aws, env)?)),
        "stripe-webhook" => Handler::Http(Arc::new(crate::stripe_webhook::StripeWebhook::new(
            aws, env,
        )?)),
        "stripe-sync" => {
            Handler::Scheduled(Arc::new(crate::stripe_sync::StripeSync::new(aws, env)?))
        }
        "sms-api" => Handler::Http(Arc::new(crate::sms_api::SmsApi::new(aws, env)?)),
        "sms-worker" => Handler::Sqs(Arc::new(crate::sms_worker::SmsWorker::new(aws, env)?)),
        "twilio-webhook" => Handler::Http(Arc::new(crate::twilio_webhook::TwilioWebhook::new(
            aws, env,
        )?)),
        "sms-status-check" => Handler::Scheduled(Arc::new(
            crate::sms_status_check::SmsStatusCheck::new(aws, env)?,
        )),
        "consent-api" => Handler::Http(Arc::new(crate::consent_api::ConsentApi::new(aws, env)?)),
        "unsubscribe" => Handler::Http(Arc::new(crate::unsubscribe::Unsubscribe::new(aws, env)?)),
        other => anyhow::bail!("no function binary named {other}"),
    })
}
