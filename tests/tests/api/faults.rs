//! Fault injection with an accounting check (issue 9; figures in docs/RELIABILITY.md).
//!
//! The test plays Lambda's part for the workers (its own poll loops, two concurrent email
//! invocations), so it can kill one invocation while SendGrid is carrying out its call:
//! SQS then brings the message back after its visibility timeout, as it would after a
//! crashed Lambda. The SendGrid sandbox meanwhile fails a seeded share of calls with 5xx,
//! 429, timeouts, dropped connections and sends carried out but never answered. Afterwards
//! every accepted email must be in exactly one final state or have its job in the DLQ, none
//! may be lost or reported sent without SendGrid having it, and the duplicates SendGrid saw
//! (it has no idempotency keys) are counted and bounded by the recipients of the calls
//! whose outcome the worker could not know.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use local::sources::QueuePoller;
use serde_json::{Value, json};

use crate::helpers::{PrivateMongo, TestBundle, eventually, spawn_bundle_with};

const SINGLE_SENDS: usize = 150;
const BULK_RECIPIENTS: usize = 400;
const CAMPAIGN: &str = "faults";

fn poller(app: &TestBundle, function: &str) -> Arc<QueuePoller> {
    Arc::clone(app.poller(function))
}

/// Lambda's event source mappings for the email pipeline: the bulk fan-out and two
/// concurrent send-worker invocations, polling until aborted.
fn run_workers(app: &TestBundle) -> tokio::task::JoinHandle<()> {
    let bulk = poller(app, "bulk-worker");
    let send = poller(app, "email-worker");
    tokio::spawn(async move {
        loop {
            let (a, b, c) = tokio::join!(bulk.poll_once(), send.poll_once(), send.poll_once());
            for result in [a, b, c] {
                if let Err(error) = result {
                    eprintln!("poll failed: {error:#}");
                }
            }
        }
    })
}

async fn set_visibility_timeout(app: &TestBundle, queue: &str, seconds: u32) {
    app.bundle
        .aws
        .sqs
        .set_queue_attributes()
        .queue_url(app.bundle.resource(queue))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            seconds.to_string(),
        )
        .send()
        .await
        .unwrap();
}

/// Every email of the campaign: id → the API's view.
async fn campaign_emails(app: &TestBundle, token: &str) -> HashMap<String, Value> {
    let mut emails = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/services/email/?campaign={CAMPAIGN}&limit=100");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = app.get(&path, token).await;
        assert_eq!(page.status, 200, "{}", page.body);
        for item in page.body["items"].as_array().unwrap() {
            emails.insert(item["id"].as_str().unwrap().to_owned(), item.clone());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return emails,
        }
    }
}

/// The email ids of the jobs in a queue (received and left there).
async fn job_ids_in(app: &TestBundle, queue: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    for body in app.message_bodies_in(queue).await {
        let job: Value = serde_json::from_str(&body).unwrap();
        for id in job["ids"].as_array().into_iter().flatten() {
            ids.insert(id.as_str().unwrap().to_owned());
        }
    }
    ids
}

