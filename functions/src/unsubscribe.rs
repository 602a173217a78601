//! One-click unsubscribe (issue 19; RFC 8058), a public function URL: `/{token}`.
//!
//! - `POST` with the body `List-Unsubscribe=One-Click` is what a mailbox provider sends when
//!   its user presses "unsubscribe" (RFC 8058 §3.1: form-encoded or multipart, no cookies,
//!   no authentication). The opt-out is recorded at once — Gmail and Yahoo ask for two days
//!   at most — and answered 200; nothing redirects.
//! - `GET` is a person following the link: a small page that says what the link does and
//!   offers the buttons. A GET never changes anything, since link scanners fetch every URL
//!   of a message.
//! - The page's own forms `POST` `topic` and `state` to change one topic, or everything
//!   (`all`), in or out: the undo and the other topics.
//! - `POST /inbound` is SendGrid's Inbound Parse posting an email sent to the link's
//!   `mailto:` (`UNSUBSCRIBE_MAILBOX`, what clients without one-click use): its subject
//!   carries the token, and it opts out as the one-click POST does.
//!
//! The token names organization, address, topic and message (`shared::consent`); a token
//! that does not verify answers the same 400 whatever is wrong with it, and a valid one
//! answers the same whether or not the address ever received anything, so the link reveals
//! nothing its holder does not know. Each link may make `shared::store::LINK_CHANGES_PER_MINUTE` changes
//! a minute; refused tokens cost no storage at all.

use std::collections::BTreeMap;

use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};

use shared::aws::AwsClients;
use shared::config::{Env, OnFirstUse};
use shared::consent::{
    ALL_TOPICS, Channel, ConsentSource, ConsentState, TokenError, UnsubscribeClaim, UnsubscribeKeys,
};
use shared::events::{Event, EventKind, EventPublisher};
use shared::http::{self, ApiError};
use shared::store::{ConsentChange, ConsentStore, Topic};

use crate::runtime::{BoxFuture, HttpFunction};

/// The path SendGrid's Inbound Parse posts the emails to the `mailto:` address to (tokens
/// start with `v1.`, so no token is this path).
pub const INBOUND_PATH: &str = "inbound";

/// Bodies longer than this are not an unsubscribe (the one-click body is 26 bytes).
const MAX_FORM_BYTES: usize = 4096;

pub struct Unsubscribe {
    store: ConsentStore,
    events: EventPublisher,
    keys: OnFirstUse<Option<UnsubscribeKeys>>,
}

impl HttpFunction for Unsubscribe {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

impl Unsubscribe {
    /// # Errors
    /// When `TABLE_NAME` is missing.
    pub fn new(aws: &AwsClients, env: &Env) -> anyhow::Result<Self> {
        Ok(Self {
            store: ConsentStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            keys: UnsubscribeKeys::on_first_use(aws, env),
        })
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond("unsubscribe", &request, || self.answer(&request)).await
    }

    async fn answer(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        let path = request.uri().path().trim_matches('/');
        if path == INBOUND_PATH {
            return self.mail_reply(request).await;
        }
        let claim = match self.verify(path).await? {
            Ok(claim) if claim.channel == Channel::Email => claim,
            Ok(_) | Err(_) => return Ok(page(StatusCode::BAD_REQUEST, INVALID_LINK)),
        };
        match *request.method() {
            Method::GET | Method::HEAD => self.show(&claim, None).await,
            Method::POST => {
                let body = http::body_bytes(request);
                if body.len() > MAX_FORM_BYTES {
                    return Ok(page(StatusCode::BAD_REQUEST, INVALID_LINK));
                }
                match requested_change(content_type(request), body) {
                    // A mailbox provider's POST: its answer is not shown to anyone.
                    Some(Change::OneClick) => {
                        let topic = claim.topic.clone();
                        self.change(&claim, topic, ConsentState::OptedOut, Via::Link)
                            .await?;
                        Ok(page(StatusCode::OK, UNSUBSCRIBED))
                    }
                    Some(Change::FromPage(topic, state)) => {
                        self.change(&claim, topic.clone(), state, Via::Link).await?;
                        self.show(&claim, Some((&topic, state))).await
                    }
                    None => Ok(page(StatusCode::BAD_REQUEST, INVALID_LINK)),
                }
            }
            _ => Err(ApiError::MethodNotAllowed),
        }
    }

