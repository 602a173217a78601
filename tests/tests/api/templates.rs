//! The template admin API (issue: foundation): CRUD, list fields, filters, ordering,
//! pagination, preview, roles and organization isolation.

use serde_json::{Value, json};

use crate::helpers::{TEST_INDEX_LAG, TestBundle, spawn_bundle};

fn email(name: &str) -> Value {
    json!({"name": name, "subject": "Hi {{first_name}}", "html": "<p>Hello {{first_name}}</p>", "text": "Hello {{first_name}}", "variables": ["first_name"]})
}

async fn create(app: &TestBundle, token: &str, kind: &str, body: Value) -> String {
    let reply = app
        .post(&format!("/services/templates/{kind}/"), token, body)
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_owned()
}

fn names(reply: &Value) -> Vec<String> {
    reply["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn crud_round_trip_with_list_fields() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");

    let id = create(&app, &admin, "email", email("Welcome")).await;
    let reply = app
        .get(&format!("/services/templates/email/{id}"), &admin)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["organization"], "acme");
    assert_eq!(reply.body["is_active"], true);
    assert!(reply.body["created_at"].is_string() && reply.body["updated_at"].is_string());

    let sms = create(
        &app,
        &admin,
        "sms",
        json!({"name": "otp", "body": "Ваш код {{code}}"}),
    )
    .await;
    let listed = app.get("/services/templates/sms", &admin).await;
    let item = &listed.body["items"][0];
    assert_eq!(item["id"], sms.as_str());
    assert_eq!(
        (
            item["encoding"].as_str(),
            item["segments"].as_u64(),
            item["characters"].as_u64()
        ),
        (Some("UCS-2"), Some(1), Some(16))
    );

    create(
        &app,
        &admin,
        "message",
        json!({"name": "promo", "body": "Sale!", "media_urls": ["https://cdn.example.com/a.png"]}),
    )
    .await;
    let messages = app.get("/services/templates/message/", &admin).await;
    assert_eq!(messages.body["items"][0]["has_media"], true);

    let patched = app
        .call(
            "PATCH",
            &format!("/services/templates/email/{id}/"),
            Some(&admin),
            Some(json!({"is_active": false})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["is_active"], false);
    assert_eq!(
        patched.body["subject"], "Hi {{first_name}}",
        "PATCH keeps the other fields"
    );

    let replaced = app
        .call(
            "PUT",
            &format!("/services/templates/email/{id}"),
            Some(&admin),
            Some(json!({"name": "W2", "subject": "S", "text": "T"})),
        )
        .await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert_eq!(
        (
            replaced.body["name"].as_str(),
            replaced.body["html"].is_null(),
            replaced.body["is_active"].as_bool()
        ),
        (Some("W2"), true, Some(true))
    );

    let deleted = app
        .call(
            "DELETE",
            &format!("/services/templates/email/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    app.get(&format!("/services/templates/email/{id}"), &admin)
        .await
        .problem(404);
    app.call(
        "DELETE",
        &format!("/services/templates/email/{id}"),
        Some(&admin),
        None,
    )
    .await
    .problem(404);
    assert!(names(&app.get("/services/templates/email", &admin).await.body).is_empty());
}

#[tokio::test]
async fn soft_delete_keeps_the_record_for_audit() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    let id = create(&app, &admin, "sms", json!({"name": "gone", "body": "x"})).await;
    app.call(
        "DELETE",
        &format!("/services/templates/sms/{id}"),
        Some(&admin),
        None,
    )
    .await;

    let stored = app
        .bundle
        .aws
        .dynamodb
        .get_item()
        .table_name(app.table())
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("ORG#acme".into()),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("TPL#sms#{id}")),
        )
        .send()
        .await
        .unwrap();
    let item = stored.item.expect("the deleted template is still stored");
    assert!(item.contains_key("deleted_at"));
    assert!(
        !item.contains_key("gsi1pk"),
        "deleted templates leave the indexes"
    );
}

