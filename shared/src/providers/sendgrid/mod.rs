//! SendGrid: email delivery.
//!
//! - [`client`]: the v3 Mail Send and Email Activity APIs, with errors that say whether a
//!   retry can help ([`SendError::is_retryable`]).
//! - [`signature`]: verification of the Signed Event Webhook (ECDSA P-256), and a signer for
//!   the local provider sandbox and tests.
//! - [`events`]: the Event Webhook body, a JSON array of delivery and engagement events.
//!
//! Herald correlates events with its own records through `custom_args` (for example
//! `org_id` and `email_id`): set them on the [`MailSend`] or [`Personalization`], and SendGrid
//! echoes them as top-level fields of every event, which [`parse_batch`] collects into
//! [`SendGridEvent::custom_args`].

pub mod client;
pub mod events;
pub mod signature;

pub use client::{
    Accepted, ActivityStatus, Address, BuildError, Content, LimitError, MAX_PERSONALIZATIONS,
    MAX_SUBSTITUTION_BYTES, MailSend, Personalization, RecipientStatus, SendError, SendGridClient,
};
pub use events::{EventKind, SendGridEvent, parse_batch};
pub use signature::{
    DEFAULT_TOLERANCE, InvalidPublicKey, SIGNATURE_HEADER, SignatureError, TIMESTAMP_HEADER,
    WebhookSigner, WebhookVerifier,
};
