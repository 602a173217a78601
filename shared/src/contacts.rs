//! Contact uploads into a phonebook: CSV with a header row, or a JSON list, checked row by
//! row into [`Contact`]s and a report of the rows refused (with their row numbers).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::sms_message::PhoneNumber;
use crate::store::Contact;

/// One contact as an upload gives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    pub phone: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// A refused upload row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RejectedRow {
    pub row: usize,
    pub reason: String,
}

/// An upload, checked: the contacts to store (each number once, the first row winning) and
/// the rows refused, in row order.
#[derive(Debug, Default)]
pub struct CheckedUpload {
    pub contacts: Vec<Contact>,
    pub rejected: Vec<RejectedRow>,
}

/// The column names a CSV upload's phone number may have.
const PHONE_COLUMNS: &[&str] = &["phone", "to", "number", "phone_number", "mobile"];

impl CheckedUpload {
    /// A CSV upload with a header row. The number column is `phone` (or `to`, `number`,
    /// `phone_number`, `mobile`), `name` is the contact's name, and every other column
    /// becomes a field (a template variable). Row numbers are file lines: the header is row 1.
    ///
    /// # Errors
    /// A message when the file itself is unusable (no header, no number column).
    pub fn from_csv(bytes: &[u8], now: DateTime<Utc>) -> Result<Self, String> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(bytes);
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| format!("the CSV header row cannot be read: {e}"))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').to_ascii_lowercase())
            .collect();
        let columns = Columns::of(&headers)?;
        let mut rows = Vec::new();
        let mut rejected = Vec::new();
        for (index, result) in reader.records().enumerate() {
            let fallback_row = index + 2;
            let record = match result {
                Ok(record) => record,
                Err(error) => {
                    let reason = format!("unreadable row: {error}");
                    rejected.push(RejectedRow {
                        row: fallback_row,
                        reason,
                    });
                    continue;
                }
            };
            let row = record
                .position()
                .and_then(|p| usize::try_from(p.line()).ok())
                .unwrap_or(fallback_row);
            if record.iter().all(str::is_empty) {
                continue;
            }
            match columns.input(&headers, &record).into_contact(now) {
                Ok(contact) => rows.push((row, contact)),
                Err(reason) => rejected.push(RejectedRow { row, reason }),
            }
        }
        Ok(Self::deduplicated(rows, rejected))
    }

    /// A JSON upload: rows are numbered from 1 (their position in the list).
    pub fn from_inputs(inputs: Vec<ContactInput>, now: DateTime<Utc>) -> Self {
        let mut rows = Vec::new();
        let mut rejected = Vec::new();
        for (index, input) in inputs.into_iter().enumerate() {
            let row = index + 1;
            match input.into_contact(now) {
                Ok(contact) => rows.push((row, contact)),
                Err(reason) => rejected.push(RejectedRow { row, reason }),
            }
        }
        Self::deduplicated(rows, rejected)
    }

    /// Rows the upload held, accepted or not.
    pub fn rows(&self) -> usize {
        self.contacts.len() + self.rejected.len()
    }

    /// Drops repeated numbers (the first row wins) and reports them.
    fn deduplicated(rows: Vec<(usize, Contact)>, mut rejected: Vec<RejectedRow>) -> Self {
        let mut seen: HashMap<PhoneNumber, usize> = HashMap::new();
        let mut contacts = Vec::new();
        for (row, contact) in rows {
            if let Some(first) = seen.get(&contact.phone) {
                let reason = format!("duplicate of row {first}");
                rejected.push(RejectedRow { row, reason });
                continue;
            }
            seen.insert(contact.phone.clone(), row);
            contacts.push(contact);
        }
        rejected.sort_by_key(|r| r.row);
        Self { contacts, rejected }
    }
}

/// Where a CSV upload keeps the number and the name.
struct Columns {
    phone: usize,
    name: Option<usize>,
}

