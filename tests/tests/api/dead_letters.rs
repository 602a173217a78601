//! Dead letters an operator can act on (issue 18): a platform superuser lists the DLQs with
//! their messages decoded and redrives one, which moves its messages back to their queue
//! (SQS's message move task; `scripts/moto_server.py` adds it to moto with SQS's rules);
//! the email then goes out. Nobody else may do either.

use serde_json::{Value, json};

use crate::helpers::{TestBundle, eventually, spawn_bundle_with};

/// Moves every message of `from` to `to` by hand: what SQS does after `maxReceiveCount`.
async fn dead_letter(app: &TestBundle, from: &str, to: &str) -> usize {
    let sqs = &app.bundle.aws.sqs;
    let received = sqs
        .receive_message()
        .queue_url(app.bundle.resource(from))
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    for message in received.messages() {
        sqs.send_message()
            .queue_url(app.bundle.resource(to))
            .message_body(message.body().unwrap())
            .send()
            .await
            .unwrap();
        sqs.delete_message()
            .queue_url(app.bundle.resource(from))
            .receipt_handle(message.receipt_handle().unwrap())
            .send()
            .await
            .unwrap();
    }
    received.messages().len()
}

fn queue<'a>(listing: &'a Value, key: &str) -> &'a Value {
    listing["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == key)
        .unwrap_or_else(|| panic!("no {key} in {listing}"))
}

#[tokio::test]
async fn a_superuser_sees_a_dead_letter_decoded_and_redrives_it_and_the_email_goes_out() {
    let app = spawn_bundle_with(|options| options.poll_queues = false).await;
    let token = app.token("acme", "admin");
    let superuser = app.token("platform", "superuser");
    let sent = app
        .post(
            "/services/email/",
            &token,
            json!({"to": "ann@example.com", "subject": "Hi", "text": "Hello"}),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    let id = sent.body["id"].as_str().unwrap().to_owned();
    assert_eq!(dead_letter(&app, "EmailSendQueue", "EmailSendDLQ").await, 1);

    app.get("/services/admin/dead-letters/", &token)
        .await
        .problem(403);
    app.call(
        "POST",
        "/services/admin/dead-letters/email-send/redrive/",
        Some(&token),
        None,
    )
    .await
    .problem(403);

    let listing = app.get("/services/admin/dead-letters/", &superuser).await;
    assert_eq!(listing.status, 200, "{}", listing.body);
    assert_eq!(listing.body["items"].as_array().unwrap().len(), 7);
    let email_send = queue(&listing.body, "email-send");
    assert_eq!(email_send["depth"], 1);
    let letter = &email_send["messages"][0];
    assert_eq!(letter["kind"], "email.send");
    assert_eq!(letter["organization"], "acme");
    assert_eq!(letter["job"]["ids"], json!([id]));
    assert!(letter["sent_at"].is_string() && letter["receive_count"].is_number());
    assert_eq!(queue(&listing.body, "sms-send")["depth"], 0);
    // Looking did not take the message off the queue.
    assert_eq!(app.queue_depth("EmailSendDLQ").await, 1);

    let missing = app
        .call(
            "POST",
            "/services/admin/dead-letters/nowhere/redrive/",
            Some(&superuser),
            None,
        )
        .await;
    missing.problem(404);
    let redrive = app
        .call(
            "POST",
            "/services/admin/dead-letters/email-send/redrive/",
            Some(&superuser),
            None,
        )
        .await;
    assert_eq!(redrive.status, 202, "{}", redrive.body);
    assert!(redrive.body["task"].as_str().is_some_and(|t| !t.is_empty()));

    // Every queue can be redriven (an empty one moves nothing).
    for key in [
        "events",
        "email-bulk",
        "report-generate",
        "report-export",
        "sms-send",
        "sms-bulk",
    ] {
        let path = format!("/services/admin/dead-letters/{key}/redrive/");
        let reply = app.call("POST", &path, Some(&superuser), None).await;
        assert_eq!(reply.status, 202, "{key}: {}", reply.body);
    }

    // The move is asynchronous, as on SQS.
    eventually(10, "the message back on the email send queue", || async {
        (app.queue_depth("EmailSendDLQ").await == 0 && app.queue_depth("EmailSendQueue").await == 1)
            .then_some(())
    })
    .await;
    let worker = app.poller("email-worker");
    while app.queue_depth("EmailSendQueue").await > 0 {
        worker.poll_once().await.unwrap();
    }
    let email = app.get(&format!("/services/email/{id}/"), &token).await;
    assert!(
        matches!(email.body["status"].as_str(), Some("sent" | "delivered")),
        "{}",
        email.body
    );
    assert_eq!(app.sandbox().calls(), 1);

    // The redrive is in the platform's audit trail.
    let recorder = app.poller("event-recorder");
    while recorder.poll_once().await.unwrap() > 0 {}
    let audit = app
        .get(
            "/services/audit-logs/?action=dead_letters.redrive",
            &superuser,
        )
        .await;
    let entries = audit.body["items"].as_array().unwrap();
    assert_eq!(entries.len(), 7, "{}", audit.body);
    assert!(
        entries
            .iter()
            .any(|e| e["resource"] == "dead-letters/email-send")
    );
    assert_eq!(entries[0]["organization"], "platform");
}