#[tokio::test]
async fn another_organization_sees_nothing() {
    let app = spawn_bundle().await;
    let acme = app.token("acme", "admin");
    let globex = app.token("globex", "admin");
    let id = create(&app, &acme, "email", email("Secret")).await;
    let path = format!("/services/templates/email/{id}/");

    app.get(&path, &globex).await.problem(404);
    app.call("PUT", &path, Some(&globex), Some(email("Stolen")))
        .await
        .problem(404);
    app.call(
        "PATCH",
        &path,
        Some(&globex),
        Some(json!({"name": "Stolen"})),
    )
    .await
    .problem(404);
    app.post(
        &format!("{path}preview/"),
        &globex,
        json!({"variables": {"first_name": "x"}}),
    )
    .await
    .problem(404);
    app.call("DELETE", &path, Some(&globex), None)
        .await
        .problem(404);
    assert!(names(&app.get("/services/templates/email/", &globex).await.body).is_empty());

    // Untouched for its owner.
    let own = app.get(&path, &acme).await;
    assert_eq!(own.body["name"], "Secret");
    // A 404 for another organization's id looks exactly like one for an id that never existed.
    let missing = app
        .get(
            &format!(
                "/services/templates/email/{}/",
                shared::domain::RecordId::new()
            ),
            &globex,
        )
        .await;
    assert_eq!(missing.body, app.get(&path, &globex).await.body);
}

#[tokio::test]
async fn pagination_is_complete_and_cursors_stay_in_their_organization() {
    let app = spawn_bundle().await;
    let acme = app.token("acme", "admin");
    let globex = app.token("globex", "admin");
    for n in 0..5 {
        create(
            &app,
            &acme,
            "sms",
            json!({"name": format!("t{n}"), "body": "b"}),
        )
        .await;
    }
    create(&app, &globex, "sms", json!({"name": "g0", "body": "b"})).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/services/templates/sms/?limit=2&cursor={c}"),
            None => "/services/templates/sms/?limit=2".to_owned(),
        };
        let page = app.get(&path, &acme).await;
        assert_eq!(page.status, 200, "{}", page.body);
        seen.extend(names(&page.body));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec!["t4", "t3", "t2", "t1", "t0"],
        "newest first, each once"
    );

    let first = app.get("/services/templates/sms/?limit=2", &acme).await;
    let token = first.body["next_cursor"].as_str().unwrap();
    app.get(
        &format!("/services/templates/sms/?limit=2&cursor={token}"),
        &globex,
    )
    .await
    .problem(400);
    app.get(
        &format!("/services/templates/sms/?limit=2&is_active=true&cursor={token}"),
        &acme,
    )
    .await
    .problem(400);
    app.get("/services/templates/sms/?cursor=bm90LWEtY3Vyc29y", &acme)
        .await
        .problem(400);
    app.get("/services/templates/sms/?limit=500", &acme)
        .await
        .problem(400);
}

#[tokio::test]
async fn filters_search_and_ordering() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    create(
        &app,
        &admin,
        "email",
        json!({"name": "Beta", "subject": "Invoice ready", "text": "x"}),
    )
    .await;
    let before_second = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    create(
        &app,
        &admin,
        "email",
        json!({"name": "alpha", "subject": "Welcome", "html": "<b>Password reset</b>"}),
    )
    .await;
    create(
        &app,
        &admin,
        "email",
        json!({"name": "Gamma", "subject": "Off", "text": "x", "is_active": false}),
    )
    .await;

    // Name order comes from an index, which lags writes a moment (as on AWS).
    tokio::time::sleep(TEST_INDEX_LAG + std::time::Duration::from_millis(200)).await;
    let get = |query: &str| {
        let path = format!("/services/templates/email/?{query}");
        let app = &app;
        let admin = admin.clone();
        async move {
            let reply = app.get(&path, &admin).await;
            assert_eq!(reply.status, 200, "{path}: {}", reply.body);
            names(&reply.body)
        }
    };
    assert_eq!(
        get("search=INVOICE").await,
        vec!["Beta"],
        "search covers the subject, case-insensitively"
    );
    assert_eq!(
        get("search=password").await,
        vec!["alpha"],
        "search covers the body"
    );
    assert_eq!(get("is_active=false").await, vec!["Gamma"]);
    assert_eq!(get("ordering=name").await, vec!["alpha", "Beta", "Gamma"]);
    assert_eq!(
        get("ordering=-name&is_active=true").await,
        vec!["Beta", "alpha"]
    );
    assert_eq!(
        get("ordering=created_at").await,
        vec!["Beta", "alpha", "Gamma"]
    );
    let after = before_second
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        .replace('+', "%2B");
    assert_eq!(
        get(&format!("created_after={after}")).await,
        vec!["Gamma", "alpha"]
    );
    assert_eq!(get(&format!("created_before={after}")).await, vec!["Beta"]);
    assert_eq!(
        get(&format!("created_after={after}&ordering=name")).await,
        vec!["alpha", "Gamma"]
    );

    app.get("/services/templates/email/?ordering=color", &admin)
        .await
        .problem(400);
    app.get("/services/templates/email/?is_active=maybe", &admin)
        .await
        .problem(400);
    app.get("/services/templates/email/?created_after=yesterday", &admin)
        .await
        .problem(400);
}