impl Columns {
    fn of(headers: &[String]) -> Result<Self, String> {
        let phone = headers
            .iter()
            .position(|h| PHONE_COLUMNS.contains(&h.as_str()))
            .ok_or(
                "the header row needs a phone column (phone, to, number, phone_number or mobile)",
            )?;
        let name = headers.iter().position(|h| h == "name");
        Ok(Self { phone, name })
    }

    fn input(&self, headers: &[String], record: &csv::StringRecord) -> ContactInput {
        ContactInput {
            phone: record.get(self.phone).unwrap_or_default().to_owned(),
            name: self
                .name
                .and_then(|c| record.get(c))
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            fields: headers
                .iter()
                .enumerate()
                .filter(|(c, h)| *c != self.phone && Some(*c) != self.name && !h.is_empty())
                .filter_map(|(c, h)| Some((h.clone(), record.get(c)?.to_owned())))
                .collect(),
        }
    }
}

impl ContactInput {
    /// The contact, or why the row is refused.
    ///
    /// # Errors
    /// The reason, for the upload's report.
    pub fn into_contact(self, now: DateTime<Utc>) -> Result<Contact, String> {
        if self.phone.trim().is_empty() {
            return Err("phone is empty".to_owned());
        }
        let phone = PhoneNumber::parse(&self.phone).map_err(|m| format!("phone {m}"))?;
        if self.name.as_ref().is_some_and(|n| n.chars().count() > 200) {
            return Err("name is longer than 200 characters".to_owned());
        }
        if self.fields.len() > 50
            || self
                .fields
                .iter()
                .any(|(k, v)| k.len() > 64 || v.len() > 1000)
        {
            return Err(
                "at most 50 fields, names up to 64 and values up to 1,000 characters".to_owned(),
            );
        }
        Ok(Contact {
            phone,
            name: self.name,
            fields: self.fields,
            created_at: now,
        })
    }
}

/// A contact's template variables: its fields, `name` and `phone`.
pub fn variables_of(contact: &Contact) -> Value {
    let mut map: serde_json::Map<String, Value> = contact
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    map.insert("phone".into(), json!(contact.phone));
    if let Some(name) = &contact.name {
        map.insert("name".into(), json!(name));
    }
    Value::Object(map)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_are_reported_by_line() {
        let csv = "phone,name,city\n+14155552671,Ann,Paris\nnot-a-number,Bob,Rome\n+14155552671,Ann again,Oslo\n\n+442079460958,,London\n,Empty,\n";
        let upload = CheckedUpload::from_csv(csv.as_bytes(), Utc::now()).unwrap();
        let (contacts, rejected) = (&upload.contacts, &upload.rejected);
        assert_eq!(contacts.len(), 2);
        assert_eq!(contacts[0].name.as_deref(), Some("Ann"));
        assert_eq!(contacts[0].fields["city"], "Paris");
        assert_eq!(contacts[1].phone.as_str(), "+442079460958");
        let rows: Vec<usize> = rejected.iter().map(|r| r.row).collect();
        assert_eq!(rows, vec![3, 4, 7], "{rejected:?}");
        assert!(rejected[0].reason.contains("phone"));
        assert!(rejected[1].reason.contains("duplicate of row 2"));
    }

    #[test]
    fn csv_needs_a_phone_column() {
        assert!(CheckedUpload::from_csv(b"name,city\nAnn,Paris\n", Utc::now()).is_err());
    }

    #[test]
    fn json_rows_are_numbered_from_one() {
        let inputs: Vec<ContactInput> = serde_json::from_value(json!([
            {"phone": "+14155552671"}, {"phone": "nope"}, {"phone": "+14155552671"}
        ]))
        .unwrap();
        let upload = CheckedUpload::from_inputs(inputs, Utc::now());
        assert_eq!(upload.contacts.len(), 1);
        let rows: Vec<usize> = upload.rejected.iter().map(|r| r.row).collect();
        assert_eq!(rows, vec![2, 3]);
    }
}
