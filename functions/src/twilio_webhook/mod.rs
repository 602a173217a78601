//! The Twilio webhook (function URL, SPEC §6): message status callbacks and inbound
//! messages, authenticated by `X-Twilio-Signature` alone.
//!
//! The signature is checked against the configured public URL (`TWILIO_WEBHOOK_URL`), never
//! one rebuilt from request headers, over the raw form body (base64-decoded when the event
//! says so), in constant time, before anything is parsed or written.
//!
//! - A status callback (`MessageSid`, `MessageStatus`, `ErrorCode`) moves the record forward
//!   only, once per SID and status (repeats are acknowledged and ignored).
//! - An inbound message (`From`, `To`, `Body`, `MessageSid`) is kept as a conversation entry
//!   of the organization that owns it: the one `TWILIO_NUMBER_ORGS` assigns the `To` number
//!   to (`+15550100=acme,+15550101=globex`, for dedicated numbers), else the organization
//!   that last sent an SMS to the `From` number (a shared sender). `STOP`-family keywords opt
//!   the sender out for that organization, `START`/`UNSTOP`/`YES` back in.
//!
//! Every answer is TwiML: empty (`<Response/>`, Twilio's own Advanced Opt-Out answers STOP
//! and START), except for `HELP`/`INFO`, answered with the organization's own help text
//! (`PUT /services/consent/sms-help/`), else `SMS_HELP_TEXT` (`{organization}` replaced). STOP and START are also changes of the consent ledger (issue 19).

use std::collections::HashMap;

