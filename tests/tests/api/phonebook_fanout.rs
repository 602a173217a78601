//! Sends to a phonebook of any size (issue 20 §4): the API stores one bulk item and answers;
//! the bulk worker makes the records a page at a time, hands the rest on from job to job,
//! and a job killed between making a page's records and checkpointing it is redelivered
//! without any contact getting a second record, or a second SMS.
//!
//! The test plays Lambda's part for the workers (as `faults.rs` does), so it can drop the
//! bulk worker's invocation at that moment: SQS brings the message back after its
//! visibility timeout, as after a crashed Lambda. Imports of more contacts than one call can
//! write go the same way: in chunk jobs, each counted once however often it is delivered.

use std::collections::BTreeSet;
use std::sync::Arc;

use local::sources::QueuePoller;
use serde_json::{Value, json};

use crate::helpers::{TestBundle, eventually, long_timeouts, spawn_bundle_with};

const CONTACTS: usize = 60;
const CONTACTS_PER_JOB: usize = 20;

fn number(i: usize) -> String {
    format!("+1415555{i:04}")
}

fn sms_bulk_poller(app: &TestBundle) -> Arc<QueuePoller> {
    let queue = app.bundle.resource("SmsBulkQueue");
    let poller = app
        .bundle
        .pollers
        .iter()
        .find(|p| p.function == "bulk-worker" && p.queue_url == queue)
        .expect("the bulk worker polls the SMS bulk queue");
    Arc::clone(poller)
}

async fn progress(app: &TestBundle, token: &str, bulk_id: &str) -> Value {
    let reply = app
        .get(&format!("/services/sms/bulk/{bulk_id}/"), token)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// Records of the bulk that exist, whatever their status.
fn records_made(progress: &Value) -> u64 {
    progress["statuses"]
        .as_object()
        .unwrap()
        .values()
        .map(|count| count.as_u64().unwrap())
        .sum()
}

/// Every SMS of the bulk, through the listing.
async fn bulk_records(app: &TestBundle, token: &str, bulk_id: &str) -> Vec<Value> {
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/services/sms/?bulk_id={bulk_id}&limit=100");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = app.get(&path, token).await;
        assert_eq!(page.status, 200, "{}", page.body);
        records.extend(page.body["items"].as_array().unwrap().iter().cloned());
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return records,
        }
    }
}

