//! Cursor pagination bound to the organization and the query (SPEC §3).
//!
//! A cursor is opaque to callers: base64url JSON holding the organization, a fingerprint of
//! the query that produced it and the storage position to resume after. A cursor presented
//! by another organization, or with different filters, is refused with 400 — it can never
//! widen what a caller sees, because the query's partition always comes from the token.
//!
//! A neutral module: the store pages with it, the HTTP layer reads it from query strings,
//! and neither depends on the other for it ([`PageError`] becomes a 400 in `crate::http`).

use std::collections::{BTreeMap, HashMap};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a list request's paging is refused (a 400 naming the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("limit must be between 1 and {MAX_LIMIT}")]
    Limit,
    #[error("cursor is not a cursor for this list")]
    Cursor,
}

pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;

/// A storage position to resume after (the key attributes of the last item returned).
pub type Cursor = HashMap<String, String>;

#[derive(Debug, Serialize, Deserialize)]
struct CursorToken {
    v: u8,
    o: String,
    q: String,
    k: Cursor,
}

/// `limit` and the decoded `cursor` of a list request.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub limit: usize,
    pub after: Option<Cursor>,
    scope: String,
    fingerprint: String,
}

impl PageRequest {
    /// Reads `limit` and `cursor` from the query string. `scope` is what the caller may see
    /// (their organization, or `*` for a superuser's cross-organization listing).
    ///
    /// # Errors
    /// 400 for a limit outside 1..=100 or a cursor that is malformed or was made for another
    /// organization or query.
    pub fn from_query(params: &BTreeMap<String, String>, scope: &str) -> Result<Self, PageError> {
        let limit = match params.get("limit") {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => return Err(PageError::Limit),
            },
        };
        let fingerprint = fingerprint(params);
        let after = params
            .get("cursor")
            .map(|token| decode(token, scope, &fingerprint))
            .transpose()?;
        Ok(Self {
            limit,
            after,
            scope: scope.to_owned(),
            fingerprint,
        })
    }

    /// The cursor token for the page after the item at `position`.
    pub fn next_cursor(&self, position: Cursor) -> String {
        let token = CursorToken {
            v: 1,
            o: self.scope.clone(),
            q: self.fingerprint.clone(),
            k: position,
        };
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
    }
}

/// Every query parameter but the paging ones, in a stable order.
fn fingerprint(params: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (name, value) in params
        .iter()
        .filter(|(name, _)| *name != "cursor" && *name != "limit")
    {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..12])
}

fn decode(token: &str, scope: &str, fingerprint: &str) -> Result<Cursor, PageError> {
    let invalid = || PageError::Cursor;
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let token: CursorToken = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if token.v != 1 || token.o != scope || token.q != fingerprint {
        return Err(invalid());
    }
    Ok(token.k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn cursor_round_trips_for_the_same_org_and_query() {
        let first = PageRequest::from_query(&params(&[("search", "x")]), "acme").unwrap();
        let token = first.next_cursor(Cursor::from([("pk".to_owned(), "ORG#acme".to_owned())]));
        let second = PageRequest::from_query(
            &params(&[("search", "x"), ("cursor", &token), ("limit", "5")]),
            "acme",
        )
        .unwrap();
        assert_eq!(second.after.unwrap()["pk"], "ORG#acme");
        assert_eq!(second.limit, 5);
    }

    #[test]
    fn cursor_from_another_org_or_query_is_refused() {
        let first = PageRequest::from_query(&params(&[]), "acme").unwrap();
        let token = first.next_cursor(Cursor::new());
        assert!(PageRequest::from_query(&params(&[("cursor", &token)]), "globex").is_err());
        assert!(
            PageRequest::from_query(
                &params(&[("cursor", &token), ("is_active", "true")]),
                "acme"
            )
            .is_err()
        );
        assert!(PageRequest::from_query(&params(&[("cursor", "garbage")]), "acme").is_err());
    }

    #[test]
    fn limit_is_bounded() {
        assert!(PageRequest::from_query(&params(&[("limit", "101")]), "a").is_err());
        assert!(PageRequest::from_query(&params(&[("limit", "0")]), "a").is_err());
        assert_eq!(
            PageRequest::from_query(&params(&[]), "a").unwrap().limit,
            DEFAULT_LIMIT
        );
    }
}
