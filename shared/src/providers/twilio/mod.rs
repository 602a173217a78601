//! Twilio: SMS delivery.
//!
//! - [`client`]: the Messages API (create, fetch) and the account balance, with errors that
//!   say whether a retry can help ([`TwilioError::is_retryable`]).
//! - [`callback`]: the per-message status callback URL that names its record.
//! - [`signature`]: `X-Twilio-Signature` (HMAC-SHA1 over the URL and the sorted form
//!   parameters), to verify webhooks and, in the local sandbox, to sign them.

pub mod callback;
pub mod client;
mod number_orgs;
pub mod settings;
pub mod signature;

pub use client::{
    Balance, BuildError, MessageResource, OutboundSms, Sender, TwilioClient, TwilioError,
};
pub use number_orgs::parse_number_orgs;
pub use settings::TwilioSettings;
pub use signature::{SIGNATURE_HEADER, sign, verify};
