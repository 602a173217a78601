//! Payments end to end (issue: payments): the payments API through the local runner, the
//! Stripe sandbox speaking Stripe's form-encoded API and posting signed events back to the
//! webhook function, receipts in S3 (moto) behind presigned URLs, and the daily sync.

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
    ] {
        let reply = app.post("/services/payments/", &token, body.clone()).await;
        let problem = reply.problem(400);
        assert!(problem["errors"][field].is_array(), "{body}: {problem}");
    }
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
            .insert("STRIPE_TIMEOUT_SECONDS".to_owned(), "1".to_owned());
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
    let stripe_customer = app
        .get(&format!("/services/payments/customers/{customer}"), &token)
        .await
        .body["stripe_customer"]
        .as_str()
        .unwrap()
        .to_owned();
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
