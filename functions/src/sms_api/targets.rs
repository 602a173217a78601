//! Who a send reaches: one number, a list of recipients with their own variables, or a
//! phonebook's contacts (their fields as variables, in the bulk worker).

use serde::Deserialize;
use serde_json::{Value, json};

use shared::auth::Caller;
use shared::domain::RecordId;
use shared::http::{ApiError, FieldErrorCollector};
use shared::store::{Phonebook, StoreError};

use super::SmsApi;
use super::send::SendRequest;

pub const MAX_BULK_RECIPIENTS: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkRecipient {
    to: String,
    #[serde(default)]
    variables: Option<Value>,
}

/// One recipient before rendering: the field to report errors on, the number, variables.
pub(super) struct Target {
    pub(super) field: String,
    pub(super) to: String,
    pub(super) variables: Value,
}

impl Target {
    /// The name of `field` of this recipient in a field error (`recipients[3].to`).
    pub(super) fn field(&self, field: &str) -> String {
        if self.field.is_empty() {
            field.to_owned()
        } else {
            format!("{}.{field}", self.field)
        }
    }
}

/// Who a send reaches: recipients made into records in the API call, or a phonebook whose
/// records the bulk worker makes (issue 20: whatever its size, the call does no per-contact
/// work).
pub(super) enum Audience {
    Targets(Vec<Target>),
    Phonebook(Phonebook),
}

impl SmsApi {
    /// Who receives the send: `to`, `recipients` or a phonebook's contacts.
    pub(super) async fn audience(
        &self,
        body: &SendRequest,
        caller: &Caller,
        errors: &mut FieldErrorCollector,
    ) -> Result<Audience, ApiError> {
        let given = [
            body.to.is_some(),
            body.recipients.is_some(),
            body.phonebook_id.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            errors.add("to", "use one of to, recipients or phonebook_id");
            return Ok(Audience::Targets(Vec::new()));
        }
        if let Some(list) = &body.recipients {
            return Ok(Audience::Targets(recipient_targets(list, errors)));
        }
        if let Some(phonebook_id) = &body.phonebook_id {
            return Ok(match self.phonebook(caller, phonebook_id).await? {
                Some(book) => Audience::Phonebook(book),
                None => {
                    errors.add("phonebook_id", "no such phonebook");
                    Audience::Targets(Vec::new())
                }
            });
        }
        Ok(Audience::Targets(match &body.to {
            Some(to) => vec![Target {
                field: String::new(),
                to: to.clone(),
                variables: body.variables(),
            }],
            None => {
                errors.add("to", "is required");
                Vec::new()
            }
        }))
    }

    /// The caller's phonebook of that id, if there is one.
    async fn phonebook(
        &self,
        caller: &Caller,
        phonebook_id: &str,
    ) -> Result<Option<Phonebook>, ApiError> {
        let Some(id) = RecordId::parse(phonebook_id) else {
            return Ok(None);
        };
        match self.phonebooks.get(&caller.org, &id.to_string()).await {
            Ok(book) => Ok(Some(book)),
            Err(StoreError::NotFound) => Ok(None),
            Err(other) => Err(other.into()),
        }
    }
}

/// The recipients a bulk names, each with its own variables.
fn recipient_targets(list: &[BulkRecipient], errors: &mut FieldErrorCollector) -> Vec<Target> {
    if list.is_empty() || list.len() > MAX_BULK_RECIPIENTS {
        errors.add(
            "recipients",
            format!("must hold 1 to {MAX_BULK_RECIPIENTS} recipients"),
        );
    }
    list.iter()
        .enumerate()
        .map(|(i, r)| Target {
            field: format!("recipients[{i}]"),
            to: r.to.clone(),
            variables: r.variables.clone().unwrap_or_else(|| json!({})),
        })
        .collect()
}
