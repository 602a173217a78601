//! Reports end to end (issue: reports): the reports API, the report worker on the real
//! generate and export queues in moto, files streamed to the encrypted bucket and
//! downloaded through presigned URLs, schedules in moto's EventBridge Scheduler fired by the
//! local runner, and the retention cleanup. Email data is seeded through the real email API
//! and the SendGrid sandbox; events are written to MongoDB with the real event store.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use shared::domain::{OrgId, RecordId};
use shared::events::{Event, EventKind};
use shared::reports::upload::{PART_SIZE, PartBuffer, S3Multipart};
use shared::reports::{Cell, Report, ReportFormat, ReportKind, ReportStatus, file};
use shared::store::{EventStore, ReportStore};

use crate::helpers::{TestBundle, eventually, mongodb_uri, spawn_bundle};

async fn request(app: &TestBundle, token: &str, body: Value) -> String {
    let reply = app.post("/services/reports/", token, body).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body["status"], "queued");
    reply.body["id"].as_str().unwrap().to_owned()
}

/// Waits for a report to be ready and downloads it through its presigned URL.
async fn download(app: &TestBundle, token: &str, id: &str) -> (Value, Vec<u8>) {
    let path = format!("/services/reports/{id}/");
    let report = eventually(60, "the report to be ready", || async {
        let reply = app.get(&path, token).await;
        assert_ne!(reply.body["status"], "failed", "{}", reply.body);
        (reply.body["status"] == "ready").then_some(reply.body)
    })
    .await;
    let url = report["download_url"].as_str().expect("a download URL");
    assert!(url.contains("X-Amz-Expires=900"), "valid 15 minutes: {url}");
    let response = app.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    (report, response.bytes().await.unwrap().to_vec())
}

fn csv_lines(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
    assert!(text.ends_with("\r\n"), "CRLF line ends");
    text.trim_end_matches("\r\n")
        .split("\r\n")
        .map(str::to_owned)
        .collect()
}

fn pdf_text(bytes: &[u8]) -> (lopdf::Document, String) {
    let document = lopdf::Document::load_mem(bytes).expect("the PDF parses");
    let pages: Vec<u32> = document.get_pages().keys().copied().collect();
    let text = document.extract_text(&pages).unwrap();
    (document, text)
}

/// Checks the PDF's layout; `bars` is how many days of its chart have activity.
fn assert_pdf_layout(bytes: &[u8], title: &str, bars: usize) -> String {
    let (document, text) = pdf_text(bytes);
    let pages = document.get_pages().len();
    for expected in [
        title,
        "Organization: acme",
        "Period:",
        "Summary",
        "Daily volume",
        "Details",
        &format!("Page 1 of {pages}"),
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} not in the PDF: {text}"
        );
    }
    // The chart's bars are vector rectangles on the first page, besides the summary
    // table's header shading and the chart's baseline.
    let (_, first) = document.get_pages().into_iter().next().unwrap();
    let operations = document
        .get_and_decode_page_content(first)
        .unwrap()
        .operations;
    let rectangles = operations.iter().filter(|op| op.operator == "re").count();
    assert!(
        rectangles >= bars + 2,
        "{rectangles} rectangles for {bars} bars"
    );
    text
}

fn sendgrid_event(kind: &str, email_id: &str, address: &str) -> Value {
    json!({
        "email": address, "timestamp": Utc::now().timestamp(), "event": kind,
        "sg_event_id": uuid::Uuid::new_v4().simple().to_string(), "sg_message_id": "abc.filter-1",
        "org_id": "acme", "email_id": email_id,
    })
}

