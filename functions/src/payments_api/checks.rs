//! Checks of the request fields the payments resources share, and the metadata Herald
//! sends Stripe.

use std::collections::BTreeMap;

use serde_json::Value;

use shared::auth::Caller;
use shared::http::FieldErrorCollector;

/// Entries of the caller's own metadata Herald accepts.
const MAX_METADATA: usize = 20;

/// Stripe's metadata rules (Stripe API reference, "Metadata"): keys up to 40 characters,
/// values up to 500, and no square brackets in a key (they would break the form encoding
/// `metadata[key]`); Herald allows 20 entries of the caller's own.
pub(super) fn check_metadata(
    metadata: &BTreeMap<String, String>,
    errors: &mut FieldErrorCollector,
) {
    if metadata.len() > MAX_METADATA
        || metadata
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 40 || v.len() > 500)
    {
        errors.add(
            "metadata",
            "at most 20 entries, keys of 1 to 40 and values up to 500 characters",
        );
    }
    if metadata.keys().any(|k| k.contains(['[', ']'])) {
        errors.add("metadata", "keys cannot contain [ or ]");
    }
    if metadata.contains_key("org_id") || metadata.contains_key("herald_id") {
        errors.add("metadata", "org_id and herald_id are set by Herald");
    }
}

pub(super) fn check_text(
    value: Option<&String>,
    field: &str,
    max: usize,
    errors: &mut FieldErrorCollector,
) {
    if value.is_some_and(|v| v.trim().is_empty() || v.chars().count() > max) {
        errors.add(field, format!("must be 1 to {max} characters"));
    }
}

/// Stripe-side ids Herald passes through (`price_…`, `pm_…`): plain tokens only.
pub(super) fn check_token(value: &str, field: &str, errors: &mut FieldErrorCollector) {
    if value.is_empty()
        || value.len() > 255
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        errors.add(field, "must be a Stripe id");
    }
}

/// Stripe metadata: the caller's own keys plus the organization and the record.
pub(super) fn metadata_for(
    user: &BTreeMap<String, String>,
    caller: &Caller,
    herald_id: &str,
) -> serde_json::Map<String, Value> {
    let mut metadata: serde_json::Map<String, Value> = user
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    metadata.insert("org_id".into(), caller.org.as_str().into());
    metadata.insert("herald_id".into(), herald_id.into());
    metadata
}

/// The `status` filter of a list, one of `allowed`.
pub(super) fn status_filter<'a>(
    params: &'a std::collections::BTreeMap<String, String>,
    allowed: &[&str],
    message: &str,
) -> Result<Option<&'a String>, shared::http::ApiError> {
    match params.get("status") {
        Some(status) if !allowed.contains(&status.as_str()) => {
            Err(shared::http::ApiError::field("status", message))
        }
        other => Ok(other),
    }
}
