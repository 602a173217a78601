//! Stripe: payments and subscriptions on one platform account.
//!
//! - [`client`]: the REST API with form encoding ([`form`]), a pinned `Stripe-Version`,
//!   idempotency keys, pagination and classified errors.
//! - [`signature`]: `Stripe-Signature` verification (and signing, for the sandbox and tests).
//! - [`events`]: the webhook event envelope.
//! - [`retry`]: a create retried under its idempotency key within a deadline.
//!
//! Herald finds its records from Stripe objects through `metadata[org_id]` and
//! `metadata[herald_id]`, which it sets on every object it creates.

pub mod client;
pub mod events;
pub mod form;
pub mod retry;
pub mod signature;

pub use client::{
    API_VERSION, BuildError, DEFAULT_BASE_URL, DEFAULT_TIMEOUT, ListPage, MAX_PAGE_SIZE,
    StripeClient, StripeError,
};
pub use events::StripeEvent;
pub use retry::{Attempted, Deadline};
pub use signature::{DEFAULT_TOLERANCE, SIGNATURE_HEADER, SignatureError, WebhookVerifier, sign};
