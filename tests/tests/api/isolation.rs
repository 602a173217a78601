//! The tenant-isolation matrix (SPEC §2, issue 9), generated from the route table: for every
//! route and method of every function, a second organization's token against the first
//! organization's resources. A route with no fixture here fails the test, so a new route
//! cannot ship without its isolation check.

use std::collections::BTreeMap;

use functions::registry::FUNCTIONS;
use serde_json::{Value, json};

use crate::helpers::{TestBundle, eventually, spawn_bundle};

const OWNER: &str = "acme";
const OTHER: &str = "globex";

/// Routes that serve no organization's data (the static admin page).
const PUBLIC: &[&str] = &["/admin", "/admin/{asset}"];
/// Routes for platform superusers only: anyone else gets 403, whatever the organization.
const SUPERUSER_ONLY: &[&str] = &["/services/admin/dead-letters/{queue}/redrive"];

/// The owner's resources, by the route pattern that addresses them.
struct Seeded {
    /// Pattern (with `{…}`) → the concrete path of one of the owner's resources.
    paths: BTreeMap<&'static str, String>,
    /// Every id the owner's records carry; none may appear in the other org's answers.
    ids: Vec<String>,
    suppressed_address: String,
}

async fn created(app: &TestBundle, token: &str, path: &str, body: Value) -> String {
    let reply = app.post(path, token, body).await;
    assert!(
        (200..300).contains(&reply.status),
        "seeding {path}: {} {}",
        reply.status,
        reply.body
    );
    reply.body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("seeding {path}: no id in {}", reply.body))
        .to_owned()
}

