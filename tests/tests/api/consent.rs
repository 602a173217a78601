//! Consent (issue 19): topics, one-click unsubscribe as a mailbox provider performs it
//! (RFC 8058: a form POST to the `List-Unsubscribe` URL, no cookies, no authentication),
//! the ledger and its history, and sends that honour it.

use serde_json::{Value, json};

use crate::helpers::{TestBundle, eventually, spawn_bundle};

async fn create_newsletter(app: &TestBundle, admin: &str) {
    let reply = app
        .post(
            "/services/topics/",
            admin,
            json!({"key": "newsletter", "name": "Monthly newsletter", "channels": ["email"]}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
}

async fn newsletter(app: &TestBundle, token: &str, to: &[&str]) -> Vec<String> {
    let recipients: Vec<Value> = to
        .iter()
        .map(|address| json!({"to": address, "variables": {}}))
        .collect();
    let reply = app
        .post(
            "/services/email/",
            token,
            json!({"subject": "News", "html": "<p>This month</p>", "topic": "newsletter", "recipients": recipients}),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.ids()
}

/// The inbox copies of one email (by its id, which the sandbox keeps in custom_args).
fn received(app: &TestBundle, email_id: &str) -> Vec<Value> {
    app.sandbox()
        .inbox()
        .into_iter()
        .filter(|m| m["custom_args"]["email_id"] == email_id)
        .collect()
}

/// The one-click URL of a received copy, checked against RFC 8058's shape.
fn one_click_url(copy: &Value) -> String {
    let headers = &copy["headers"];
    assert_eq!(
        headers["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click",
        "{copy}"
    );
    let list = headers["List-Unsubscribe"].as_str().unwrap();
    // RFC 2369: `<uri>, <uri>`, most preferred first; RFC 8058 needs the https one.
    let uris: Vec<&str> = list
        .split(", ")
        .map(|uri| {
            uri.strip_prefix('<')
                .and_then(|u| u.strip_suffix('>'))
                .unwrap_or_else(|| panic!("List-Unsubscribe is not <uri>, <uri>: {list}"))
        })
        .collect();
    assert!(uris[0].starts_with("http"), "{list}");
    assert!(
        uris[1..].iter().all(|uri| uri.starts_with("mailto:")),
        "{list}"
    );
    uris[0].to_owned()
}

/// What a mailbox provider sends: a form POST, no cookie, no authentication.
async fn press_unsubscribe(url: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert!(
        response.headers().get("set-cookie").is_none(),
        "no cookies (RFC 8058 §3.1)"
    );
    assert!(!response.status().is_redirection(), "no redirect");
    (status, response.text().await.unwrap())
}

async fn delivered_or(app: &TestBundle, token: &str, id: &str, status: &str) -> Value {
    app.email_reaches(token, id, status, 60).await
}

#[tokio::test]
async fn a_newsletter_carries_one_click_unsubscribe_and_the_next_one_honours_it() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    create_newsletter(&app, &admin).await;

    let first = newsletter(&app, &admin, &["ann@example.com", "bob@example.com"]).await;
    for id in &first {
        delivered_or(&app, &admin, id, "delivered").await;
    }
    // Every recipient's copy carries its own link.
    let ann_copy = received(&app, &first[0]).remove(0);
    let bob_copy = received(&app, &first[1]).remove(0);
    let ann_url = one_click_url(&ann_copy);
    assert_ne!(ann_url, one_click_url(&bob_copy), "links are per recipient");

    // A link scanner's GET changes nothing; the page says what the link manages.
    let page = reqwest::get(&ann_url).await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Monthly newsletter"), "{html}");
    let before = app
        .get("/services/consent/?address=ann%40example.com", &admin)
        .await;
    assert_eq!(before.body["history"], json!([]), "{}", before.body);

    let (status, _) = press_unsubscribe(&ann_url).await;
    assert_eq!(status, 200);
    let ledger = app
        .get("/services/consent/?address=Ann%40example.com", &admin)
        .await;
    assert_eq!(ledger.status, 200, "{}", ledger.body);
    let history = ledger.body["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{}", ledger.body);
    assert_eq!(history[0]["topic"], "newsletter");
    assert_eq!(history[0]["state"], "opted_out");
    assert_eq!(history[0]["source"], "one_click");
    assert_eq!(history[0]["evidence"]["message_id"], first[0].as_str());
    assert_eq!(ledger.body["states"][0]["state"], "opted_out");

    // The next newsletter skips Ann and reaches Bob; a transactional email still reaches her.
    let calls = app.sandbox().calls();
    let second = newsletter(&app, &admin, &["ann@example.com", "bob@example.com"]).await;
    let skipped = delivered_or(&app, &admin, &second[0], "suppressed").await;
    assert!(received(&app, &second[0]).is_empty(), "{skipped}");
    delivered_or(&app, &admin, &second[1], "delivered").await;
    assert_eq!(app.sandbox().calls(), calls + 1, "one call, for Bob");
    let receipt = app
        .post(
            "/services/email/",
            &admin,
            json!({"to": "ann@example.com", "subject": "Your receipt", "text": "Thanks"}),
        )
        .await;
    assert_eq!(receipt.status, 202, "{}", receipt.body);
    let receipt_id = receipt.body["id"].as_str().unwrap().to_owned();
    delivered_or(&app, &admin, &receipt_id, "delivered").await;
    let copy = received(&app, &receipt_id).remove(0);
    assert!(
        copy["headers"].get("List-Unsubscribe").is_none(),
        "a transactional email has no unsubscribe link: {copy}"
    );

    // Undo from the page: subscribed again, in the history.
    let undo = reqwest::Client::new()
        .post(&ann_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("topic=newsletter&state=opted_in")
        .send()
        .await
        .unwrap();
    assert_eq!(undo.status(), 200);
    let ledger = app
        .get("/services/consent/?address=ann%40example.com", &admin)
        .await;
    assert_eq!(ledger.body["history"].as_array().unwrap().len(), 2);
    assert_eq!(ledger.body["states"][0]["state"], "opted_in");
    // The change is audited under the organization.
    eventually(30, "the consent audit entries", || async {
        let audit = app
            .get("/services/audit-logs/?action=consent.record", &admin)
            .await;
        (audit.body["items"].as_array().map_or(0, Vec::len) >= 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn links_that_do_not_verify_answer_400_and_change_nothing() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    create_newsletter(&app, &admin).await;
    let ids = newsletter(&app, &admin, &["ann@example.com"]).await;
    delivered_or(&app, &admin, &ids[0], "delivered").await;
    let url = one_click_url(&received(&app, &ids[0]).remove(0));
    let (base, token) = url.rsplit_once('/').unwrap();

    // A key taken out of the secret revokes its links (rotation without overlap; read by
    // the function's first call here, as after a cold start).
    app.bundle
        .aws
        .secrets
        .put_secret_value()
        .secret_id(app.bundle.resource("UnsubscribeSecret"))
        .secret_string(
            json!({"UNSUBSCRIBE_SIGNING_KEYS": "a-completely-new-signing-key-of-enough-length"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let (status, _) = press_unsubscribe(&url).await;
    assert_eq!(status, 400, "a link signed with a removed key");

    // Tampered: another organization in the claim, the signature left as it was.
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 4, "v1.<key>.<claim>.<mac>: {token}");
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claim: Value = serde_json::from_slice(&engine.decode(parts[2]).unwrap()).unwrap();
    claim["o"] = json!("globex");
    let foreign = format!(
        "{base}/{}.{}.{}.{}",
        parts[0],
        parts[1],
        engine.encode(serde_json::to_vec(&claim).unwrap()),
        parts[3]
    );
    let flipped = format!(
        "{base}/{}",
        token.replacen(&parts[3][..4], &"A".repeat(4), 1)
    );
    for bad in [
        foreign.as_str(),
        &flipped,
        &format!("{base}/nonsense"),
        &format!("{base}/"),
    ] {
        let (status, body) = press_unsubscribe(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            !body.contains("ann@example.com"),
            "a refusal reveals nothing"
        );
    }

    for org in ["acme", "globex"] {
        let token = app.token(org, "admin");
        let ledger = app
            .get("/services/consent/?address=ann%40example.com", &token)
            .await;
        assert_eq!(ledger.body["history"], json!([]), "{org}: {}", ledger.body);
    }
}

#[tokio::test]
async fn the_ledger_keeps_every_change_with_its_source_and_validates_what_it_is_given() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    let member = app.token("acme", "member");
    create_newsletter(&app, &admin).await;

    let put = |body: Value| {
        let app = &app;
        let admin = admin.clone();
        async move {
            app.call("PUT", "/services/consent/", Some(&admin), Some(body))
                .await
        }
    };
    let recorded = put(json!({"address": "Cid@Example.com", "topic": "newsletter", "state": "opted_in", "source": "api", "evidence": {"form": "signup-2026-11"}})).await;
    assert_eq!(recorded.status, 200, "{}", recorded.body);
    let recorded =
        put(json!({"address": "cid@example.com", "state": "opted_out", "source": "import"})).await;
    assert_eq!(recorded.status, 200, "{}", recorded.body);

    for (body, field) in [
        (
            json!({"address": "cid@example.com", "topic": "newsletter", "state": "opted_in"}),
            "source",
        ),
        (
            json!({"address": "cid@example.com", "state": "opted_in", "source": "one_click"}),
            "source",
        ),
        (
            json!({"address": "cid@example.com", "state": "maybe", "source": "api"}),
            "state",
        ),
        (
            json!({"address": "not-an-address", "state": "opted_in", "source": "api"}),
            "address",
        ),
        (
            json!({"address": "cid@example.com", "topic": "nope", "state": "opted_in", "source": "api"}),
            "topic",
        ),
        (
            json!({"phone": "+1415", "state": "opted_in", "source": "api"}),
            "phone",
        ),
    ] {
        let reply = put(body.clone()).await;
        let problem = reply.problem(400);
        assert!(problem["errors"].get(field).is_some(), "{body}: {problem}");
    }
    let forbidden = app
        .call(
            "PUT",
            "/services/consent/",
            Some(&member),
            Some(json!({"address": "cid@example.com", "state": "opted_in", "source": "api"})),
        )
        .await;
    forbidden.problem(403);

    let ledger = app
        .get("/services/consent/?address=cid%40example.com", &member)
        .await;
    let history = ledger.body["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{}", ledger.body);
    assert_eq!(history[0]["source"], "api");
    assert_eq!(history[0]["evidence"]["form"], "signup-2026-11");
    assert_eq!(history[0]["actor"], "user-1");
    assert_eq!(history[1]["topic"], "all");
    assert_eq!(history[1]["source"], "import");

    // Opted out of everything: even a transactional email stops.
    let reply = app
        .post(
            "/services/email/",
            &admin,
            json!({"to": "cid@example.com", "subject": "Receipt", "text": "Thanks"}),
        )
        .await;
    let id = reply.body["id"].as_str().unwrap().to_owned();
    delivered_or(&app, &admin, &id, "suppressed").await;
}

#[tokio::test]
async fn topics_are_defined_by_admins_and_sends_must_name_a_known_one() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    let member = app.token("acme", "member");
    app.post(
        "/services/topics/",
        &member,
        json!({"key": "news", "name": "News"}),
    )
    .await
    .problem(403);
    for (body, field) in [
        (json!({"key": "All", "name": "x"}), "key"),
        (json!({"key": "all", "name": "x"}), "key"),
        (json!({"key": "ok", "name": ""}), "name"),
        (
            json!({"key": "ok", "name": "x", "channels": ["fax"]}),
            "channels",
        ),
    ] {
        let reply = app.post("/services/topics/", &admin, body.clone()).await;
        assert!(
            reply.problem(400)["errors"].get(field).is_some(),
            "{body}: {}",
            reply.body
        );
    }
    let created = app
        .post(
            "/services/topics/",
            &admin,
            json!({"key": "product-news", "name": "Product news", "default_opted_in": false}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["channels"], json!(["email"]));
    app.post(
        "/services/topics/",
        &admin,
        json!({"key": "product-news", "name": "Again"}),
    )
    .await
    .problem(409);
    let patched = app
        .call(
            "PATCH",
            "/services/topics/product-news/",
            Some(&admin),
            Some(json!({"description": "Launches, twice a year"})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["name"], "Product news");
    let listed = app.get("/services/topics/", &member).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);

    // An opt-in topic reaches only those who opted in.
    let reply = app
        .post(
            "/services/email/",
            &admin,
            json!({"subject": "Launch", "text": "New!", "topic": "product-news", "recipients": [{"to": "dee@example.com"}, {"to": "eli@example.com"}]}),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let ids = reply.ids();
    delivered_or(&app, &admin, &ids[0], "suppressed").await;
    delivered_or(&app, &admin, &ids[1], "suppressed").await;
    app.call("PUT", "/services/consent/", Some(&admin), Some(json!({"address": "eli@example.com", "topic": "product-news", "state": "opted_in", "source": "api"}))).await;
    let reply = app
        .post(
            "/services/email/",
            &admin,
            json!({"subject": "Launch", "text": "New!", "topic": "product-news", "recipients": [{"to": "dee@example.com"}, {"to": "eli@example.com"}]}),
        )
        .await;
    let ids = reply.ids();
    delivered_or(&app, &admin, &ids[0], "suppressed").await;
    delivered_or(&app, &admin, &ids[1], "delivered").await;

    let unknown = app
        .post(
            "/services/email/",
            &admin,
            json!({"to": "ann@example.com", "subject": "S", "text": "T", "topic": "nope"}),
        )
        .await;
    assert!(unknown.problem(400)["errors"].get("topic").is_some());

    let deleted = app
        .call(
            "DELETE",
            "/services/topics/product-news/",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    app.get("/services/topics/product-news/", &admin)
        .await
        .problem(404);
}

/// Issue 19's acceptance: one address's whole history, each change with its source and
/// evidence — a bounce (SendGrid's signed event), the suppression lifted by an admin, a
/// one-click unsubscribe, and a re-subscription recorded through `PUT`.
#[tokio::test]
async fn an_address_history_shows_a_bounce_its_lifting_a_one_click_and_a_resubscribe() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    create_newsletter(&app, &admin).await;
    let ledger_of = || async {
        app.get("/services/consent/?address=gone%40bounce.test", &admin)
            .await
            .body
    };

    let ids = newsletter(&app, &admin, &["gone@bounce.test"]).await;
    delivered_or(&app, &admin, &ids[0], "bounced").await;
    let history = eventually(30, "the bounce in the ledger", || async {
        let ledger = ledger_of().await;
        (ledger["history"].as_array().map_or(0, Vec::len) == 1).then_some(ledger)
    })
    .await;
    let bounce = &history["history"][0];
    assert_eq!(bounce["source"], "bounce");
    assert_eq!(bounce["topic"], "all");
    assert_eq!(bounce["state"], "opted_out");
    assert_eq!(bounce["actor"], "sendgrid");
    assert_eq!(bounce["evidence"]["email_id"], ids[0].as_str());
    assert!(bounce["evidence"]["sg_event_id"].is_string());

    let lifted = app
        .call(
            "DELETE",
            "/services/email/suppressions/gone%40bounce.test/",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(lifted.status, 204, "{}", lifted.body);
    let url = one_click_url(&received(&app, &ids[0]).remove(0));
    assert_eq!(press_unsubscribe(&url).await.0, 200);
    let resubscribed = app
        .call(
            "PUT",
            "/services/consent/",
            Some(&admin),
            Some(json!({"address": "gone@bounce.test", "topic": "newsletter", "state": "opted_in", "source": "api", "evidence": {"page": "preferences"}})),
        )
        .await;
    assert_eq!(resubscribed.status, 200, "{}", resubscribed.body);

    let ledger = ledger_of().await;
    let steps: Vec<(String, String, String)> = ledger["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["source"].as_str().unwrap().to_owned(),
                c["topic"].as_str().unwrap().to_owned(),
                c["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("bounce", "all", "opted_out"),
        ("api", "all", "opted_in"),
        ("one_click", "newsletter", "opted_out"),
        ("api", "newsletter", "opted_in"),
    ]
    .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
    assert_eq!(steps, expected, "{ledger}");
    assert_eq!(
        ledger["history"][1]["evidence"]["action"],
        "suppression lifted"
    );
    assert_eq!(
        ledger["history"][2]["evidence"]["message_id"],
        ids[0].as_str()
    );
}

/// An SMS from the token's organization to `number`, delivered: the number's inbound SMS
/// then belong to that organization (a shared sender).
async fn texted_by(app: &TestBundle, token: &str, number: &str) {
    let sent = app
        .post(
            "/services/sms/",
            token,
            json!({"to": number, "body": "Your code is 1234"}),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    app.sms_reaches(token, sent.body["id"].as_str().unwrap(), "delivered")
        .await;
}

#[tokio::test]
async fn sms_keywords_land_in_the_ledger_and_help_answers_with_the_help_text() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    let ann = "+14155552671";
    texted_by(&app, &admin, ann).await;

    assert!(app.inbound_sms(ann, "STOP").await.ends_with("<Response/>"));
    let help = app.inbound_sms(ann, "help").await;
    assert!(
        help.contains("<Message>Messages from acme. Reply STOP to opt out, START to opt back in."),
        "HELP answers with the help text in TwiML: {help}"
    );
    assert!(app.inbound_sms(ann, "Start").await.ends_with("<Response/>"));

    let ledger = app
        .get("/services/consent/?phone=%2B14155552671", &admin)
        .await;
    let history = ledger.body["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{}", ledger.body);
    // HELP is kept with its answer and the state it found (still out after the STOP).
    for (entry, (state, keyword)) in history.iter().zip([
        ("opted_out", "STOP"),
        ("opted_out", "HELP"),
        ("opted_in", "START"),
    ]) {
        assert_eq!(entry["channel"], "sms");
        assert_eq!(entry["source"], "sms_keyword");
        assert_eq!(entry["state"], state);
        assert_eq!(entry["evidence"]["keyword"], keyword);
        assert!(entry["evidence"]["message_sid"].is_string());
    }
    assert!(
        history[1]["evidence"]["answer"]
            .as_str()
            .unwrap()
            .starts_with("Messages from acme."),
        "{}",
        history[1]
    );
    // ... and changes no state: the STOP's source still stands for the opt-out it made.
    assert_eq!(
        ledger.body["states"][0]["state"], "opted_in",
        "{}",
        ledger.body
    );

    // An opt-out recorded elsewhere stops SMS too, without a STOP.
    let recorded = app
        .call(
            "PUT",
            "/services/consent/",
            Some(&admin),
            Some(json!({"phone": ann, "state": "opted_out", "source": "api"})),
        )
        .await;
    assert_eq!(recorded.status, 200, "{}", recorded.body);
    let blocked = app
        .post(
            "/services/sms/",
            &admin,
            json!({"to": ann, "body": "Sale!"}),
        )
        .await;
    app.sms_reaches(&admin, blocked.body["id"].as_str().unwrap(), "suppressed")
        .await;
}

#[tokio::test]
async fn the_ledger_exports_as_formula_safe_csv_for_its_organization_only() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    for (address, evidence) in [
        ("ann@example.com", json!({"=HYPERLINK(1)": "x"})),
        ("bob@example.com", json!({"note": "signup"})),
    ] {
        let reply = app
            .call(
                "PUT",
                "/services/consent/",
                Some(&admin),
                Some(json!({"address": address, "state": "opted_out", "source": "import", "evidence": evidence})),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let export = app.get("/services/consent/export/", &admin).await;
    assert_eq!(export.status, 200);
    assert!(
        export.content_type.starts_with("text/csv"),
        "{}",
        export.content_type
    );
    let csv = export.body.as_str().unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "at,channel,subject,topic,state,source,actor,evidence"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        csv.contains(",email,ann@example.com,all,opted_out,import,user-1,"),
        "{csv}"
    );
    assert!(
        csv.contains(",'=HYPERLINK(1)=x\r\n"),
        "a cell a spreadsheet would run is guarded: {csv}"
    );
    assert!(csv.contains(",note=signup\r\n"), "{csv}");

    let other = app.token("globex", "admin");
    let theirs = app.get("/services/consent/export/", &other).await;
    assert_eq!(
        theirs.body.as_str().unwrap().lines().count(),
        1,
        "only the header"
    );
    app.get("/services/consent/export/?organization=acme", &other)
        .await
        .problem(403);
    let superuser = app.token("platform", "superuser");
    let seen = app
        .get("/services/consent/export/?organization=acme", &superuser)
        .await;
    assert_eq!(seen.body.as_str().unwrap().lines().count(), 3);
    app.get("/services/consent/export/?cursor=nope", &admin)
        .await
        .problem(400);
    app.get("/services/consent/export/", &app.token("acme", "member"))
        .await
        .problem(403);
}

/// The recipient's own action at SendGrid, as the sandbox posts it: a group unsubscribe
/// opts out of the email's topic, once however often the event arrives.
#[tokio::test]
async fn a_group_unsubscribe_at_sendgrid_opts_out_of_the_emails_topic_once() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    create_newsletter(&app, &admin).await;
    let ids = newsletter(&app, &admin, &["ann@example.com"]).await;
    delivered_or(&app, &admin, &ids[0], "delivered").await;

    let event: Value = app
        .http
        .post(app.bundle.url("/sandbox/sendgrid/_engagement"))
        .json(&json!({"email_id": ids[0], "event": "group_unsubscribe"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(event["event"], "group_unsubscribe", "{event}");
    // SendGrid retries a batch it got no 2xx for: the same event again changes nothing.
    app.sandbox()
        .post_events(std::slice::from_ref(&event))
        .await;

    let ledger = app
        .get("/services/consent/?address=ann%40example.com", &admin)
        .await;
    let history = ledger.body["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "recorded once: {}", ledger.body);
    assert_eq!(history[0]["source"], "provider_unsubscribe");
    assert_eq!(history[0]["topic"], "newsletter");
    assert_eq!(history[0]["state"], "opted_out");
    assert_eq!(history[0]["evidence"]["sg_event_id"], event["sg_event_id"]);
}

#[tokio::test]
async fn an_sms_topic_skips_the_numbers_opted_out_of_it_and_a_transactional_sms_goes_out() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    let created = app
        .post(
            "/services/topics/",
            &admin,
            json!({"key": "alerts", "name": "Stock alerts", "channels": ["sms"]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let ann = "+14155552671";
    let recorded = app
        .call(
            "PUT",
            "/services/consent/",
            Some(&admin),
            Some(json!({"phone": ann, "topic": "alerts", "state": "opted_out", "source": "api"})),
        )
        .await;
    assert_eq!(recorded.status, 200, "{}", recorded.body);

    let alert = app
        .post(
            "/services/sms/",
            &admin,
            json!({"to": ann, "body": "Back in stock", "topic": "alerts"}),
        )
        .await;
    assert_eq!(alert.status, 202, "{}", alert.body);
    app.sms_reaches(&admin, alert.body["id"].as_str().unwrap(), "suppressed")
        .await;
    let code = app
        .post(
            "/services/sms/",
            &admin,
            json!({"to": ann, "body": "Your code is 1234"}),
        )
        .await;
    app.sms_reaches(&admin, code.body["id"].as_str().unwrap(), "delivered")
        .await;

    // A topic for email only is not one an SMS may name.
    create_newsletter(&app, &admin).await;
    let refused = app
        .post(
            "/services/sms/",
            &admin,
            json!({"to": ann, "body": "News", "topic": "newsletter"}),
        )
        .await;
    assert!(refused.problem(400)["errors"].get("topic").is_some());
}

/// A mail client without one-click uses the `mailto:` of `List-Unsubscribe`: the email it
/// sends reaches the unsubscribe function through SendGrid's Inbound Parse (the sandbox
/// posts it as Inbound Parse does), and opts the address out of the topic with the email
/// as evidence. An email to that address without a valid token changes nothing.
#[tokio::test]
async fn a_mailto_unsubscribe_through_inbound_parse_opts_out_of_the_topic() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    create_newsletter(&app, &admin).await;
    let ids = newsletter(&app, &admin, &["dee@example.com"]).await;
    delivered_or(&app, &admin, &ids[0], "delivered").await;
    let copy = received(&app, &ids[0]).remove(0);
    one_click_url(&copy);
    let list = copy["headers"]["List-Unsubscribe"].as_str().unwrap();
    assert!(
        list.contains("<mailto:unsubscribe@parse.sandbox.test?subject=unsubscribe%20v1."),
        "{list}"
    );

    let reply: Value = app
        .http
        .post(app.bundle.url("/sandbox/sendgrid/_mail_reply"))
        .json(&json!({"email_id": ids[0]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["inbound_parse_status"], 200, "{reply}");
    let ledger = app
        .get("/services/consent/?address=dee%40example.com", &admin)
        .await;
    let history = ledger.body["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{}", ledger.body);
    assert_eq!(history[0]["source"], "mail_reply");
    assert_eq!(history[0]["topic"], "newsletter");
    assert_eq!(history[0]["state"], "opted_out");
    assert_eq!(history[0]["evidence"]["message_id"], ids[0].as_str());
    assert_eq!(history[0]["evidence"]["from"], "dee@example.com");

    // Inbound Parse drops what answers 2xx: an email with a forged or no token is accepted
    // and ignored, and a body that is not multipart is refused.
    let inbound = app.bundle.url("/hooks/unsubscribe/inbound");
    for subject in ["unsubscribe", "unsubscribe v1.k.Zm9v.YmFy"] {
        let body = format!(
            "--b\r\nContent-Disposition: form-data; name=\"subject\"\r\n\r\n{subject}\r\n--b--\r\n"
        );
        let response = app
            .http
            .post(&inbound)
            .header("content-type", "multipart/form-data; boundary=b")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let response = app
        .http
        .post(&inbound)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let after = app
        .get("/services/consent/?address=dee%40example.com", &admin)
        .await;
    assert_eq!(
        after.body["history"].as_array().unwrap().len(),
        1,
        "{}",
        after.body
    );
}

/// An organization sets its own answer to HELP (CTIA: name the program, say how to opt
/// out); another organization keeps the deployment's, and DELETE goes back to it.
#[tokio::test]
async fn an_organization_answers_help_with_its_own_text() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    let member = app.token("acme", "member");
    let ann = "+14155552672";
    texted_by(&app, &admin, ann).await;

    let shown = app.get("/services/consent/sms-help/", &member).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.body["set_by"], "deployment");
    assert!(
        shown.body["text"]
            .as_str()
            .unwrap()
            .starts_with("Messages from acme.")
    );

    let text = "Acme alerts: help at acme.example/help. Reply STOP to opt out.";
    for (token, body, status, field) in [
        (&member, json!({"text": text}), 403, None),
        (
            &admin,
            json!({"text": "Acme alerts, reply with questions"}),
            400,
            Some("text"),
        ),
        (&admin, json!({"text": ""}), 400, Some("text")),
        (
            &admin,
            json!({"text": "STOP ".repeat(70)}),
            400,
            Some("text"),
        ),
        (&admin, json!({"text": text, "extra": 1}), 400, None),
    ] {
        let reply = app
            .call(
                "PUT",
                "/services/consent/sms-help/",
                Some(token),
                Some(body),
            )
            .await;
        assert_eq!(reply.status, status, "{}", reply.body);
        if let Some(field) = field {
            assert!(reply.body["errors"][field].is_array(), "{}", reply.body);
        }
    }
    assert!(
        app.inbound_sms(ann, "HELP")
            .await
            .contains("Messages from acme.")
    );

    let set = app
        .call(
            "PUT",
            "/services/consent/sms-help/",
            Some(&admin),
            Some(json!({"text": text})),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(set.body["set_by"], "organization");
    let help = app.inbound_sms(ann, "info").await;
    assert!(
        help.contains(&format!("<Message>{text}</Message>")),
        "{help}"
    );
    let other = app
        .get("/services/consent/sms-help/", &app.token("globex", "admin"))
        .await;
    assert_eq!(other.body["set_by"], "deployment", "{}", other.body);
    // Only a platform superuser may name another organization.
    let filtered = "/services/consent/sms-help/?organization=acme";
    app.get(filtered, &app.token("globex", "admin"))
        .await
        .problem(403);
    let seen = app.get(filtered, &app.token("platform", "superuser")).await;
    assert_eq!(seen.body["text"], text, "{}", seen.body);

    let reset = app
        .call("DELETE", "/services/consent/sms-help/", Some(&admin), None)
        .await;
    assert_eq!(reset.status, 204, "{}", reset.body);
    assert!(
        app.inbound_sms(ann, "HELP")
            .await
            .contains("Messages from acme.")
    );
}