#[tokio::test]
async fn every_email_ends_in_one_final_state_or_the_dlq_under_provider_faults_and_a_killed_worker()
{
    let app = spawn_bundle_with(|options| {
        options.poll_queues = false;
        for (name, value) in [
            ("SENDGRID_TIMEOUT_MS", "2000"),
            ("EMAIL_CLAIM_LEASE_SECONDS", "15"),
            ("EMAIL_STUCK_AFTER_MINUTES", "0"),
        ] {
            options.overrides.insert(name.to_owned(), value.to_owned());
        }
    })
    .await;
    // A killed invocation's message returns after this (the template's 360 s is Lambda's);
    // longer than the claim lease, and than a job takes against a busy moto.
    set_visibility_timeout(&app, "EmailSendQueue", 30).await;
    let token = app.token("acme", "member");
    let sandbox = app.sandbox();
    // The first call is carried out and never answered (the invocation making it is killed);
    // after it, 30 % of calls fail in every way chaos knows, reproducibly (seed).
    app.sendgrid_fault(json!({"connection": "accept_then_hold"}))
        .await;
    app.sendgrid_fault(json!({"chaos": {"share": 0.3, "seed": 20261125, "timeout_ms": 2500}}))
        .await;

    let mut accepted: HashSet<String> = HashSet::new();
    for n in 0..SINGLE_SENDS {
        let reply = app
            .post(
                "/services/email/",
                &token,
                json!({"to": format!("single{n}@example.com"), "subject": "Receipt", "text": "Thanks", "campaign": CAMPAIGN}),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        accepted.insert(reply.body["id"].as_str().unwrap().to_owned());
    }
    let recipients: Vec<Value> = (0..BULK_RECIPIENTS)
        .map(|n| json!({"to": format!("bulk{n}@example.com")}))
        .collect();
    let reply = app
        .post(
            "/services/email/",
            &token,
            json!({"subject": "News", "text": "Hello", "campaign": CAMPAIGN, "recipients": recipients}),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    for id in reply.body["ids"].as_array().unwrap() {
        accepted.insert(id.as_str().unwrap().to_owned());
    }
    assert_eq!(accepted.len(), SINGLE_SENDS + BULK_RECIPIENTS);

    // Kill the invocation whose SendGrid call is being carried out, as a Lambda timeout or
    // crash would, between the provider call and the state update.
    let workers = run_workers(&app);
    eventually(60, "the held SendGrid call", || async {
        (sandbox.fault_report()["injected"]["accept_then_hold"] == 1).then_some(())
    })
    .await;
    workers.abort();
    let killed = workers.await.unwrap_err();
    assert!(killed.is_cancelled());
    let workers = run_workers(&app);

    // Run until both queues are drained and nothing is on its way.
    eventually(400, "the queues drained", || async {
        let depth =
            app.queue_depth("EmailSendQueue").await + app.queue_depth("EmailBulkQueue").await;
        (depth == 0).then_some(())
    })
    .await;
    workers.abort();
    // Webhook events lost to faults of their own are what the status check is for; run it
    // as its schedule would, then give the sandbox's last events a moment.
    app.fire_schedule("email-status-check").await;
    // A job in the DLQ is an accounted end: its emails wait there for an operator's redrive,
    // whatever status their last processed attempt left (a job whose last receive was
    // killed before it claimed anything leaves its emails `queued`).
    let in_dlq = job_ids_in(&app, "EmailSendDLQ").await;
    let settled = |(id, e): (&String, &Value)| {
        matches!(e["status"].as_str(), Some("delivered" | "failed")) || in_dlq.contains(id)
    };
    let mut emails = campaign_emails(&app, &token).await;
    for _ in 0..60 {
        if emails.iter().all(settled) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        emails = campaign_emails(&app, &token).await;
    }
    let mut lost = Vec::new();
    for (id, _) in emails.iter().filter(|e| !settled(*e)).take(5) {
        lost.push(app.get(&format!("/services/email/{id}"), &token).await.body);
    }
    assert!(
        lost.is_empty(),
        "{} emails neither final nor in the DLQ, e.g. {lost:#?}",
        emails.iter().filter(|e| !settled(*e)).count()
    );

    // The accounting.
    let listed: HashSet<String> = emails.keys().cloned().collect();
    assert_eq!(
        listed, accepted,
        "every accepted email is there, and only those"
    );
    let mut at_sendgrid: HashMap<String, usize> = HashMap::new();
    for message in sandbox.inbox() {
        let id = message["custom_args"]["email_id"]
            .as_str()
            .unwrap()
            .to_owned();
        *at_sendgrid.entry(id).or_default() += 1;
    }
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for (id, email) in &emails {
        let status = email["status"].as_str().unwrap();
        let end = if in_dlq.contains(id) {
            format!("{status} (job in the DLQ)")
        } else {
            status.to_owned()
        };
        *by_status.entry(end).or_default() += 1;
        if status == "delivered" {
            assert!(
                at_sendgrid.contains_key(id),
                "{id} reported delivered without reaching SendGrid"
            );
        } else {
            assert!(
                !at_sendgrid.contains_key(id),
                "{id} is {status} but SendGrid has it"
            );
            assert!(
                in_dlq.contains(id),
                "{id} is {status} and its job is not in the DLQ"
            );
        }
    }
    let duplicates: usize = at_sendgrid.values().map(|n| n - 1).sum();
    let report = sandbox.fault_report();
    let unanswered = usize::try_from(report["unanswered_recipients"].as_u64().unwrap()).unwrap();
    eprintln!(
        "faults: {} accepted, {by_status:?}, {} SendGrid calls, injected {}, duplicates {duplicates} (bound {unanswered}), DLQ jobs' emails {}",
        accepted.len(),
        sandbox.calls(),
        report["injected"],
        in_dlq.len()
    );
    assert!(
        duplicates <= unanswered,
        "duplicates at SendGrid ({duplicates}) exceed the recipients of unanswered calls ({unanswered})"
    );
    let injected: u64 = report["injected"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(injected >= 10, "the run injected faults: {report}");
}

#[tokio::test]
async fn events_published_while_mongodb_is_down_are_recorded_once_it_is_back() {
    let mut mongo = PrivateMongo::start().await;
    let uri = mongo.uri();
    let app = spawn_bundle_with(|options| {
        options.env.insert("MONGODB_URI".to_owned(), uri.clone());
        // Backoff long enough to outlast the outage below within the five receives.
        options
            .overrides
            .insert("RETRY_BASE_SECONDS".to_owned(), "3".to_owned());
    })
    .await;
    let token = app.token("acme", "admin");
    let create = |n: usize| {
        let token = token.clone();
        let app = &app;
        async move {
            let reply = app
                .post(
                    "/services/templates/sms/",
                    &token,
                    json!({"name": format!("outage-{n}"), "body": "Code {{c}}"}),
                )
                .await;
            assert_eq!(reply.status, 201, "{}", reply.body);
            reply.body["id"].as_str().unwrap().to_owned()
        }
    };
    let mut created = Vec::new();
    for n in 0..20 {
        created.push(create(n).await);
    }
    mongo.stop();
    for n in 20..80 {
        created.push(create(n).await);
    }
    // Down long enough for the recorder to fail batches and back off.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = app.get("/services/audit-logs/?limit=10", &token).await;
    assert!(
        during.status >= 500 || during.status == 200,
        "the audit API answers a problem, not a hang: {}",
        during.status
    );
    mongo.restart().await;
    for n in 80..100 {
        created.push(create(n).await);
    }

    // Every template's creation is recorded exactly once (event ids are the documents'
    // `_id`; redelivered batches cannot duplicate them), or its event sits in the DLQ.
    app.queue_empties("EventsQueue", 240).await;
    let in_dlq = templates_in_events_dlq(&app).await;
    let recorded = eventually(60, "every event recorded or in the DLQ", || async {
        let listed = app
            .get(
                "/services/audit-logs/?action=template.create&limit=100",
                &token,
            )
            .await;
        let items = listed.body["items"].as_array()?.clone();
        (items.len() + in_dlq.len() >= created.len()).then_some(items)
    })
    .await;
    let mut per_template: HashMap<String, usize> = HashMap::new();
    for item in &recorded {
        let resource = item["resource"].as_str().unwrap_or_default();
        if let Some(id) = resource.strip_prefix("template/sms/") {
            *per_template.entry(id.to_owned()).or_default() += 1;
        }
    }
    eprintln!(
        "mongodb outage: {} events published, {} recorded, {} in the DLQ",
        created.len(),
        recorded.len(),
        in_dlq.len()
    );
    for id in &created {
        let ends = per_template.get(id).copied().unwrap_or(0) + usize::from(in_dlq.contains(id));
        assert_eq!(
            ends, 1,
            "template {id}: recorded once or in the DLQ, not both, not lost"
        );
    }
}

/// The templates whose creation events wait in the events DLQ.
async fn templates_in_events_dlq(app: &TestBundle) -> HashSet<String> {
    let mut templates = HashSet::new();
    for body in app.message_bodies_in("EventsDLQ").await {
        for event in shared::events::parse_message(&body).unwrap() {
            if let Some(id) = event
                .resource
                .as_deref()
                .and_then(|r| r.strip_prefix("template/sms/"))
            {
                templates.insert(id.to_owned());
            }
        }
    }
    templates
}

/// The SMS pipeline under Twilio faults (chaos with 5xx, 429, refused keys, timeouts and
/// dropped connections), index lag and the rate cap handing jobs back: every accepted SMS
/// ends in one final state or has its job in the DLQ, nothing is reported sent that Twilio
/// does not have, and duplicates at Twilio stay within the messages whose call was carried
/// out but never answered (issue 15).
#[tokio::test]
async fn every_sms_ends_in_one_final_state_or_the_dlq_under_faults_and_rate_hand_backs() {
    const SINGLES: usize = 20;
    const BULK: usize = 40;
    let app = spawn_bundle_with(|options| {
        options.env.remove("TWILIO_ACCOUNT_SID");
        for (name, value) in [
            ("TWILIO_TIMEOUT_MS", "2000"),
            // Four sends a second and a one-second wait: jobs are handed back all the time.
            ("SMS_RATE_PER_SECOND", "4"),
            ("SMS_RATE_WAIT_SECONDS", "1"),
            // The status check looks up every `sent` SMS, however young (below).
            ("SMS_STATUS_CHECK_MIN_AGE_SECONDS", "0"),
        ] {
            options.overrides.insert(name.to_owned(), value.to_owned());
        }
    })
    .await;
    let twilio = app.bundle.twilio.as_deref().unwrap();
    let token = app.token("acme", "member");
    let chaos = json!({"chaos": {"share": 0.3, "seed": 20261202, "timeout_ms": 2500}});
    let response = app
        .http
        .post(app.bundle.url("/sandbox/twilio/_faults"))
        .json(&chaos)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());

    let mut accepted: HashSet<String> = HashSet::new();
    for n in 0..SINGLES {
        let reply = app
            .post(
                "/services/sms/",
                &token,
                json!({"to": format!("+1415555{n:04}"), "body": "Your code is 1234"}),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        accepted.insert(reply.body["id"].as_str().unwrap().to_owned());
    }
    let recipients: Vec<Value> = (0..BULK)
        .map(|n| json!({"to": format!("+1415556{n:04}")}))
        .collect();
    let reply = app
        .post(
            "/services/sms/",
            &token,
            json!({"body": "Sale today", "recipients": recipients}),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    for id in reply.body["ids"].as_array().unwrap() {
        accepted.insert(id.as_str().unwrap().to_owned());
    }
    assert_eq!(accepted.len(), SINGLES + BULK);

    eventually(400, "the SMS queues drained", || async {
        let depth = app.queue_depth("SmsSendQueue").await + app.queue_depth("SmsBulkQueue").await;
        (depth == 0).then_some(())
    })
    .await;
    let in_dlq = job_ids_in(&app, "SmsSendDLQ").await;
    let status_of = |sms: &Value| sms["status"].as_str().unwrap_or_default().to_owned();
    let mut records: HashMap<String, Value> = HashMap::new();
    eventually(60, "every SMS final or in the DLQ", || async {
        // A status callback can beat the worker's SID link (Twilio posts `queued` within
        // moments) and Twilio does not retry a callback that was answered (retry count 1,
        // on connection failures only by default: twilio.com/docs/usage/webhooks/
        // webhooks-connection-overrides). On AWS the hourly status check settles those;
        // here it runs on every round.
        app.fire_schedule("sms-status-check").await;
        let mut all = HashMap::new();
        for id in &accepted {
            let sms = app.get(&format!("/services/sms/{id}"), &token).await.body;
            all.insert(id.clone(), sms);
        }
        let open = all
            .iter()
            .filter(|(id, sms)| {
                !matches!(status_of(sms).as_str(), "delivered" | "failed") && !in_dlq.contains(*id)
            })
            .count();
        (open == 0).then_some(all)
    })
    .await
    .into_iter()
    .for_each(|(id, sms)| {
        records.insert(id, sms);
    });

    let mut at_twilio: HashMap<String, usize> = HashMap::new();
    for message in twilio.inbox() {
        *at_twilio
            .entry(message["body"].as_str().unwrap().to_owned() + message["to"].as_str().unwrap())
            .or_default() += 1;
    }
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for (id, sms) in &records {
        let status = status_of(sms);
        *by_status.entry(status.clone()).or_default() += 1;
        let key = sms["body"].as_str().unwrap().to_owned() + sms["to"].as_str().unwrap();
        if status == "delivered" {
            assert!(
                at_twilio.contains_key(&key),
                "{id} delivered without reaching Twilio"
            );
        }
    }
    let duplicates: usize = at_twilio.values().map(|n| n - 1).sum();
    let report = twilio.fault_report();
    let unanswered = usize::try_from(report["unanswered"].as_u64().unwrap()).unwrap();
    eprintln!(
        "sms faults: {} accepted, {by_status:?}, {} Twilio calls, injected {}, duplicates {duplicates} (bound {unanswered}), DLQ jobs' SMS {}",
        accepted.len(),
        twilio.calls(),
        report["injected"],
        in_dlq.len()
    );
    assert!(
        duplicates <= unanswered,
        "duplicates {duplicates} over the bound {unanswered}"
    );
    assert!(
        report["injected"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(Value::as_u64)
            .sum::<u64>()
            >= 5,
        "the run injected faults: {report}"
    );
}