async fn seed(app: &TestBundle, owner: &str) -> Seeded {
    let mut ids = Vec::new();
    let mut template_ids = BTreeMap::new();
    for (kind, body) in [
        (
            "email",
            json!({"name": "welcome", "subject": "Hi {{first_name}}", "text": "Hello {{first_name}}", "variables": ["first_name"]}),
        ),
        ("sms", json!({"name": "otp", "body": "Code {{code}}"})),
        (
            "message",
            json!({"name": "promo", "body": "Sale", "media_urls": ["https://cdn.example.com/a.png"]}),
        ),
    ] {
        let id = created(app, owner, &format!("/services/templates/{kind}/"), body).await;
        template_ids.insert(kind, id.clone());
        ids.push(id);
    }
    let email = created(
        app,
        owner,
        "/services/email/",
        json!({"to": "ann@example.com", "subject": "Hi", "text": "Hello"}),
    )
    .await;
    ids.push(email.clone());
    // A bounce puts the address on the owner's suppression list.
    let suppressed_address = "gone@bounce.test".to_owned();
    let bounced = created(
        app,
        owner,
        "/services/email/",
        json!({"to": suppressed_address, "subject": "Hi", "text": "Hello"}),
    )
    .await;
    app.email_reaches(owner, &bounced, "bounced", 30).await;
    ids.push(bounced);

    let report = created(
        app,
        owner,
        "/services/reports/",
        json!({"type": "summary", "format": "csv", "from": "2026-01-01", "to": "2026-01-31"}),
    )
    .await;
    ids.push(report.clone());
    let schedule = created(
        app,
        owner,
        "/services/reports/schedules/",
        json!({"expression": "cron(0 6 ? * MON *)", "type": "summary", "format": "pdf", "period_days": 7, "recipients": ["ops@example.com"]}),
    )
    .await;
    ids.push(schedule.clone());

    let customer = created(
        app,
        owner,
        "/services/payments/customers/",
        json!({"email": "buyer@example.com", "name": "Buyer"}),
    )
    .await;
    ids.push(customer.clone());
    let subscription = created(
        app,
        owner,
        "/services/payments/subscriptions/",
        json!({"customer_id": customer, "items": [{"price": "price_basic_monthly", "quantity": 1}]}),
    )
    .await;
    ids.push(subscription.clone());
    let payment = created(
        app,
        owner,
        "/services/payments/",
        json!({"amount": 1999, "currency": "usd", "customer_id": customer, "payment_method": "pm_card_visa"}),
    )
    .await;
    ids.push(payment.clone());

    let phonebook = created(
        app,
        owner,
        "/services/phonebooks/",
        json!({"name": "Customers"}),
    )
    .await;
    ids.push(phonebook.clone());
    let imported = app
        .post(
            &format!("/services/phonebooks/{phonebook}/contacts/"),
            owner,
            json!([{"phone": "+14155552671", "name": "Ann"}]),
        )
        .await;
    assert_eq!(imported.status, 200, "{}", imported.body);
    let sms = created(
        app,
        owner,
        "/services/sms/",
        json!({"to": "+14155552671", "body": "Hello"}),
    )
    .await;
    ids.push(sms.clone());
    let bulk_id = |reply: crate::helpers::Reply| {
        assert_eq!(reply.status, 202, "seeding a bulk: {}", reply.body);
        reply.body["bulk_id"].as_str().unwrap().to_owned()
    };
    let sms_bulk = bulk_id(
        app.post(
            "/services/sms/",
            owner,
            json!({"phonebook_id": phonebook, "body": "Hi {{name}}"}),
        )
        .await,
    );
    ids.push(sms_bulk.clone());
    let email_bulk = bulk_id(
        app.post(
            "/services/email/",
            owner,
            json!({"recipients": [{"to": "ann@example.com"}, {"to": "bob@example.com"}], "subject": "Hi", "text": "Hello"}),
        )
        .await,
    );
    ids.push(email_bulk.clone());
    // An import larger than one call writes gets an id to follow it by.
    let large = created(
        app,
        owner,
        "/services/phonebooks/",
        json!({"name": "Large"}),
    )
    .await;
    ids.push(large.clone());
    let csv: String = std::iter::once("phone\n".to_owned())
        .chain((0..1_001).map(|i| format!("+1415556{i:04}\n")))
        .collect();
    let upload = app
        .http
        .post(
            app.bundle
                .url(&format!("/services/phonebooks/{large}/contacts/")),
        )
        .bearer_auth(owner)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status().as_u16(), 202);
    let upload: Value = upload.json().await.unwrap();
    let import = upload["import_id"].as_str().unwrap().to_owned();
    ids.push(import.clone());

    let topic = app
        .post(
            "/services/topics/",
            owner,
            json!({"key": "newsletter", "name": "Newsletter"}),
        )
        .await;
    assert_eq!(topic.status, 201, "{}", topic.body);

    let email_template = &template_ids["email"];
    let paths = BTreeMap::from([
        (
            "/services/topics/{key}",
            "/services/topics/newsletter/".to_owned(),
        ),
        (
            "/services/templates/{kind}/{id}",
            format!("/services/templates/email/{email_template}/"),
        ),
        (
            "/services/templates/{kind}/{id}/preview",
            format!("/services/templates/email/{email_template}/preview/"),
        ),
        ("/services/email/{id}", format!("/services/email/{email}/")),
        (
            "/services/email/bulk/{id}",
            format!("/services/email/bulk/{email_bulk}/"),
        ),
        (
            "/services/sms/bulk/{id}",
            format!("/services/sms/bulk/{sms_bulk}/"),
        ),
        (
            "/services/email/suppressions/{address}",
            "/services/email/suppressions/gone%40bounce.test/".to_owned(),
        ),
        (
            "/services/reports/{id}",
            format!("/services/reports/{report}/"),
        ),
        (
            "/services/reports/schedules/{id}",
            format!("/services/reports/schedules/{schedule}/"),
        ),
        (
            "/services/payments/customers/{id}",
            format!("/services/payments/customers/{customer}/"),
        ),
        (
            "/services/payments/subscriptions/{id}",
            format!("/services/payments/subscriptions/{subscription}/"),
        ),
        (
            "/services/payments/{id}",
            format!("/services/payments/{payment}/"),
        ),
        (
            "/services/payments/{id}/refund",
            format!("/services/payments/{payment}/refund/"),
        ),
        (
            "/services/payments/{id}/invoice",
            format!("/services/payments/{payment}/invoice/"),
        ),
        ("/services/sms/{id}", format!("/services/sms/{sms}/")),
        (
            "/services/phonebooks/{id}",
            format!("/services/phonebooks/{phonebook}/"),
        ),
        (
            "/services/phonebooks/{id}/imports/{import_id}",
            format!("/services/phonebooks/{large}/imports/{import}/"),
        ),
        (
            "/services/phonebooks/{id}/contacts",
            format!("/services/phonebooks/{phonebook}/contacts/"),
        ),
        (
            "/services/admin/dead-letters/{queue}/redrive",
            "/services/admin/dead-letters/email-send/redrive/".to_owned(),
        ),
        // Collection routes that act on one of the owner's records by query parameter.
        (
            "DELETE /services/reports/schedules",
            format!("/services/reports/schedules/?id={schedule}"),
        ),
    ]);
    Seeded {
        paths,
        ids,
        suppressed_address,
    }
}