    /// An email to the `List-Unsubscribe` `mailto:` address, as SendGrid's Inbound Parse
    /// posts it: `multipart/form-data` with the message's `from`, `to` and `subject`, the
    /// subject carrying the token the `mailto:` URI put there. Inbound Parse posts again
    /// when the answer is a 5xx, for up to three days, and drops the email on any other
    /// status (Twilio SendGrid docs, "Inbound Email Parse Webhook"): an email without a
    /// valid token is logged and answered 200 — nobody reads the answer, and a retry would
    /// not make the token valid — while a storage failure answers 5xx, to be posted again.
    async fn mail_reply(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        if request.method() != Method::POST {
            return Err(ApiError::MethodNotAllowed);
        }
        let Some(fields) = http::multipart_fields(content_type(request), http::body_bytes(request))
        else {
            return Err(ApiError::UnsupportedMediaType(
                "Inbound Parse posts multipart/form-data".to_owned(),
            ));
        };
        let subject = fields.get("subject").map_or("", String::as_str);
        let mut claim = None;
        for word in subject.split_whitespace() {
            if let Ok(verified) = self.verify(word).await?
                && verified.channel == Channel::Email
            {
                claim = Some(verified);
                break;
            }
        }
        let Some(claim) = claim else {
            tracing::info!("an email to the unsubscribe address without a valid token: ignored");
            return Ok(page(StatusCode::OK, INVALID_LINK));
        };
        let from = fields.get("from").cloned().unwrap_or_default();
        let topic = claim.topic.clone();
        match self
            .change(
                &claim,
                topic,
                ConsentState::OptedOut,
                Via::MailReply { from },
            )
            .await
        {
            // The same link's opt-out already went through this minute.
            Err(ApiError::TooManyRequests(_)) => {
                tracing::info!("an unsubscribe email past the link's rate: ignored");
                Ok(page(StatusCode::OK, UNSUBSCRIBED))
            }
            Err(error) => Err(error),
            Ok(()) => Ok(page(StatusCode::OK, UNSUBSCRIBED)),
        }
    }

    /// Verifies a token. A key this execution environment has not seen (the secret got a
    /// newer one since it started) makes it read the secret again, once; a removed key
    /// stops verifying when the environment next reads the secret (a cold start, or that
    /// re-read).
    async fn verify(&self, token: &str) -> Result<Result<UnsubscribeClaim, TokenError>, ApiError> {
        let keys = |value: Option<&UnsubscribeKeys>| {
            value.cloned().ok_or(ApiError::ProviderNotConfigured(
                "the unsubscribe signing key",
            ))
        };
        let held = keys(self.keys.get().await.map_err(ApiError::internal)?.as_ref())?;
        match held.verify(token) {
            Err(TokenError::UnknownKey) => {
                self.keys.rebuild_once();
                let fresh = keys(self.keys.get().await.map_err(ApiError::internal)?.as_ref())?;
                Ok(fresh.verify(token))
            }
            verified => Ok(verified),
        }
    }

