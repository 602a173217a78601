//! Phonebooks: create, list, read, delete, and contacts imported from JSON or CSV with a
//! per-row report (a large import written by the bulk worker in chunks, followed at
//! `…/imports/{import_id}/`).

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;

use shared::auth::Caller;
use shared::contacts::{CheckedUpload, ContactInput};
use shared::domain::RecordId;
use shared::http::{self, ApiError, FieldErrors, PageRequest};
use shared::queue::{Envelope, Job};
use shared::store::{Contact, Import, Phonebook};

use super::SmsApi;

/// Rows one import takes (a 5 MiB upload holds about 100,000 rows of number and name).
const MAX_CONTACTS_PER_IMPORT: usize = 200_000;

/// The largest upload: the API Gateway event carrying it must stay under Lambda's 6 MB
/// invocation payload (Lambda Developer Guide, "Lambda quotas": "6 MB each for request
/// and response" of a synchronous invocation).
const MAX_UPLOAD_BYTES: usize = 5 * 1024 * 1024;

/// Contacts an import writes in the call itself; a larger one is written by the bulk worker
/// in chunks (see the phonebook store for why), and the call answers 202 with its id.
const CONTACTS_WRITTEN_IN_CALL: usize = 1_000;

/// Bytes of contacts (as JSON) per chunk job: an SQS message is at most 256 KiB (262,144
/// bytes, Amazon SQS Developer Guide, "Amazon SQS message quotas"), envelope included.
const CHUNK_BYTES: usize = 200_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PhonebookRequest {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

impl PhonebookRequest {
    /// The new phonebook, or the 400 that names what is wrong.
    fn into_phonebook(self, now: chrono::DateTime<chrono::Utc>) -> Result<Phonebook, ApiError> {
        let name = self.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ApiError::field("name", "must be 1 to 100 characters"));
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 1000)
        {
            return Err(ApiError::field(
                "description",
                "must be at most 1,000 characters",
            ));
        }
        Ok(Phonebook {
            id: RecordId::new().to_string(),
            name,
            description: self.description,
            contact_count: 0,
            created_at: now,
            updated_at: now,
        })
    }
}

/// The 400 of an upload without a single usable contact: its refused rows, or that it was
/// empty.
fn nothing_to_import(upload: &CheckedUpload) -> ApiError {
    let mut errors = FieldErrors::new();
    for row in upload.rejected.iter().take(http::MAX_REPORTED_FIELDS) {
        errors.insert(format!("row {}", row.row), vec![row.reason.clone()]);
    }
    if errors.is_empty() {
        errors.insert(
            "body".to_owned(),
            vec!["no contacts in the upload".to_owned()],
        );
    }
    ApiError::invalid(errors)
}

impl SmsApi {
    pub(super) async fn create_phonebook(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let input: PhonebookRequest = http::parse_json(request)?;
        let book = input.into_phonebook(chrono::Utc::now())?;
        self.phonebooks.create(&caller.org, &book).await?;
        let resource = format!("phonebook/{}", book.id);
        self.audit(request, caller, "phonebook.create", resource, json!({}))
            .await;
        http::json(201, &book)
    }

    pub(super) async fn list_phonebooks(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let org = caller.listed_org(&params)?;
        let page = PageRequest::from_query(&params, org.as_str())?;
        let (books, next) = self.phonebooks.list(&org, &page).await?;
        http::page(&page, &books, next)
    }

    pub(super) async fn get_phonebook(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let book = self.phonebooks.get(&caller.org, id).await?;
        http::json(200, &book)
    }

    pub(super) async fn delete_phonebook(
        &self,
        request: &Request,
        caller: &Caller,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        self.phonebooks
            .delete(&caller.org, id, chrono::Utc::now())
            .await?;
        let resource = format!("phonebook/{id}");
        self.audit(request, caller, "phonebook.delete", resource, json!({}))
            .await;
        Ok(http::no_content())
    }

    pub(super) async fn list_contacts(
        &self,
        request: &Request,
        caller: &Caller,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let org = caller.listed_org(&params)?;
        self.phonebooks.get(&org, id).await?;
        let page = PageRequest::from_query(&params, org.as_str())?;
        let (contacts, next) = self.phonebooks.list_contacts(&org, id, &page).await?;
        http::page(&page, &contacts, next)
    }