use lambda_http::{Body, Request, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::domain::OrgId;
use shared::events::{Event, EventKind, EventPublisher};
use shared::http::{self, ApiError, MAX_BODY_BYTES};
use shared::metrics;
use shared::providers::twilio::{SIGNATURE_HEADER, callback, parse_number_orgs, verify};
use shared::store::{ConsentStore, SmsStore, StatusApplied, StoreError, TwilioReport};

use crate::runtime::{BoxFuture, HttpFunction};

mod inbound;

pub const TWIML_EMPTY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";

pub struct TwilioWebhook {
    sms: SmsStore,
    consent: ConsentStore,
    /// The deployment's HELP answer (`SMS_HELP_TEXT`), for organizations without their own.
    help_text: Option<String>,
    events: EventPublisher,
    /// Read on first use; `None` when not configured.
    auth_token: OnFirstUse<Option<SecretString>>,
    public_url: Option<String>,
    number_orgs: HashMap<String, OrgId>,
}

impl HttpFunction for TwilioWebhook {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

fn twiml() -> Response<Body> {
    twiml_of(TWIML_EMPTY.to_owned())
}

/// TwiML that replies `text` to the sender.
fn twiml_message(text: &str) -> Response<Body> {
    let escaped = http::escape_markup(text);
    twiml_of(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>{escaped}</Message></Response>"
    ))
}

fn twiml_of(text: String) -> Response<Body> {
    let mut response = Response::new(Body::Text(text));
    response.headers_mut().insert(
        ::http::header::CONTENT_TYPE,
        ::http::HeaderValue::from_static("application/xml"),
    );
    response
}

impl TwilioWebhook {
    /// No I/O: the auth token is read by the first request.
    ///
    /// # Errors
    /// When `TABLE_NAME` is missing or the number map is malformed.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        Ok(Self {
            sms: SmsStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            consent: ConsentStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            help_text: env.optional("SMS_HELP_TEXT"),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            auth_token: env.on_first_use(&aws.secrets, |env, secrets| async move {
                Ok(env.secret("TWILIO_AUTH_TOKEN", &secrets).await?)
            }),
            public_url: env.optional("TWILIO_WEBHOOK_URL"),
            number_orgs: parse_number_orgs(
                &env.optional("TWILIO_NUMBER_ORGS").unwrap_or_default(),
            )?,
        })
    }

    /// Contention that outlasts the store's retries answers 503, never 409, so the
    /// provider retries (SPEC §6; see [`ApiError::retryable`]).
    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond_webhook("twilio-webhook", "twilio", &request, || {
            self.receive(&request)
        })
        .await
    }

    async fn receive(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        if request.method() != lambda_http::http::Method::POST {
            return Err(ApiError::MethodNotAllowed);
        }
        http::require_content_type(request, "application/x-www-form-urlencoded")?;
        let body = http::body_bytes(request);
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge(
                "webhook bodies are limited to 1 MiB".to_owned(),
            ));
        }
        let token = self.auth_token.get().await.map_err(ApiError::internal)?;
        let (Some(token), Some(url)) = (token, &self.public_url) else {
            // Without the token and URL nothing can be verified: refuse rather than trust.
            return Err(ApiError::ProviderNotConfigured(
                "the Twilio webhook (TWILIO_AUTH_TOKEN and TWILIO_WEBHOOK_URL)",
            ));
        };
        let params: Vec<(String, String)> = url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let signature = request
            .headers()
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // Twilio signs the URL it posted to, query string included: for a status callback
        // that is the per-message URL the worker gave it (`callback`).
        let query = request.uri().query();
        let signed = callback::signed_url(url, query);
        if !verify(token.expose_secret(), &signed, &params, signature) {
            tracing::warn!("rejected Twilio webhook: bad or missing signature");
            return Err(ApiError::Forbidden("invalid X-Twilio-Signature".to_owned()));
        }
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let Some(sid) = param("MessageSid").or_else(|| param("SmsSid")) else {
            return Err(ApiError::field("MessageSid", "is required"));
        };
        metrics::webhook_events("twilio", "received", 1);
        if let Some(status) = param("MessageStatus").or_else(|| param("SmsStatus")) {
            if matches!(status, "received" | "receiving") {
                return self.inbound(sid, &param).await;
            }
            let error_code = param("ErrorCode").and_then(|c| c.parse().ok());
            let named = callback::record_of(query);
            return self.status(sid, named, status, error_code).await;
        }
        self.inbound(sid, &param).await
    }

    /// Applies a status callback to the record its signed callback URL names (`named`):
    /// every send gives Twilio a `StatusCallback` naming its record, and Twilio posts each
    /// message's callbacks to that URL
    /// (<https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource>,
    /// `StatusCallback`), so no SID → record link is kept. A callback that overtakes the
    /// worker's write is applied, not dropped (Twilio does not retry an answered callback).
    async fn status(
        &self,
        sid: &str,
        named: Option<(OrgId, String)>,
        status: &str,
        error_code: Option<i64>,
    ) -> Result<Response<Body>, ApiError> {
        let Some((org, id)) = named else {
            tracing::warn!(sid, status, "status callback for an unknown message");
            metrics::webhook_events("twilio", "ignored", 1);
            return Ok(twiml());
        };
        let key = format!("callback:{status}:{}", error_code.unwrap_or(0));
        let applied = match self
            .sms
            .apply_status(
                &org,
                &id,
                &TwilioReport {
                    status,
                    sid: Some(sid),
                    error_code,
                },
                &key,
                chrono::Utc::now(),
            )
            .await
        {
            Ok(applied) => applied,
            Err(StoreError::NotFound) => {
                metrics::webhook_events("twilio", "ignored", 1); // deleted since
                return Ok(twiml());
            }
            Err(other) => return Err(other.into()),
        };
        if applied == StatusApplied::Duplicate {
            tracing::info!(sid, status, "repeated status callback ignored");
            metrics::webhook_events("twilio", "duplicate", 1);
            return Ok(twiml());
        }
        if applied == StatusApplied::Unchanged {
            metrics::webhook_events("twilio", "unchanged", 1);
        }
        let mut events = vec![
            Event {
                resource: Some(format!("sms/{id}")),
                channel: Some("sms".to_owned()),
                status: Some(status.to_owned()),
                ..Event::new(&org, EventKind::Webhook, "sms.status")
            }
            .with_detail(json!({"sid": sid, "error_code": error_code})),
        ];
        if let StatusApplied::Recorded(Some(new_status)) = applied {
            events.push(Event::delivery(
                &org,
                "sms",
                format!("sms/{id}"),
                new_status.as_str(),
            ));
        }
        self.events.publish(events).await;
        tracing::info!(sid, status, "status callback applied");
        metrics::webhook_events("twilio", "applied", 1);
        Ok(twiml())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The sample events are signed with token `sample-auth-token` for the function URL
    /// `https://abcdefg.lambda-url.eu-west-1.on.aws/` (base64 bodies, as function URLs send).
    #[test]
    fn sample_events_carry_valid_signatures() {
        for name in ["inbound-stop", "status-delivered"] {
            let path = format!(
                "{}/../events/twilio-webhook/{name}.json",
                env!("CARGO_MANIFEST_DIR")
            );
            let request =
                lambda_http::request::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let params: Vec<(String, String)> =
                url::form_urlencoded::parse(http::body_bytes(&request))
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
            let signature = request.headers()[SIGNATURE_HEADER].to_str().unwrap();
            let url = "https://abcdefg.lambda-url.eu-west-1.on.aws/";
            assert!(
                verify("sample-auth-token", url, &params, signature),
                "{name}"
            );
            assert!(!verify("another-token", url, &params, signature), "{name}");
        }
    }
}
