//! Metrics (issue 18): what CloudWatch would extract from the functions' Embedded Metric
//! Format lines after a send, a bounce, provider webhooks, a refused webhook and a charge.
//! The local runner keeps every document a function writes after checking it against the
//! EMF specification (`local::emf`); one that breaks it fails every test here.

use serde_json::{Value, json};

use crate::helpers::{TestBundle, eventually, spawn_bundle};

/// The sum of `metric` over the documents matching every `(member, value)` pair.
fn total(documents: &[Value], metric: &str, matching: &[(&str, &str)]) -> f64 {
    documents
        .iter()
        .filter(|d| matching.iter().all(|(key, value)| d[*key] == *value))
        .map(|d| match &d[metric] {
            Value::Array(values) => values.iter().filter_map(Value::as_f64).sum(),
            value => value.as_f64().unwrap_or(0.0),
        })
        .sum()
}

/// The documents' metric directive for `metric`: its namespace, dimension sets and unit.
fn directive_of<'a>(documents: &'a [Value], metric: &str) -> Option<&'a Value> {
    documents
        .iter()
        .flat_map(|d| {
            d["_aws"]["CloudWatchMetrics"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .find(|directive| {
            directive["Metrics"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["Name"] == metric))
        })
}

async fn send_email(app: &TestBundle, token: &str, to: &str) -> String {
    let reply = app
        .post(
            "/services/email/",
            token,
            json!({"to": to, "subject": "Hi", "text": "Hello"}),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn sends_bounces_webhooks_and_charges_are_counted_as_cloudwatch_would_extract_them() {
    let app = spawn_bundle().await;
    let org = format!("emf-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let token = app.token(&org, "admin");

    let delivered = send_email(&app, &token, "ann@example.com").await;
    let bounced = send_email(&app, &token, "gone@bounce.test").await;
    app.email_reaches(&token, &delivered, "delivered", 30).await;
    app.email_reaches(&token, &bounced, "bounced", 30).await;
    let charge = app
        .post(
            "/services/payments/",
            &token,
            json!({"amount": 1999, "currency": "usd", "payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(charge.status, 201, "{}", charge.body);
    let forged = app
        .http
        .post(app.bundle.url("/hooks/sendgrid-webhook"))
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert!(matches!(forged.status().as_u16(), 401 | 403));

    let ours = [("Organization", org.as_str())];
    let documents = eventually(30, "the funnel's metrics", || async {
        let documents = local::emf::documents();
        let email = |outcome| {
            let mut matching = vec![("Channel", "email"), ("Outcome", outcome)];
            matching.extend(ours);
            total(&documents, "Messages", &matching)
        };
        // The sandbox charges as Stripe does: processing, then succeeded by webhook.
        let charged = total(&documents, "Charges", &[("Status", "succeeded"), ours[0]]);
        (email("queued") == 2.0
            && email("sent") == 2.0
            && email("delivered") == 1.0
            && email("bounced") == 1.0
            && charged == 1.0)
            .then_some(documents)
    })
    .await;
    assert_eq!(local::emf::refused(), [], "documents CloudWatch would drop");

    assert_eq!(
        total(&documents, "Charges", &[("Status", "processing"), ours[0]]),
        1.0
    );
    for (metric, matching) in [
        (
            "ProviderCalls",
            vec![("Provider", "sendgrid"), ("Outcome", "ok")],
        ),
        (
            "ProviderCalls",
            vec![("Provider", "stripe"), ("Outcome", "ok")],
        ),
        (
            "WebhookEvents",
            vec![("Provider", "sendgrid"), ("Outcome", "applied")],
        ),
        (
            "WebhookRejections",
            vec![("Provider", "sendgrid"), ("Reason", "signature")],
        ),
        (
            "ApiRequests",
            vec![("Function", "email-api"), ("StatusClass", "2xx")],
        ),
        (
            "ApiRequests",
            vec![("Function", "sendgrid-webhook"), ("StatusClass", "4xx")],
        ),
        (
            "Jobs",
            vec![("Function", "email-worker"), ("Outcome", "done")],
        ),
    ] {
        assert!(
            total(&documents, metric, &matching) >= 1.0,
            "{metric} {matching:?}"
        );
    }
    for metric in ["ProviderLatency", "ApiLatency"] {
        let latencies = total(&documents, metric, &[]);
        assert!(latencies > 0.0, "{metric} recorded no time");
    }

    // The metadata: one namespace, fixed dimension sets, organization never a dimension.
    let messages = directive_of(&documents, "Messages").unwrap();
    assert_eq!(messages["Dimensions"], json!([["Channel", "Outcome"]]));
    assert_eq!(messages["Metrics"][0]["Unit"], "Count");
    let requests = directive_of(&documents, "ApiRequests").unwrap();
    assert_eq!(
        requests["Dimensions"],
        json!([["Function", "StatusClass"], ["StatusClass"]])
    );
    assert_eq!(
        directive_of(&documents, "ProviderLatency").unwrap()["Metrics"][0]["Unit"],
        "Milliseconds"
    );
    for document in &documents {
        let directive = &document["_aws"]["CloudWatchMetrics"][0];
        // The template's `Herald/${Stage}`, with the local stage.
        assert_eq!(directive["Namespace"], "Herald/dev", "{document}");
        assert!(!directive["Dimensions"].to_string().contains("Organization"));
    }
    // Every invocation the runner made for this organization names its Lambda request id
    // (handlers other tests call directly, outside a runner, have none).
    for document in documents
        .iter()
        .filter(|d| d["Organization"] == org.as_str())
    {
        let id = document["lambda_request_id"].as_str();
        assert!(id.is_some_and(|id| !id.is_empty()), "{document}");
    }
}

/// Failures are counted by kind, a retry as `retried`, and a job that fails on the last
/// receive its queue allows as `dead_lettered` (the email send queue's `maxReceiveCount` is 3).
#[tokio::test]
async fn failures_are_counted_by_kind_and_a_job_failing_its_last_receive_as_dead_lettered() {
    let app = spawn_bundle().await;
    let org = format!("emf-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let token = app.token(&org, "admin");

    // SendGrid refuses the first call outright: a permanent failure, no retry.
    app.sendgrid_fault(json!({"status": 400})).await;
    let refused = send_email(&app, &token, "ann@example.com").await;
    app.email_reaches(&token, &refused, "failed", 30).await;
    // Then it is unavailable for longer than the queue's three receives: two retries, and
    // the third receive gives the email up (transient) and sends its job to the DLQ.
    app.sendgrid_fault(json!({"status": 503, "count": 50}))
        .await;
    let given_up = send_email(&app, &token, "bob@example.com").await;
    app.email_reaches(&token, &given_up, "failed", 60).await;

    let ours = ("Organization", org.as_str());
    let documents = eventually(30, "the failure metrics", || async {
        let documents = local::emf::documents();
        let email = |outcome| {
            let matching = [("Channel", "email"), ("Outcome", outcome), ours];
            total(&documents, "Messages", &matching)
        };
        (email("failed_permanent") == 1.0 && email("failed_transient") == 1.0).then_some(documents)
    })
    .await;
    assert_eq!(local::emf::refused(), [], "documents CloudWatch would drop");
    let email = |outcome| {
        let matching = [("Channel", "email"), ("Outcome", outcome), ours];
        total(&documents, "Messages", &matching)
    };
    assert_eq!(email("retried"), 2.0, "two receives with attempts left");
    assert_eq!(email("failed"), 0.0, "a failure always names its kind");
    assert_eq!(email("sent"), 0.0);
    // Jobs carry no organization; other tests' workers share the collector, so at least.
    let jobs = |outcome| {
        let matching = [("Function", "email-worker"), ("Outcome", outcome)];
        total(&documents, "Jobs", &matching)
    };
    assert!(jobs("retried") >= 2.0);
    assert!(jobs("dead_lettered") >= 1.0);
}
