//! Secrets never appear in logs or answers (SPEC §12, issue 9): a run through every channel —
//! sends, webhooks with good and bad signatures, provider failures, payments, reports — with
//! every log line of every function captured at debug level, then searched, together with
//! every response body, for each configured secret.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

use crate::helpers::{TestBundle, eventually, spawn_bundle, spawn_bundle_with};

/// Every log line written in this test process (other tests' lines included: more to search).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let installed = tracing_subscriber::fmt()
            .json()
            .with_env_filter("debug,hyper=info,h2=info,rustls=info,aws_smithy_runtime=info")
            .with_writer(move || LogSink(Arc::clone(&sink)))
            .try_init();
        assert!(
            installed.is_ok(),
            "no other test installs a global subscriber"
        );
        logs
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every answer the run got, as text.
#[derive(Default)]
struct Answers(Vec<String>);

impl Answers {
    async fn call(
        &mut self,
        app: &TestBundle,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let reply = app.call(method, path, token, body).await;
        self.0.push(reply.body.to_string());
        reply.body
    }

    async fn raw(&mut self, response: reqwest::Response) -> u16 {
        let status = response.status().as_u16();
        self.0.push(response.text().await.unwrap());
        status
    }
}

#[tokio::test]
async fn no_secret_reaches_a_log_line_or_a_response() {
    let logs = captured_logs();
    let app = spawn_bundle().await;
    let token = app.token("acme", "admin");
    let mut answers = Answers::default();

    // Email: delivered, bounced, a provider failure, and forged webhooks.
    let email = answers
        .call(
            &app,
            "POST",
            "/services/email/",
            Some(&token),
            Some(json!({"to": "ann@example.com", "subject": "Hi", "text": "Hello"})),
        )
        .await;
    app.email_reaches(&token, email["id"].as_str().unwrap(), "delivered", 30)
        .await;
    // A refused key is retried (issue 15); refused on every attempt, the email fails.
    app.sendgrid_fault(json!({"status": 401, "count": 3})).await;
    let failing = answers
        .call(
            &app,
            "POST",
            "/services/email/",
            Some(&token),
            Some(json!({"to": "bob@example.com", "subject": "Hi", "text": "Hello"})),
        )
        .await;
    app.email_reaches(&token, failing["id"].as_str().unwrap(), "failed", 30)
        .await;
    for path in [
        "/hooks/sendgrid-webhook/",
        "/hooks/twilio-webhook/",
        "/hooks/stripe-webhook/",
    ] {
        let forged = app
            .http
            .post(app.bundle.url(path))
            .header("X-Twilio-Email-Event-Webhook-Signature", "MEUCIQ==")
            .header("X-Twilio-Email-Event-Webhook-Timestamp", "1700000000")
            .header("X-Twilio-Signature", "bm90IGEgc2lnbmF0dXJl")
            .header("Stripe-Signature", "t=1700000000,v1=00")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("[{\"event\":\"delivered\"}]")
            .send()
            .await
            .unwrap();
        assert!((400..500).contains(&answers.raw(forged).await), "{path}");
    }

    // SMS: a send to delivered and the balance.
    let sms = answers
        .call(
            &app,
            "POST",
            "/services/sms/",
            Some(&token),
            Some(json!({"to": "+14155552671", "body": "Hello"})),
        )
        .await;
    let sms_id = sms["id"].as_str().unwrap().to_owned();
    eventually(30, "the SMS is delivered", || async {
        let reply = app.get(&format!("/services/sms/{sms_id}/"), &token).await;
        (reply.body["status"] == "delivered").then_some(())
    })
    .await;
    answers
        .call(&app, "GET", "/services/sms/balance/", Some(&token), None)
        .await;

    // Payments: a customer, a charge to succeeded, a declined charge.
    let customer = answers
        .call(
            &app,
            "POST",
            "/services/payments/customers/",
            Some(&token),
            Some(json!({"email": "buyer@example.com", "name": "Buyer"})),
        )
        .await;
    let charge = answers
        .call(
            &app,
            "POST",
            "/services/payments/",
            Some(&token),
            Some(json!({"amount": 1999, "currency": "usd", "customer_id": customer["id"], "payment_method": "pm_card_visa"})),
        )
        .await;
    let charge_id = charge["id"].as_str().unwrap().to_owned();
    eventually(30, "the charge succeeds", || async {
        let reply = app
            .get(&format!("/services/payments/{charge_id}/"), &token)
            .await;
        (reply.body["status"] == "succeeded").then_some(())
    })
    .await;
    answers
        .call(&app, "POST", "/services/payments/", Some(&token), Some(json!({"amount": 500, "currency": "eur", "payment_method": "pm_card_chargeDeclined"})))
        .await;

    // Bad input everywhere answers problems; they must not echo configuration either.
    for (path, body) in [
        ("/services/email/", json!({"to": "nope"})),
        ("/services/sms/", json!({"to": "12", "body": ""})),
        (
            "/services/payments/",
            json!({"amount": -1, "currency": "xx"}),
        ),
        ("/services/reports/", json!({"type": "x"})),
    ] {
        answers
            .call(&app, "POST", path, Some(&token), Some(body))
            .await;
    }

    let mut secrets: Vec<String> = Vec::new();
    let sendgrid = app.bundle.sendgrid.as_ref().expect("SendGrid sandbox");
    secrets.push(sendgrid.secret_values()["SENDGRID_API_KEY"].clone());
    let twilio = app.bundle.twilio.as_ref().expect("Twilio sandbox");
    secrets.push(twilio.auth_token().to_owned());
    let stripe = app.bundle.stripe.as_ref().expect("Stripe sandbox");
    let stripe_values = stripe.secret_values();
    secrets.push(stripe_values["STRIPE_SECRET_KEY"].clone());
    secrets.extend(
        stripe_values["STRIPE_WEBHOOK_SECRETS"]
            .split(',')
            .map(str::to_owned),
    );
    secrets.push(local::auth::DEFAULT_SECRET.to_owned());
    // The bearer token itself is a credential too.
    secrets.push(token.clone());
    assert!(
        secrets.iter().all(|s| s.len() >= 12),
        "real-looking secrets"
    );

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.lines().count() > 50,
        "the run was logged ({} lines)",
        logs.lines().count()
    );
    for secret in &secrets {
        let in_logs = logs.lines().find(|line| line.contains(secret.as_str()));
        assert!(in_logs.is_none(), "a secret is in a log line: {in_logs:?}");
        let in_answers = answers.0.iter().find(|a| a.contains(secret.as_str()));
        assert!(
            in_answers.is_none(),
            "a secret is in an answer: {in_answers:?}"
        );
    }
}