/// A valid body for a mutation, so a 404 cannot hide behind a 400 for the body.
fn body_for(method: &str, pattern: &str) -> Option<Value> {
    match (method, pattern) {
        ("PUT", "/services/templates/{kind}/{id}") => {
            Some(json!({"name": "taken", "subject": "S", "text": "T"}))
        }
        ("PATCH", "/services/templates/{kind}/{id}" | "/services/topics/{key}") => {
            Some(json!({"name": "taken"}))
        }
        ("POST", "/services/templates/{kind}/{id}/preview") => {
            Some(json!({"variables": {"first_name": "Eve"}}))
        }
        ("POST", "/services/payments/{id}/refund") => Some(json!({"amount": 100})),
        ("POST", "/services/phonebooks/{id}/contacts") => {
            Some(json!([{"phone": "+14155550100", "name": "Eve"}]))
        }
        ("POST", _) => Some(json!({})),
        _ => None,
    }
}

/// Creating in one's own organization with a reference to another organization's record:
/// the reference must not resolve.
fn cross_reference(pattern: &str, seeded: &Seeded) -> Option<Value> {
    let id = |fixture: &str| {
        seeded.paths[fixture]
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned()
    };
    match pattern {
        "/services/email" => Some(
            json!({"to": "eve@example.com", "template_id": id("/services/templates/{kind}/{id}"), "variables": {"first_name": "Eve"}}),
        ),
        "/services/sms" => {
            Some(json!({"phonebook_id": id("/services/phonebooks/{id}"), "body": "Hi"}))
        }
        "/services/payments" => Some(
            json!({"amount": 500, "currency": "usd", "customer_id": id("/services/payments/customers/{id}")}),
        ),
        "/services/payments/subscriptions" => Some(
            json!({"customer_id": id("/services/payments/customers/{id}"), "items": [{"price": "price_basic_monthly", "quantity": 1}]}),
        ),
        _ => None,
    }
}

fn leaked<'a>(body: &Value, ids: &'a [String]) -> Vec<&'a String> {
    let text = body.to_string();
    ids.iter().filter(|id| text.contains(id.as_str())).collect()
}

/// The concrete paths of a collection route: itself, or one per value of a non-id parameter.
fn collection_paths(keyed: &str, pattern: &str) -> Vec<String> {
    if pattern == "/services/templates/{kind}" {
        return ["email", "sms", "message"]
            .iter()
            .map(|kind| format!("/services/templates/{kind}/"))
            .collect();
    }
    assert!(
        !pattern.contains('{'),
        "{keyed}: no isolation fixture; add one to tests/tests/api/isolation.rs"
    );
    vec![format!("{pattern}/")]
}

