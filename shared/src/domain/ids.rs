//! Identifiers parsed at the edge, so the rest of the code can trust them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An organization id, taken from the caller's token only.
///
/// It becomes part of storage keys (`ORG#<id>`), so it is restricted to characters that
/// cannot forge a key separator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgId(String);

impl OrgId {
    pub const MAX_LEN: usize = 64;

    /// # Errors
    /// When the id is empty, longer than 64 characters or has characters other than ASCII
    /// letters, digits, `-`, `_` and `.`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if value.is_empty() || value.len() > Self::MAX_LEN || !value.chars().all(valid_char) {
            return Err(format!(
                "an organization id is 1 to {} characters of letters, digits, '-', '_' or '.'",
                Self::MAX_LEN
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OrgId {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<OrgId> for String {
    fn from(value: OrgId) -> Self {
        value.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A record id: a ULID, so ids sort by creation time (newest-first listings are key order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(ulid::Ulid);

impl RecordId {
    pub fn new() -> Self {
        Self(ulid::Ulid::new())
    }

    /// Parses an id from a path; anything that is not a ULID can name no record.
    pub fn parse(value: &str) -> Option<Self> {
        ulid::Ulid::from_string(value).ok().map(Self)
    }

    /// The smallest id that can have been made at `time` (for key-range queries).
    pub fn lowest_at(time: chrono::DateTime<chrono::Utc>) -> Self {
        let millis = u64::try_from(time.timestamp_millis()).unwrap_or(0);
        Self(ulid::Ulid::from_parts(millis, 0))
    }

    /// The largest id that can have been made at `time`.
    pub fn highest_at(time: chrono::DateTime<chrono::Utc>) -> Self {
        let millis = u64::try_from(time.timestamp_millis()).unwrap_or(0);
        Self(ulid::Ulid::from_parts(millis, u128::MAX))
    }

    /// The id of the record that `key` (a phonebook contact's number) gets in the bulk
    /// `self`: the bulk's time with 80 bits of SHA-256 of both. The same for every
    /// fan-out job that reaches that contact, so a redelivered job finds the record it made
    /// before instead of making a second one; every record of the bulk lies in the bulk's
    /// millisecond, so a key-range query finds them all.
    pub fn derived(self, key: &str) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(self.0.to_string())
            .chain_update(b"#")
            .chain_update(key)
            .finalize();
        let mut random = [0u8; 16];
        random[6..].copy_from_slice(&digest[..10]);
        Self(ulid::Ulid::from_parts(
            self.0.timestamp_ms(),
            u128::from_be_bytes(random),
        ))
    }

    /// The time part of the id (a bulk's records are made in its millisecond).
    pub fn timestamp(self) -> chrono::DateTime<chrono::Utc> {
        let millis = i64::try_from(self.0.timestamp_ms()).unwrap_or(i64::MAX);
        chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default()
    }

    /// Key bounds for ids made between two optional times (both inclusive), as strings:
    /// ULIDs are Crockford base32, so every id sorts between "0" and "~".
    pub fn range(
        after: Option<chrono::DateTime<chrono::Utc>>,
        before: Option<chrono::DateTime<chrono::Utc>>,
    ) -> (String, String) {
        (
            after.map_or_else(|| "0".to_owned(), |t| Self::lowest_at(t).to_string()),
            before.map_or_else(|| "~".to_owned(), |t| Self::highest_at(t).to_string()),
        )
    }
}

impl Default for RecordId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids_cannot_carry_key_separators() {
        assert!(OrgId::parse("acme-inc_2.eu").is_ok());
        for bad in ["", "a#b", "a b", "ä", &"x".repeat(65)] {
            assert!(OrgId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn record_ids_bound_by_time() {
        let now = chrono::Utc::now();
        let id = RecordId::new();
        assert!(RecordId::lowest_at(now - chrono::Duration::seconds(1)) < id);
        assert!(RecordId::highest_at(now + chrono::Duration::seconds(1)) > id);
        assert_eq!(RecordId::parse(&id.to_string()), Some(id));
        assert_eq!(RecordId::parse("not-a-ulid"), None);
    }

    #[test]
    fn derived_ids_are_stable_distinct_and_in_the_bulks_millisecond() {
        let bulk = RecordId::new();
        let a = bulk.derived("+14155550100");
        assert_eq!(a, bulk.derived("+14155550100"));
        assert_ne!(a, bulk.derived("+14155550101"));
        assert_ne!(a, RecordId::new().derived("+14155550100"));
        let at = bulk.timestamp();
        assert!(RecordId::lowest_at(at) <= a && a <= RecordId::highest_at(at));
    }
}