    pub(super) async fn import_contacts(
        &self,
        request: &Request,
        caller: &Caller,
        phonebook: &str,
    ) -> Result<Response<Body>, ApiError> {
        self.phonebooks.get(&caller.org, phonebook).await?;
        let now = chrono::Utc::now();
        let upload = checked_upload(request, now)?;
        if upload.rows() > MAX_CONTACTS_PER_IMPORT {
            return Err(ApiError::field(
                "body",
                format!("at most {MAX_CONTACTS_PER_IMPORT} contacts per upload"),
            ));
        }
        if upload.contacts.is_empty() {
            return Err(nothing_to_import(&upload));
        }
        if upload.contacts.len() > CONTACTS_WRITTEN_IN_CALL {
            return self
                .import_in_chunks(request, caller, phonebook, upload, now)
                .await;
        }
        let count = self
            .phonebooks
            .put_contacts(&caller.org, phonebook, &upload.contacts, now)
            .await?;
        let (accepted, rejected) = (upload.contacts.len(), &upload.rejected);
        let detail = json!({"accepted": accepted, "rejected": rejected.len()});
        let resource = format!("phonebook/{phonebook}");
        self.audit(
            request,
            caller,
            "phonebook.contacts.import",
            resource,
            detail,
        )
        .await;
        http::json(
            200,
            &json!({"accepted": accepted, "rejected": rejected, "contact_count": count}),
        )
    }
}

impl SmsApi {
    /// An import too large to write in the call: stored as an import of chunks, each chunk
    /// a job for the bulk worker. The per-row report is complete already (rows are checked
    /// here); `GET …/imports/{import_id}/` follows the writing.
    async fn import_in_chunks(
        &self,
        request: &Request,
        caller: &Caller,
        phonebook: &str,
        upload: CheckedUpload,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Response<Body>, ApiError> {
        let chunks = chunks_of(upload.contacts, CHUNK_BYTES);
        let import = Import {
            id: RecordId::new().to_string(),
            phonebook_id: phonebook.to_owned(),
            state: "importing".to_owned(),
            rows: (chunks.iter().map(Vec::len).sum::<usize>() + upload.rejected.len()) as u64,
            accepted: chunks.iter().map(Vec::len).sum::<usize>() as u64,
            rejected: upload.rejected.len() as u64,
            chunks: chunks.len() as u64,
            chunks_done: 0,
            contact_count: None,
            created_at: now,
            updated_at: now,
        };
        self.phonebooks.create_import(&caller.org, &import).await?;
        let jobs: Vec<Envelope> = chunks
            .into_iter()
            .zip(0u32..)
            .map(|(contacts, chunk)| {
                Envelope::new(
                    caller.org.clone(),
                    Job::PhonebookImport {
                        phonebook_id: phonebook.to_owned(),
                        import_id: import.id.clone(),
                        chunk,
                        contacts,
                    },
                )
            })
            .collect();
        self.queue
            .send_all(&self.bulk_queue, &jobs)
            .await
            .map_err(ApiError::internal)?;
        let detail = json!({"accepted": import.accepted, "rejected": import.rejected, "import_id": import.id});
        let resource = format!("phonebook/{phonebook}");
        self.audit(
            request,
            caller,
            "phonebook.contacts.import",
            resource,
            detail,
        )
        .await;
        http::json(
            202,
            &json!({
                "import_id": import.id,
                "state": import.state,
                "accepted": import.accepted,
                "rejected": upload.rejected,
                "chunks": import.chunks,
            }),
        )
    }

    /// `GET /services/phonebooks/{id}/imports/{import_id}/`: how far a large import is.
    pub(super) async fn get_import(
        &self,
        caller: &Caller,
        phonebook: &str,
        import: &str,
    ) -> Result<Response<Body>, ApiError> {
        let import = self
            .phonebooks
            .get_import(&caller.org, phonebook, import)
            .await?;
        http::json(200, &import)
    }
}

/// Contacts in chunks of about `bytes` of JSON each, in upload order.
fn chunks_of(contacts: Vec<Contact>, bytes: usize) -> Vec<Vec<Contact>> {
    let mut chunks: Vec<Vec<Contact>> = vec![Vec::new()];
    let mut size = 0;
    for contact in contacts {
        let contact_bytes = serde_json::to_vec(&contact).map_or(bytes, |json| json.len() + 1);
        if size + contact_bytes > bytes && chunks.last().is_some_and(|c| !c.is_empty()) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += contact_bytes;
        if let Some(chunk) = chunks.last_mut() {
            chunk.push(contact);
        }
    }
    chunks
}

/// The upload a request carries: CSV for `text/csv`, else a JSON list of contacts.
fn checked_upload(
    request: &Request,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<CheckedUpload, ApiError> {
    let bytes = http::body_bytes(request);
    if bytes.len() > MAX_UPLOAD_BYTES {
        return Err(ApiError::PayloadTooLarge(
            "uploads are limited to 5 MiB".to_owned(),
        ));
    }
    let content_type = request
        .headers()
        .get(::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    if content_type.starts_with("text/csv") {
        CheckedUpload::from_csv(bytes, now).map_err(|m| ApiError::field("body", m))
    } else {
        let inputs: Vec<ContactInput> = http::parse_json(request)?;
        Ok(CheckedUpload::from_inputs(inputs, now))
    }
}
