//! Who a send reaches: one number, a list of recipients with their own variables, or a
//! phonebook's contacts (its fields as variables).

use serde::Deserialize;
use serde_json::{Value, json};

use shared::auth::Caller;
use shared::contacts::variables_of;
use shared::domain::RecordId;
use shared::http::{ApiError, FieldErrorCollector};
use shared::store::StoreError;

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

impl SmsApi {
    /// Who receives the send: `to`, `recipients` or a phonebook's contacts.
    pub(super) async fn targets(
        &self,
        body: &SendRequest,
        caller: &Caller,
        errors: &mut FieldErrorCollector,
    ) -> Result<Vec<Target>, ApiError> {
        let given = [
            body.to.is_some(),
            body.recipients.is_some(),
            body.phonebook_id.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            errors.add("to", "use one of to, recipients or phonebook_id");
            return Ok(Vec::new());
        }
        if let Some(list) = &body.recipients {
            return Ok(recipient_targets(list, errors));
        }
        if let Some(phonebook_id) = &body.phonebook_id {
            return self
                .phonebook_targets(body, caller, phonebook_id, errors)
                .await;
        }
        match &body.to {
            Some(to) => Ok(vec![Target {
                field: String::new(),
                to: to.clone(),
                variables: body.variables(),
            }]),
            None => {
                errors.add("to", "is required");
                Ok(Vec::new())
            }
        }
    }

    /// The contacts of the phonebook a send names; request variables are shared defaults,
    /// each contact's own fields win.
    async fn phonebook_targets(
        &self,
        body: &SendRequest,
        caller: &Caller,
        phonebook_id: &str,
        errors: &mut FieldErrorCollector,
    ) -> Result<Vec<Target>, ApiError> {
        let book = match RecordId::parse(phonebook_id) {
            Some(id) => match self.phonebooks.get(&caller.org, &id.to_string()).await {
                Ok(book) => Some(book),
                Err(StoreError::NotFound) => None,
                Err(other) => return Err(other.into()),
            },
            None => None,
        };
        let Some(book) = book else {
            errors.add("phonebook_id", "no such phonebook");
            return Ok(Vec::new());
        };
        let contacts = self
            .phonebooks
            .all_contacts(&caller.org, &book.id, MAX_BULK_RECIPIENTS + 1)
            .await?;
        if contacts.len() > MAX_BULK_RECIPIENTS {
            errors.add(
                "phonebook_id",
                format!("a send reaches at most {MAX_BULK_RECIPIENTS} contacts"),
            );
            return Ok(Vec::new());
        }
        let shared_variables = body.variables();
        Ok(contacts
            .iter()
            .map(|contact| {
                let mut variables = shared_variables.clone();
                if let (Value::Object(base), Value::Object(own)) =
                    (&mut variables, variables_of(contact))
                {
                    base.extend(own);
                }
                Target {
                    field: format!("phonebook[{}]", contact.phone),
                    to: contact.phone.to_string(),
                    variables,
                }
            })
            .collect())
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