/// The other organization on a collection: a list shows none of the owner's records; a
/// create may not reference them; anything else must not reveal them.
async fn other_org_collection_call(
    app: &TestBundle,
    other: &str,
    method: &str,
    path: &str,
    pattern: &str,
    seeded: &Seeded,
) {
    let keyed = format!("{method} {path}");
    if method == "GET" {
        let reply = app.get(path, other).await;
        assert!(
            reply.status < 500,
            "{keyed}: {} {}",
            reply.status,
            reply.body
        );
        let leaks = leaked(&reply.body, &seeded.ids);
        assert!(leaks.is_empty(), "{keyed} shows the owner's {leaks:?}");
        assert!(
            !reply.body.to_string().contains(&seeded.suppressed_address),
            "{keyed} shows the owner's suppression"
        );
    } else if let Some(body) = cross_reference(pattern, seeded) {
        let reply = app.call(method, path, Some(other), Some(body)).await;
        assert!(
            matches!(reply.status, 400 | 404 | 422),
            "{keyed}: a reference to another organization's record resolved: {} {}",
            reply.status,
            reply.body
        );
    } else {
        let reply = app
            .call(method, path, Some(other), body_for(method, pattern))
            .await;
        assert!(reply.status < 500, "{keyed}: {}", reply.body);
        let leaks = leaked(&reply.body, &seeded.ids);
        assert!(leaks.is_empty(), "{keyed} shows the owner's {leaks:?}");
    }
}

#[tokio::test]
async fn another_organization_reaches_nothing_on_any_route() {
    let app = spawn_bundle().await;
    let owner = app.token(OWNER, "admin");
    let other = app.token(OTHER, "admin");
    let seeded = seed(&app, &owner).await;

    let mut checked = Vec::new();
    for function in FUNCTIONS {
        for route in function.routes {
            let (method, pattern) = (route.method, route.pattern);
            if PUBLIC.contains(&pattern) {
                continue;
            }
            let keyed = format!("{method} {pattern}");
            let path = seeded
                .paths
                .get(keyed.as_str())
                .or_else(|| seeded.paths.get(pattern));
            match path {
                Some(path) => {
                    let reply = app
                        .call(method, path, Some(&other), body_for(method, pattern))
                        .await;
                    let expected = if SUPERUSER_ONLY.contains(&pattern) {
                        403
                    } else {
                        404
                    };
                    assert_eq!(
                        reply.status, expected,
                        "{keyed}: another organization's record must answer {expected}, got {}",
                        reply.body
                    );
                    assert!(reply.content_type.starts_with("application/problem+json"));
                }
                None => {
                    for path in collection_paths(&keyed, pattern) {
                        other_org_collection_call(&app, &other, method, &path, pattern, &seeded)
                            .await;
                    }
                }
            }
            checked.push(keyed);
        }
    }
    assert!(checked.len() >= 40, "the matrix covered {checked:?}");

    // Nothing the other organization did touched the owner's records.
    for (pattern, path) in &seeded.paths {
        let readable = FUNCTIONS
            .iter()
            .flat_map(|f| f.routes)
            .any(|r| r.method == "GET" && r.pattern == *pattern);
        if readable {
            let reply = app.get(path, &owner).await;
            assert_eq!(
                reply.status, 200,
                "{pattern} after the other org's calls: {}",
                reply.body
            );
        }
    }
    let suppressions = app.get("/services/email/suppressions/", &owner).await;
    assert!(
        suppressions
            .body
            .to_string()
            .contains(&seeded.suppressed_address)
    );
}