#[tokio::test]
async fn validation_errors_name_their_fields_and_change_nothing() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");

    let reply = app
        .post(
            "/services/templates/email/",
            &admin,
            json!({"name": "", "subject": "Hi {{#if}}"}),
        )
        .await;
    let errors = &reply.problem(400)["errors"];
    assert!(
        errors["name"].is_array() && errors["subject"].is_array() && errors["html"].is_array(),
        "{errors}"
    );

    let reply = app
        .post(
            "/services/templates/sms/",
            &admin,
            json!({"name": "x", "body": "b", "colour": "red"}),
        )
        .await;
    assert!(reply.problem(400)["errors"]["colour"].is_array());
    let reply = app
        .post(
            "/services/templates/message/",
            &admin,
            json!({"name": "x", "body": "b", "media_urls": ["ftp://x"]}),
        )
        .await;
    assert!(reply.problem(400)["errors"]["media_urls"].is_array());
    let reply = app
        .post(
            "/services/templates/sms/",
            &admin,
            json!({"name": 7, "body": "b"}),
        )
        .await;
    assert!(reply.problem(400)["errors"]["name"].is_array());

    let raw = app
        .http
        .post(app.bundle.url("/services/templates/sms/"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let raw = app
        .http
        .post(app.bundle.url("/services/templates/sms/"))
        .bearer_auth(&admin)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 415);

    for kind in ["email", "sms", "message"] {
        assert!(
            names(
                &app.get(&format!("/services/templates/{kind}/"), &admin)
                    .await
                    .body
            )
            .is_empty(),
            "{kind}: nothing was created"
        );
    }
    let id = create(&app, &admin, "sms", json!({"name": "keep", "body": "b"})).await;
    let reply = app
        .call(
            "PATCH",
            &format!("/services/templates/sms/{id}"),
            Some(&admin),
            Some(json!({"body": ""})),
        )
        .await;
    reply.problem(400);
    assert_eq!(
        app.get(&format!("/services/templates/sms/{id}"), &admin)
            .await
            .body["body"],
        "b",
        "a failed update changes nothing"
    );
}