async fn send_email(app: &TestBundle, token: &str, to: &str, campaign: &str) -> String {
    let reply = app
        .post(
            "/services/email/",
            token,
            json!({"to": to, "subject": "Hi", "text": "Hello", "campaign": campaign}),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_owned()
}

fn at(day: DateTime<Utc>, mut event: Event) -> Event {
    event.created_at = day;
    event
}

fn audit(org: &OrgId, actor: &str, action: &str, day: DateTime<Utc>) -> Event {
    let mut event = Event::new(org, EventKind::Audit, action);
    event.actor = Some(actor.to_owned());
    at(day, event)
}

fn inbound(org: &OrgId, day: DateTime<Utc>) -> Event {
    let mut event = Event::new(org, EventKind::Webhook, "sms.inbound");
    event.channel = Some("sms".to_owned());
    at(day, event.with_detail(json!({"body": "Привет"})))
}

fn payment(org: &OrgId, status: &str, amount: i64, day: DateTime<Utc>) -> Event {
    at(
        day,
        Event::delivery(org, "payment", "payment/p1", status)
            .with_detail(json!({"amount": amount, "currency": "usd"})),
    )
}

/// Seeds a past period's events and returns its `from`/`to` and the two days used.
async fn seed_events(app: &TestBundle) -> (String, String, String, String) {
    let acme = OrgId::parse("acme").unwrap();
    let globex = OrgId::parse("globex").unwrap();
    let today = Utc::now()
        .date_naive()
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc();
    let (day1, day2) = (today - Duration::days(9), today - Duration::days(7));
    let sms = |status: &str, day| at(day, Event::delivery(&acme, "sms", "sms/1", status));
    let events = vec![
        sms("queued", day1),
        sms("queued", day1),
        sms("delivered", day1),
        sms("failed", day1),
        inbound(&acme, day1),
        sms("queued", day2),
        sms("delivered", day2),
        inbound(&acme, day2),
        inbound(&acme, day2),
        at(
            day1,
            Event::delivery(&acme, "email", "email/1", "delivered"),
        ),
        at(
            day1,
            Event::delivery(&acme, "email", "email/2", "delivered"),
        ),
        payment(&acme, "succeeded", 1250, day2),
        payment(&acme, "succeeded", 750, day2),
        payment(&acme, "failed", 500, day2),
        audit(&acme, "Алиса Ωμέγα", "template.create", day1),
        audit(&acme, "Алиса Ωμέγα", "template.create", day2),
        audit(&acme, "Алиса Ωμέγα", "email.send", day2),
        audit(&acme, "مرحبا 中", "report.create", day2),
        audit(&acme, "=evil()", "email.send", day1),
        // Another organization's events never show up in acme's reports.
        inbound(&globex, day1),
        at(day1, Event::delivery(&globex, "sms", "sms/9", "queued")),
        audit(&globex, "mallory", "email.send", day1),
        payment(&globex, "succeeded", 99_999, day2),
    ];
    let store = EventStore::connect(&mongodb_uri(), &app.database, 30)
        .await
        .unwrap();
    assert!(store.record(&events).await.unwrap().is_empty());
    let day = |t: DateTime<Utc>| t.format("%Y-%m-%d").to_string();
    (
        day(today - Duration::days(10)),
        day(today - Duration::days(6)),
        day(day1),
        day(day2),
    )
}

#[tokio::test]
async fn every_report_type_in_both_formats_matches_the_seeded_data() {
    let app = spawn_bundle().await;
    let token = app.token("acme", "admin");

    // Emails through the real API and the SendGrid sandbox (which bounces @bounce.test).
    let ann = send_email(&app, &token, "ann@example.com", "spring").await;
    let bob = send_email(&app, &token, "bob@example.com", "spring").await;
    let carol = send_email(&app, &token, "carol@bounce.test", "spring").await;
    let dan = send_email(&app, &token, "dan@example.com", "=cmd|' /C calc'!A0").await;
    app.email_reaches(&token, &ann, "delivered", 30).await;
    app.email_reaches(&token, &bob, "delivered", 30).await;
    app.email_reaches(&token, &carol, "bounced", 30).await;
    app.email_reaches(&token, &dan, "delivered", 30).await;
    app.sandbox()
        .post_events(&[sendgrid_event("open", &ann, "ann@example.com")])
        .await;
    eventually(30, "ann's open", || async {
        let email = app
            .get(&format!("/services/email/{ann}"), &token)
            .await
            .body;
        (email["engagement"] == json!(["opened"])).then_some(())
    })
    .await;
    let (past_from, past_to, day1, day2) = seed_events(&app).await;
    let today = Utc::now().format("%Y-%m-%d").to_string();

    let mut ids = Vec::new();
    for (kind, from, to) in [
        ("campaign_performance", &today, &today),
        ("conversation_analytics", &past_from, &past_to),
        ("user_analytics", &past_from, &past_to),
        ("summary", &past_from, &past_to),
    ] {
        for format in ["csv", "pdf"] {
            let body = json!({"type": kind, "format": format, "from": from, "to": to});
            ids.push((kind, format, request(&app, &token, body).await));
        }
    }
    for (kind, format, id) in &ids {
        let (report, bytes) = download(&app, &token, id).await;
        assert_eq!(report["type"], *kind);
        assert!(report["rows"].as_u64().is_some());
        let head = app
            .bucket_object(&format!("reports/acme/{id}.{format}"))
            .await
            .expect("the object is at reports/<org>/<id>.<ext>");
        assert_eq!(
            head.server_side_encryption(),
            Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256)
        );
        match (*kind, *format) {
            ("campaign_performance", "csv") => assert_eq!(
                csv_lines(&bytes),
                [
                    "campaign,recipients,sent,delivered,opened,clicked,bounced,failed,delivery_rate,open_rate,click_rate",
                    // The formula-looking campaign name is escaped with a leading quote.
                    "'=cmd|' /C calc'!A0,1,1,1,0,0,0,0,1.0000,0.0000,0.0000",
                    "spring,3,3,2,1,0,1,0,0.6667,0.5000,0.0000",
                ]
            ),
            ("conversation_analytics", "csv") => assert_eq!(
                csv_lines(&bytes),
                [
                    "day,inbound,outbound_delivered,outbound_failed,outbound_queued".to_owned(),
                    format!("{day1},1,1,1,2"),
                    format!("{day2},2,1,0,1"),
                ]
            ),
            ("user_analytics", "csv") => {
                let lines = csv_lines(&bytes);
                assert_eq!(
                    lines[0],
                    "actor,actions,distinct_actions,first_seen,last_seen,top_actions"
                );
                assert_eq!(lines.len(), 4, "{lines:?}");
                assert!(lines[1].starts_with("'=evil(),1,1,"), "{}", lines[1]);
                assert!(lines[1].ends_with(",email.send (1)"));
                assert!(
                    lines[2].starts_with(&format!(
                        "Алиса Ωμέγα,3,2,{day1}T12:00:00Z,{day2}T12:00:00Z,"
                    )),
                    "{}",
                    lines[2]
                );
                assert!(lines[2].ends_with(",template.create (2); email.send (1)"));
                assert!(lines[3].starts_with("مرحبا 中,1,1,"), "{}", lines[3]);
            }
            ("summary", "csv") => assert_eq!(
                csv_lines(&bytes),
                [
                    "channel,status,count,amount",
                    "email,delivered,2,",
                    "payment,failed,1,500.00 USD",
                    "payment,succeeded,2,2000.00 USD",
                    "sms,delivered,2,",
                    "sms,failed,1,",
                    "sms,queued,3,",
                ]
            ),
            ("campaign_performance", "pdf") => {
                let text = assert_pdf_layout(&bytes, "Campaign performance", 1);
                assert!(text.contains("spring"), "{text}");
                assert!(text.contains("66.7%"), "{text}");
            }
            ("conversation_analytics", "pdf") => {
                let text = assert_pdf_layout(&bytes, "Conversation analytics", 2);
                assert!(text.contains(&day2), "{text}");
            }
            ("user_analytics", "pdf") => {
                // Non-Latin data renders; the CJK character the font lacks shows as its
                // code point instead of vanishing.
                let text = assert_pdf_layout(&bytes, "User analytics", 2);
                for expected in ["Алиса", "Ωμέγα", "[U+4E2D]", "=evil()"] {
                    assert!(text.contains(expected), "{expected:?} not in {text}");
                }
                assert!(
                    text.contains('م') && text.contains('ر') && text.contains('ح'),
                    "Arabic letters render: {text}"
                );
            }
            ("summary", "pdf") => {
                let text = assert_pdf_layout(&bytes, "Summary", 2);
                assert!(text.contains("2000.00 USD"), "{text}");
                assert!(!text.contains("99999"), "another org's payment: {text}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // The list shows them, newest first.
    let list = app.get("/services/reports/?limit=100", &token).await;
    let listed: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = ids.iter().map(|(_, _, id)| id.as_str()).collect();
    expected.reverse();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn organizations_see_and_download_only_their_own_reports() {
    let app = spawn_bundle().await;
    let acme = app.token("acme", "admin");
    let globex = app.token("globex", "admin");
    let body =
        json!({"type": "summary", "format": "csv", "from": "2026-01-01", "to": "2026-01-31"});

    // Idempotency-Key: the same request replays the first answer.
    let first = app
        .http
        .post(app.bundle.url("/services/reports/"))
        .bearer_auth(&acme)
        .header("idempotency-key", "monthly-summary")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again: Value = app
        .http
        .post(app.bundle.url("/services/reports/"))
        .bearer_auth(&acme)
        .header("idempotency-key", "monthly-summary")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["id"], first["id"]);
    let id = first["id"].as_str().unwrap().to_owned();
    let (report, _) = download(&app, &acme, &id).await;
    assert!(
        report["download_url"]
            .as_str()
            .unwrap()
            .contains(&format!("reports/acme/{id}.csv"))
    );
    let theirs = request(&app, &globex, body.clone()).await;
    let (theirs_report, _) = download(&app, &globex, &theirs).await;
    assert!(
        theirs_report["download_url"]
            .as_str()
            .unwrap()
            .contains("reports/globex/")
    );

    // Another organization's report is 404 for read and delete, and never listed.
    let path = format!("/services/reports/{id}/");
    app.get(&path, &globex).await.problem(404);
    app.call("DELETE", &path, Some(&globex), None)
        .await
        .problem(404);
    let list = app.get("/services/reports/", &globex).await;
    let ids: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [theirs.as_str()]);

    // Members may request and read but not delete.
    let member = app.token("acme", "member");
    app.get(&path, &member).await;
    app.call("DELETE", &path, Some(&member), None)
        .await
        .problem(403);

    // Bad input: a clear 400 and nothing recorded.
    let bad = app
        .post(
            "/services/reports/",
            &acme,
            json!({"type": "everything", "format": "xls", "from": "2026-02-01", "to": "2026-01-01"}),
        )
        .await;
    let problem = bad.problem(400);
    for field in ["type", "format"] {
        assert!(problem["errors"][field].is_array(), "{problem}");
    }
    let backwards = app
        .post(
            "/services/reports/",
            &acme,
            json!({"type": "summary", "format": "csv", "from": "2026-02-01", "to": "2026-01-01"}),
        )
        .await;
    assert!(backwards.problem(400)["errors"]["to"].is_array());
    app.get("/services/reports/", &acme).await.body["items"]
        .as_array()
        .map(|items| assert_eq!(items.len(), 1))
        .unwrap();

    // DELETE removes the record (404 after) and the object.
    let deleted = app.call("DELETE", &path, Some(&acme), None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    app.get(&path, &acme).await.problem(404);
    assert!(
        app.bucket_object(&format!("reports/acme/{id}.csv"))
            .await
            .is_none(),
        "the object is gone"
    );
}

#[tokio::test]
async fn a_100k_row_csv_streams_to_s3_in_parts_with_bounded_memory() {
    let app = spawn_bundle().await;
    let s3 = &app.bundle.aws.s3;
    let bucket = app.bundle.resource("HeraldBucket");
    let key = "reports/acme/large.csv";
    let upload = S3Multipart::start(s3, bucket, key, ReportFormat::Csv.content_type())
        .await
        .unwrap();
    let mut buffer = PartBuffer::new(upload, PART_SIZE);
    let rows = (0..100_000).map(|n| {
        [
            Cell::text(format!("=campaign {n} — Кампания =SUM(A1)")),
            Cell::Int(n),
            Cell::Percent(0.25),
        ]
    });
    let columns = ["campaign".to_owned(), "sent".to_owned(), "rate".to_owned()];
    let written = file::write_csv(&mut buffer, &columns, rows).await.unwrap();
    let peak = buffer.peak_buffered;
    let (upload, bytes) = buffer.finish().await.unwrap();
    upload.complete().await.unwrap();
    assert_eq!(written, 100_000);
    assert!(bytes > PART_SIZE as u64);
    // Never more than one part plus one row in memory.
    assert!(peak < PART_SIZE + 1024, "peak {peak}");

    let object = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        object.server_side_encryption(),
        Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256)
    );
    let body = object.body.collect().await.unwrap().into_bytes();
    assert_eq!(body.len() as u64, bytes);
    let lines = csv_lines(&body);
    assert_eq!(lines.len(), 100_001);
    assert_eq!(
        lines[100_000],
        "'=campaign 99999 — Кампания =SUM(A1),99999,0.2500"
    );
}

#[tokio::test]
async fn schedules_live_in_scheduler_and_each_run_emails_the_link() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    let group = app.bundle.resource("ReportScheduleGroup").to_owned();
    let scheduled_names = || async {
        app.bundle
            .aws
            .scheduler
            .list_schedules()
            .group_name(&group)
            .send()
            .await
            .unwrap()
            .schedules
            .iter()
            .filter_map(|s| s.name.clone())
            .collect::<Vec<_>>()
    };

    let member = app.token("acme", "member");
    let body = json!({"expression": "cron(0 6 ? * MON *)", "type": "summary", "format": "pdf", "period_days": 7, "recipients": ["ops@example.com", "cfo@example.com"]});
    app.post("/services/reports/schedules/", &member, body.clone())
        .await
        .problem(403);
    let bad = app
        .post(
            "/services/reports/schedules/",
            &admin,
            json!({"expression": "every monday", "type": "summary", "format": "pdf", "recipients": ["not-an-address"]}),
        )
        .await;
    let problem = bad.problem(400);
    assert!(problem["errors"]["expression"].is_array());
    assert!(problem["errors"]["recipients[0]"].is_array());
    assert!(scheduled_names().await.is_empty(), "nothing was created");

    let created = app.post("/services/reports/schedules/", &admin, body).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let schedule_id = created.body["id"].as_str().unwrap().to_owned();
    let name = created.body["name"].as_str().unwrap().to_owned();
    assert_eq!(scheduled_names().await, std::slice::from_ref(&name));
    let scheduled = app
        .bundle
        .aws
        .scheduler
        .get_schedule()
        .group_name(&group)
        .name(&name)
        .send()
        .await
        .unwrap();
    assert_eq!(scheduled.schedule_expression(), Some("cron(0 6 ? * MON *)"));
    let target = scheduled.target().unwrap();
    assert_eq!(
        target.arn(),
        app.bundle.names["ReportGenerateQueue"].attributes["Arn"]
    );
    let input: Value = serde_json::from_str(target.input().unwrap()).unwrap();
    assert_eq!(
        input,
        json!({"v": 1, "org": "acme", "kind": "report.schedule_run", "schedule_id": schedule_id})
    );
    let listed = app.get("/services/reports/schedules/", &admin).await;
    assert_eq!(listed.body["items"][0]["id"], schedule_id.as_str());
    app.get(
        "/services/reports/schedules/",
        &app.token("globex", "admin"),
    )
    .await
    .body["items"]
        .as_array()
        .map(|items| assert!(items.is_empty()))
        .unwrap();

    // moto never fires schedules: the runner does what Scheduler would.
    let fired = app
        .http
        .post(app.bundle.url(&format!("/local/report-schedules/{name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(fired.status(), 200);
    let report_id = eventually(60, "the scheduled report", || async {
        let list = app.get("/services/reports/", &admin).await;
        list.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["schedule_id"] == schedule_id.as_str() && r["status"] == "ready")
            .map(|r| r["id"].as_str().unwrap().to_owned())
    })
    .await;
    let (report, bytes) = download(&app, &admin, &report_id).await;
    assert_eq!(report["type"], "summary");
    // Nothing happened in this bundle's last 7 days: an empty chart, still a valid PDF.
    let text = assert_pdf_layout(&bytes, "Summary", 0);
    assert!(text.contains("No activity in this period"), "{text}");

    // Each recipient gets the link, sent through the email pipeline.
    let messages = eventually(60, "the report emails", || async {
        let inbox = app.sandbox().inbox();
        let mine: Vec<Value> = inbox
            .into_iter()
            .filter(|m| m["subject"] == "Your summary report is ready")
            .collect();
        (mine.len() == 2).then_some(mine)
    })
    .await;
    let mut to: Vec<&str> = messages.iter().map(|m| m["to"].as_str().unwrap()).collect();
    to.sort_unstable();
    assert_eq!(to, ["cfo@example.com", "ops@example.com"]);
    let text = messages[0]["content"][0]["value"].as_str().unwrap();
    let url = text
        .split_whitespace()
        .find(|w| w.starts_with("http"))
        .expect("a link");
    assert!(url.contains(&format!("reports/acme/{report_id}.pdf")));
    let emailed = app.http.get(url).send().await.unwrap();
    assert_eq!(emailed.status(), 200);
    assert_eq!(emailed.bytes().await.unwrap().to_vec(), bytes);

    // Deleting the schedule removes it from Scheduler.
    let path = format!("/services/reports/schedules/{schedule_id}/");
    let deleted = app.call("DELETE", &path, Some(&admin), None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert!(scheduled_names().await.is_empty());
    app.call("DELETE", &path, Some(&admin), None)
        .await
        .problem(404);
    let gone = app
        .http
        .post(app.bundle.url(&format!("/local/report-schedules/{name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
}

#[tokio::test]
async fn cleanup_deletes_exactly_the_reports_past_retention() {
    let app = spawn_bundle().await;
    let token = app.token("acme", "admin");
    let store = ReportStore::new(app.bundle.aws.dynamodb.clone(), app.table());
    let bucket = app.bundle.resource("HeraldBucket").to_owned();
    let now = Utc::now();

    // Records written directly with old creation times (ids are time-ordered ULIDs).
    let mut seeded = Vec::new();
    for (org, days, n) in [
        ("acme", 400, 0),
        ("acme", 91, 1),
        ("globex", 120, 2),
        ("acme", 89, 3),
        ("globex", 10, 4),
    ] {
        let created = now - Duration::days(days) + Duration::milliseconds(n);
        let id = RecordId::lowest_at(created).to_string();
        let org = OrgId::parse(org).unwrap();
        let report = Report {
            key: Report::key_for(&org, &id, ReportFormat::Csv),
            id: id.clone(),
            org_id: org.clone(),
            kind: ReportKind::Summary,
            format: ReportFormat::Csv,
            from: created - Duration::days(7),
            to: created,
            status: ReportStatus::Ready,
            rows: Some(0),
            bytes: Some(2),
            error: None,
            schedule_id: None,
            requested_by: "user-1".into(),
            created_at: created,
            updated_at: created,
            ready_at: Some(created),
        };
        store.create(&report).await.unwrap();
        app.bundle
            .aws
            .s3
            .put_object()
            .bucket(&bucket)
            .key(&report.key)
            .body(b"x\n".to_vec().into())
            .send()
            .await
            .unwrap();
        seeded.push((org, id, report.key, days > 90));
    }
    let fresh = request(
        &app,
        &token,
        json!({"type": "summary", "format": "csv", "from": "2026-01-01", "to": "2026-01-02"}),
    )
    .await;
    download(&app, &token, &fresh).await;

    let result = app.fire_schedule("report-cleanup").await;
    assert_eq!(result["deleted"], 3, "{result}");

    for (org, id, key, expired) in &seeded {
        let record = app
            .bundle
            .aws
            .dynamodb
            .get_item()
            .table_name(app.table())
            .key(
                "pk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("ORG#{org}")),
            )
            .key(
                "sk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("REPORT#{id}")),
            )
            .send()
            .await
            .unwrap()
            .item;
        let object = app.bucket_object(key).await;
        assert_eq!(record.is_none(), *expired, "record {id}");
        assert_eq!(object.is_none(), *expired, "object {key}");
    }
    app.get(&format!("/services/reports/{fresh}/"), &token)
        .await
        .body["status"]
        .as_str()
        .map(|status| assert_eq!(status, "ready"))
        .unwrap();
}

#[tokio::test]
async fn a_report_that_cannot_be_written_fails_on_its_last_attempt_and_reaches_the_dlq() {
    let app = crate::helpers::spawn_bundle_with(|options| {
        options
            .overrides
            .insert("BUCKET_NAME".to_owned(), "no-such-bucket".to_owned());
    })
    .await;
    let token = app.token("acme", "admin");
    let id = request(
        &app,
        &token,
        json!({"type": "summary", "format": "csv", "from": "2026-01-01", "to": "2026-01-02"}),
    )
    .await;
    let report = eventually(60, "the report to fail", || async {
        let reply = app.get(&format!("/services/reports/{id}/"), &token).await;
        (reply.body["status"] == "failed").then_some(reply.body)
    })
    .await;
    assert_eq!(report["error"], "the report could not be generated");
    assert!(report.get("download_url").is_none());
    eventually(60, "the job in the dead-letter queue", || async {
        (app.queue_depth("ReportGenerateDLQ").await == 1).then_some(())
    })
    .await;
}

/// Issue 17 §2: a report schedule runs at most hourly, and an organization keeps at most
/// `MAX_SCHEDULES_PER_ORG` of them; both refusals are 400s that create nothing.
#[tokio::test]
async fn schedules_run_at_most_hourly_and_an_organization_has_a_cap() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    let schedule = |expression: &str| json!({"expression": expression, "type": "summary", "format": "csv", "period_days": 1, "recipients": ["ops@example.com"]});
    let every_minute = app
        .post(
            "/services/reports/schedules/",
            &admin,
            schedule("rate(1 minute)"),
        )
        .await;
    let problem = every_minute.problem(400);
    assert!(
        problem["errors"]["expression"][0]
            .as_str()
            .unwrap()
            .contains("once an hour"),
        "{problem}"
    );
    let cap = functions::reports_api::MAX_SCHEDULES_PER_ORG;
    for n in 0..cap {
        let created = app
            .post(
                "/services/reports/schedules/",
                &admin,
                schedule(&format!("cron({} 6 * * ? *)", n % 60)),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
    }
    let one_more = app
        .post(
            "/services/reports/schedules/",
            &admin,
            schedule("rate(1 day)"),
        )
        .await;
    assert!(
        one_more.problem(400)["detail"]
            .as_str()
            .unwrap()
            .contains("at most"),
        "{}",
        one_more.body
    );
    // Another organization has its own allowance.
    let globex = app.token("globex", "admin");
    let theirs = app
        .post(
            "/services/reports/schedules/",
            &globex,
            schedule("rate(1 day)"),
        )
        .await;
    assert_eq!(theirs.status, 201, "{}", theirs.body);
}
