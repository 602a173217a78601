//! Webhook abuse across the three providers (issue 9), on top of each channel's own
//! signature, staleness, size and replay tests: a request in another content type or a
//! correctly signed body that is not the provider's format is refused with a 4xx problem
//! before anything is read or written, and a batch that carries the same event twice, posted
//! twice, changes its email once.

use serde_json::{Value, json};

use crate::helpers::{Reply, TestBundle, eventually, spawn_bundle};

struct Hook {
    provider: &'static str,
    path: &'static str,
    content_type: &'static str,
}

const HOOKS: [Hook; 3] = [
    Hook {
        provider: "sendgrid",
        path: "/hooks/sendgrid-webhook",
        content_type: "application/json",
    },
    Hook {
        provider: "twilio",
        path: "/hooks/twilio-webhook/",
        content_type: "application/x-www-form-urlencoded",
    },
    Hook {
        provider: "stripe",
        path: "/hooks/stripe-webhook",
        content_type: "application/json",
    },
];

/// Posts `body` to a hook as `content_type`, signed the way its provider signs.
async fn post_signed(app: &TestBundle, hook: &Hook, content_type: &str, body: &[u8]) -> Reply {
    let url = app.bundle.url(hook.path);
    let now = chrono::Utc::now().timestamp();
    let mut request = app
        .http
        .post(&url)
        .header("content-type", content_type)
        .body(body.to_vec());
    request = match hook.provider {
        "sendgrid" => {
            let timestamp = now.to_string();
            let sandbox = app.bundle.sendgrid.as_deref().unwrap();
            request
                .header("x-twilio-email-event-webhook-timestamp", &timestamp)
                .header(
                    "x-twilio-email-event-webhook-signature",
                    sandbox.sign(&timestamp, body),
                )
        }
        "twilio" => {
            let sandbox = app.bundle.twilio.as_deref().unwrap();
            let params: Vec<(String, String)> = url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let signature = shared::providers::twilio::sign(sandbox.auth_token(), &url, &params);
            request.header("x-twilio-signature", signature)
        }
        _ => {
            let sandbox = app.bundle.stripe.as_deref().unwrap();
            request.header("stripe-signature", sandbox.sign(body, false, now))
        }
    };
    Reply::read(request.send().await.unwrap()).await
}

#[tokio::test]
async fn wrong_content_types_and_malformed_signed_bodies_are_refused_by_every_webhook() {
    let app = spawn_bundle().await;
    let json_body = br#"[{"event":"delivered","email":"a@example.com","timestamp":1}]"#;
    let form_body = b"MessageSid=SM00000000000000000000000000000000&MessageStatus=delivered";
    for hook in &HOOKS {
        let valid_shape: &[u8] = if hook.content_type == "application/json" {
            json_body
        } else {
            form_body
        };
        for wrong in [
            "text/plain",
            "application/xml",
            "multipart/form-data; boundary=x",
        ] {
            post_signed(&app, hook, wrong, valid_shape)
                .await
                .problem(415);
        }
        // The other provider's format, correctly signed: not this provider's events.
        let (other, other_type) = if hook.content_type == "application/json" {
            (&b"not json at all {"[..], "application/json")
        } else {
            (&b"%zz=%%&\xff\xfe"[..], "application/x-www-form-urlencoded")
        };
        let reply = post_signed(&app, hook, other_type, other).await;
        assert!(
            (400..500).contains(&reply.status),
            "{}: malformed signed body answered {reply:?}",
            hook.provider
        );
        reply.problem(reply.status);
    }
    // Nothing reached the records: no email, SMS or payment exists, and no event was queued
    // for the audit trail.
    let token = app.token("acme", "admin");
    for list in ["/services/email/", "/services/sms/", "/services/payments/"] {
        let reply = app.get(list, &token).await;
        assert_eq!(reply.body["items"], json!([]), "{list}");
    }
    assert_eq!(app.queue_depth("EventsQueue").await, 0);
}

#[tokio::test]
async fn a_batch_repeating_an_event_posted_twice_changes_the_email_once() {
    let app = spawn_bundle().await;
    let token = app.token("acme", "admin");
    let reply = app
        .post(
            "/services/email/",
            &token,
            json!({"to": "ann@example.com", "subject": "Hi", "text": "Hello"}),
        )
        .await;
    let id = reply.body["id"].as_str().unwrap().to_owned();
    let before = eventually(30, "the send settled", || async {
        let email = app.get(&format!("/services/email/{id}"), &token).await.body;
        (email["status"] == "delivered" && email["sent_at"].is_string()).then_some(email)
    })
    .await;
    let click = json!({
        "email": "ann@example.com", "timestamp": chrono::Utc::now().timestamp(),
        "event": "click", "url": "https://acme.test/offer", "sg_event_id": "click-once",
        "sg_message_id": "m.1", "org_id": "acme", "email_id": id,
    });
    let batch = serde_json::to_vec(&json!([click, click])).unwrap();
    let first = post_signed(&app, &HOOKS[0], "application/json", &batch).await;
    let second = post_signed(&app, &HOOKS[0], "application/json", &batch).await;
    assert_eq!(
        (first.status, second.status),
        (200, 200),
        "{first:?} {second:?}"
    );
    assert_eq!(first.body["duplicates"], 1, "the repeat inside the batch");
    assert_eq!(second.body["duplicates"], 2, "the whole batch again");
    let after = app.get(&format!("/services/email/{id}"), &token).await.body;
    let clicks = |email: &Value| {
        email["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "click")
            .count()
    };
    assert_eq!((clicks(&before), clicks(&after)), (0, 1), "{after}");
    assert_eq!(after["engagement"], json!(["clicked"]));
}
