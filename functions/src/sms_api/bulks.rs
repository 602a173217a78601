//! Bulk sends as a resource: a send to a phonebook (accepted with one bulk item, its records
//! made by the bulk worker) and a bulk's progress, `GET /services/sms/bulk/{id}/`.

use lambda_http::{Body, Request, Response};
use serde_json::json;

use shared::auth::Caller;
use shared::bulk::{self, Bulk, BulkChannel, PhonebookSend};
use shared::domain::RecordId;
use shared::events::Event;
use shared::http::{self, ApiError, FieldErrorCollector};
use shared::queue::{Envelope, Job};
use shared::render::{Compiled, Escape, RenderError};
use shared::store::{Phonebook, StoreError};

use super::SmsApi;
use super::send::AcceptedSend;

impl SmsApi {
    /// A send to a phonebook: checked as a whole (sender, text, phonebook), stored as one
    /// bulk item and handed to the bulk worker, whatever the phonebook's size. What cannot be
    /// known before a contact is reached (a variable it lacks, a body it makes too long)
    /// fails that contact's record, with the reason.
    pub(super) async fn send_to_phonebook(
        &self,
        request: &Request,
        caller: &Caller,
        send: AcceptedSend<'_>,
        book: &Phonebook,
        mut errors: FieldErrorCollector,
    ) -> Result<Response<Body>, ApiError> {
        let variables = send.body.variables();
        if !variables.is_object() {
            errors.add("variables", "must be an object");
        }
        if let Some(text) = &send.content.text
            && let Err(RenderError::Template(message)) = Compiled::new(text, Escape::None)
        {
            let field = if send.content.template_id.is_some() {
                "template_id"
            } else {
                "body"
            };
            errors.add(field, format!("the body cannot be rendered: {message}"));
        }
        errors.finish()?;
        if book.contact_count == 0 {
            return Err(ApiError::field(
                "phonebook_id",
                "the phonebook has no contacts",
            ));
        }
        let (Some(text), Some(from)) = (send.content.text, send.from) else {
            return Err(ApiError::internal(anyhow::anyhow!(
                "a checked send lacks its text or sender"
            )));
        };
        let phonebook = PhonebookSend {
            phonebook_id: book.id.clone(),
            text,
            template_id: send.content.template_id,
            variables: variables.to_string(),
            from,
            topic: send.body.topic.clone(),
        };
        let id = RecordId::new();
        let now = chrono::Utc::now();
        let bulk = Bulk::of_phonebook(caller.org.clone(), id, phonebook, book.contact_count, now);
        self.bulks.create(&bulk).await?;
        let job = Job::SmsPhonebook {
            bulk_id: bulk.id.clone(),
            after: None,
        };
        self.queue
            .send_all(&self.bulk_queue, &[Envelope::new(caller.org.clone(), job)])
            .await
            .map_err(ApiError::internal)?;
        tracing::info!(
            bulk_id = bulk.id,
            contacts = bulk.total,
            "SMS phonebook send queued"
        );
        let event = Event::audit(
            caller,
            &http::request_id(request),
            "sms.send",
            format!("sms-bulk/{}", bulk.id),
        )
        .with_detail(json!({"phonebook_id": book.id, "contacts": bulk.total}));
        self.events.publish(vec![event]).await;
        http::json(
            202,
            &json!({
                "bulk_id": bulk.id,
                "phonebook_id": book.id,
                "count": bulk.total,
                "status": "queued",
            }),
        )
    }

    /// `GET /services/sms/bulk/{id}/`: how far a bulk has come.
    pub(super) async fn get_bulk(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let bulk = match self.bulks.get(&caller.org, BulkChannel::Sms, id).await {
            Ok(bulk) => bulk,
            Err(StoreError::NotFound) => return Err(ApiError::NotFound),
            Err(other) => return Err(other.into()),
        };
        let statuses = self.bulks.status_counts(&bulk).await?;
        http::json(200, &bulk::progress(&bulk, &statuses))
    }
}