#[tokio::test]
async fn a_phonebook_send_fans_out_in_jobs_and_a_job_killed_mid_page_makes_no_second_record() {
    let app = spawn_bundle_with(|options| {
        long_timeouts(options);
        options.poll_queues = false;
        options.env.remove("TWILIO_ACCOUNT_SID");
        options.overrides.insert(
            "FANOUT_CONTACTS_PER_JOB".to_owned(),
            CONTACTS_PER_JOB.to_string(),
        );
    })
    .await;
    // A dropped invocation's message returns after this (the template's is Lambda's).
    app.bundle
        .aws
        .sqs
        .set_queue_attributes()
        .queue_url(app.bundle.resource("SmsBulkQueue"))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "3".to_owned(),
        )
        .send()
        .await
        .unwrap();
    let token = app.token("acme", "member");
    let book = app
        .post("/services/phonebooks/", &token, json!({"name": "Everyone"}))
        .await;
    assert_eq!(book.status, 201, "{}", book.body);
    let book_id = book.body["id"].as_str().unwrap().to_owned();
    // The last contact has no name: its record fails with the reason, the others go out.
    let contacts: Vec<Value> = (0..CONTACTS)
        .map(|i| match i {
            _ if i == CONTACTS - 1 => json!({"phone": number(i)}),
            _ => json!({"phone": number(i), "name": format!("Guest {i}")}),
        })
        .collect();
    let imported = app
        .post(
            &format!("/services/phonebooks/{book_id}/contacts/"),
            &token,
            json!(contacts),
        )
        .await;
    assert_eq!(imported.status, 200, "{}", imported.body);

    let sent = app
        .post(
            "/services/sms/",
            &token,
            json!({"phonebook_id": book_id, "body": "Hi {{name}}, {{greeting}}", "variables": {"greeting": "doors open at 9"}}),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    assert_eq!(sent.body["count"], CONTACTS);
    let bulk_id = sent.body["bulk_id"].as_str().unwrap().to_owned();
    // Accepted with no record made: the API did no per-contact work.
    let before = progress(&app, &token, &bulk_id).await;
    assert_eq!(
        (before["state"].as_str(), before["created"].as_u64()),
        (Some("creating"), Some(0)),
        "{before}"
    );
    assert_eq!(records_made(&before), 0, "{before}");

    // Lambda's part: run the bulk worker's jobs one by one, and drop the invocation that is
    // caught with records made past the checkpoint (a page half done).
    let bulk = sms_bulk_poller(&app);
    let mut killed = None;
    for _ in 0..CONTACTS / CONTACTS_PER_JOB {
        let poll = bulk.poll_once();
        let caught = async {
            loop {
                let now = progress(&app, &token, &bulk_id).await;
                if records_made(&now) > now["created"].as_u64().unwrap() {
                    return now;
                }
            }
        };
        tokio::select! {
            result = poll => { result.unwrap(); }
            at = caught => { killed = Some(at); break; }
        }
    }
    let killed =
        killed.expect("an invocation was caught between a page's records and its checkpoint");
    let checkpoint = killed["created"].as_u64().unwrap();
    assert!(records_made(&killed) > checkpoint, "{killed}");

    // SQS redelivers the dropped job; the workers run on until the bulk is done.
    let send = Arc::clone(app.poller("sms-worker"));
    let workers = tokio::spawn(async move {
        loop {
            let (a, b) = tokio::join!(bulk.poll_once(), send.poll_once());
            for result in [a, b] {
                if let Err(error) = result {
                    eprintln!("poll failed: {error:#}");
                }
            }
        }
    });
    let done = eventually(240, "every record of the bulk at its end", || async {
        let now = progress(&app, &token, &bulk_id).await;
        let ended = now["delivered"].as_u64().unwrap() + now["failed"].as_u64().unwrap();
        (now["state"] == "created" && ended == CONTACTS as u64).then_some(now)
    })
    .await;
    workers.abort();
    assert_eq!(done["total"], CONTACTS, "{done}");
    assert_eq!(done["created"], CONTACTS, "{done}");
    assert_eq!(done["delivered"], CONTACTS - 1, "{done}");
    assert_eq!(done["failed"], 1, "{done}");
    assert_eq!(records_made(&done), CONTACTS as u64, "{done}");

    // One record per contact, each rendered with its own name and the shared variable.
    let records = bulk_records(&app, &token, &bulk_id).await;
    let numbers: BTreeSet<&str> = records.iter().map(|r| r["to"].as_str().unwrap()).collect();
    assert_eq!(records.len(), CONTACTS);
    assert_eq!(
        numbers,
        (0..CONTACTS)
            .map(number)
            .collect::<BTreeSet<_>>()
            .iter()
            .map(String::as_str)
            .collect()
    );
    let nameless = records
        .iter()
        .find(|r| r["to"] == number(CONTACTS - 1))
        .unwrap();
    assert_eq!(nameless["status"], "failed");
    assert!(
        nameless["failure_reason"]
            .as_str()
            .unwrap()
            .contains("missing variable: name"),
        "{nameless}"
    );
    let first = records.iter().find(|r| r["to"] == number(0)).unwrap();
    assert_eq!(first["body"], "Hi Guest 0, doors open at 9");

    // And Twilio took exactly one message per reachable contact.
    let inbox = app.bundle.twilio.as_deref().unwrap().inbox();
    let mut received: Vec<&str> = inbox
        .iter()
        .filter(|m| {
            m["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("Hi Guest"))
        })
        .map(|m| m["to"].as_str().unwrap())
        .collect();
    received.sort_unstable();
    let expected: Vec<String> = (0..CONTACTS - 1).map(number).collect();
    assert_eq!(
        received,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_bulks_progress_is_its_owners_and_a_recipients_bulk_is_born_complete() {
    let app = spawn_bundle_with(|options| {
        options.env.remove("TWILIO_ACCOUNT_SID");
    })
    .await;
    let token = app.token("acme", "member");
    let recipients: Vec<Value> = (0..3)
        .map(|i| json!({"to": number(i), "variables": {"n": i}}))
        .collect();
    let sent = app
        .post(
            "/services/sms/",
            &token,
            json!({"recipients": recipients, "body": "Ticket {{n}}"}),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    let bulk_id = sent.body["bulk_id"].as_str().unwrap().to_owned();
    let done = eventually(120, "the recipients bulk delivered", || async {
        let now = progress(&app, &token, &bulk_id).await;
        (now["delivered"] == 3).then_some(now)
    })
    .await;
    assert_eq!(
        (
            done["state"].clone(),
            done["total"].clone(),
            done["created"].clone()
        ),
        (json!("created"), json!(3), json!(3)),
        "{done}"
    );
    assert_eq!(done["channel"], "sms");

    let email = app
        .post(
            "/services/email/",
            &token,
            json!({"recipients": [{"to": "ann@example.com"}, {"to": "bob@example.com"}], "subject": "Hi", "text": "Hello"}),
        )
        .await;
    assert_eq!(email.status, 202, "{}", email.body);
    let email_bulk = email.body["bulk_id"].as_str().unwrap().to_owned();
    let email_done = eventually(120, "the email bulk delivered", || async {
        let now = app
            .get(&format!("/services/email/bulk/{email_bulk}/"), &token)
            .await;
        (now.body["delivered"] == 2).then_some(now.body)
    })
    .await;
    assert_eq!(email_done["channel"], "email");
    assert_eq!(email_done["total"], 2, "{email_done}");

    // Another organization, and the other channel's route, know neither bulk.
    let other = app.token("globex", "member");
    for (path, token) in [
        (format!("/services/sms/bulk/{bulk_id}/"), &other),
        (format!("/services/email/bulk/{email_bulk}/"), &other),
        (format!("/services/email/bulk/{bulk_id}/"), &token),
        (format!("/services/sms/bulk/{email_bulk}/"), &token),
    ] {
        app.get(&path, token).await.problem(404);
    }
}

#[tokio::test]
async fn a_large_csv_import_is_written_in_chunks_and_a_chunk_delivered_twice_counts_once() {
    let app = spawn_bundle_with(|options| {
        long_timeouts(options);
        options.poll_queues = false;
    })
    .await;
    let token = app.token("acme", "member");
    let book = app
        .post("/services/phonebooks/", &token, json!({"name": "Big"}))
        .await;
    let book_id = book.body["id"].as_str().unwrap().to_owned();
    // 2,500 rows, more than one call writes: two bad numbers, one repeated number.
    let rows = 2_500;
    let mut csv = String::from("phone,name,city\n");
    for i in 0..rows {
        let phone = match i {
            10 => "not-a-number".to_owned(),
            20 => "+1".to_owned(),
            30 => number(29),
            _ => number(i),
        };
        csv.push_str(&format!("{phone},Guest {i},City {}\n", i % 7));
    }
    let response = app
        .http
        .post(
            app.bundle
                .url(&format!("/services/phonebooks/{book_id}/contacts/")),
        )
        .bearer_auth(&token)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["state"], "importing", "{accepted}");
    assert_eq!(accepted["accepted"], rows - 3, "{accepted}");
    let rejected: Vec<u64> = accepted["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rejected.len(), 3, "{accepted}");
    let chunks = accepted["chunks"].as_u64().unwrap();
    assert!(chunks >= 2, "{accepted}");
    let import_id = accepted["import_id"].as_str().unwrap().to_owned();
    let import_path = format!("/services/phonebooks/{book_id}/imports/{import_id}/");

    // SQS may deliver a message twice: every chunk job arrives twice.
    let bodies = app.message_bodies_in("SmsBulkQueue").await;
    assert_eq!(bodies.len() as u64, chunks);
    for body in bodies.iter().chain(&bodies) {
        app.bundle
            .aws
            .sqs
            .send_message()
            .queue_url(app.bundle.resource("SmsBulkQueue"))
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let bulk = sms_bulk_poller(&app);
    let mut delivered = 0;
    while delivered < 2 * chunks {
        delivered += bulk.poll_once().await.unwrap() as u64;
    }
    let done = app.get(&import_path, &token).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["state"], "done", "{}", done.body);
    assert_eq!(done.body["chunks_done"], chunks, "{}", done.body);
    assert_eq!(done.body["contact_count"], rows - 3, "{}", done.body);
    let phonebook = app
        .get(&format!("/services/phonebooks/{book_id}/"), &token)
        .await;
    assert_eq!(phonebook.body["contact_count"], rows - 3);

    // Another organization cannot read the import.
    app.get(&import_path, &app.token("globex", "member"))
        .await
        .problem(404);
}
