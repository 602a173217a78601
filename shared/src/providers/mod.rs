//! Adapters for the outside services Herald sends through.
//!
//! Each provider owns its client, its webhook signature check and its webhook event types,
//! and its own error types: what counts as retryable differs from one provider to the next,
//! so there is no shared provider error to flatten them into.

pub mod sendgrid;
pub mod stripe;
pub mod twilio;