#[tokio::test]
async fn preview_escapes_html_and_names_missing_variables() {
    let app = spawn_bundle().await;
    let member = app.token("acme", "member");
    let admin = app.token("acme", "admin");
    let id = create(&app, &admin, "email", email("Welcome")).await;
    let path = format!("/services/templates/email/{id}/preview/");

    let reply = app
        .post(
            &path,
            &member,
            json!({"variables": {"first_name": "<script>alert(1)</script>"}}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.body["html"],
        "<p>Hello &lt;script&gt;alert(1)&lt;/script&gt;</p>"
    );
    assert_eq!(reply.body["text"], "Hello <script>alert(1)</script>");
    assert_eq!(reply.body["subject"], "Hi <script>alert(1)</script>");

    let reply = app
        .post(&path, &member, json!({"variables": {"last_name": "x"}}))
        .await;
    let problem = reply.problem(400);
    assert!(
        problem["detail"].as_str().unwrap().contains("first_name"),
        "{problem}"
    );
    assert!(
        problem["errors"]["variables"][0]
            .as_str()
            .unwrap()
            .contains("first_name")
    );

    let sms = create(
        &app,
        &admin,
        "sms",
        json!({"name": "otp", "body": "Code {{code}}"}),
    )
    .await;
    let reply = app
        .post(
            &format!("/services/templates/sms/{sms}/preview"),
            &member,
            json!({"variables": {"code": "Привет"}}),
        )
        .await;
    assert_eq!(
        (reply.body["body"].as_str(), reply.body["encoding"].as_str()),
        (Some("Code Привет"), Some("UCS-2"))
    );
    app.post(
        &format!("/services/templates/sms/{sms}/preview"),
        &member,
        json!({"variables": [1]}),
    )
    .await
    .problem(400);
}

#[tokio::test]
async fn roles_and_authentication() {
    let app = spawn_bundle().await;
    let admin = app.token("acme", "admin");
    let member = app.token("acme", "member");
    let id = create(&app, &admin, "sms", json!({"name": "t", "body": "b"})).await;

    app.call("GET", "/services/templates/sms/", None, None)
        .await
        .problem(401);
    app.call("GET", "/services/templates/sms/", Some("not-a-token"), None)
        .await
        .problem(401);
    let no_org = app.bundle.auth.mint("u", None, &["admin"], 600).unwrap();
    app.get("/services/templates/sms/", &no_org)
        .await
        .problem(401);
    let no_role = app.bundle.auth.mint("u", Some("acme"), &[], 600).unwrap();
    app.get("/services/templates/sms/", &no_role)
        .await
        .problem(403);

    assert_eq!(
        app.get("/services/templates/sms/", &member).await.status,
        200
    );
    app.post(
        "/services/templates/sms/",
        &member,
        json!({"name": "m", "body": "b"}),
    )
    .await
    .problem(403);
    app.call(
        "PATCH",
        &format!("/services/templates/sms/{id}"),
        Some(&member),
        Some(json!({"name": "m"})),
    )
    .await
    .problem(403);
    app.call(
        "DELETE",
        &format!("/services/templates/sms/{id}"),
        Some(&member),
        None,
    )
    .await
    .problem(403);
    app.get("/services/templates/fax/", &member)
        .await
        .problem(404);
    app.get("/services/templates/sms/not-an-id", &member)
        .await
        .problem(404);
    app.call(
        "POST",
        &format!("/services/templates/sms/{id}"),
        Some(&admin),
        Some(json!({})),
    )
    .await
    .problem(405);
}

#[tokio::test]
async fn superusers_list_across_organizations() {
    let app = spawn_bundle().await;
    let acme = app.token("acme", "admin");
    let globex = app.token("globex", "admin");
    let root = app.token("platform", "superuser");
    let acme_id = create(&app, &acme, "sms", json!({"name": "a1", "body": "b"})).await;
    create(&app, &globex, "sms", json!({"name": "g1", "body": "b"})).await;
    // Lists across organizations come from an index, which lags writes (as on AWS).
    tokio::time::sleep(TEST_INDEX_LAG + std::time::Duration::from_millis(200)).await;

    let all = app.get("/services/templates/sms/", &root).await;
    assert_eq!(names(&all.body), vec!["g1", "a1"]);
    let only_acme = app
        .get("/services/templates/sms/?organization=acme", &root)
        .await;
    assert_eq!(names(&only_acme.body), vec!["a1"]);
    assert_eq!(only_acme.body["items"][0]["organization"], "acme");
    assert_eq!(
        app.get(&format!("/services/templates/sms/{acme_id}"), &root)
            .await
            .body["name"],
        "a1"
    );

    app.get("/services/templates/sms/?organization=acme", &globex)
        .await
        .problem(403);
    app.get("/services/templates/sms/?organization=globex", &acme)
        .await
        .problem(403);
    app.get("/services/templates/sms/?ordering=name", &root)
        .await
        .problem(400);
}
