//! Herald's Lambda functions. Each module is one function's logic; `src/bin/<name>.rs` is
//! its short `main`. The local runner and the tests call the same code through [`registry`].

pub mod admin_page;
pub mod audit_api;
pub mod bulk_worker;
pub mod consent_api;
pub mod email_api;
pub mod email_status_check;
pub mod email_worker;
pub mod event_recorder;
pub mod operations_api;
pub mod payments_api;
pub mod registry;
pub mod report_cleanup;
pub mod report_worker;
pub mod reports_api;
pub mod runtime;
pub mod sendgrid_webhook;
pub mod sms_api;
pub mod sms_status_check;
pub mod sms_worker;
pub mod stripe_sync;
pub mod stripe_webhook;
pub mod sweep;
pub mod templates_api;
pub mod twilio_webhook;
pub mod unsubscribe;
