//! DynamoDB adapters.
//!
//! Herald keeps its records in one table (`TABLE_NAME`) with generic key attributes:
//!
//! | attribute | template item |
//! |---|---|
//! | `pk` / `sk` | `ORG#<org>` / `TPL#<kind>#<ulid>`: an organization's templates, newest last |
//! | `gsi1pk` / `gsi1sk` (`GSI1`) | `TPL#<kind>` / `<ulid>`: superusers' cross-organization listing and lookup by id |
//! | `gsi2pk` / `gsi2sk` (`GSI2`) | `ORG#<org>#TPL#<kind>` / `<lowercase name>#<ulid>`: ordering by name |
//!
//! Every key starts with the organization (or is a superuser-only index), so a query built
//! from the caller's token cannot reach another organization's items. Soft-deleted items keep
//! their base keys (for audit) but leave the secondary indexes.

mod templates;

pub use templates::{TemplateListQuery, TemplateOrder, TemplateStore};

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

use crate::http::{ApiError, Cursor};

pub type Item = HashMap<String, AttributeValue>;

/// Storage outcomes the API distinguishes; everything else is an internal error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("invalid cursor")]
    InvalidCursor,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::InvalidCursor => ApiError::field("cursor", "is not a cursor for this list"),
            StoreError::Other(cause) => ApiError::Internal(cause),
        }
    }
}

/// The string key attributes of an item, as a pagination cursor.
fn cursor_of(item: &Item, names: &[&str]) -> Cursor {
    names
        .iter()
        .filter_map(|name| match item.get(*name) {
            Some(AttributeValue::S(value)) => Some(((*name).to_owned(), value.clone())),
            _ => None,
        })
        .collect()
}

fn key_of(cursor: &Cursor) -> Item {
    cursor
        .iter()
        .map(|(name, value)| (name.clone(), AttributeValue::S(value.clone())))
        .collect()
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}
