//! Webhook abuse across the three providers (issue 9), on top of each channel's own
//! signature, staleness, size and replay tests: a request in another content type or a
//! correctly signed body that is not the provider's format is refused with a 4xx problem
//! before anything is read or written, and a batch that carries the same event twice, posted
//! twice, changes its email once. A webhook whose writes keep losing their race answers a
//! retryable 503, never a 409 the provider would take as final (SPEC §6).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use lambda_http::Body;
use serde_json::{Value, json};
use shared::aws::{AwsClients, LazyClient};
use shared::config::Env;

use crate::helpers::{Reply, TestBundle, aws_endpoint, eventually, spawn_bundle};

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

/// A DynamoDB endpoint in front of moto on which every conditional write loses its race
/// (`ConditionalCheckFailedException`, as when another writer always gets there first);
/// everything else is moto's answer. Returns its URL.
fn contended_dynamodb() -> String {
    let upstream = aws_endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let upstream = upstream.clone();
            std::thread::spawn(move || serve_contended(client, &upstream));
        }
    });
    url
}

fn header_of<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// One HTTP/1.1 message: the start line and headers, then a `content-length` body.
fn read_message(reader: &mut impl BufRead) -> Option<(Vec<String>, Vec<u8>)> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let length = header_of(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn serve_contended(client: TcpStream, upstream: &str) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut client = client;
    while let Some((head, body)) = read_message(&mut reader) {
        let target = header_of(&head, "x-amz-target").unwrap_or_default();
        let conditional = String::from_utf8_lossy(&body).contains("\"ConditionExpression\"");
        let (status, reply) = if conditional
            && (target.ends_with(".PutItem") || target.ends_with(".UpdateItem"))
        {
            (
                "HTTP/1.1 400 Bad Request".to_owned(),
                br#"{"__type":"com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException","message":"The conditional request failed"}"#.to_vec(),
            )
        } else {
            let mut moto = TcpStream::connect(upstream).unwrap();
            let mut request = format!("{}\r\n", head[0]);
            for line in head.iter().skip(1) {
                if !line.to_ascii_lowercase().starts_with("connection:") {
                    request.push_str(&format!("{line}\r\n"));
                }
            }
            request.push_str("connection: close\r\n\r\n");
            moto.write_all(request.as_bytes()).unwrap();
            moto.write_all(&body).unwrap();
            // Moto answers with a content-length, then closes (we asked it to).
            let (head, body) = read_message(&mut BufReader::new(moto)).unwrap();
            (head[0].clone(), body)
        };
        let written = write!(
            client,
            "{status}\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        )
        .and_then(|()| client.write_all(&reply));
        if written.is_err() {
            return;
        }
    }
}

/// AWS clients for `app`'s resources whose DynamoDB is [`contended_dynamodb`].
async fn contended_aws() -> AwsClients {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    let mut aws = AwsClients::load(&Env::from_map(
        [
            ("AWS_ENDPOINT_URL", aws_endpoint()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into(),
    ))
    .await;
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(contended_dynamodb())
        .build();
    aws.dynamodb = LazyClient::ready(aws_sdk_dynamodb::Client::from_conf(config));
    aws
}

fn webhook_request(
    headers: &[(&str, String)],
    content_type: &str,
    body: Vec<u8>,
) -> lambda_http::Request {
    let mut request = lambda_http::http::Request::builder()
        .method("POST")
        .uri("https://hooks.herald.test/");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request
        .header("content-type", content_type)
        .body(Body::Binary(body))
        .unwrap()
}

fn problem_of(response: &lambda_http::Response<Body>) -> Value {
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    match response.body() {
        Body::Text(text) => serde_json::from_str(text).unwrap(),
        other => panic!("unexpected body {other:?}"),
    }
}

#[tokio::test]
async fn webhooks_answer_contention_with_a_retryable_503_not_a_409() {
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
    app.email_reaches(&token, &id, "delivered", 30).await;
    let aws = contended_aws().await;

    // SendGrid: the email's update keeps failing its condition.
    let signer = shared::providers::sendgrid::WebhookSigner::generate();
    let sendgrid = functions::sendgrid_webhook::SendGridWebhook::new(
        &aws,
        &Env::from_map(
            [
                ("TABLE_NAME", app.table().to_owned()),
                ("SENDGRID_WEBHOOK_PUBLIC_KEY", signer.public_key_base64()),
            ]
            .map(|(k, v)| (k.to_owned(), v))
            .into(),
        ),
    )
    .unwrap();
    let batch = serde_json::to_vec(&json!([{
        "email": "ann@example.com", "timestamp": chrono::Utc::now().timestamp(),
        "event": "click", "url": "https://acme.test/offer", "sg_event_id": "click-contended",
        "sg_message_id": "m.1", "org_id": "acme", "email_id": id,
    }]))
    .unwrap();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let response = sendgrid
        .handle(webhook_request(
            &[
                ("x-twilio-email-event-webhook-timestamp", timestamp.clone()),
                (
                    "x-twilio-email-event-webhook-signature",
                    signer.sign(&timestamp, &batch),
                ),
            ],
            "application/json",
            batch,
        ))
        .await;
    assert_eq!(response.status(), 503, "{:?}", response.body());
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(problem_of(&response)["type"], "/problems/unavailable");

    // Stripe: the customer record's save keeps failing its condition.
    let secret = "whsec_contended";
    let stripe = functions::stripe_webhook::StripeWebhook::new(
        &aws,
        &Env::from_map(
            [
                ("TABLE_NAME", app.table().to_owned()),
                ("STRIPE_WEBHOOK_SECRETS", secret.to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v))
            .into(),
        ),
    )
    .unwrap();
    let now = chrono::Utc::now().timestamp();
    let event = serde_json::to_vec(&json!({
        "id": "evt_contended", "object": "event", "type": "customer.updated", "created": now,
        "data": {"object": {"id": "cus_contended", "object": "customer", "created": now,
            "email": "ann@example.com", "metadata": {"org_id": "acme"}}},
    }))
    .unwrap();
    let response = stripe
        .handle(webhook_request(
            &[(
                "stripe-signature",
                shared::providers::stripe::sign(secret, now, &event),
            )],
            "application/json",
            event,
        ))
        .await;
    assert_eq!(response.status(), 503, "{:?}", response.body());
    assert_eq!(problem_of(&response)["type"], "/problems/unavailable");

    // Nothing was applied: the click is not on the email, and no customer was recorded.
    let email = app.get(&format!("/services/email/{id}"), &token).await.body;
    assert!(
        !email["engagement"].to_string().contains("clicked"),
        "{email}"
    );
    let customers = app.get("/services/payments/customers", &token).await;
    assert_eq!(customers.body["items"], json!([]));
}