    /// Records the change, unless this link made too many this minute (then 429).
    async fn change(
        &self,
        claim: &UnsubscribeClaim,
        topic: String,
        state: ConsentState,
        via: Via,
    ) -> Result<(), ApiError> {
        let now = chrono::Utc::now();
        if topic != ALL_TOPICS && self.store.topic(&claim.org, &topic).await.is_err() {
            // A topic deleted since the mail went out: the opt-out still counts for it.
            tracing::info!(
                topic,
                "unsubscribe for a topic the organization no longer has"
            );
        }
        if !self
            .store
            .allow_link_change(&claim.org, claim.channel, &claim.subject, now)
            .await?
        {
            return Err(ApiError::TooManyRequests(
                "too many changes through this link in a minute".to_owned(),
            ));
        }
        let mut evidence = BTreeMap::from([("message_id".to_owned(), claim.message_id.clone())]);
        let (source, actor) = match via {
            Via::Link => (ConsentSource::OneClick, "one-click"),
            Via::MailReply { from } => {
                evidence.insert("from".to_owned(), from);
                (ConsentSource::MailReply, "mail-reply")
            }
        };
        let change = ConsentChange {
            channel: claim.channel,
            subject: claim.subject.clone(),
            topic: topic.clone(),
            state,
            source,
            actor: actor.to_owned(),
            evidence: evidence.clone(),
            at: now,
        };
        self.store.record(&claim.org, &change, None).await?;
        let event = Event {
            actor: Some(actor.to_owned()),
            resource: Some(format!(
                "consent/{}/{}/{topic}",
                claim.channel.as_str(),
                claim.subject
            )),
            ..Event::new(&claim.org, EventKind::Audit, "consent.record")
        }
        .with_detail(serde_json::json!({
            "state": state,
            "source": source,
            "evidence": evidence,
        }));
        self.events.publish(vec![event]).await;
        tracing::info!(
            org = claim.org.as_str(),
            topic,
            ?state,
            actor,
            "consent changed by link"
        );
        Ok(())
    }

