//! Payments end to end (issue: payments): the payments API through the local runner, the
//! Stripe sandbox speaking Stripe's form-encoded API and posting signed events back to the
//! webhook function, receipts in S3 (moto) behind presigned URLs, and the daily sync.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestBundle, eventually, spawn_bundle, spawn_bundle_with};

impl TestBundle {
    fn stripe(&self) -> &local::sandbox::stripe::StripeSandbox {
        self.bundle
            .stripe
            .as_deref()
            .expect("the Stripe sandbox runs")
    }

    /// Calls the sandbox's Stripe API directly, as a Stripe client would.
    async fn stripe_api(&self, method: &str, path: &str, params: Value) -> Value {
        let mut url = self.bundle.url(&format!("/sandbox/stripe/v1/{path}"));
        if method == "GET" {
            url = format!("{url}?{}", shared::providers::stripe::form::encode(&params));
        }
        let request = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
            .bearer_auth(self.stripe().secret_key());
        let request = if method == "GET" {
            request
        } else {
            request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(shared::providers::stripe::form::encode(&params))
        };
        request.send().await.unwrap().json().await.unwrap()
    }

    async fn sandbox_post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(self.bundle.url(&format!("/sandbox/stripe/{path}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{path}");
        response.json().await.unwrap_or(Value::Null)
    }

    /// Posts a body to the Stripe webhook with the given signature header.
    async fn webhook(&self, body: &[u8], signature: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.bundle.url("/hooks/stripe-webhook"))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Signs and posts an event as Stripe would.
    async fn post_event(&self, event: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(event).unwrap();
        let signature = self
            .stripe()
            .sign(&body, false, chrono::Utc::now().timestamp());
        self.webhook(&body, Some(&signature)).await
    }

    /// The events of `kind` the sandbox has sent, or queued while events are held.
    fn stripe_events_of(&self, kind: &str) -> Vec<Value> {
        self.stripe()
            .events()
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    /// Waits until the sandbox has sent (or, while held, queued) an event of `kind`.
    async fn stripe_emitted(&self, kind: &str) {
        eventually(30, kind, || async {
            (!self.stripe_events_of(kind).is_empty()).then_some(())
        })
        .await;
    }

    async fn payment_reaches(&self, token: &str, id: &str, status: &str) -> Value {
        let path = format!("/services/payments/{id}");
        eventually(30, &format!("payment {id} {status}"), || async {
            let reply = self.get(&path, token).await;
            (reply.body["status"] == status).then_some(reply.body)
        })
        .await
    }
}

async fn create_customer(app: &TestBundle, token: &str, email: &str) -> String {
    let reply = app
        .post(
            "/services/payments/customers/",
            token,
            json!({"email": email, "name": "Ann Example"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_owned()
}

async fn charge(app: &TestBundle, token: &str, body: Value) -> Value {
    let reply = app.post("/services/payments/", token, body).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body
}

/// The Stripe id of Herald customer `customer`.
async fn stripe_customer_of(app: &TestBundle, token: &str, customer: &str) -> String {
    app.get(&format!("/services/payments/customers/{customer}"), token)
        .await
        .body["stripe_customer"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Puts what the Stripe sandbox now takes (a live key, a rolled key) into Herald's secret,
/// as an operator would.
async fn store_stripe_secret(app: &TestBundle) {
    app.bundle
        .aws
        .secrets
        .put_secret_value()
        .secret_id(app.bundle.resource("StripeSecret"))
        .secret_string(serde_json::to_string(&app.stripe().secret_values()).unwrap())
        .send()
        .await
        .unwrap();
}

async fn fetch_pdf(app: &TestBundle, url: &str) -> Vec<u8> {
    let response = app.http.get(url).send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let bytes = response.bytes().await.unwrap().to_vec();
    assert!(bytes.starts_with(b"%PDF-"), "{url} is not a PDF");
    bytes
}

#[tokio::test]
async fn a_customer_subscribes_pays_is_refunded_and_downloads_receipt_and_invoice() {
    let app = spawn_bundle().await;
    let token = app.token("acme", "admin");

    let customer = create_customer(&app, &token, "ann@example.com").await;
    let stored = app
        .get(&format!("/services/payments/customers/{customer}"), &token)
        .await;
    assert_eq!(stored.body["email"], "ann@example.com");
    let stripe_customer = stored.body["stripe_customer"].as_str().unwrap().to_owned();
    let at_stripe = app
        .stripe_api("GET", &format!("customers/{stripe_customer}"), json!({}))
        .await;
    assert_eq!(
        at_stripe["metadata"],
        json!({"org_id": "acme", "herald_id": customer})
    );

    let subscription = app
        .post(
            "/services/payments/subscriptions/",
            &token,
            json!({"customer_id": customer, "items": [{"price": "price_basic_monthly", "quantity": 2}]}),
        )
        .await;
    assert_eq!(subscription.status, 201, "{}", subscription.body);
    assert_eq!(subscription.body["status"], "active");
    assert_eq!(
        subscription.body["items"],
        json!([{"price": "price_basic_monthly", "quantity": 2}])
    );
    let subscription_id = subscription.body["id"].as_str().unwrap().to_owned();

    // A charge: recorded, created at Stripe with the org and record in its metadata, and
    // succeeded through the signed payment_intent.succeeded webhook. Stripe's events are
    // held until the charge has answered: under load the webhook could otherwise land
    // before the API's reply is read back, and this must show the reply alone says
    // `processing`.
    app.sandbox_post("_events/hold", json!({"hold": true}))
        .await;
    let payment = charge(
        &app,
        &token,
        json!({"amount": 1999, "currency": "USD", "customer_id": customer, "description": "Order 1042", "payment_method": "pm_card_visa"}),
    )
    .await;
    let id = payment["id"].as_str().unwrap().to_owned();
    assert_eq!(payment["currency"], "usd");
    assert_eq!(
        payment["status"], "processing",
        "success arrives by webhook"
    );
    app.stripe_emitted("payment_intent.succeeded").await;
    assert_eq!(
        app.get(&format!("/services/payments/{id}"), &token)
            .await
            .body["status"],
        "processing"
    );
    app.sandbox_post("_events/release", json!({})).await;
    let succeeded = app.payment_reaches(&token, &id, "succeeded").await;
    let intent = app
        .stripe_api(
            "GET",
            &format!(
                "payment_intents/{}",
                succeeded["stripe_payment_intent"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(intent["metadata"]["org_id"], "acme");
    assert_eq!(intent["metadata"]["herald_id"], id.as_str());
    assert_eq!(intent["amount"], 1999);
    assert!(
        app.stripe_events_of("payment_intent.succeeded")
            .iter()
            .any(|e| e["data"]["object"]["id"] == intent["id"])
    );

    // Partial, then full refund; nothing left to refund afterwards. Their charge.refunded
    // events are held and posted once both refunds have answered, so they arrive late.
    app.sandbox_post("_events/hold", json!({"hold": true}))
        .await;
    let partial = app
        .post(
            &format!("/services/payments/{id}/refund/"),
            &token,
            json!({"amount": 500}),
        )
        .await;
    assert_eq!(partial.status, 200, "{}", partial.body);
    assert_eq!(partial.body["status"], "partially_refunded");
    assert_eq!(partial.body["amount_refunded"], 500);
    let too_much = app
        .post(
            &format!("/services/payments/{id}/refund/"),
            &token,
            json!({"amount": 1500}),
        )
        .await;
    too_much.problem(400);
    let rest = app
        .post(
            &format!("/services/payments/{id}/refund/"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(rest.status, 200, "{}", rest.body);
    assert_eq!(rest.body["status"], "refunded");
    assert_eq!(rest.body["amount_refunded"], 1999);
    app.post(
        &format!("/services/payments/{id}/refund/"),
        &token,
        json!({}),
    )
    .await
    .problem(409);
    // The late charge.refunded webhooks (the release answers once Herald has accepted
    // them) leave it refunded: the partial refund's event does not move it back.
    assert_eq!(app.stripe_events_of("charge.refunded").len(), 2);
    let released = app.sandbox_post("_events/release", json!({})).await;
    assert_eq!(released["posted"], 2, "{released}");
    assert_eq!(
        app.get(&format!("/services/payments/{id}"), &token)
            .await
            .body["status"],
        "refunded"
    );

    // No Stripe invoice: a receipt Herald renders into S3, behind a presigned URL.
    let link = app
        .get(&format!("/services/payments/{id}/invoice/"), &token)
        .await;
    assert_eq!(link.status, 200, "{}", link.body);
    assert_eq!(link.body["kind"], "receipt");
    assert_eq!(link.body["expires_in"], 900);
    let url = link.body["url"].as_str().unwrap();
    assert!(url.contains(&format!("receipts/acme/{id}.pdf")), "{url}");
    assert!(url.contains("X-Amz-Signature"), "{url}");
    fetch_pdf(&app, url).await;
    let head = app
        .bucket_object(&format!("receipts/acme/{id}.pdf"))
        .await
        .expect("the receipt is at receipts/<org>/<id>.pdf");
    assert_eq!(
        head.server_side_encryption(),
        Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256)
    );

    // The subscription's first invoice arrived by invoice.paid; its payment links to
    // Stripe's invoice PDF.
    let invoices = eventually(30, "the paid invoice", || async {
        let reply = app
            .get(
                &format!("/services/payments/invoices/?customer_id={customer}&status=paid"),
                &token,
            )
            .await;
        (reply.body["items"].as_array().unwrap().len() == 1).then_some(reply.body)
    })
    .await;
    assert_eq!(invoices["items"][0]["amount_paid"], 2000);
    let open = app
        .get("/services/payments/invoices/?status=open", &token)
        .await;
    assert_eq!(open.body["items"], json!([]));
    app.get("/services/payments/invoices/?status=bogus", &token)
        .await
        .problem(400);
    let payments = app.get("/services/payments/", &token).await;
    let invoice_payment = payments.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["invoice"].is_string())
        .expect("the invoice's payment is listed")
        .clone();
    assert_eq!(invoice_payment["status"], "succeeded");
    let link = app
        .get(
            &format!(
                "/services/payments/{}/invoice/",
                invoice_payment["id"].as_str().unwrap()
            ),
            &token,
        )
        .await;
    assert_eq!(link.body["kind"], "invoice", "{}", link.body);
    fetch_pdf(&app, link.body["url"].as_str().unwrap()).await;

    let canceled = app
        .call(
            "DELETE",
            &format!("/services/payments/subscriptions/{subscription_id}/"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(canceled.status, 200, "{}", canceled.body);
    assert_eq!(canceled.body["status"], "canceled");
}

#[tokio::test]
async fn declined_cards_fail_with_the_decline_reason() {
    let app = spawn_bundle().await;
    let token = app.token("acme", "member");
    let payment = charge(
        &app,
        &token,
        json!({"amount": 500, "currency": "eur", "payment_method": "pm_card_chargeDeclined"}),
    )
    .await;
    assert_eq!(payment["status"], "failed");
    assert_eq!(
        payment["failure_reason"],
        "generic_decline: Your card was declined."
    );
    let id = payment["id"].as_str().unwrap();
    // The payment_failed webhook agrees; nothing is charged, so no receipt.
    app.stripe_emitted("payment_intent.payment_failed").await;
    assert_eq!(
        app.get(&format!("/services/payments/{id}"), &token)
            .await
            .body["status"],
        "failed"
    );
    app.get(&format!("/services/payments/{id}/invoice"), &token)
        .await
        .problem(409);
    let admin = app.token("acme", "admin");
    app.post(
        &format!("/services/payments/{id}/refund"),
        &admin,
        json!({}),
    )
    .await
    .problem(409);
}

#[tokio::test]
async fn money_is_validated_and_nothing_is_recorded_for_bad_input() {
    let app = spawn_bundle().await;
    let token = app.token("acme", "member");
    for (body, field) in [
        (json!({"amount": 0, "currency": "usd"}), "amount"),
        (json!({"amount": -100, "currency": "usd"}), "amount"),
        (json!({"amount": 100_000_000, "currency": "usd"}), "amount"),
        (json!({"amount": 12.5, "currency": "usd"}), "amount"),
        (json!({"amount": "100", "currency": "usd"}), "amount"),
        (json!({"amount": 1005, "currency": "kwd"}), "amount"),
        (json!({"amount": 100, "currency": "usdollar"}), "currency"),
        (json!({"amount": 100, "currency": "xyz"}), "currency"),
        (json!({"amount": 100}), "currency"),
        (
            json!({"amount": 100, "currency": "usd", "customer_id": "01JD5Z3Q0000000000000000AA"}),
            "customer_id",
        ),
        (
            json!({"amount": 100, "currency": "usd", "metadata": {"org_id": "globex"}}),
            "metadata",
        ),
        // Stripe refuses square brackets in a metadata key (found by contract fuzzing: the
        // customer create answered 404).
        (
            json!({"amount": 100, "currency": "usd", "metadata": {"a]b": "c"}}),
            "metadata",
        ),
    ] {
        let reply = app.post("/services/payments/", &token, body.clone()).await;
        let problem = reply.problem(400);
        assert!(problem["errors"][field].is_array(), "{body}: {problem}");
    }
    let reply = app
        .post(
            "/services/payments/customers/",
            &token,
            json!({"email": "ada@example.com", "metadata": {"¤]ã": "x"}}),
        )
        .await;
    assert!(
        reply.problem(400)["errors"]["metadata"].is_array(),
        "{}",
        reply.body
    );
    // Zero-decimal currencies take whole units.
    let yen = charge(
        &app,
        &token,
        json!({"amount": 500, "currency": "JPY", "payment_method": "pm_card_visa"}),
    )
    .await;
    assert_eq!(yen["zero_decimal"], true);
    assert_eq!(yen["display_amount"], "500 JPY");
    let listed = app.get("/services/payments/", &token).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    let intents = app
        .stripe_api("GET", "payment_intents", json!({"limit": 100}))
        .await;
    assert_eq!(
        intents["data"].as_array().unwrap().len(),
        1,
        "Stripe saw only the valid charge"
    );
    assert_eq!(intents["data"][0]["currency"], "jpy");
}

#[tokio::test]
async fn without_a_stripe_key_calls_answer_503_and_record_nothing() {
    let app = spawn_bundle_with(|options| options.sandbox = false).await;
    let token = app.token("acme", "admin");
    for (path, body) in [
        (
            "/services/payments/",
            json!({"amount": 100, "currency": "usd"}),
        ),
        (
            "/services/payments/customers/",
            json!({"email": "ann@example.com"}),
        ),
        (
            "/services/payments/subscriptions/",
            json!({"customer_id": "01JD5Z3Q0000000000000000AA", "price": "price_basic_monthly"}),
        ),
    ] {
        let reply = app.post(path, &token, body).await;
        assert_eq!(
            reply.problem(503)["type"],
            "/problems/provider-not-configured"
        );
    }
    assert_eq!(
        app.get("/services/payments/", &token).await.body["items"],
        json!([])
    );
    assert_eq!(
        app.get("/services/payments/customers/", &token).await.body["items"],
        json!([])
    );
}

#[tokio::test]
async fn retries_reuse_the_stripe_idempotency_key_and_never_double_charge() {
    let app = spawn_bundle_with(|options| {
        options
            .overrides
            .insert("STRIPE_TIMEOUT_MS".to_owned(), "1000".to_owned());
    })
    .await;
    let token = app.token("acme", "member");
    // Herald's first call times out while Stripe (the sandbox) still creates the intent;
    // the retry carries the same Idempotency-Key and gets that same intent back.
    app.sandbox_post("_faults", json!({"delay_ms": 2500})).await;
    let payment = charge(
        &app,
        &token,
        json!({"amount": 4200, "currency": "usd", "payment_method": "pm_card_visa"}),
    )
    .await;
    let id = payment["id"].as_str().unwrap().to_owned();
    app.payment_reaches(&token, &id, "succeeded").await;
    assert!(app.stripe().calls() >= 2, "the call was retried");
    let intents = app
        .stripe_api("GET", "payment_intents", json!({"limit": 100}))
        .await;
    let for_payment = intents["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pi| pi["metadata"]["herald_id"] == id.as_str())
        .count();
    assert_eq!(for_payment, 1, "one PaymentIntent for one Herald payment");

    // Herald's own Idempotency-Key: the same request replays, another body is refused.
    let send = |body: Value| {
        let app = &app;
        let token = token.clone();
        async move {
            let response = app
                .http
                .post(app.bundle.url("/services/payments/"))
                .bearer_auth(token)
                .header("idempotency-key", "order-77")
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (first_status, first) =
        send(json!({"amount": 700, "currency": "usd", "payment_method": "pm_card_visa"})).await;
    assert_eq!(first_status, 201);
    let (again_status, again) =
        send(json!({"amount": 700, "currency": "usd", "payment_method": "pm_card_visa"})).await;
    assert_eq!(again_status, 201);
    assert_eq!(again["id"], first["id"]);
    let (other_status, _) =
        send(json!({"amount": 701, "currency": "usd", "payment_method": "pm_card_visa"})).await;
    assert_eq!(other_status, 422);
}

#[tokio::test]
async fn organizations_are_isolated_on_every_endpoint() {
    let app = spawn_bundle().await;
    let acme = app.token("acme", "admin");
    let globex = app.token("globex", "admin");
    let customer = create_customer(&app, &acme, "ann@example.com").await;
    let subscription = app
        .post(
            "/services/payments/subscriptions/",
            &acme,
            json!({"customer_id": customer, "price": "price_pro_monthly"}),
        )
        .await;
    let subscription = subscription.body["id"].as_str().unwrap().to_owned();
    let payment = charge(
        &app,
        &acme,
        json!({"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"}),
    )
    .await;
    let payment = payment["id"].as_str().unwrap().to_owned();
    app.payment_reaches(&acme, &payment, "succeeded").await;
    eventually(30, "acme's invoice", || async {
        let reply = app.get("/services/payments/invoices/", &acme).await;
        (!reply.body["items"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;

    for path in [
        format!("/services/payments/customers/{customer}"),
        format!("/services/payments/subscriptions/{subscription}"),
        format!("/services/payments/{payment}"),
        format!("/services/payments/{payment}/invoice"),
    ] {
        app.get(&path, &globex).await.problem(404);
        assert_eq!(app.get(&path, &acme).await.status, 200, "{path}");
    }
    app.post(
        &format!("/services/payments/{payment}/refund"),
        &globex,
        json!({}),
    )
    .await
    .problem(404);
    app.call(
        "DELETE",
        &format!("/services/payments/subscriptions/{subscription}"),
        Some(&globex),
        None,
    )
    .await
    .problem(404);
    // Another organization's customer cannot be charged or subscribed.
    let reply = app
        .post(
            "/services/payments/",
            &globex,
            json!({"amount": 100, "currency": "usd", "customer_id": customer}),
        )
        .await;
    assert!(reply.problem(400)["errors"]["customer_id"].is_array());
    let reply = app
        .post(
            "/services/payments/subscriptions/",
            &globex,
            json!({"customer_id": customer, "price": "price_pro_monthly"}),
        )
        .await;
    assert!(reply.problem(400)["errors"]["customer_id"].is_array());
    for list in ["", "customers/", "subscriptions/", "invoices/"] {
        let reply = app
            .get(&format!("/services/payments/{list}"), &globex)
            .await;
        assert_eq!(reply.body["items"], json!([]), "{list}");
        let reply = app.get(&format!("/services/payments/{list}"), &acme).await;
        assert!(
            !reply.body["items"].as_array().unwrap().is_empty(),
            "{list}"
        );
    }
    // Only a superuser may read another organization's lists.
    let operator = app.token("platform", "superuser");
    let reply = app
        .get("/services/payments/?organization=acme", &operator)
        .await;
    assert_eq!(
        reply.body["items"][0]["id"],
        payment.as_str(),
        "{}",
        reply.body
    );
    app.get("/services/payments/?organization=acme", &globex)
        .await
        .problem(403);
    // The paid payment is still acme's, unrefunded.
    assert_eq!(
        app.get(&format!("/services/payments/{payment}"), &acme)
            .await
            .body["status"],
        "succeeded"
    );
}

#[tokio::test]
async fn webhook_signatures_are_verified() {
    let app = spawn_bundle().await;
    let now = chrono::Utc::now().timestamp();
    let event = json!({"id": "evt_sig_1", "object": "event", "type": "balance.available", "created": now,
                       "data": {"object": {"id": "bal_1", "object": "balance"}}});
    let body = serde_json::to_vec(&event).unwrap();
    let stripe = app.stripe();

    let (status, _) = app.webhook(&body, None).await;
    assert_eq!(status, 401, "no signature");
    let (status, _) = app
        .webhook(&body, Some(&stripe.sign(&body, false, now - 301)))
        .await;
    assert_eq!(status, 403, "stale");
    let mut tampered = body.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 1;
    let (status, _) = app
        .webhook(&tampered, Some(&stripe.sign(&body, false, now)))
        .await;
    assert_eq!(status, 403, "tampered");
    let (status, _) = app.webhook(&body, Some("t=1,v1=zz")).await;
    assert_eq!(status, 403, "malformed");
    let too_big = vec![b' '; 1024 * 1024 + 1];
    let (status, _) = app
        .webhook(&too_big, Some(&stripe.sign(&too_big, false, now)))
        .await;
    assert_eq!(status, 413);

    // A valid signature with the current or the retired secret passes; an unknown type is
    // acknowledged.
    let (status, reply) = app
        .webhook(&body, Some(&stripe.sign(&body, false, now)))
        .await;
    assert_eq!((status, &reply["handled"]), (200, &json!(false)), "{reply}");
    let event = json!({"id": "evt_sig_2", "object": "event", "type": "customer.created", "created": now,
                       "data": {"object": {"id": "cus_x", "object": "customer", "metadata": {}}}});
    let body = serde_json::to_vec(&event).unwrap();
    let (status, reply) = app
        .webhook(&body, Some(&stripe.sign(&body, true, now)))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["applied"], false,
        "objects without metadata.org_id are skipped"
    );
}

#[tokio::test]
async fn duplicate_and_out_of_order_events_never_move_state_backwards() {
    let app = spawn_bundle().await;
    let token = app.token("acme", "admin");

    // A payment that succeeded; then a replayed success and an older failure arrive.
    let payment = charge(
        &app,
        &token,
        json!({"amount": 2500, "currency": "gbp", "payment_method": "pm_card_visa"}),
    )
    .await;
    let id = payment["id"].as_str().unwrap().to_owned();
    let succeeded = app.payment_reaches(&token, &id, "succeeded").await;
    let event = app
        .stripe_events_of("payment_intent.succeeded")
        .into_iter()
        .next()
        .unwrap();
    let (status, reply) = app.post_event(&event).await;
    assert_eq!(
        (status, &reply["duplicate"]),
        (200, &json!(true)),
        "{reply}"
    );
    let mut stale = event.clone();
    stale["id"] = json!("evt_stale_failure");
    stale["type"] = json!("payment_intent.payment_failed");
    stale["created"] = json!(event["created"].as_i64().unwrap() - 60);
    stale["data"]["object"]["status"] = json!("requires_payment_method");
    stale["data"]["object"]["last_payment_error"] =
        json!({"code": "card_declined", "message": "Your card was declined."});
    let (status, reply) = app.post_event(&stale).await;
    assert_eq!((status, &reply["applied"]), (200, &json!(false)), "{reply}");
    let now = app.get(&format!("/services/payments/{id}"), &token).await;
    assert_eq!(now.body["status"], "succeeded");
    assert_eq!(now.body["updated_at"], succeeded["updated_at"]);

    // A subscription whose events are held, then delivered in reverse and twice after it
    // was canceled: it stays canceled, and the invoice is recorded once.
    let customer = create_customer(&app, &token, "bob@example.com").await;
    app.sandbox_post("_events/hold", json!({"hold": true}))
        .await;
    let subscription = app
        .post(
            "/services/payments/subscriptions/",
            &token,
            json!({"customer_id": customer, "price": "price_basic_monthly"}),
        )
        .await;
    let subscription = subscription.body["id"].as_str().unwrap().to_owned();
    let canceled = app
        .call(
            "DELETE",
            &format!("/services/payments/subscriptions/{subscription}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(canceled.body["status"], "canceled");
    let released = app
        .sandbox_post(
            "_events/release",
            json!({"order": "reverse", "duplicate": true}),
        )
        .await;
    assert_eq!(released["posted"], 3);
    let after = app
        .get(
            &format!("/services/payments/subscriptions/{subscription}"),
            &token,
        )
        .await;
    assert_eq!(after.body["status"], "canceled");
    let invoices = app
        .get(
            &format!("/services/payments/invoices/?customer_id={customer}"),
            &token,
        )
        .await;
    assert_eq!(invoices.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(invoices.body["items"][0]["status"], "paid");
}

#[tokio::test]
async fn the_sync_pages_through_everything_and_resumes_from_its_checkpoint() {
    let app = spawn_bundle_with(|options| {
        for (name, value) in [
            ("STRIPE_SYNC_PAGE_SIZE", "4"),
            ("STRIPE_SYNC_MAX_PAGES", "2"),
        ] {
            options.overrides.insert(name.to_owned(), value.to_owned());
        }
    })
    .await;
    let token = app.token("acme", "member");
    // Objects Herald never heard of (their webhooks are lost): 10 of acme's, 3 foreign.
    app.sandbox_post("_events/hold", json!({"hold": true}))
        .await;
    for n in 0..10 {
        app.stripe_api(
            "POST",
            "customers",
            json!({"email": format!("c{n}@example.com"), "metadata": {"org_id": "acme"}}),
        )
        .await;
    }
    for n in 0..3 {
        app.stripe_api(
            "POST",
            "customers",
            json!({"email": format!("other{n}@example.com")}),
        )
        .await;
    }
    app.sandbox_post("_events/release", json!({"drop": true}))
        .await;

    let fire = || app.fire_schedule("stripe-sync");
    let first = fire().await;
    assert_eq!(first["complete"], false, "{first}");
    assert_eq!(first["pages"], 2);
    let listed = app
        .get("/services/payments/customers/?limit=100", &token)
        .await;
    assert_eq!(
        listed.body["items"].as_array().unwrap().len(),
        5,
        "two pages of four, newest first: three foreign, five of acme's"
    );
    let mut runs = 1;
    loop {
        let run = fire().await;
        runs += 1;
        if run["complete"] == true {
            break;
        }
        assert!(runs < 10, "the sync never completes");
    }
    assert!(runs >= 3, "13 customers in pages of 4, two pages a run");
    let listed = app
        .get("/services/payments/customers/?limit=100", &token)
        .await;
    let emails: std::collections::BTreeSet<String> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["email"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(emails.len(), 10);
    assert!(emails.iter().all(|e| e.starts_with('c')));
    assert_eq!(
        listed.body["items"].as_array().unwrap().len(),
        10,
        "each once"
    );

    // A later complete run imports nothing twice.
    loop {
        if fire().await["complete"] == true {
            break;
        }
    }
    let listed = app
        .get("/services/payments/customers/?limit=100", &token)
        .await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 10);
    assert!(
        app.get(
            "/services/payments/customers/",
            &app.token("globex", "member")
        )
        .await
        .body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// Issue 16 defect 4: the daily sync repairs objects of any age from Stripe's Events API.
/// With no look-back, the object lists of a run see only objects created since the last
/// run; a refund made in the Stripe dashboard and a subscription canceled there, both with
/// their webhooks lost, change older objects, and only their events say so.
#[tokio::test]
async fn the_sync_applies_events_whose_webhooks_were_lost_to_objects_of_any_age() {
    let app = spawn_bundle_with(|options| {
        options
            .overrides
            .insert("STRIPE_SYNC_LOOKBACK_DAYS".to_owned(), "0".to_owned());
    })
    .await;
    let token = app.token("acme", "admin");
    let customer = create_customer(&app, &token, "old@example.com").await;
    let subscription = app
        .post(
            "/services/payments/subscriptions/",
            &token,
            json!({"customer_id": customer, "items": [{"price": "price_basic_monthly"}]}),
        )
        .await;
    assert_eq!(subscription.status, 201, "{}", subscription.body);
    let subscription_id = subscription.body["id"].as_str().unwrap().to_owned();
    let stripe_subscription = subscription.body["stripe_subscription"]
        .as_str()
        .unwrap()
        .to_owned();
    let payment = charge(
        &app,
        &token,
        json!({"amount": 2500, "currency": "usd", "customer_id": customer, "payment_method": "pm_card_visa"}),
    )
    .await;
    let id = payment["id"].as_str().unwrap().to_owned();
    let succeeded = app.payment_reaches(&token, &id, "succeeded").await;
    let intent = succeeded["stripe_payment_intent"]
        .as_str()
        .unwrap()
        .to_owned();

    // A complete run; the objects above are older than it (Stripe's clock is in seconds).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let first = app.fire_schedule("stripe-sync").await;
    assert_eq!(first["complete"], true, "{first}");

    // In the dashboard: a refund and a cancellation, their webhooks lost.
    app.sandbox_post("_events/hold", json!({"hold": true}))
        .await;
    let refund = app
        .stripe_api("POST", "refunds", json!({"payment_intent": intent}))
        .await;
    assert_eq!(refund["status"], "succeeded", "{refund}");
    let canceled = app
        .stripe_api(
            "DELETE",
            &format!("subscriptions/{stripe_subscription}"),
            json!({}),
        )
        .await;
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    app.sandbox_post("_events/release", json!({"drop": true}))
        .await;
    let path = format!("/services/payments/{id}");
    assert_eq!(app.get(&path, &token).await.body["status"], "succeeded");

    let second = app.fire_schedule("stripe-sync").await;
    assert_eq!(second["complete"], true, "{second}");
    let payment = app.get(&path, &token).await.body;
    assert_eq!(payment["status"], "refunded", "{payment}");
    assert_eq!(payment["amount_refunded"], 2500);
    let subscription = app
        .get(
            &format!("/services/payments/subscriptions/{subscription_id}"),
            &token,
        )
        .await;
    assert_eq!(
        subscription.body["status"], "canceled",
        "{}",
        subscription.body
    );

    // The next run finds those events applied: nothing changes twice.
    let third = app.fire_schedule("stripe-sync").await;
    assert_eq!(third["complete"], true, "{third}");
    assert_eq!(third["imported"], 0, "{third}");
}

/// Test-mode payment methods live in tests and the sandbox only: a charge names its method,
/// or the customer's default at Stripe is charged, or nothing happens.
#[tokio::test]
async fn a_charge_without_a_payment_method_uses_the_customers_default_or_is_refused() {
    let app = spawn_bundle().await;
    let token = app.token("acme", "admin");

    // No method and no customer: 400 naming the field, no record, nothing at Stripe.
    let calls_before = app.stripe().calls();
    let reply = app
        .post(
            "/services/payments/",
            &token,
            json!({"amount": 1500, "currency": "usd"}),
        )
        .await;
    assert!(
        reply.problem(400)["errors"]["payment_method"].is_array(),
        "{}",
        reply.body
    );
    assert_eq!(app.stripe().calls(), calls_before, "no Stripe call");

    // A customer without a default: refused the same way, no PaymentIntent.
    let customer = create_customer(&app, &token, "ann@example.com").await;
    let reply = app
        .post(
            "/services/payments/",
            &token,
            json!({"amount": 1500, "currency": "usd", "customer_id": customer}),
        )
        .await;
    assert!(
        reply.problem(400)["errors"]["payment_method"].is_array(),
        "{}",
        reply.body
    );
    assert_eq!(
        app.get("/services/payments/", &token).await.body["items"],
        json!([]),
        "nothing recorded"
    );
    let intents = app
        .stripe_api("GET", "payment_intents", json!({"limit": 100}))
        .await;
    assert_eq!(intents["data"], json!([]), "no PaymentIntent at Stripe");

    // The customer's default set at Stripe: the charge uses it.
    let stripe_customer = stripe_customer_of(&app, &token, &customer).await;
    let updated = app
        .stripe_api(
            "POST",
            &format!("customers/{stripe_customer}"),
            json!({"invoice_settings": {"default_payment_method": "pm_card_mastercard"}}),
        )
        .await;
    assert_eq!(
        updated["invoice_settings"]["default_payment_method"],
        "pm_card_mastercard"
    );
    let payment = charge(
        &app,
        &token,
        json!({"amount": 1500, "currency": "usd", "customer_id": customer}),
    )
    .await;
    let id = payment["id"].as_str().unwrap().to_owned();
    app.payment_reaches(&token, &id, "succeeded").await;
    let intents = app
        .stripe_api("GET", "payment_intents", json!({"limit": 100}))
        .await;
    assert_eq!(intents["data"].as_array().unwrap().len(), 1, "{intents}");
    assert_eq!(intents["data"][0]["payment_method"], "pm_card_mastercard");
    assert_eq!(intents["data"][0]["customer"], stripe_customer.as_str());
}

/// The sandbox refuses a confirmation without a payment method the way Stripe does.
#[tokio::test]
async fn the_sandbox_refuses_to_confirm_an_intent_without_a_payment_method() {
    let app = spawn_bundle().await;
    let refused = app
        .stripe_api(
            "POST",
            "payment_intents",
            json!({"amount": 100, "currency": "usd", "confirm": true}),
        )
        .await;
    assert_eq!(
        refused["error"]["code"], "payment_intent_unexpected_state",
        "{refused}"
    );
    assert_eq!(refused["error"]["type"], "invalid_request_error");
    assert_eq!(
        refused["error"]["payment_intent"]["status"],
        "requires_payment_method"
    );
}

impl TestBundle {
    /// A POST with an `Idempotency-Key`, as a client that retries would send it.
    async fn post_keyed(&self, path: &str, token: &str, key: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.bundle.url(path))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The same POST, abandoned after `seconds` with no answer: the client gives up as API
    /// Gateway does at 30 s, and the invocation serving it is cut off mid-call.
    async fn post_keyed_abandoned(&self, path: &str, token: &str, key: &str, body: &Value) {
        let send = self.post_keyed(path, token, key, body);
        let result = tokio::time::timeout(std::time::Duration::from_millis(1500), send).await;
        assert!(result.is_err(), "the request was meant to hang: {result:?}");
    }

    /// What a minute later looks like to Herald's `Idempotency-Key` of a request that
    /// never finished: its in-progress claim has lapsed, so a retry runs again.
    async fn lapse_claim(&self, org: &str, scope: &str, key: &str) {
        use aws_sdk_dynamodb::types::AttributeValue;
        self.bundle
            .aws
            .dynamodb
            .update_item()
            .table_name(self.table())
            .key("pk", AttributeValue::S(format!("ORG#{org}")))
            .key("sk", AttributeValue::S(format!("IDEM#{scope}#{key}")))
            .update_expression("SET lease_until = :past")
            .condition_expression("#state = :in_progress")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":past", AttributeValue::N("0".to_owned()))
            .expression_attribute_values(
                ":in_progress",
                AttributeValue::S("in_progress".to_owned()),
            )
            .send()
            .await
            .expect("the first request's claim is still in progress: it was cut off");
    }

    async fn stripe_list(&self, list: &str) -> Vec<Value> {
        self.stripe_api("GET", list, json!({"limit": 100})).await["data"]
            .as_array()
            .unwrap()
            .clone()
    }
}

/// Issue 16, defect 1: Stripe carries out each create and holds its answer past the point
/// where the caller gives up (the invocation is cut off: no answer, nothing recorded); the
/// client retries with the same `Idempotency-Key` once Herald's claim has lapsed. Each retry
/// reaches the object the first attempt made (Stripe replays it), so there is one customer,
/// one subscription and one PaymentIntent.
#[tokio::test]
async fn a_retry_of_a_cut_off_create_reaches_the_same_stripe_object() {
    let app = spawn_bundle_with(|options| {
        options
            .overrides
            .insert("STRIPE_TIMEOUT_MS".to_owned(), "20000".to_owned());
    })
    .await;
    let token = app.token("acme", "admin");

    let customer_body = json!({"email": "ann@example.com", "name": "Ann Example"});
    // Stripe's customer.created is held until the retry has answered: delivered first, it
    // would record the customer, and the retry would answer from that record without
    // reaching Stripe (also one customer, but not the replay this shows).
    app.sandbox_post("_events/hold", json!({"hold": true}))
        .await;
    app.sandbox_post("_faults", json!({"connection": "accept_then_hold"}))
        .await;
    app.post_keyed_abandoned(
        "/services/payments/customers/",
        &token,
        "cust-1",
        &customer_body,
    )
    .await;
    assert_eq!(
        app.stripe_list("customers").await.len(),
        1,
        "Stripe made it"
    );
    app.lapse_claim("acme", "POST /services/payments/customers", "cust-1")
        .await;
    let replays = app.stripe().replays();
    let (status, customer) = app
        .post_keyed(
            "/services/payments/customers/",
            &token,
            "cust-1",
            &customer_body,
        )
        .await;
    assert_eq!(status, 201, "{customer}");
    assert_eq!(
        app.stripe().replays(),
        replays + 1,
        "Stripe replayed its answer"
    );
    app.sandbox_post("_events/release", json!({})).await;
    let customers = app.stripe_list("customers").await;
    assert_eq!(customers.len(), 1, "one customer: {customers:?}");
    assert_eq!(customers[0]["id"], customer["stripe_customer"]);
    assert_eq!(customers[0]["metadata"]["herald_id"], customer["id"]);
    let customer_id = customer["id"].as_str().unwrap().to_owned();

    let subscription_body = json!({"customer_id": customer_id, "price": "price_basic_monthly"});
    app.sandbox_post("_faults", json!({"connection": "accept_then_hold"}))
        .await;
    app.post_keyed_abandoned(
        "/services/payments/subscriptions/",
        &token,
        "sub-1",
        &subscription_body,
    )
    .await;
    app.lapse_claim("acme", "POST /services/payments/subscriptions", "sub-1")
        .await;
    let (status, subscription) = app
        .post_keyed(
            "/services/payments/subscriptions/",
            &token,
            "sub-1",
            &subscription_body,
        )
        .await;
    assert_eq!(status, 201, "{subscription}");
    let subscriptions = app.stripe_list("subscriptions").await;
    assert_eq!(
        subscriptions.len(),
        1,
        "one subscription: {subscriptions:?}"
    );
    assert_eq!(subscriptions[0]["id"], subscription["stripe_subscription"]);

    let charge_body = json!({"amount": 4200, "currency": "usd", "payment_method": "pm_card_visa", "customer_id": customer_id});
    app.sandbox_post("_faults", json!({"connection": "accept_then_hold"}))
        .await;
    app.post_keyed_abandoned("/services/payments/", &token, "order-1", &charge_body)
        .await;
    app.lapse_claim("acme", "POST /services/payments", "order-1")
        .await;
    let (status, payment) = app
        .post_keyed("/services/payments/", &token, "order-1", &charge_body)
        .await;
    assert!(status == 201 || status == 202, "{status} {payment}");
    let id = payment["id"].as_str().unwrap().to_owned();
    app.payment_reaches(&token, &id, "succeeded").await;
    let for_charges: Vec<Value> = app
        .stripe_list("payment_intents")
        .await
        .into_iter()
        .filter(|pi| pi["amount"] == 4200)
        .collect();
    assert_eq!(for_charges.len(), 1, "one PaymentIntent: {for_charges:?}");
    assert_eq!(for_charges[0]["metadata"]["herald_id"], id.as_str());
    let listed = app.get("/services/payments/?limit=100", &token).await;
    let herald_charges = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["amount"] == 4200)
        .count();
    assert_eq!(herald_charges, 1, "one Herald payment");
}

/// Issue 16, defect 1 (and issue 15's strict runner): the runner stops an invocation at its
/// function's `Timeout` as Lambda does, and hands the handler the deadline in its context.
/// With the function's Timeout at 8 s and Stripe holding every answer, the Stripe calls end
/// at the deadline less the time kept to record the outcome: the client gets 202 `pending`,
/// not the API's 500 for a function Lambda stopped.
#[tokio::test]
async fn the_lambda_deadline_bounds_the_stripe_calls_so_a_held_charge_answers_pending() {
    let app = spawn_bundle_with(|options| {
        options
            .timeouts
            .insert("payments-api".to_owned(), std::time::Duration::from_secs(8));
    })
    .await;
    let token = app.token("acme", "member");
    app.sandbox_post(
        "_faults",
        json!({"connection": "accept_then_hold", "count": 5}),
    )
    .await;
    app.sandbox_post("_events/hold", json!({"hold": true}))
        .await;
    let (status, payment) = app
        .post_keyed(
            "/services/payments/",
            &token,
            "order-deadline",
            &json!({"amount": 700, "currency": "usd", "payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(
        (status, &payment["status"]),
        (202, &json!("pending")),
        "{payment}"
    );
}

/// Issue 16, acceptance: a property over random crash points. Each client request (its own
/// `Idempotency-Key` and amount) is tried one to three times, each try cut off at a random
/// point, then once more to its end: *before Stripe* (every connection drops before Stripe
/// reads the call), *after Stripe, before the record* (Stripe makes the PaymentIntent and
/// holds its answer; the client gives up, the invocation is cut off, its claim lapses), or
/// *after the record* (Herald answers; the client never reads it). However the tries fall,
/// Stripe holds at most one PaymentIntent per request, and an answer naming one names that.
#[tokio::test]
async fn random_crash_points_never_make_a_second_payment_intent() {
    let app = spawn_bundle_with(|options| {
        options
            .overrides
            .insert("STRIPE_TIMEOUT_MS".to_owned(), "20000".to_owned());
    })
    .await;
    let token = app.token("acme", "member");
    // xorshift64, seeded: the same scenarios on every run, and a failure names its seed.
    let seed: u64 = 20_261_203;
    let mut state = seed;
    let mut pick = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for request in 0..8_u64 {
        let key = format!("crash-{request}");
        let amount = 1_000 + request;
        let body = json!({"amount": amount, "currency": "usd", "payment_method": "pm_card_visa"});
        let mut points = Vec::new();
        // Once Herald has answered the request, a try is a replay of that answer: it never
        // reaches Stripe, so it cannot be cut off there.
        let mut answered = false;
        for _ in 0..=pick(3) {
            match pick(3) {
                1 | 2 if answered => {
                    points.push("replayed");
                    app.post_keyed("/services/payments/", &token, &key, &body)
                        .await;
                }
                0 => {
                    points.push("before Stripe");
                    app.sandbox_post("_faults", json!({"connection": "drop", "count": 3}))
                        .await;
                    // Herald's three attempts all drop (one left over would only drop
                    // the next try before Stripe too: the same crash point).
                    app.post_keyed("/services/payments/", &token, &key, &body)
                        .await;
                }
                1 => {
                    points.push("after Stripe, before the record");
                    app.sandbox_post("_faults", json!({"connection": "accept_then_hold"}))
                        .await;
                    app.post_keyed_abandoned("/services/payments/", &token, &key, &body)
                        .await;
                    app.lapse_claim("acme", "POST /services/payments", &key)
                        .await;
                }
                _ => {
                    points.push("after the record");
                    let (status, _) = app
                        .post_keyed("/services/payments/", &token, &key, &body)
                        .await;
                    answered = status == 201;
                }
            }
        }
        let (status, payment) = app
            .post_keyed("/services/payments/", &token, &key, &body)
            .await;
        let why = format!("seed {seed}, request {request}, crash points {points:?}");
        assert!(matches!(status, 201 | 202), "{why}: {status} {payment}");
        let intents: Vec<Value> = app
            .stripe_list("payment_intents")
            .await
            .into_iter()
            .filter(|intent| intent["amount"] == amount)
            .collect();
        assert!(intents.len() <= 1, "{why}: {intents:?}");
        if let Some(named) = payment["stripe_payment_intent"].as_str() {
            assert_eq!(intents.len(), 1, "{why}: {payment}");
            assert_eq!(intents[0]["id"], named, "{why}");
        }
    }
}

/// Issue 16, defect 1: when Stripe holds its answer past the request's Stripe budget, the
/// charge answers 202 `pending` (no second create), and Stripe's webhook settles it.
#[tokio::test]
async fn an_unknown_outcome_answers_pending_and_the_webhook_settles_it() {
    let app = spawn_bundle_with(|options| {
        for (name, value) in [
            ("STRIPE_TIMEOUT_MS", "1000"),
            ("STRIPE_BUDGET_SECONDS", "3"),
        ] {
            options.overrides.insert(name.to_owned(), value.to_owned());
        }
    })
    .await;
    let token = app.token("acme", "member");
    app.sandbox_post(
        "_faults",
        // Each of Herald's attempts inside its 3 s budget (two of 1 s) is held.
        json!({"connection": "accept_then_hold", "count": 2}),
    )
    .await;
    // Stripe's events wait until the answer is read, so the answer alone says `pending`.
    app.sandbox_post("_events/hold", json!({"hold": true}))
        .await;
    let started = std::time::Instant::now();
    let (status, payment) = app
        .post_keyed(
            "/services/payments/",
            &token,
            "order-9",
            &json!({"amount": 900, "currency": "usd", "payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(
        (status, &payment["status"]),
        (202, &json!("pending")),
        "{payment}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the Stripe calls kept to their budget"
    );
    let id = payment["id"].as_str().unwrap().to_owned();
    app.stripe_emitted("payment_intent.succeeded").await;
    app.sandbox_post("_events/release", json!({})).await;
    app.payment_reaches(&token, &id, "succeeded").await;
    let intents = app.stripe_list("payment_intents").await;
    assert_eq!(intents.len(), 1, "{intents:?}");

    // A 202 is not kept under the key: the same request again answers what is now known,
    // not the stale `pending`, and creates nothing.
    let (status, again) = app
        .post_keyed(
            "/services/payments/",
            &token,
            "order-9",
            &json!({"amount": 900, "currency": "usd", "payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(
        (status, &again["status"]),
        (201, &json!("succeeded")),
        "{again}"
    );
    assert_eq!(app.stripe_list("payment_intents").await.len(), 1);

    // Stripe never got the call (every attempt's connection dropped before it acted): the
    // charge is pending, and a retry with the same key makes it, once.
    app.sandbox_post("_faults", json!({"connection": "drop", "count": 3}))
        .await;
    let body = json!({"amount": 1200, "currency": "usd", "payment_method": "pm_card_visa"});
    let (status, lost) = app
        .post_keyed("/services/payments/", &token, "order-10", &body)
        .await;
    assert_eq!(
        (status, &lost["status"]),
        (202, &json!("pending")),
        "{lost}"
    );
    let (status, retried) = app
        .post_keyed("/services/payments/", &token, "order-10", &body)
        .await;
    assert_eq!(retried["id"], lost["id"], "the same payment: {retried}");
    assert!(matches!(status, 201 | 202), "{status} {retried}");
    app.payment_reaches(&token, lost["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(
        app.stripe_list("payment_intents").await.len(),
        2,
        "one intent per request"
    );
}

/// Issue 16, defect 6: the sandbox keeps Stripe's idempotency rules — a key replays the
/// first answer for the same endpoint and parameters, and is an `idempotency_error` for
/// anything else.
#[tokio::test]
async fn the_sandbox_keeps_stripes_idempotency_rules() {
    let app = spawn_bundle().await;
    let send = |path: &'static str, params: Value| {
        let app = &app;
        async move {
            app.http
                .post(app.bundle.url(&format!("/sandbox/stripe/v1/{path}")))
                .bearer_auth(app.stripe().secret_key())
                .header("idempotency-key", "k-1")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(shared::providers::stripe::form::encode(&params))
                .send()
                .await
                .unwrap()
        }
    };
    let first = send("customers", json!({"email": "a@example.com"})).await;
    let first: Value = first.json().await.unwrap();
    let again = send("customers", json!({"email": "a@example.com"})).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    for (path, params) in [
        ("customers", json!({"email": "b@example.com"})),
        ("payment_intents", json!({"amount": 100, "currency": "usd"})),
    ] {
        let refused = send(path, params).await;
        assert_eq!(refused.status(), 400);
        let refused: Value = refused.json().await.unwrap();
        assert_eq!(refused["error"]["type"], "idempotency_error", "{refused}");
    }
    assert_eq!(app.stripe_list("customers").await.len(), 1);
}

/// Issue 16, defect 3: a card that needs 3-D Secure. On session the answer carries what
/// Stripe.js needs (`client_secret`, `next_action`); the customer authenticates (the
/// sandbox's Stripe.js stand-in) and `payment_intent.succeeded` settles it. Off session the
/// bank declines it with `authentication_required`: the payment waits `requires_action`
/// with that code, so the product can bring the customer back.
#[tokio::test]
async fn a_charge_that_needs_authentication_is_finished_by_the_customer() {
    let app = spawn_bundle().await;
    let token = app.token("acme", "admin");
    let payment = charge(
        &app,
        &token,
        json!({"amount": 2000, "currency": "eur", "payment_method": "pm_card_authenticationRequired"}),
    )
    .await;
    assert_eq!(payment["status"], "requires_action", "{payment}");
    let secret = payment["client_secret"]
        .as_str()
        .expect("a client secret")
        .to_owned();
    assert!(secret.starts_with(payment["stripe_payment_intent"].as_str().unwrap()));
    assert_eq!(payment["next_action"]["type"], "use_stripe_sdk");
    let id = payment["id"].as_str().unwrap().to_owned();
    let stored = app.get(&format!("/services/payments/{id}"), &token).await;
    assert!(
        stored.body.get("client_secret").is_none(),
        "the secret is not stored"
    );
    let confirmed = app
        .sandbox_post(
            "_stripe_js/confirm_payment",
            json!({"client_secret": secret, "authenticate": true}),
        )
        .await;
    assert_eq!(confirmed["status"], "processing", "{confirmed}");
    app.payment_reaches(&token, &id, "succeeded").await;

    let customer = create_customer(&app, &token, "ann@example.com").await;
    let away = charge(
        &app,
        &token,
        json!({"amount": 2000, "currency": "eur", "customer_id": customer, "off_session": true,
               "payment_method": "pm_card_authenticationRequired"}),
    )
    .await;
    assert_eq!(away["status"], "requires_action", "{away}");
    assert!(
        away["failure_reason"]
            .as_str()
            .unwrap()
            .starts_with("authentication_required"),
        "{away}"
    );
    assert!(
        away["client_secret"].is_string(),
        "to bring the customer back"
    );
    let intent = app
        .stripe_api(
            "GET",
            &format!(
                "payment_intents/{}",
                away["stripe_payment_intent"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(intent["status"], "requires_payment_method");
    // An off-session charge names a customer.
    let reply = app
        .post(
            "/services/payments/",
            &token,
            json!({"amount": 2000, "currency": "eur", "off_session": true, "payment_method": "pm_card_visa"}),
        )
        .await;
    assert!(reply.problem(400)["errors"]["customer_id"].is_array());
}

/// Issue 16, defect 6: with a live-mode key the sandbox refuses Stripe's test payment
/// methods as live Stripe does; below Stripe's minimum charge Herald answers 400 before
/// Stripe is called, and the sandbox refuses it with Stripe's `amount_too_small`.
#[tokio::test]
async fn the_sandbox_is_as_strict_as_live_stripe() {
    let app = spawn_bundle().await;
    let token = app.token("acme", "admin");
    for (amount, currency) in [(49, "usd"), (29, "gbp"), (49, "jpy")] {
        let reply = app
            .post(
                "/services/payments/",
                &token,
                json!({"amount": amount, "currency": currency, "payment_method": "pm_card_visa"}),
            )
            .await;
        assert!(
            reply.problem(400)["errors"]["amount"].is_array(),
            "{amount} {currency}"
        );
        let refused = app
            .stripe_api(
                "POST",
                "payment_intents",
                json!({"amount": amount, "currency": currency}),
            )
            .await;
        assert_eq!(refused["error"]["code"], "amount_too_small", "{refused}");
        assert_eq!(refused["error"]["param"], "amount");
    }
    let refused = app
        .stripe_api(
            "POST",
            "payment_intents",
            json!({"amount": 1005, "currency": "kwd"}),
        )
        .await;
    assert_eq!(
        refused["error"]["type"], "invalid_request_error",
        "{refused}"
    );

    // Live mode: a bundle whose Stripe secret holds the sandbox's sk_live_ key before
    // Herald first reads it.
    let app = spawn_bundle().await;
    app.stripe().use_live_key();
    assert!(app.stripe().secret_key().starts_with("sk_live_"));
    store_stripe_secret(&app).await;
    let payment = charge(
        &app,
        &token,
        json!({"amount": 1500, "currency": "usd", "payment_method": "pm_card_visa"}),
    )
    .await;
    assert_eq!(payment["status"], "failed", "{payment}");
    assert!(
        payment["failure_reason"]
            .as_str()
            .unwrap()
            .contains("live mode key"),
        "{payment}"
    );
    let live = charge(
        &app,
        &token,
        json!({"amount": 1500, "currency": "usd", "payment_method": "pm_1LiveSavedCard"}),
    )
    .await;
    let id = live["id"].as_str().unwrap().to_owned();
    app.payment_reaches(&token, &id, "succeeded").await;
    let intent = app
        .stripe_api(
            "GET",
            &format!(
                "payment_intents/{}",
                live["stripe_payment_intent"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(intent["livemode"], true);
}

/// Issue 16, defect 5: the charge of a subscription invoice is Stripe's own, without
/// `metadata.org_id`. A refund of it made directly at Stripe (as in the dashboard) reaches
/// the payment Herald recorded for the invoice, through the customer Herald knows. And
/// `invoice.paid` in the newer API versions' shape (no `payment_intent`, a `payments` list,
/// the subscription under `parent.subscription_details`) records its payment as the older
/// shape does.
#[tokio::test]
async fn subscription_payments_are_found_in_both_invoice_shapes_and_refunds_reach_them() {
    let app = spawn_bundle().await;
    let token = app.token("acme", "admin");
    let customer = create_customer(&app, &token, "ann@example.com").await;
    let subscription = app
        .post(
            "/services/payments/subscriptions/",
            &token,
            json!({"customer_id": customer, "price": "price_pro_monthly"}),
        )
        .await;
    assert_eq!(subscription.status, 201, "{}", subscription.body);
    let subscription_id = subscription.body["id"].as_str().unwrap().to_owned();
    let stripe_subscription = subscription.body["stripe_subscription"]
        .as_str()
        .unwrap()
        .to_owned();
    let invoice_payment = |invoice: Option<String>| {
        let (app, token, customer) = (&app, &token, &customer);
        async move {
            eventually(30, "the invoice's payment", || async {
                let page = app
                    .get(
                        &format!("/services/payments/?customer_id={customer}"),
                        token,
                    )
                    .await;
                page.body["items"].as_array().and_then(|items| {
                    items
                        .iter()
                        .find(|p| match &invoice {
                            Some(invoice) => p["invoice"] == invoice.as_str(),
                            None => p["invoice"].is_string(),
                        })
                        .cloned()
                })
            })
            .await
        }
    };
    let payment = invoice_payment(None).await;
    let id = payment["id"].as_str().unwrap().to_owned();
    assert_eq!(payment["status"], "succeeded", "{payment}");
    let intent = app
        .stripe_api(
            "GET",
            &format!(
                "payment_intents/{}",
                payment["stripe_payment_intent"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    let stripe_charge = app
        .stripe_api(
            "GET",
            &format!("charges/{}", intent["latest_charge"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert!(
        stripe_charge["metadata"]["org_id"].is_null(),
        "Stripe's own charge: {stripe_charge}"
    );

    // Refunded at Stripe, not through Herald: only charge.refunded tells Herald.
    let refund = app
        .stripe_api(
            "POST",
            "refunds",
            json!({"payment_intent": intent["id"], "amount": 1200}),
        )
        .await;
    assert_eq!(refund["object"], "refund", "{refund}");
    let refunded = app.payment_reaches(&token, &id, "partially_refunded").await;
    assert_eq!(refunded["amount_refunded"], 1200);

    // The next invoice, as an endpoint on 2025-03-31.basil or later sends it.
    let created = chrono::Utc::now().timestamp();
    let stripe_customer = stripe_customer_of(&app, &token, &customer).await;
    let invoice = json!({
        "id": "in_basil_renewal", "object": "invoice", "customer": stripe_customer,
        "status": "paid", "amount_due": 5000, "amount_paid": 5000, "currency": "usd",
        "number": "SBX-0100", "created": created, "livemode": false, "metadata": {},
        "parent": {"type": "subscription_details", "subscription_details": {
            "subscription": stripe_subscription,
            "metadata": {"org_id": "acme", "herald_id": subscription_id}}},
        "payments": {"object": "list", "has_more": false, "data": [
            {"object": "invoice_payment", "id": "inpay_failed", "status": "canceled",
             "payment": {"type": "payment_intent", "payment_intent": "pi_basil_declined"}},
            {"object": "invoice_payment", "id": "inpay_paid", "status": "paid",
             "payment": {"type": "payment_intent", "payment_intent": "pi_basil_renewal"}},
        ]},
    });
    let event = json!({
        "id": "evt_basil_invoice_paid", "object": "event", "api_version": "2025-03-31.basil",
        "created": created, "livemode": false, "type": "invoice.paid",
        "data": {"object": invoice}, "pending_webhooks": 1,
    });
    let (status, reply) = app.post_event(&event).await;
    assert_eq!(status, 200, "{reply}");
    let renewal = invoice_payment(Some("in_basil_renewal".to_owned())).await;
    assert_eq!(renewal["stripe_payment_intent"], "pi_basil_renewal");
    assert_eq!(renewal["amount"], 5000);
    assert_eq!(renewal["status"], "succeeded");
    let invoices = app
        .get(
            &format!("/services/payments/invoices/?customer_id={customer}"),
            &token,
        )
        .await;
    let stored = invoices.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["stripe_invoice"] == "in_basil_renewal")
        .cloned()
        .unwrap_or_else(|| panic!("the invoice: {}", invoices.body));
    assert_eq!(stored["subscription"], stripe_subscription.as_str());
}

/// Issue 16: a key rolled in the Stripe Dashboard (Stripe then answers 401 "Invalid API
/// Key provided" to the old one) is picked up from the secret by the next charge, without a
/// cold start and without failing that charge: the API reads the secret again once and
/// repeats the call with the same idempotency key.
#[tokio::test]
async fn a_rolled_stripe_key_is_picked_up_without_failing_the_charge() {
    let app = spawn_bundle().await;
    let token = app.token("acme", "admin");
    let body = json!({"amount": 1500, "currency": "usd", "payment_method": "pm_card_visa"});
    charge(&app, &token, body.clone()).await;

    app.stripe().rotate_key();
    store_stripe_secret(&app).await;
    let second = charge(&app, &token, body).await;
    assert_ne!(second["status"], "failed", "{second}");
    assert!(
        second["stripe_payment_intent"].as_str().is_some(),
        "{second}"
    );
}

/// A read-only Stripe call (here the customer's default payment method, read when a charge
/// names only the customer) picks a rolled key up as the creates do, instead of answering
/// the 401 as a provider error.
#[tokio::test]
async fn a_rolled_stripe_key_is_picked_up_by_the_reads_too() {
    let app = spawn_bundle().await;
    let token = app.token("acme", "admin");
    let customer = create_customer(&app, &token, "ann@example.com").await;
    let stripe_customer = stripe_customer_of(&app, &token, &customer).await;
    app.stripe_api(
        "POST",
        &format!("customers/{stripe_customer}"),
        json!({"invoice_settings": {"default_payment_method": "pm_card_visa"}}),
    )
    .await;

    app.stripe().rotate_key();
    store_stripe_secret(&app).await;
    let payment = charge(
        &app,
        &token,
        json!({"amount": 1500, "currency": "usd", "customer_id": customer}),
    )
    .await;
    let id = payment["id"].as_str().unwrap().to_owned();
    app.payment_reaches(&token, &id, "succeeded").await;
}

/// The Stripe sync holds its key for as long as its execution environment lives: a run
/// refused with 401 marks the key stale, so the next run (EventBridge retries a failed
/// one) reads the rolled key and completes.
#[tokio::test]
async fn a_sync_refused_for_a_rolled_key_reads_the_secret_again_on_its_next_run() {
    let app = spawn_bundle().await;
    app.fire_schedule("stripe-sync").await;
    app.stripe().rotate_key();
    store_stripe_secret(&app).await;
    let refused = app
        .http
        .post(app.bundle.url("/local/schedules/stripe-sync"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 500, "the run with the old key fails");
    let next = app.fire_schedule("stripe-sync").await;
    assert_ne!(next.get("configured"), Some(&json!(false)), "{next}");
}