#[tokio::test]
async fn cursors_idempotency_keys_and_superuser_filters_stay_in_their_organization() {
    let app = spawn_bundle().await;
    let owner = app.token(OWNER, "admin");
    let other = app.token(OTHER, "admin");
    for name in ["a", "b", "c"] {
        created(
            &app,
            &owner,
            "/services/templates/sms/",
            json!({"name": name, "body": "x"}),
        )
        .await;
    }
    let page = app.get("/services/templates/sms/?limit=1", &owner).await;
    let cursor = page.body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let stolen = app
        .get(
            &format!("/services/templates/sms/?limit=1&cursor={cursor}"),
            &other,
        )
        .await;
    stolen.problem(400);

    // The same Idempotency-Key in another organization is another request, not a replay.
    let send = |token: String, to: &'static str| {
        let app = &app;
        async move {
            app.http
                .post(app.bundle.url("/services/email/"))
                .bearer_auth(token)
                .header("Idempotency-Key", "order-1042")
                .json(&json!({"to": to, "subject": "Hi", "text": "Hello"}))
                .send()
                .await
                .unwrap()
        }
    };
    let first = send(owner.clone(), "ann@example.com").await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let second = send(other.clone(), "bob@example.com").await;
    assert_eq!(second.status(), 202, "not a 422 for a different body");
    let second: Value = second.json().await.unwrap();
    assert_ne!(first["id"], second["id"]);

    // Only superusers may look across organizations.
    for path in [
        "/services/templates/sms/?organization=acme",
        "/services/audit-logs/?organization=acme",
    ] {
        let reply = app.get(path, &other).await;
        assert!(
            matches!(reply.status, 400 | 403),
            "{path}: {} {}",
            reply.status,
            reply.body
        );
    }
    let superuser = app.token("platform", "superuser");
    let all = eventually(10, "the superuser sees acme's templates", || async {
        let reply = app
            .get("/services/templates/sms/?organization=acme", &superuser)
            .await;
        (reply.body["items"].as_array().map_or(0, Vec::len) == 3).then_some(reply)
    })
    .await;
    assert_eq!(all.status, 200);
}

/// GET routes on a collection that are not lists of an organization's records: the API's
/// own description, the provider account's balance, and the platform's dead-letter queues
/// (superusers only).
const NOT_LISTS: &[&str] = &[
    "/services/openapi.yaml",
    "/services/sms/balance",
    "/services/admin/dead-letters",
    // One address's ledger (it needs `address=` or `phone=`), not a list.
    "/services/consent",
    // CSV, not JSON; its organization filter is checked in consent::the_ledger_exports_….
    "/services/consent/export",
    // One setting; its organization filter is checked in consent::an_organization_answers_….
    "/services/consent/sms-help",
];

/// Every list, from the route table (SPEC §2, issue 18): `organization=` from anyone but a
/// superuser is 403 problem+json — never an answer about their own organization that
/// ignores the filter — and a platform superuser who names an organization sees exactly
/// what that organization sees.
#[tokio::test]
async fn every_list_takes_the_organization_filter_from_superusers_only() {
    let app = spawn_bundle().await;
    let owner = app.token(OWNER, "admin");
    let other = app.token(OTHER, "admin");
    let superuser = app.token("platform", "superuser");
    let seeded = seed(&app, &owner).await;

    let mut lists = Vec::new();
    for route in FUNCTIONS.iter().flat_map(|f| f.routes) {
        let pattern = route.pattern;
        let is_item = pattern.ends_with("{id}")
            || pattern.ends_with("{import_id}")
            || pattern.ends_with("{address}")
            || pattern.ends_with("{key}");
        if route.method != "GET" || PUBLIC.contains(&pattern) || NOT_LISTS.contains(&pattern) {
            continue;
        }
        // An item's route (`…/{id}`, `…/{id}/invoice`) answers about one record, not a list.
        let is_item = is_item || pattern.ends_with("/invoice");
        if is_item || pattern.ends_with("/preview") {
            continue;
        }
        let paths = match seeded.paths.get(pattern) {
            Some(path) => vec![path.clone()],
            None => collection_paths(&format!("GET {pattern}"), pattern),
        };
        for path in paths {
            let filtered = format!("{path}?organization={OWNER}");
            app.get(&filtered, &other).await.problem(403);
            let view = |reply: &crate::helpers::Reply| {
                assert_eq!(reply.status, 200, "{path}: {}", reply.body);
                let view = reply.body.get("items").or_else(|| reply.body.get("series"));
                view.cloned()
                    .unwrap_or_else(|| panic!("{path}: not a list: {}", reply.body))
            };
            // The audit trail and analytics are written behind a queue: compare until the
            // seeding's events have landed.
            eventually(
                20,
                "the superuser sees what the organization sees",
                || async {
                    let own = view(&app.get(&path, &owner).await);
                    let seen = view(&app.get(&filtered, &superuser).await);
                    (own == seen).then_some(())
                },
            )
            .await;
            lists.push(path);
        }
    }
    assert!(lists.len() >= 17, "the lists covered: {lists:?}");
}
