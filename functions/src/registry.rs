//! Every function of the bundle by binary name, so the local runner can build and call the
//! same handlers Lambda runs, and the tests can check the template against the code. One
//! table: a function's binary, the routes its router answers, and how its `main` builds it.

use std::sync::Arc;

use shared::aws::AwsClients;
use shared::config::Env;
use shared::http::Route;

use crate::runtime::Handler;

/// A function's binary name, the routes its own router answers, and its constructor.
#[derive(Clone, Copy)]
pub struct FunctionInfo {
    pub binary: &'static str,
    pub routes: &'static [Route],
    /// Builds the handler with its own environment, as its `main` would.
    pub load: fn(&AwsClients, &Env) -> anyhow::Result<Handler>,
}

impl std::fmt::Debug for FunctionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionInfo")
            .field("binary", &self.binary)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// A table row: `binary`, its routes, and the handler kind its constructor makes.
macro_rules! function {
    ($binary:literal, $routes:expr, $kind:ident, $($new:tt)+) => {
        FunctionInfo {
            binary: $binary,
            routes: $routes,
            load: |aws, env| Ok(Handler::$kind(Arc::new($($new)+(aws, env)?))),
        }
    };
}

/// Every function binary of the bundle.
pub const FUNCTIONS: &[FunctionInfo] = &[
    function!(
        "templates-api",
        crate::templates_api::ROUTES,
        Http,
        crate::templates_api::TemplatesApi::new
    ),
    function!(
        "email-api",
        crate::email_api::ROUTES,
        Http,
        crate::email_api::EmailApi::new
    ),
    function!(
        "email-worker",
        &[],
        Sqs,
        crate::email_worker::EmailWorker::new
    ),
    function!("bulk-worker", &[], Sqs, crate::bulk_worker::BulkWorker::new),
    function!(
        "sendgrid-webhook",
        &[],
        Http,
        crate::sendgrid_webhook::SendGridWebhook::new
    ),
    function!(
        "email-status-check",
        &[],
        Scheduled,
        crate::email_status_check::EmailStatusCheck::new
    ),
    function!(
        "event-recorder",
        &[],
        Sqs,
        crate::event_recorder::EventRecorder::new
    ),
    FunctionInfo {
        binary: "audit-api",
        routes: crate::audit_api::ROUTES,
        load: |aws, env| {
            Ok(Handler::Http(Arc::new(crate::audit_api::AuditApi::new(
                aws, env,
            ))))
        },
    },
    FunctionInfo {
        binary: "admin-page",
        routes: crate::admin_page::ROUTES,
        load: |_, _| Ok(Handler::Http(Arc::new(crate::admin_page::AdminPage::new()))),
    },
    function!(
        "operations-api",
        crate::operations_api::ROUTES,
        Http,
        crate::operations_api::OperationsApi::new
    ),
    function!(
        "reports-api",
        crate::reports_api::ROUTES,
        Http,
        crate::reports_api::ReportsApi::new
    ),
    function!(
        "report-worker",
        &[],
        Sqs,
        crate::report_worker::ReportWorker::new
    ),
    function!(
        "report-cleanup",
        &[],
        Scheduled,
        crate::report_cleanup::ReportCleanup::new
    ),
    function!(
        "payments-api",
        crate::payments_api::ROUTES,
        Http,
        crate::payments_api::PaymentsApi::new
    ),
    function!(
        "stripe-webhook",
        &[],
        Http,
        crate::stripe_webhook::StripeWebhook::new
    ),
    function!(
        "stripe-sync",
        &[],
        Scheduled,
        crate::stripe_sync::StripeSync::new
    ),
    function!(
        "sms-api",
        crate::sms_api::ROUTES,
        Http,
        crate::sms_api::SmsApi::new
    ),
    function!("sms-worker", &[], Sqs, crate::sms_worker::SmsWorker::new),
    function!(
        "twilio-webhook",
        &[],
        Http,
        crate::twilio_webhook::TwilioWebhook::new
    ),
    function!(
        "sms-status-check",
        &[],
        Scheduled,
        crate::sms_status_check::SmsStatusCheck::new
    ),
    function!(
        "consent-api",
        crate::consent_api::ROUTES,
        Http,
        crate::consent_api::ConsentApi::new
    ),
    function!(
        "unsubscribe",
        &[],
        Http,
        crate::unsubscribe::Unsubscribe::new
    ),
];

/// Builds the handler for `binary` with its own environment, as its `main` would.
///
/// # Errors
/// When the binary is unknown or its configuration is incomplete.
pub fn load(binary: &str, aws: &AwsClients, env: &Env) -> anyhow::Result<Handler> {
    let Some(function) = FUNCTIONS.iter().find(|f| f.binary == binary) else {
        anyhow::bail!("no function binary named {binary}");
    };
    (function.load)(aws, env)
}
