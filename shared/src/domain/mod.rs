//! Herald's domain types and rules. No I/O lives here.

pub mod email;
mod ids;
pub mod sms;
pub mod template;

pub use ids::{OrgId, RecordId};
