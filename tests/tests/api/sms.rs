//! The SMS channel end to end (issue: SMS): the API, phonebooks with CSV import, the bulk
//! and send workers on real SQS queues in moto, the Twilio sandbox speaking Twilio's wire
//! format and posting signed callbacks and inbound messages back to the webhook function,
//! opt-outs, the per-organization rate cap and the status check.

use std::collections::BTreeMap;

use aws_lambda_events::event::sqs::SqsEvent;
use serde_json::{Value, json};

use crate::helpers::{TEST_INDEX_LAG, TestBundle, eventually, spawn_bundle_with};

async fn sms_bundle() -> TestBundle {
    spawn_bundle_with(|options| {
        options.env.remove("TWILIO_ACCOUNT_SID");
    })
    .await
}

fn twilio(app: &TestBundle) -> &local::sandbox::twilio::TwilioSandbox {
    app.bundle
        .twilio
        .as_deref()
        .expect("the Twilio sandbox runs")
}

async fn send(app: &TestBundle, token: &str, body: Value) -> Value {
    let reply = app.post("/services/sms/", token, body).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body["status"], "queued");
    reply.body
}

async fn twilio_fault(app: &TestBundle, fault: Value) {
    let response = app
        .http
        .post(app.bundle.url("/sandbox/twilio/_faults"))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

/// An inbound SMS that Twilio's Advanced Opt-Out answers itself (Herald's TwiML is empty).
async fn inbound(app: &TestBundle, from: &str, body: &str) {
    assert!(app.inbound_sms(from, body).await.ends_with("<Response/>"));
}

fn timeline(sms: &Value) -> Vec<String> {
    sms["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

async fn upload_csv(app: &TestBundle, token: &str, phonebook: &str, csv: &str) -> (u16, Value) {
    let response = app
        .http
        .post(
            app.bundle
                .url(&format!("/services/phonebooks/{phonebook}/contacts/")),
        )
        .bearer_auth(token)
        .header("content-type", "text/csv")
        .body(csv.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn csv_phonebook_bulk_and_unicode_sms_reach_delivered_and_stop_suppresses() {
    let app = sms_bundle().await;
    let token = app.token("acme", "admin");

    let book = app
        .post(
            "/services/phonebooks/",
            &token,
            json!({"name": "Customers"}),
        )
        .await;
    assert_eq!(book.status, 201, "{}", book.body);
    let book_id = book.body["id"].as_str().unwrap().to_owned();
    let csv = "phone,name,city\n+14155552671,Ann,Paris\n12345,Bad,Rome\n+442079460958,Bob,London\n+14155552671,Ann twice,Oslo\n+33612345678,Chloé,Lyon\n";
    let (status, report) = upload_csv(&app, &token, &book_id, csv).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["accepted"], 3);
    assert_eq!(report["contact_count"], 3);
    let rejected = report["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{report}");
    assert_eq!(rejected[0]["row"], 3);
    assert!(rejected[0]["reason"].as_str().unwrap().contains("phone"));
    assert_eq!(rejected[1]["row"], 5);
    assert!(
        rejected[1]["reason"]
            .as_str()
            .unwrap()
            .contains("duplicate of row 2")
    );

    let page = app
        .get(
            &format!("/services/phonebooks/{book_id}/contacts/?limit=2"),
            &token,
        )
        .await;
    assert_eq!(
        page.body["items"].as_array().unwrap().len(),
        2,
        "{}",
        page.body
    );
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let rest = app
        .get(
            &format!("/services/phonebooks/{book_id}/contacts/?limit=2&cursor={cursor}"),
            &token,
        )
        .await;
    assert_eq!(
        rest.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        rest.body
    );

    // Bulk to the phonebook, rendered per contact.
    let bulk = send(
        &app,
        &token,
        json!({"phonebook_id": book_id, "body": "Hi {{name}}, see you in {{city}}"}),
    )
    .await;
    assert_eq!(bulk["count"], 3);
    assert!(
        bulk.get("ids").is_none(),
        "the worker makes the records: {bulk}"
    );
    let bulk_id = bulk["bulk_id"].as_str().unwrap();
    let progress = eventually(120, "the phonebook bulk delivered", || async {
        let progress = app
            .get(&format!("/services/sms/bulk/{bulk_id}/"), &token)
            .await;
        (progress.body["delivered"] == 3 && progress.body["state"] == "created")
            .then_some(progress.body)
    })
    .await;
    assert_eq!(progress["state"], "created", "{progress}");
    assert_eq!(
        (progress["total"].clone(), progress["created"].clone()),
        (json!(3), json!(3))
    );
    assert_eq!(progress["phonebook_id"], json!(book_id));
    let listed = app
        .get(&format!("/services/sms/?bulk_id={bulk_id}"), &token)
        .await;
    let ids: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{}", listed.body);
    for id in &ids {
        let sms = app.sms_reaches(&token, id, "delivered").await;
        assert_eq!(sms["phonebook_id"], json!(book_id));
        assert!(
            timeline(&sms).iter().any(|e| e == "twilio.delivered"),
            "{sms}"
        );
    }

    // A single Unicode SMS: UCS-2, 70 characters per single segment, 67 per part.
    let text = "Привет! Ваш заказ 1042 отправлен 📦 Спасибо, что выбрали нас. До встречи!";
    let single = send(&app, &token, json!({"to": "+14155552671", "body": text})).await;
    assert_eq!(single["encoding"], "UCS-2");
    assert_eq!(single["segments"], 2);
    let id = single["id"].as_str().unwrap().to_owned();
    let sms = app.sms_reaches(&token, &id, "delivered").await;
    assert_eq!(sms["encoding"], "UCS-2");
    assert_eq!(sms["segments"], 2);
    assert_eq!(sms["twilio_status"], "delivered");
    assert!(
        sms["provider_message_id"]
            .as_str()
            .unwrap()
            .starts_with("SM")
    );

    // What Twilio received: the documented form fields and our StatusCallback.
    let inbox = twilio(&app).inbox();
    let sent = inbox.iter().find(|m| m["body"] == text).unwrap();
    assert_eq!(sent["to"], "+14155552671");
    assert_eq!(sent["from"], local::sandbox::twilio::SANDBOX_NUMBER);
    // The webhook's URL, naming the record (a callback can overtake the SID's recording).
    assert_eq!(
        sent["status_callback"].as_str().unwrap(),
        app.bundle.url(&format!(
            "/hooks/twilio-webhook/?org=acme&sms={}",
            single["id"].as_str().unwrap()
        ))
    );
    assert!(
        inbox
            .iter()
            .any(|m| m["to"] == "+442079460958" && m["body"] == "Hi Bob, see you in London")
    );

    // STOP from Ann: the next send to her ends suppressed without calling Twilio.
    inbound(&app, "+14155552671", "Stop").await;
    let calls = twilio(&app).calls();
    let blocked = send(
        &app,
        &token,
        json!({"to": "+14155552671", "body": "One more thing"}),
    )
    .await;
    let sms = app
        .sms_reaches(&token, blocked["id"].as_str().unwrap(), "suppressed")
        .await;
    assert!(sms["provider_message_id"].is_null());
    assert_eq!(
        twilio(&app).calls(),
        calls,
        "no Twilio call for an opted-out number"
    );
    let listed = app.get("/services/sms/?status=suppressed", &token).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);

    // START opts her back in; both messages are kept as conversation entries.
    inbound(&app, "+14155552671", "START").await;
    let entries = app
        .get("/services/sms/inbound/?from=%2B14155552671", &token)
        .await;
    let entries = entries.body["items"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["body"], "START");
    assert_eq!(entries[1]["keyword"], "STOP");
    assert_eq!(entries[1]["to"], local::sandbox::twilio::SANDBOX_NUMBER);
    let again = send(
        &app,
        &token,
        json!({"to": "+14155552671", "body": "Welcome back"}),
    )
    .await;
    app.sms_reaches(&token, again["id"].as_str().unwrap(), "delivered")
        .await;
}

#[tokio::test]
async fn the_webhook_checks_signatures_and_never_moves_a_status_back() {
    let app = sms_bundle().await;
    let token = app.token("acme", "member");
    let reply = send(&app, &token, json!({"to": "+14155552671", "body": "Hello"})).await;
    let id = reply["id"].as_str().unwrap().to_owned();
    let sms = app.sms_reaches(&token, &id, "delivered").await;
    let sid = sms["provider_message_id"].as_str().unwrap().to_owned();
    // Twilio posts a message's callbacks to the `StatusCallback` it was given, which names
    // the record.
    let url = twilio(&app).inbox()[0]["status_callback"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth_token = twilio(&app).auth_token().to_owned();
    let params = |status: &str| -> Vec<(String, String)> {
        [
            ("MessageSid", sid.as_str()),
            ("MessageStatus", status),
            ("To", "+14155552671"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    };
    let post = |params: Vec<(String, String)>, signature: String| {
        let app = &app;
        let url = url.clone();
        async move {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .finish();
            let response = app
                .http
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-twilio-signature", signature)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, content_type, response.text().await.unwrap())
        }
    };
    use shared::providers::twilio::sign;

    // Unsigned, tampered, signed for another URL, signed with another token: all refused.
    let late = params("undelivered");
    let (status, _, _) = post(late.clone(), String::new()).await;
    assert_eq!(status, 403);
    let mut tampered = late.clone();
    let signature = sign(&auth_token, &url, &late);
    tampered[2].1 = "+14155550000".to_owned();
    assert_eq!(post(tampered, signature).await.0, 403);
    let other_url = sign(
        &auth_token,
        "https://attacker.example/hooks/twilio-webhook/",
        &late,
    );
    assert_eq!(post(late.clone(), other_url).await.0, 403);
    assert_eq!(
        post(late.clone(), sign("wrong-token", &url, &late)).await.0,
        403
    );

    // Correctly signed but late: the final status stays. The in-progress ones (`sent`,
    // `queued`) change nothing and are not written; the late final one is kept on the
    // timeline.
    for status in ["undelivered", "sent", "queued", "delivered"] {
        let p = params(status);
        let signature = sign(&auth_token, &url, &p);
        let (code, content_type, body) = post(p, signature).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(content_type.as_deref(), Some("application/xml"));
        assert!(body.contains("<Response/>"));
    }
    let after = app.get(&format!("/services/sms/{id}"), &token).await.body;
    assert_eq!(after["status"], "delivered", "{after}");
    assert_eq!(after["twilio_status"], "delivered");
    // The repeated `delivered` was deduplicated; the late ones are only on the timeline.
    let events = timeline(&after);
    assert_eq!(
        events.iter().filter(|e| *e == "twilio.delivered").count(),
        1,
        "{events:?}"
    );
    assert!(events.iter().any(|e| e == "twilio.undelivered"));

    // A body over 1 MiB is refused before anything else.
    let big = vec![("Body".to_owned(), "x".repeat(1024 * 1024 + 1))];
    assert_eq!(post(big, String::new()).await.0, 413);
}

#[tokio::test]
async fn transient_failures_retry_then_land_in_the_dlq_with_the_record_failed() {
    let app = sms_bundle().await;
    let token = app.token("acme", "admin");
    twilio_fault(&app, json!({"status": 503, "count": 3})).await;
    let reply = send(&app, &token, json!({"to": "+14155552671", "body": "Hello"})).await;
    let sms = app
        .sms_reaches(&token, reply["id"].as_str().unwrap(), "failed")
        .await;
    assert_eq!(
        sms["attempts"], 3,
        "one attempt per receive, max receives 3"
    );
    assert_eq!(sms["failure_kind"], "transient");
    assert!(
        sms["failure_reason"].as_str().unwrap().contains("503"),
        "{sms}"
    );
    let events = timeline(&sms);
    assert_eq!(
        events.iter().filter(|e| *e == "retry_scheduled").count(),
        2,
        "{events:?}"
    );
    eventually(30, "the job in the DLQ", || async {
        (app.queue_depth("SmsSendDLQ").await == 1).then_some(())
    })
    .await;
    assert_eq!(twilio(&app).calls(), 0, "nothing was accepted");

    // A 429 once is retried and then sent.
    twilio_fault(&app, json!({"status": 429, "count": 1})).await;
    let reply = send(&app, &token, json!({"to": "+14155552671", "body": "Again"})).await;
    let sms = app
        .sms_reaches(&token, reply["id"].as_str().unwrap(), "delivered")
        .await;
    assert_eq!(sms["attempts"], 2);
}

#[tokio::test]
async fn permanent_twilio_errors_fail_at_once() {
    let app = sms_bundle().await;
    let token = app.token("acme", "admin");
    twilio_fault(&app, json!({"status": 400, "code": 21610, "count": 1})).await;
    let reply = send(&app, &token, json!({"to": "+14155552671", "body": "Hello"})).await;
    let sms = app
        .sms_reaches(&token, reply["id"].as_str().unwrap(), "failed")
        .await;
    assert_eq!(sms["attempts"], 1);
    assert_eq!(sms["failure_kind"], "permanent");
    assert_eq!(sms["error_code"], 21610);
    assert!(!timeline(&sms).iter().any(|e| e == "retry_scheduled"));
    assert_eq!(app.queue_depth("SmsSendDLQ").await, 0);
}

#[tokio::test]
async fn a_duplicate_delivery_sends_once() {
    let app = sms_bundle().await;
    let token = app.token("acme", "admin");
    let reply = send(&app, &token, json!({"to": "+14155552671", "body": "Once"})).await;
    let id = reply["id"].as_str().unwrap().to_owned();
    app.sms_reaches(&token, &id, "delivered").await;
    // The same job delivered again (SQS is at-least-once).
    let job = json!({"v": 1, "org": "acme", "kind": "sms.send", "ids": [id]}).to_string();
    for _ in 0..2 {
        app.bundle
            .aws
            .sqs
            .send_message()
            .queue_url(app.bundle.resource("SmsSendQueue"))
            .message_body(&job)
            .send()
            .await
            .unwrap();
    }
    app.queue_empties("SmsSendQueue", 30).await;
    assert_eq!(twilio(&app).calls(), 1);
    let sms = app.get(&format!("/services/sms/{id}"), &token).await.body;
    assert_eq!(sms["attempts"], 1);
}

#[tokio::test]
async fn the_rate_cap_holds_over_every_sliding_second_across_concurrent_workers() {
    let app = spawn_bundle_with(|options| {
        options.env.remove("TWILIO_ACCOUNT_SID");
        options.poll_queues = false;
        options
            .overrides
            .insert("SMS_RATE_PER_SECOND".to_owned(), "3".to_owned());
    })
    .await;
    let token = app.token("acme", "member");
    let mut ids = Vec::new();
    for n in 0..12 {
        let reply = send(
            &app,
            &token,
            json!({"to": "+14155552671", "body": format!("Message {n}")}),
        )
        .await;
        ids.push(reply["id"].as_str().unwrap().to_owned());
    }
    app.out_of_send_jobs(&ids).await; // enqueued below in jobs of the test's own
    let worker = app.poller("sms-worker");
    let event = |ids: &[String], n: usize| -> SqsEvent {
        serde_json::from_value(json!({"Records": [{
            "messageId": format!("m{n}"),
            "receiptHandle": format!("r{n}"),
            "body": json!({"v": 1, "org": "acme", "kind": "sms.send", "ids": ids}).to_string(),
            "attributes": {"ApproximateReceiveCount": "1"},
            "messageAttributes": {},
            "eventSource": "aws:sqs",
        }]}))
        .unwrap()
    };
    // Two workers at once, six messages each.
    let (a, b) = tokio::join!(
        worker.handler.call(event(&ids[..6], 1)),
        worker.handler.call(event(&ids[6..], 2))
    );
    assert!(a.batch_item_failures.is_empty() && b.batch_item_failures.is_empty());
    assert_eq!(twilio(&app).calls(), 12);

    // No sliding second held more than three of the sends Twilio received. (A cap counted
    // per calendar second lets three through at the end of one second and three more at the
    // start of the next, a few ms apart.) Twilio receives each send a little after its
    // booked time (the worker wakes, claims the record, then calls; more under a loaded
    // test machine), so the window checked is 900 ms: the slack is that jitter.
    let mut received: Vec<i64> = twilio(&app)
        .inbox()
        .iter()
        .map(|m| m["received_at"].as_str().unwrap())
        .map(|at| chrono::DateTime::parse_from_rfc3339(at).unwrap())
        .map(|at| at.timestamp_millis())
        .collect();
    received.sort_unstable();
    for (n, at) in received.iter().enumerate().skip(3) {
        let gap = at - received[n - 3];
        assert!(
            gap >= 900,
            "sends {} and {n} were {gap} ms apart: {received:?}",
            n - 3
        );
    }
    // And the sends took about four seconds: 12 at three a second.
    assert!(received[11] - received[0] >= 2_850, "{received:?}");
}

/// Issue 15, defect 2: a record that failed transiently is set back to `queued`; when the
/// rate cap then hands the rest of the job back, that record must not be left behind.
#[tokio::test]
async fn a_rate_hand_back_keeps_records_that_failed_transiently() {
    let app = spawn_bundle_with(|options| {
        options.env.remove("TWILIO_ACCOUNT_SID");
        options.poll_queues = false;
        for (name, value) in [("SMS_RATE_PER_SECOND", "1"), ("SMS_RATE_WAIT_SECONDS", "0")] {
            options.overrides.insert(name.to_owned(), value.to_owned());
        }
    })
    .await;
    let token = app.token("acme", "member");
    let mut ids = Vec::new();
    for n in 0..5 {
        let reply = send(
            &app,
            &token,
            json!({"to": "+14155552671", "body": format!("Message {n}")}),
        )
        .await;
        ids.push(reply["id"].as_str().unwrap().to_owned());
    }
    // The API's own jobs are not the point: only the one below is run.
    app.message_bodies_in("SmsSendQueue").await;
    app.out_of_send_jobs(&ids).await;
    twilio_fault(&app, json!({"status": 503, "count": 1})).await;
    let worker = app.poller("sms-worker");
    let event: SqsEvent = serde_json::from_value(json!({"Records": [{
        "messageId": "m1",
        "receiptHandle": "r1",
        "body": json!({"v": 1, "org": "acme", "kind": "sms.send", "ids": ids}).to_string(),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
    }]}))
    .unwrap();
    let response = worker.handler.call(event).await;
    let first = app
        .get(&format!("/services/sms/{}", ids[0]), &token)
        .await
        .body;
    assert_eq!(first["status"], "queued", "the 503 set it back: {first}");

    // Either the job itself comes back (a retry) or a handed-back job names the record.
    let retried = !response.batch_item_failures.is_empty();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await; // hand-backs wait 1 s
    let handed_back = app.message_bodies_in("SmsSendQueue").await;
    assert!(
        retried || handed_back.iter().any(|body| body.contains(&ids[0])),
        "{} is queued but no job will send it (handed back: {handed_back:?})",
        ids[0]
    );
}

#[tokio::test]
async fn the_status_check_applies_statuses_whose_callbacks_were_lost() {
    let app = spawn_bundle_with(|options| {
        options.env.remove("TWILIO_ACCOUNT_SID");
        options.overrides.insert(
            "SMS_STATUS_CHECK_MIN_AGE_SECONDS".to_owned(),
            "0".to_owned(),
        );
    })
    .await;
    let token = app.token("acme", "member");
    twilio_fault(&app, json!({"webhooks": false})).await;
    let reply = send(
        &app,
        &token,
        json!({"to": "+14155552671", "body": "Lost callback"}),
    )
    .await;
    let id = reply["id"].as_str().unwrap().to_owned();
    app.sms_reaches(&token, &id, "sent").await;
    // The check reads an index, which lags writes (as on AWS); its schedule runs much later.
    tokio::time::sleep(TEST_INDEX_LAG + std::time::Duration::from_millis(200)).await;
    let result = app.fire_schedule("sms-status-check").await;
    assert_eq!(result["updated"], 1, "{result}");
    let sms = app.sms_reaches(&token, &id, "delivered").await;
    assert!(timeline(&sms).iter().any(|e| e == "twilio.delivered"));
}

#[tokio::test]
async fn balance_validation_idempotency_and_an_unconfigured_provider() {
    let app = sms_bundle().await;
    let token = app.token("acme", "member");
    let balance = app.get("/services/sms/balance/", &token).await;
    assert_eq!(balance.status, 200, "{}", balance.body);
    assert_eq!(balance.body, json!({"balance": "20.00", "currency": "USD"}));

    let bad = app
        .post(
            "/services/sms/",
            &token,
            json!({"to": "4155552671", "body": "x"}),
        )
        .await;
    assert!(bad.problem(400)["errors"]["to"].is_array());
    let bad = app
        .post(
            "/services/sms/",
            &token,
            json!({"recipients": [{"to": "+14155552671"}, {"to": "+1"}], "body": "Hi {{name}}"}),
        )
        .await;
    let errors = &bad.problem(400)["errors"];
    assert!(errors["recipients[1].to"].is_array(), "{errors}");
    assert!(errors["recipients[0].variables"].is_array(), "{errors}");
    assert!(
        app.get("/services/sms/", &token).await.body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A template send, twice with one Idempotency-Key: one record.
    let template = app
        .post(
            "/services/templates/sms/",
            &app.token("acme", "admin"),
            json!({"name": "Code", "body": "Your code is {{code}}"}),
        )
        .await;
    assert_eq!(template.status, 201, "{}", template.body);
    let body = json!({"to": "+14155552671", "template_id": template.body["id"], "variables": {"code": "4821"}});
    let mut first = None;
    for _ in 0..2 {
        let response = app
            .http
            .post(app.bundle.url("/services/sms/"))
            .bearer_auth(&token)
            .header("idempotency-key", "login-4821")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let reply: Value = response.json().await.unwrap();
        let id = reply["id"].as_str().unwrap().to_owned();
        assert_eq!(first.get_or_insert(id.clone()), &id);
    }
    let sms = app
        .sms_reaches(&token, first.as_ref().unwrap(), "delivered")
        .await;
    assert_eq!(sms["body"], "Your code is 4821");
    assert_eq!(sms["encoding"], "GSM-7");

    let off = spawn_bundle_with(|options| {
        options.env.remove("TWILIO_ACCOUNT_SID");
        options.sandbox = false;
    })
    .await;
    let token = off.token("acme", "admin");
    off.post(
        "/services/sms/",
        &token,
        json!({"to": "+14155552671", "body": "x"}),
    )
    .await
    .problem(503);
    off.get("/services/sms/balance/", &token).await.problem(503);
    assert!(
        off.get("/services/sms/", &token).await.body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn organizations_are_isolated() {
    let app = sms_bundle().await;
    let acme = app.token("acme", "admin");
    let globex = app.token("globex", "admin");
    let book = app
        .post("/services/phonebooks/", &acme, json!({"name": "Acme"}))
        .await;
    let book_id = book.body["id"].as_str().unwrap().to_owned();
    let imported = app
        .post(
            &format!("/services/phonebooks/{book_id}/contacts/"),
            &acme,
            json!([{"phone": "+14155552671", "name": "Ann"}, {"phone": "nope"}]),
        )
        .await;
    assert_eq!(imported.status, 200, "{}", imported.body);
    assert_eq!(imported.body["accepted"], 1);
    assert_eq!(imported.body["rejected"][0]["row"], 2);
    let reply = send(
        &app,
        &acme,
        json!({"to": "+14155552671", "body": "Acme only"}),
    )
    .await;
    let id = reply["id"].as_str().unwrap().to_owned();

    for path in [
        format!("/services/sms/{id}"),
        format!("/services/phonebooks/{book_id}"),
        format!("/services/phonebooks/{book_id}/contacts"),
    ] {
        app.get(&path, &globex).await.problem(404);
    }
    app.call(
        "DELETE",
        &format!("/services/sms/{id}"),
        Some(&globex),
        None,
    )
    .await
    .problem(404);
    app.call(
        "DELETE",
        &format!("/services/phonebooks/{book_id}"),
        Some(&globex),
        None,
    )
    .await
    .problem(404);
    app.post(
        &format!("/services/phonebooks/{book_id}/contacts/"),
        &globex,
        json!([{"phone": "+14155552671"}]),
    )
    .await
    .problem(404);
    let stolen = app
        .post(
            "/services/sms/",
            &globex,
            json!({"phonebook_id": book_id, "body": "Hi"}),
        )
        .await;
    assert!(stolen.problem(400)["errors"]["phonebook_id"].is_array());
    assert!(
        app.get("/services/sms/", &globex).await.body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        app.get("/services/phonebooks/", &globex).await.body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A STOP routed to acme (the last organization to text Ann) does not opt her out of globex.
    app.sms_reaches(&acme, &id, "delivered").await;
    inbound(&app, "+14155552671", "STOP").await;
    let theirs = send(
        &app,
        &globex,
        json!({"to": "+14155552671", "body": "Globex"}),
    )
    .await;
    app.sms_reaches(&globex, theirs["id"].as_str().unwrap(), "delivered")
        .await;

    // The owner can delete; then it is gone.
    assert_eq!(
        app.call("DELETE", &format!("/services/sms/{id}"), Some(&acme), None)
            .await
            .status,
        204
    );
    app.get(&format!("/services/sms/{id}"), &acme)
        .await
        .problem(404);
    assert_eq!(
        app.call(
            "DELETE",
            &format!("/services/phonebooks/{book_id}"),
            Some(&acme),
            None
        )
        .await
        .status,
        204
    );
    app.get(&format!("/services/phonebooks/{book_id}"), &acme)
        .await
        .problem(404);
}

#[tokio::test]
async fn sms_events_feed_the_audit_log_and_analytics() {
    let app = sms_bundle().await;
    let token = app.token("acme", "admin");
    let reply = send(
        &app,
        &token,
        json!({"to": "+14155552671", "body": "Counted"}),
    )
    .await;
    app.sms_reaches(&token, reply["id"].as_str().unwrap(), "delivered")
        .await;
    inbound(&app, "+14155552671", "STOP").await;

    let expected = [("delivered", 1), ("queued", 1), ("sent", 1)];
    eventually(60, "the SMS analytics series", || async {
        let reply = app
            .get("/services/analytics/?granularity=hour&channel=sms", &token)
            .await;
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for point in reply.body["series"].as_array()? {
            assert_eq!(point["channel"], "sms", "{point}");
            *counts
                .entry(point["status"].as_str()?.to_owned())
                .or_default() += point["count"].as_i64()?;
        }
        let wanted: BTreeMap<String, i64> = expected
            .iter()
            .map(|(s, n)| ((*s).to_owned(), *n))
            .collect();
        (counts == wanted).then_some(())
    })
    .await;
    for action in ["sms.send", "sms.opt_out"] {
        eventually(60, &format!("the {action} audit entry"), || async {
            let reply = app
                .get(&format!("/services/audit-logs/?action={action}"), &token)
                .await;
            (reply.body["items"].as_array()?.len() == 1).then_some(())
        })
        .await;
    }
}

/// Twilio's status callbacks can overtake its answer to the create (and the worker's write
/// of the SID), and Twilio does not retry a callback Herald answered. Each message's
/// `StatusCallback` names its record (signed with the rest of the URL), so such a callback
/// is applied rather than dropped: the SMS reaches `delivered` with no status check run.
#[tokio::test]
async fn status_callbacks_that_overtake_the_send_are_applied() {
    let app = sms_bundle().await;
    let token = app.token("acme", "admin");
    twilio_fault(&app, json!({"callbacks_first": true})).await;
    let sent = send(&app, &token, json!({"to": "+14155552671", "body": "Hi"})).await;
    let id = sent["id"].as_str().unwrap().to_owned();
    let sms = app.sms_reaches(&token, &id, "delivered").await;
    assert_eq!(sms["twilio_status"], "delivered");
    let sid = sms["provider_message_id"].as_str().unwrap();
    assert!(sid.starts_with("SM"), "{sms}");
    let posted = &twilio(&app).inbox()[0];
    assert_eq!(posted["sid"], sid);
    let callback = posted["status_callback"].as_str().unwrap();
    assert!(
        callback.ends_with(&format!("?org=acme&sms={id}")),
        "{callback}"
    );
}

/// Issue 15, defect 3: an SMS whose send job was lost after the API's 202 stays `queued`
/// until the sweep (run by the SMS status check) enqueues it again; that job sends it, once.
#[tokio::test]
async fn the_sweep_requeues_an_sms_whose_job_was_lost() {
    let app = spawn_bundle_with(|options| {
        options.env.remove("TWILIO_ACCOUNT_SID");
        options.poll_queues = false;
        options
            .overrides
            .insert("PENDING_SWEEP_AFTER_MINUTES".to_owned(), "0".to_owned());
    })
    .await;
    let token = app.token("acme", "member");
    let reply = send(
        &app,
        &token,
        json!({"to": "+14155552671", "body": "Lost job"}),
    )
    .await;
    let id = reply["id"].as_str().unwrap().to_owned();
    // The job is lost: taken off the queue (for a minute) and never run.
    assert_eq!(app.message_bodies_in("SmsSendQueue").await.len(), 1);
    // The sweep reads an index, which lags writes (as on AWS).
    tokio::time::sleep(TEST_INDEX_LAG + std::time::Duration::from_millis(200)).await;

    let result = app.fire_schedule("sms-status-check").await;
    assert_eq!(result["swept"]["requeued"], 1, "{result}");
    let worker = app.poller("sms-worker");
    eventually(30, "the re-queued job to run", || async {
        (worker.poll_once().await.unwrap() > 0).then_some(())
    })
    .await;
    let sms = app.get(&format!("/services/sms/{id}"), &token).await.body;
    assert_ne!(sms["status"], "queued", "{sms}");
    assert_eq!(twilio(&app).calls(), 1);
}