/// Init reads no secret (issue 10): functions whose SendGrid secret does not exist yet still
/// start; the first send that needs the key answers 500 and records nothing; once the secret
/// exists the next send reads it (a failed read is not kept) and the email is delivered.
#[tokio::test]
async fn a_secret_is_read_on_first_use_and_a_failed_read_is_retried() {
    let missing = format!("herald-test-later-{}", uuid::Uuid::new_v4().simple());
    let app = spawn_bundle_with(|options| {
        options
            .overrides
            .insert("SENDGRID_API_KEY_SECRET_ARN".to_owned(), missing.clone());
    })
    .await;
    let token = app.token("acme", "admin");
    let email = json!({"to": "ann@example.com", "subject": "Hello", "text": "Hi"});

    let reply = app.post("/services/email/", &token, email.clone()).await;
    assert_eq!(reply.problem(500)["type"], "/problems/internal-error");
    assert_eq!(
        app.get("/services/email/", &token).await.body["items"],
        json!([])
    );
    assert_eq!(app.queue_depth("EmailSendQueue").await, 0);

    let sendgrid = app.bundle.sendgrid.as_deref().unwrap();
    app.bundle
        .aws
        .secrets
        .create_secret()
        .name(&missing)
        .secret_string(serde_json::to_string(&sendgrid.secret_values()).unwrap())
        .send()
        .await
        .unwrap();
    let reply = app.post("/services/email/", &token, email).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap();
    app.email_reaches(&token, id, "delivered", 30).await;
}