    /// The page: what the link's topic is and where the address stands, with a button for
    /// each change it can make.
    async fn show(
        &self,
        claim: &UnsubscribeClaim,
        changed: Option<(&str, ConsentState)>,
    ) -> Result<Response<Body>, ApiError> {
        let topics = self.store.topics(&claim.org).await?;
        let states = self
            .store
            .states(&claim.org, claim.channel, &claim.subject)
            .await?;
        let state_of = |key: &str, default_in: bool| {
            states
                .iter()
                .find(|c| c.topic == key)
                .map_or(default_in, |c| c.state == ConsentState::OptedIn)
        };
        let everything_out = !state_of(ALL_TOPICS, true);
        let mut html = String::from(PAGE_HEAD);
        if let Some((topic, state)) = changed {
            let name = topic_name(&topics, topic);
            html.push_str(&match state {
                ConsentState::OptedOut => format!(
                    "<p class=done>You are unsubscribed from {}.</p>",
                    http::escape_markup(&name)
                ),
                ConsentState::OptedIn => format!(
                    "<p class=done>You are subscribed to {} again.</p>",
                    http::escape_markup(&name)
                ),
            });
        }
        let link_topic = topic_name(&topics, &claim.topic);
        html.push_str(&format!(
            "<p>This link manages what <b>{}</b> receives. It came with a message about {}.</p><ul>",
            http::escape_markup(&claim.subject),
            http::escape_markup(&link_topic)
        ));
        for topic in topics
            .iter()
            .filter(|t| t.channels.contains(&claim.channel))
        {
            let subscribed = state_of(&topic.key, topic.default_opted_in);
            html.push_str(&topic_row(&topic.key, &topic.name, subscribed));
        }
        html.push_str(&topic_row(
            ALL_TOPICS,
            "everything from this sender (except messages about your account and orders)",
            !everything_out,
        ));
        html.push_str("</ul></main></body></html>");
        Ok(page(StatusCode::OK, &html))
    }
}

/// How the link was used.
enum Via {
    /// Its URL: RFC 8058's POST, or the page's forms.
    Link,
    /// An email to its `mailto:` address, from `from`.
    MailReply { from: String },
}

fn content_type(request: &Request) -> &str {
    request
        .headers()
        .get(lambda_http::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// What a POST asks for.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// RFC 8058's body: out of the link's own topic.
    OneClick,
    /// One of the page's forms: a topic (or `all`) in or out.
    FromPage(String, ConsentState),
}

fn requested_change(content_type: &str, body: &[u8]) -> Option<Change> {
    // RFC 8058 §3.1: the one-click POST is `application/x-www-form-urlencoded` or
    // `multipart/form-data`; the page's own forms are the former.
    let form: BTreeMap<String, String> = match http::multipart_fields(content_type, body) {
        Some(fields) => fields,
        None => url::form_urlencoded::parse(body).into_owned().collect(),
    };
    if form.get("List-Unsubscribe").map(String::as_str) == Some("One-Click") {
        return Some(Change::OneClick);
    }
    let state = match form.get("state").map(String::as_str) {
        Some("opted_out") => ConsentState::OptedOut,
        Some("opted_in") => ConsentState::OptedIn,
        _ => return None,
    };
    let topic = form.get("topic")?;
    (topic == ALL_TOPICS || shared::consent::valid_topic_key(topic))
        .then(|| Change::FromPage(topic.clone(), state))
}

fn topic_name(topics: &[Topic], key: &str) -> String {
    if key == ALL_TOPICS {
        return "everything from this sender".to_owned();
    }
    topics
        .iter()
        .find(|t| t.key == key)
        .map_or_else(|| key.to_owned(), |t| t.name.clone())
}

fn topic_row(key: &str, name: &str, subscribed: bool) -> String {
    let (label, state, button) = if subscribed {
        ("subscribed", "opted_out", "Unsubscribe")
    } else {
        ("unsubscribed", "opted_in", "Subscribe again")
    };
    format!(
        "<li><form method=post><input type=hidden name=topic value=\"{}\">\
         <input type=hidden name=state value={state}>{} — {label} \
         <button type=submit>{button}</button></form></li>",
        http::escape_markup(key),
        http::escape_markup(name)
    )
}

const INVALID_LINK: &str = "<!doctype html><title>Unsubscribe</title><main><p>This link is not valid. If you copied it, copy the whole link from the message.</p></main>";
const UNSUBSCRIBED: &str =
    "<!doctype html><title>Unsubscribe</title><main><p>You are unsubscribed.</p></main>";
const PAGE_HEAD: &str = "<!doctype html><html lang=en><head><meta charset=utf-8>\
<meta name=viewport content=\"width=device-width,initial-scale=1\"><title>Email preferences</title>\
<style>body{font:16px system-ui,sans-serif;margin:2rem auto;max-width:40rem;padding:0 1rem}\
li{margin:.5rem 0}.done{background:#e8f5e9;padding:.5rem}</style></head><body><main>\
<h1>Email preferences</h1>";

/// A page: no cookies, no scripts, nothing cached or referred (the token is in the URL).
fn page(status: StatusCode, html: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .header(
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        )
        .header("cache-control", "no-store")
        .header("referrer-policy", "no-referrer")
        .body(Body::Text(html.to_owned()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_click_body_and_the_page_forms_are_told_apart() {
        let form = "application/x-www-form-urlencoded";
        assert_eq!(
            requested_change(form, b"List-Unsubscribe=One-Click"),
            Some(Change::OneClick)
        );
        let multipart = b"--b\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--b--\r\n";
        assert_eq!(
            requested_change("multipart/form-data; boundary=b", multipart),
            Some(Change::OneClick)
        );
        assert_eq!(
            requested_change(form, b"topic=all&state=opted_in"),
            Some(Change::FromPage("all".to_owned(), ConsentState::OptedIn))
        );
        assert_eq!(requested_change(form, b""), None);
        assert_eq!(requested_change(form, b"List-Unsubscribe=Yes"), None);
        assert_eq!(
            requested_change(form, b"topic=Bad%20Key&state=opted_in"),
            None
        );
    }
}
