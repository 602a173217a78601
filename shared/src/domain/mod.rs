//! Herald's domain types and rules. No I/O lives here.

pub mod email;
mod ids;
pub mod sms;
pub mod sms_message;
pub mod template;

pub use ids::{OrgId, RecordId};
