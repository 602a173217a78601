//! The webhook event envelope: `{"id": "evt_…", "type": "…", "created": <unix>,
//! "data": {"object": {…}}}`. The object stays JSON: Herald reads a handful of fields from
//! several object types, and [`crate::payments::reconcile`] knows which.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
pub struct StripeEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds when Stripe created the event: the order of events about one object.
    pub created: i64,
    pub data: EventData,
    #[serde(default)]
    pub livemode: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: Value,
}

impl StripeEvent {
    /// # Errors
    /// When the body is not a Stripe event.
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}
