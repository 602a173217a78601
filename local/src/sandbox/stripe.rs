//! A Stripe stand-in: the REST calls Herald makes (customers, subscriptions with prices,
//! payment intents with create/confirm/retrieve/list, refunds, invoices), form-encoded with
//! bracket nesting, answered in Stripe's JSON shapes with `has_more` paging, `Idempotency-Key`
//! replaying the first response, and webhook events signed like Stripe's
//! (`Stripe-Signature: t=…,v1=…`) posted back to Herald.
//!
//! - A confirmed PaymentIntent answers `processing`, then succeeds shortly after and posts
//!   `payment_intent.succeeded`. The test cards `pm_card_chargeDeclined` (and
//!   `pm_card_chargeDeclinedInsufficientFunds`) are declined with a 402 card error and
//!   `payment_intent.payment_failed`. Confirming without a payment method is refused as
//!   Stripe refuses it (400 `payment_intent_unexpected_state`; like Stripe, the customer's
//!   `invoice_settings.default_payment_method` is not used for a PaymentIntent: the caller
//!   names it).
//! - Customers keep `invoice_settings[default_payment_method]` from create and update
//!   (`POST /v1/customers/{id}`).
//! - A subscription is charged at once: a paid invoice (`invoice.paid`) with its own
//!   PaymentIntent; its PDF is served at the invoice's `invoice_pdf`.
//! - Refunds post `charge.refunded`.
//!
//! Test hooks under `/sandbox/stripe/_…`: `_faults` (`{"status": 503, "count": 2}` or
//! `{"delay_ms": 5000}`), `_events` (what was sent), `_events/hold` (`{"hold": true}`
//! queues events instead of posting them), `_events/release` (`{"order": "reverse",
//! "duplicate": true}` posts the queued ones, reordered or twice; `{"drop": true}` discards
//! them), `_events/{id}/replay` (posts one again).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::providers::stripe::{API_VERSION, SIGNATURE_HEADER, form, sign};

use super::faults::{self, ConnectionFault, Fault, Faults};

/// Prices the sandbox knows by name (others cost 15.00 USD a month).
const PRICES: &[(&str, i64)] = &[("price_basic_monthly", 1000), ("price_pro_monthly", 5000)];

pub struct StripeSandbox {
    /// Names this sandbox's keys and secrets.
    tag: String,
    /// Whether it holds a live-mode key (`sk_live_…`): then, as live Stripe, it refuses
    /// test payment methods and its objects say `livemode: true`.
    live: AtomicBool,
    /// How many times the key was rolled ([`Self::rotate_key`]): the old key is refused.
    rotations: std::sync::atomic::AtomicU32,
    webhook_secret: String,
    /// A second configured secret, as during a rotation; the sandbox signs with the first.
    retired_secret: String,
    webhook_url: String,
    public_url: String,
    http: reqwest::Client,
    state: Mutex<SandboxState>,
}

#[derive(Default)]
struct SandboxState {
    objects: HashMap<String, Value>,
    /// Ids by list path (`customers`, …), oldest first.
    lists: HashMap<&'static str, Vec<String>>,
    /// Idempotency keys (one namespace per account, as at Stripe) and what they answered.
    idempotency: HashMap<String, Kept>,
    /// Requests answered from a kept idempotency key.
    replays: u64,
    faults: Faults,
    events: Vec<Value>,
    held: Option<Vec<Value>>,
    calls: u64,
}

/// A request kept under its idempotency key: which endpoint and parameters it had, and its
/// answer.
struct Kept {
    endpoint: String,
    params: Value,
    status: u16,
    body: Value,
}

#[derive(Debug, Default, Deserialize)]
struct Release {
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    drop: bool,
}

type Reply = (StatusCode, Value);

fn stripe_error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Reply {
    (
        status,
        json!({"error": {"type": kind, "code": code, "message": message}}),
    )
}

fn invalid(message: &str) -> Reply {
    stripe_error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        None,
        message,
    )
}

fn missing(id: &str) -> Reply {
    stripe_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such object: '{id}'"),
    )
}

/// Stripe's minimum charge per currency, in minor units ("Minimum and maximum charge
/// amounts", docs.stripe.com/currencies#minimum-and-maximum-charge-amounts); others are
/// held to one minor unit here.
const MINIMUM_CHARGE: &[(&str, i64)] = &[
    ("aed", 200),
    ("aud", 50),
    ("bgn", 100),
    ("brl", 50),
    ("cad", 50),
    ("chf", 50),
    ("czk", 1500),
    ("dkk", 250),
    ("eur", 50),
    ("gbp", 30),
    ("hkd", 400),
    ("huf", 17_500),
    ("inr", 50),
    ("jpy", 50),
    ("mxn", 1000),
    ("myr", 200),
    ("nok", 300),
    ("nzd", 50),
    ("pln", 200),
    ("ron", 200),
    ("sek", 300),
    ("sgd", 50),
    ("thb", 1000),
    ("usd", 50),
];

/// The largest amount Stripe takes: eight digits (same page).
const MAXIMUM_CHARGE: i64 = 99_999_999;

/// Stripe's refusal of an amount out of its bounds (`amount_too_small`,
/// `amount_too_large`, docs.stripe.com/error-codes), or of a three-decimal amount whose last
/// digit is not 0 ("the least significant (last) digit to be 0", docs.stripe.com/currencies#three-decimal).
fn check_amount(amount: i64, currency: &str) -> Option<Reply> {
    let zero_decimal =
        shared::payments::Currency::parse(currency).is_ok_and(|c| c.is_zero_decimal());
    let three_decimal =
        shared::payments::Currency::parse(currency).is_ok_and(|c| c.exponent() == 3);
    let minimum = MINIMUM_CHARGE
        .iter()
        .find(|(code, _)| *code == currency)
        .map_or(1, |(_, minimum)| *minimum);
    let shown = |minor: i64| {
        if zero_decimal {
            format!("{minor} {currency}")
        } else {
            format!("{}.{:02} {currency}", minor / 100, minor % 100)
        }
    };
    let refusal = |code: &str, message: String| {
        let (status, mut body) = stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some(code),
            &message,
        );
        body["error"]["param"] = json!("amount");
        body["error"]["doc_url"] = json!(format!(
            "https://stripe.com/docs/error-codes/{}",
            code.replace('_', "-")
        ));
        (status, body)
    };
    if amount < minimum {
        return Some(refusal(
            "amount_too_small",
            format!("Amount must be at least {}", shown(minimum)),
        ));
    }
    if amount > MAXIMUM_CHARGE {
        return Some(refusal(
            "amount_too_large",
            format!("Amount must be no more than {}", shown(MAXIMUM_CHARGE)),
        ));
    }
    if three_decimal && amount % 10 != 0 {
        let (status, mut body) = invalid(&format!(
            "Invalid amount: {currency} amounts must end in 0 (the least significant digit must be 0)."
        ));
        body["error"]["param"] = json!("amount");
        return Some((status, body));
    }
    None
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn text(params: &Value, name: &str) -> Option<String> {
    params[name].as_str().map(str::to_owned)
}

impl StripeSandbox {
    /// `public_url` is the runner's base URL (for invoice PDF links).
    pub fn new(webhook_url: String, public_url: String) -> Arc<Self> {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        Arc::new(Self {
            live: AtomicBool::new(false),
            rotations: std::sync::atomic::AtomicU32::new(0),
            webhook_secret: format!("whsec_sandbox_{tag}"),
            retired_secret: format!("whsec_retired_{tag}"),
            tag,
            webhook_url,
            public_url,
            http: reqwest::Client::new(),
            state: Mutex::new(SandboxState::default()),
        })
    }

    /// What Herald's Stripe secret holds in sandbox mode.
    pub fn secret_values(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("STRIPE_SECRET_KEY".to_owned(), self.secret_key()),
            (
                "STRIPE_WEBHOOK_SECRETS".to_owned(),
                format!("{},{}", self.retired_secret, self.webhook_secret),
            ),
        ])
    }

    /// The key the sandbox takes: `sk_test_…`, or `sk_live_…` after [`Self::use_live_key`].
    pub fn secret_key(&self) -> String {
        let mode = if self.is_live() { "live" } else { "test" };
        match self.rotations.load(Ordering::Acquire) {
            0 => format!("sk_{mode}_sandbox_{}", self.tag),
            n => format!("sk_{mode}_sandbox_{}_r{n}", self.tag),
        }
    }

    /// Rolls the secret key, as in the Dashboard: from now on Stripe refuses the old one
    /// (401, "Invalid API Key provided"). Put [`Self::secret_values`] into Herald's secret.
    pub fn rotate_key(&self) {
        self.rotations.fetch_add(1, Ordering::AcqRel);
    }

    /// From now on the sandbox holds a live-mode key and behaves as live Stripe (put
    /// [`Self::secret_values`] into Herald's secret before Herald's first Stripe call).
    pub fn use_live_key(&self) {
        self.live.store(true, Ordering::SeqCst);
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// How many requests were answered from a kept idempotency key.
    pub fn replays(&self) -> u64 {
        self.state.lock().map(|s| s.replays).unwrap_or(0)
    }

    /// The `Stripe-Signature` of `body` now, with the endpoint secret (or the retired one).
    pub fn sign(&self, body: &[u8], retired: bool, timestamp: i64) -> String {
        let secret = if retired {
            &self.retired_secret
        } else {
            &self.webhook_secret
        };
        sign(secret, timestamp, body)
    }

    pub fn calls(&self) -> u64 {
        self.state.lock().map(|s| s.calls).unwrap_or(0)
    }

    /// Every event the sandbox made, oldest first.
    pub fn events(&self) -> Vec<Value> {
        self.state
            .lock()
            .map(|s| s.events.clone())
            .unwrap_or_default()
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/sandbox/stripe/v1/{*path}", any(api))
            .route("/sandbox/stripe/invoices/{id}/pdf", get(invoice_pdf))
            .route("/sandbox/stripe/_faults", post(add_fault))
            .route(
                "/sandbox/stripe/_stripe_js/confirm_payment",
                post(stripe_js_confirm),
            )
            .route("/sandbox/stripe/_events", get(list_events))
            .route("/sandbox/stripe/_events/hold", post(hold_events))
            .route("/sandbox/stripe/_events/release", post(release_events))
            .route("/sandbox/stripe/_events/{id}/replay", post(replay_event))
            .with_state(Arc::clone(self))
    }

    /// Signs and posts one event to Herald's webhook, retrying a few times like Stripe.
    pub async fn post_event(&self, event: &Value) {
        let body = serde_json::to_vec(event).unwrap_or_default();
        for attempt in 0..5u32 {
            let result = self
                .http
                .post(&self.webhook_url)
                .header("content-type", "application/json; charset=utf-8")
                .header(SIGNATURE_HEADER, self.sign(&body, false, now()))
                .body(body.clone())
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => return,
                Ok(response) => tracing::warn!(
                    status = response.status().as_u16(),
                    attempt,
                    "webhook refused a sandbox Stripe event"
                ),
                Err(error) => tracing::warn!(%error, attempt, "webhook unreachable"),
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
    }

    /// Records an event about `object` and posts it after `delay` (unless events are held).
    fn emit(self: &Arc<Self>, state: &mut SandboxState, kind: &str, object: &Value, delay: u64) {
        let event = json!({
            "id": new_id("evt"), "object": "event", "api_version": API_VERSION,
            "created": now(), "livemode": self.is_live(), "type": kind,
            "data": {"object": object}, "pending_webhooks": 1,
        });
        state.events.push(event.clone());
        if let Some(held) = &mut state.held {
            held.push(event);
            return;
        }
        let sandbox = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            sandbox.post_event(&event).await;
        });
    }

    /// Keeps a new object; it is of the mode of the key in use.
    fn store(&self, state: &mut SandboxState, list: &'static str, mut object: Value) -> Value {
        object["livemode"] = json!(self.is_live());
        Self::keep(state, list, object)
    }

    fn keep(state: &mut SandboxState, list: &'static str, object: Value) -> Value {
        let id = object["id"].as_str().unwrap_or_default().to_owned();
        state.lists.entry(list).or_default().push(id.clone());
        state.objects.insert(id, object.clone());
        object
    }

    fn create_customer(self: &Arc<Self>, state: &mut SandboxState, params: &Value) -> Reply {
        let customer = json!({
            "id": new_id("cus"), "object": "customer", "created": now(),
            "email": params["email"], "name": params["name"], "description": params["description"],
            "metadata": params.get("metadata").cloned().unwrap_or_else(|| json!({})),
            "invoice_settings": {
                "default_payment_method": params["invoice_settings"]["default_payment_method"],
            },
            "livemode": false,
        });
        let customer = self.store(state, "customers", customer);
        self.emit(state, "customer.created", &customer, 50);
        (StatusCode::OK, customer)
    }

    /// `POST /v1/customers/{id}`: the fields given replace the stored ones (metadata keys
    /// merge, as at Stripe).
    fn update_customer(
        self: &Arc<Self>,
        state: &mut SandboxState,
        id: &str,
        params: &Value,
    ) -> Reply {
        let Some(mut customer) = state.objects.get(id).cloned() else {
            return missing(id);
        };
        if customer["object"] != "customer" {
            return missing(id);
        }
        for field in ["email", "name", "description"] {
            if let Some(value) = params.get(field) {
                customer[field] = value.clone();
            }
        }
        if let Some(Value::Object(metadata)) = params.get("metadata")
            && let Value::Object(stored) = &mut customer["metadata"]
        {
            stored.extend(metadata.clone());
        }
        if let Some(method) = params["invoice_settings"].get("default_payment_method") {
            // An empty value unsets it, as at Stripe.
            customer["invoice_settings"]["default_payment_method"] = method
                .as_str()
                .filter(|m| !m.is_empty())
                .map_or(Value::Null, |m| json!(m));
        }
        state.objects.insert(id.to_owned(), customer.clone());
        self.emit(state, "customer.updated", &customer, 50);
        (StatusCode::OK, customer)
    }

    fn create_intent(self: &Arc<Self>, state: &mut SandboxState, params: &Value) -> Reply {
        let Some(amount) = text(params, "amount").and_then(|a| a.parse::<i64>().ok()) else {
            return invalid("Invalid integer: amount");
        };
        let Some(currency) = text(params, "currency").filter(|c| c.len() == 3) else {
            return invalid("Invalid currency");
        };
        if let Some(refused) = check_amount(amount, &currency) {
            return refused;
        }
        if let Some(customer) = text(params, "customer")
            && !state.objects.contains_key(&customer)
        {
            return missing(&customer);
        }
        if let Some(refused) =
            text(params, "payment_method").and_then(|m| self.refuse_test_method(&m))
        {
            return refused;
        }
        let id = new_id("pi");
        let intent = json!({
            "id": id, "object": "payment_intent", "amount": amount, "amount_received": 0,
            "currency": currency, "customer": params["customer"], "description": params["description"],
            "payment_method": params["payment_method"], "status": "requires_confirmation",
            "metadata": params.get("metadata").cloned().unwrap_or_else(|| json!({})),
            "client_secret": format!("{id}_secret_{}", uuid::Uuid::new_v4().simple()),
            "next_action": null,
            "created": now(), "latest_charge": null, "last_payment_error": null, "invoice": null,
        });
        let intent = self.store(state, "payment_intents", intent);
        if params["confirm"] == "true" {
            return self.confirm(state, intent["id"].as_str().unwrap_or_default(), params);
        }
        (StatusCode::OK, intent)
    }

    /// Live Stripe knows no test payment methods: a live-mode key naming one is told there
    /// is no such object ("test mode and live mode … objects in one mode can't be used in
    /// the other", docs.stripe.com/keys; the test methods are listed at
    /// docs.stripe.com/testing).
    fn refuse_test_method(&self, method: &str) -> Option<Reply> {
        let test_method = method.starts_with("pm_card_") || method.starts_with("tok_");
        (self.is_live() && test_method).then(|| {
            let (status, mut body) = stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("resource_missing"),
                &format!(
                    "No such PaymentMethod: '{method}'; a similar object exists in test mode, but a live mode key was used to make this request."
                ),
            );
            body["error"]["param"] = json!("payment_method");
            (status, body)
        })
    }

    fn confirm(self: &Arc<Self>, state: &mut SandboxState, id: &str, params: &Value) -> Reply {
        let Some(mut intent) = state.objects.get(id).cloned() else {
            return missing(id);
        };
        if intent["status"] == "succeeded" || intent["status"] == "processing" {
            return invalid("This PaymentIntent's status does not allow confirmation");
        }
        if let Some(method) = text(params, "payment_method") {
            if let Some(refused) = self.refuse_test_method(&method) {
                return refused;
            }
            intent["payment_method"] = json!(method);
        }
        let Some(method) = intent["payment_method"].as_str().map(str::to_owned) else {
            // Stripe's answer to a confirmation without a payment method: the intent waits
            // for one.
            intent["status"] = json!("requires_payment_method");
            state.objects.insert(id.to_owned(), intent.clone());
            let mut error = json!({"type": "invalid_request_error",
                "code": "payment_intent_unexpected_state",
                "message": "You cannot confirm this PaymentIntent because it's missing a payment method. You can either update the PaymentIntent with a payment method and then confirm it again, or confirm it again directly with a payment method."});
            error["payment_intent"] = intent;
            return (StatusCode::BAD_REQUEST, json!({"error": error}));
        };
        if method.contains("chargeDeclined") {
            let decline = if method.ends_with("InsufficientFunds") {
                "insufficient_funds"
            } else {
                "generic_decline"
            };
            let error = json!({"type": "card_error", "code": "card_declined", "decline_code": decline,
                "message": "Your card was declined."});
            return self.decline(state, intent, error);
        }
        // Stripe's "always authenticate" test card (4000 0027 6000 3184,
        // `pm_card_authenticationRequired`: "requires authentication on all transactions,
        // regardless of how the card is set up", docs.stripe.com/testing#authentication-and-setup).
        // On session the intent waits for the customer (`requires_action`, finished by
        // Stripe.js with the client secret); off session nobody can authenticate, so the
        // bank declines it with `authentication_required` (docs.stripe.com/declines/codes).
        if method == "pm_card_authenticationRequired" {
            if params["off_session"] == "true" {
                let error = json!({"type": "card_error", "code": "authentication_required",
                    "decline_code": "authentication_required",
                    "message": "Your card was declined. This transaction requires authentication."});
                return self.decline(state, intent, error);
            }
            intent["status"] = json!("requires_action");
            intent["next_action"] = json!({"type": "use_stripe_sdk", "use_stripe_sdk": {
                "type": "three_d_secure_redirect", "stripe_js": format!("{}/sandbox/stripe/_stripe_js/confirm_payment", self.public_url)}});
            state.objects.insert(id.to_owned(), intent.clone());
            self.emit(state, "payment_intent.requires_action", &intent, 100);
            return (StatusCode::OK, intent);
        }
        (StatusCode::OK, self.process(state, intent))
    }

    /// A declined confirmation: the intent waits for another method, with the error.
    fn decline(
        self: &Arc<Self>,
        state: &mut SandboxState,
        mut intent: Value,
        error: Value,
    ) -> Reply {
        let id = intent["id"].as_str().unwrap_or_default().to_owned();
        intent["status"] = json!("requires_payment_method");
        intent["next_action"] = Value::Null;
        intent["last_payment_error"] = error.clone();
        state.objects.insert(id, intent.clone());
        self.emit(state, "payment_intent.payment_failed", &intent, 100);
        let mut error = error;
        error["payment_intent"] = intent;
        (StatusCode::PAYMENT_REQUIRED, json!({"error": error}))
    }

    /// The card is charged: `processing` now, `succeeded` (with its charge and event) a
    /// moment later, as the card network answers.
    fn process(self: &Arc<Self>, state: &mut SandboxState, mut intent: Value) -> Value {
        let id = intent["id"].as_str().unwrap_or_default().to_owned();
        intent["status"] = json!("processing");
        intent["next_action"] = Value::Null;
        state.objects.insert(id.clone(), intent.clone());
        let sandbox = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Ok(mut state) = sandbox.state.lock() else {
                return;
            };
            let Some(mut intent) = state.objects.get(&id).cloned() else {
                return;
            };
            let charge = Self::charge_for(&mut state, &intent);
            intent["status"] = json!("succeeded");
            intent["amount_received"] = intent["amount"].clone();
            intent["latest_charge"] = charge["id"].clone();
            state.objects.insert(id, intent.clone());
            sandbox.emit(&mut state, "payment_intent.succeeded", &intent, 0);
        });
        intent
    }

    /// What Stripe.js does with a client secret after the customer's 3-D Secure: the intent
    /// is charged, or, when the customer fails the challenge, waits for another method with
    /// `payment_intent_authentication_failure`.
    fn authenticate(self: &Arc<Self>, client_secret: &str, passed: bool) -> Reply {
        let Ok(mut state) = self.state.lock() else {
            return invalid("sandbox state unavailable");
        };
        let id = client_secret.split("_secret_").next().unwrap_or_default();
        let Some(intent) = state.objects.get(id).cloned() else {
            return missing(id);
        };
        if intent["client_secret"] != client_secret {
            return invalid(
                "The client_secret provided does not match the client_secret associated with the PaymentIntent.",
            );
        }
        if intent["status"] != "requires_action" {
            return invalid("This PaymentIntent's status does not allow authentication");
        }
        if passed {
            return (StatusCode::OK, self.process(&mut state, intent));
        }
        let error = json!({"type": "invalid_request_error", "code": "payment_intent_authentication_failure",
            "message": "We are unable to authenticate your payment method. Please choose a different payment method and try again."});
        self.decline(&mut state, intent, error)
    }

    /// The succeeded charge of an intent (charges copy their intent's metadata).
    fn charge_for(state: &mut SandboxState, intent: &Value) -> Value {
        let charge = json!({
            "id": new_id("ch"), "object": "charge", "amount": intent["amount"],
            "amount_refunded": 0, "refunded": false, "currency": intent["currency"],
            "customer": intent["customer"], "payment_intent": intent["id"], "status": "succeeded",
            "paid": true, "metadata": intent["metadata"], "created": now(),
            "receipt_url": null, "livemode": intent["livemode"],
        });
        Self::keep(state, "charges", charge)
    }

    fn refund(self: &Arc<Self>, state: &mut SandboxState, params: &Value) -> Reply {
        let intent_id = text(params, "payment_intent").unwrap_or_default();
        let Some(intent) = state.objects.get(&intent_id).cloned() else {
            return missing(&intent_id);
        };
        let Some(charge_id) = intent["latest_charge"].as_str().map(str::to_owned) else {
            return invalid("This PaymentIntent does not have a successful charge to refund.");
        };
        let Some(mut charge) = state.objects.get(&charge_id).cloned() else {
            return missing(&charge_id);
        };
        let total = charge["amount"].as_i64().unwrap_or(0);
        let refunded = charge["amount_refunded"].as_i64().unwrap_or(0);
        let amount = match text(params, "amount") {
            Some(a) => match a.parse::<i64>() {
                Ok(a) if a >= 1 => a,
                _ => return invalid("Invalid integer: amount"),
            },
            None => total - refunded,
        };
        if amount > total - refunded {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("amount_too_large"),
                "Refund amount is greater than unrefunded amount on charge",
            );
        }
        charge["amount_refunded"] = json!(refunded + amount);
        charge["refunded"] = json!(refunded + amount == total);
        state.objects.insert(charge_id.clone(), charge.clone());
        let refund = json!({
            "id": new_id("re"), "object": "refund", "amount": amount, "charge": charge_id,
            "payment_intent": intent_id, "currency": charge["currency"], "status": "succeeded",
            "reason": params["reason"], "metadata": params.get("metadata").cloned().unwrap_or_else(|| json!({})),
            "created": now(),
        });
        let refund = self.store(state, "refunds", refund);
        self.emit(state, "charge.refunded", &charge, 100);
        (StatusCode::OK, refund)
    }

    fn create_subscription(self: &Arc<Self>, state: &mut SandboxState, params: &Value) -> Reply {
        if let Some(refused) =
            text(params, "default_payment_method").and_then(|m| self.refuse_test_method(&m))
        {
            return refused;
        }
        let customer = text(params, "customer").unwrap_or_default();
        if !state.objects.contains_key(&customer) {
            return missing(&customer);
        }
        let Some(items) = params["items"].as_array().filter(|i| !i.is_empty()) else {
            return invalid("Missing required param: items.");
        };
        let created = now();
        let mut total = 0;
        let mut data = Vec::new();
        for item in items {
            let Some(price) = item["price"].as_str() else {
                return invalid("Missing required param: items[0][price].");
            };
            if !price.starts_with("price_") {
                return missing(price);
            }
            let quantity = item["quantity"]
                .as_str()
                .and_then(|q| q.parse::<i64>().ok())
                .unwrap_or(1);
            let unit = PRICES
                .iter()
                .find(|(id, _)| *id == price)
                .map_or(1500, |(_, amount)| *amount);
            total += unit * quantity;
            data.push(
                json!({"id": new_id("si"), "object": "subscription_item", "quantity": quantity,
                "price": {"id": price, "object": "price", "unit_amount": unit, "currency": "usd",
                          "recurring": {"interval": "month", "interval_count": 1}}}),
            );
        }
        let metadata = params.get("metadata").cloned().unwrap_or_else(|| json!({}));
        let declined = params["default_payment_method"]
            .as_str()
            .is_some_and(|m| m.contains("chargeDeclined"));
        let subscription = json!({
            "id": new_id("sub"), "object": "subscription", "customer": customer,
            "status": if declined { "incomplete" } else { "active" },
            "items": {"object": "list", "data": data, "has_more": false},
            "current_period_start": created, "current_period_end": created + 30 * 86_400,
            "canceled_at": null, "cancel_at_period_end": false, "metadata": metadata,
            "created": created, "livemode": false,
        });
        let subscription = self.store(state, "subscriptions", subscription);
        // The first invoice is charged at once, through an intent of Stripe's own (no
        // Herald metadata: the invoice carries the subscription's in subscription_details).
        let intent = json!({
            "id": new_id("pi"), "object": "payment_intent", "amount": total,
            "amount_received": if declined { 0 } else { total }, "currency": "usd",
            "customer": customer, "status": if declined { "requires_payment_method" } else { "succeeded" },
            "metadata": {}, "created": created, "latest_charge": null, "last_payment_error": null,
            "livemode": false,
        });
        let mut intent = self.store(state, "payment_intents", intent);
        let invoice_id = new_id("in");
        if !declined {
            let charge = Self::charge_for(state, &intent);
            intent["latest_charge"] = charge["id"].clone();
        }
        intent["invoice"] = json!(invoice_id);
        state.objects.insert(
            intent["id"].as_str().unwrap_or_default().to_owned(),
            intent.clone(),
        );
        let number = format!(
            "SBX-{:04}",
            state.lists.get("invoices").map_or(0, Vec::len) + 1
        );
        let invoice = json!({
            "id": invoice_id, "object": "invoice", "customer": customer,
            "subscription": subscription["id"], "status": if declined { "open" } else { "paid" },
            "amount_due": total, "amount_paid": if declined { 0 } else { total },
            "currency": "usd", "number": number, "payment_intent": intent["id"],
            "invoice_pdf": format!("{}/sandbox/stripe/invoices/{invoice_id}/pdf", self.public_url),
            "hosted_invoice_url": format!("{}/sandbox/stripe/invoices/{invoice_id}", self.public_url),
            "subscription_details": {"metadata": subscription["metadata"]},
            "metadata": {}, "created": created, "livemode": false,
        });
        let invoice = self.store(state, "invoices", invoice);
        self.emit(state, "customer.subscription.created", &subscription, 50);
        self.emit(
            state,
            if declined {
                "invoice.payment_failed"
            } else {
                "invoice.paid"
            },
            &invoice,
            150,
        );
        (StatusCode::OK, subscription)
    }

    fn cancel_subscription(self: &Arc<Self>, state: &mut SandboxState, id: &str) -> Reply {
        let Some(mut subscription) = state.objects.get(id).cloned() else {
            return missing(id);
        };
        subscription["status"] = json!("canceled");
        subscription["canceled_at"] = json!(now());
        state.objects.insert(id.to_owned(), subscription.clone());
        self.emit(state, "customer.subscription.deleted", &subscription, 50);
        (StatusCode::OK, subscription)
    }

    fn list(state: &SandboxState, list: &'static str, query: &Value) -> Reply {
        let status = text(query, "status");
        let customer = text(query, "customer");
        let ids = state.lists.get(list).cloned().unwrap_or_default();
        let newest_first: Vec<&Value> = ids
            .iter()
            .rev()
            .filter_map(|id| state.objects.get(id))
            .collect();
        page(list, &newest_first, query, |o| {
            let status_matches = match (list, status.as_deref()) {
                ("subscriptions", None) => o["status"] != "canceled",
                (_, None | Some("all")) => true,
                (_, Some(status)) => o["status"] == status,
            };
            status_matches && customer.as_deref().is_none_or(|c| o["customer"] == c)
        })
    }

    /// `GET /v1/events`: newest first, of the last 30 days only ("List events, going back
    /// up to 30 days", docs.stripe.com/api/events/list), by `type` or by `types` (at most
    /// 20 of them).
    fn list_events(state: &SandboxState, query: &Value) -> Reply {
        let types: Vec<&str> = query["types"]
            .as_array()
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if types.len() > 20 {
            return invalid("types: at most 20 event types");
        }
        let kind = text(query, "type");
        if kind.is_some() && !types.is_empty() {
            return invalid("You may only specify one of these parameters: type, types.");
        }
        let reach = now() - 30 * 86_400;
        let newest_first: Vec<&Value> = state
            .events
            .iter()
            .rev()
            .filter(|e| e["created"].as_i64().unwrap_or(0) >= reach)
            .collect();
        page("events", &newest_first, query, |e| {
            let kind_of = e["type"].as_str().unwrap_or_default();
            kind.as_deref().is_none_or(|k| k == kind_of)
                && (types.is_empty() || types.contains(&kind_of))
        })
    }

    fn route(
        self: &Arc<Self>,
        state: &mut SandboxState,
        method: &Method,
        path: &str,
        params: &Value,
    ) -> Reply {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let retrieve = |state: &SandboxState, id: &str| match state.objects.get(id) {
            Some(object) => (StatusCode::OK, object.clone()),
            None => missing(id),
        };
        match (method.as_str(), parts.as_slice()) {
            ("POST", ["customers"]) => self.create_customer(state, params),
            ("GET", ["customers"]) => Self::list(state, "customers", params),
            ("POST", ["payment_intents"]) => self.create_intent(state, params),
            ("GET", ["payment_intents"]) => Self::list(state, "payment_intents", params),
            ("POST", ["payment_intents", id, "confirm"]) => self.confirm(state, id, params),
            ("POST", ["customers", id]) => self.update_customer(state, id, params),
            ("POST", ["refunds"]) => self.refund(state, params),
            ("POST", ["subscriptions"]) => self.create_subscription(state, params),
            ("GET", ["subscriptions"]) => Self::list(state, "subscriptions", params),
            ("DELETE", ["subscriptions", id]) => self.cancel_subscription(state, id),
            ("GET", ["invoices"]) => Self::list(state, "invoices", params),
            ("GET", ["events"]) => Self::list_events(state, params),
            ("GET", ["events", id]) => match state.events.iter().find(|e| e["id"] == *id) {
                Some(event) => (StatusCode::OK, event.clone()),
                None => missing(id),
            },
            (
                "GET",
                [
                    "customers" | "payment_intents" | "subscriptions" | "invoices" | "charges"
                    | "refunds",
                    id,
                ],
            ) => retrieve(state, id),
            _ => stripe_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                &format!("Unrecognized request URL ({method}: /v1/{path})."),
            ),
        }
    }
}

/// One page of a list, `objects` newest first: `limit` (1 to 100), `starting_after`,
/// `created[gte]` and the list's own filter, answered in Stripe's list shape.
fn page(list: &str, objects: &[&Value], query: &Value, keep: impl Fn(&Value) -> bool) -> Reply {
    let limit = text(query, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return invalid("limit must be between 1 and 100");
    }
    let gte = text(&query["created"], "gte").and_then(|g| g.parse::<i64>().ok());
    let mut rest = objects.iter().copied();
    if let Some(after) = text(query, "starting_after") {
        if !objects.iter().any(|o| o["id"] == after.as_str()) {
            return missing(&after);
        }
        for object in rest.by_ref() {
            if object["id"] == after.as_str() {
                break;
            }
        }
    }
    let matching: Vec<&Value> = rest
        .filter(|o| gte.is_none_or(|g| o["created"].as_i64().unwrap_or(0) >= g))
        .filter(|o| keep(o))
        .collect();
    let data: Vec<Value> = matching.iter().take(limit).map(|o| (*o).clone()).collect();
    (
        StatusCode::OK,
        json!({"object": "list", "url": format!("/v1/{list}"), "has_more": matching.len() > limit, "data": data}),
    )
}

async fn api(
    State(sandbox): State<Arc<StripeSandbox>>,
    method: Method,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("authorization") != Some(&format!("Bearer {}", sandbox.secret_key())) {
        let (status, body) = stripe_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "Invalid API Key provided",
        );
        return (status, Json(body)).into_response();
    }
    let fault = sandbox.state.lock().ok().and_then(|mut state| {
        state.calls += 1;
        state.faults.for_this_call()
    });
    let fault = fault.unwrap_or_default();
    if let Some(delay) = fault.delay_ms {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(status) = fault.status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (
            status,
            Json(json!({"error": {"type": "api_error", "message": "sandbox fault"}})),
        )
            .into_response();
    }
    if fault.connection == Some(ConnectionFault::Drop) {
        faults::drop_connection();
    }
    let params = if method == Method::GET {
        form::decode(query.as_deref().unwrap_or_default())
    } else {
        form::decode(&String::from_utf8_lossy(&body))
    };
    // Stripe's idempotency (docs.stripe.com/api/idempotent_requests): a key belongs to the
    // account, not an endpoint; a retry with the same endpoint and parameters gets the
    // first answer again (`Idempotent-Replayed: true`), anything else with that key is an
    // `idempotency_error`; results are kept "only after the execution of an endpoint
    // begins" (a request refused for its parameters keeps nothing) and not for 5xx.
    let endpoint = format!("{method} /v1/{path}");
    let idempotency = header("idempotency-key")
        .filter(|_| method == Method::POST)
        .map(str::to_owned);
    let replay: Result<(), Response> = {
        let Ok(mut state) = sandbox.state.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        if let Some(key) = &idempotency
            && let Some(kept) = state.idempotency.get(key)
        {
            let refusal = if kept.endpoint != endpoint {
                Some(format!(
                    "Keys for idempotent requests can only be used for the same endpoint they were first used for ('{}' vs '{endpoint}'). Try using a key other than '{key}' if you meant to execute a different request.",
                    kept.endpoint
                ))
            } else if kept.params != params {
                Some(format!(
                    "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                ))
            } else {
                None
            };
            if let Some(message) = refusal {
                let (status, body) =
                    stripe_error(StatusCode::BAD_REQUEST, "idempotency_error", None, &message);
                return (status, Json(body)).into_response();
            }
            let mut response = (
                StatusCode::from_u16(kept.status).unwrap_or(StatusCode::OK),
                Json(kept.body.clone()),
            )
                .into_response();
            response.headers_mut().insert(
                "idempotent-replayed",
                axum::http::HeaderValue::from_static("true"),
            );
            state.replays += 1;
            Err(response)
        } else {
            Ok(())
        }
    };
    if let Some(response) = replay.err() {
        match fault.connection {
            Some(ConnectionFault::AcceptThenHold) => faults::hold_forever().await,
            Some(ConnectionFault::AcceptThenDrop) => faults::drop_connection(),
            _ => return response,
        }
    }
    let (status, reply) = {
        let Ok(mut state) = sandbox.state.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        // Another request with this key got in between: Stripe answers a concurrent one 409.
        if idempotency
            .as_ref()
            .is_some_and(|key| state.idempotency.contains_key(key))
        {
            let (status, body) = stripe_error(
                StatusCode::CONFLICT,
                "idempotency_error",
                Some("idempotency_key_in_use"),
                "There is currently another in-progress request using this Stripe-Idempotency-Key. Please try again later.",
            );
            return (status, Json(body)).into_response();
        }
        let (status, reply) = sandbox.route(&mut state, &method, &path, &params);
        // A 4xx that left no object behind was refused before the endpoint ran (a 402
        // decline and a refused confirmation carry the intent they left).
        let ran = !status.is_server_error()
            && (status.is_success()
                || status == StatusCode::PAYMENT_REQUIRED
                || reply["error"]["payment_intent"].is_object());
        if let Some(key) = idempotency
            && ran
        {
            state.idempotency.insert(
                key,
                Kept {
                    endpoint,
                    params: params.clone(),
                    status: status.as_u16(),
                    body: reply.clone(),
                },
            );
        }
        (status, reply)
    };
    match fault.connection {
        Some(ConnectionFault::AcceptThenHold) => faults::hold_forever().await,
        Some(ConnectionFault::AcceptThenDrop) => faults::drop_connection(),
        _ => {}
    }
    (status, Json(reply)).into_response()
}

/// A one-page PDF standing in for Stripe's hosted invoice PDF.
async fn invoice_pdf(
    State(sandbox): State<Arc<StripeSandbox>>,
    Path(id): Path<String>,
) -> Response {
    let known = sandbox
        .state
        .lock()
        .map(|s| s.objects.contains_key(&id))
        .unwrap_or(false);
    if !known {
        return StatusCode::NOT_FOUND.into_response();
    }
    let pdf = format!(
        "%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%% sandbox invoice {id}\n%%EOF\n"
    );
    ([("content-type", "application/pdf")], pdf).into_response()
}

/// Stands in for Stripe.js finishing a payment on the customer's device:
/// `{"client_secret": "pi_…_secret_…", "authenticate": true}` passes the 3-D Secure
/// challenge (`false` fails it). Answers what Stripe.js resolves with: the intent, or an
/// error.
async fn stripe_js_confirm(
    State(sandbox): State<Arc<StripeSandbox>>,
    Json(body): Json<Value>,
) -> Response {
    let secret = body["client_secret"].as_str().unwrap_or_default();
    let (status, reply) = sandbox.authenticate(secret, body["authenticate"] != false);
    (status, Json(reply)).into_response()
}

async fn add_fault(
    State(sandbox): State<Arc<StripeSandbox>>,
    Json(fault): Json<Fault>,
) -> Response {
    if let Ok(mut state) = sandbox.state.lock() {
        state.faults.add(fault);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn list_events(State(sandbox): State<Arc<StripeSandbox>>) -> Response {
    Json(json!({"events": sandbox.events()})).into_response()
}

async fn hold_events(
    State(sandbox): State<Arc<StripeSandbox>>,
    Json(body): Json<Value>,
) -> Response {
    if let Ok(mut state) = sandbox.state.lock() {
        if body["hold"].as_bool().unwrap_or(true) {
            state.held.get_or_insert_with(Vec::new);
        } else if let Some(held) = state.held.take() {
            let sandbox = Arc::clone(&sandbox);
            tokio::spawn(async move {
                for event in held {
                    sandbox.post_event(&event).await;
                }
            });
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Posts the held events (in order, reversed, or each twice) and stops holding; waits
/// until they are delivered, so a test can look at the effect right after.
async fn release_events(
    State(sandbox): State<Arc<StripeSandbox>>,
    body: Option<Json<Release>>,
) -> Response {
    let release = body.map(|Json(r)| r).unwrap_or_default();
    let held = sandbox
        .state
        .lock()
        .ok()
        .and_then(|mut s| s.held.take())
        .unwrap_or_default();
    if release.drop {
        return Json(json!({"dropped": held.len()})).into_response();
    }
    let mut events = held;
    if release.order.as_deref() == Some("reverse") {
        events.reverse();
    }
    for event in &events {
        sandbox.post_event(event).await;
        if release.duplicate {
            sandbox.post_event(event).await;
        }
    }
    Json(json!({"posted": events.len()})).into_response()
}

async fn replay_event(
    State(sandbox): State<Arc<StripeSandbox>>,
    Path(id): Path<String>,
) -> Response {
    let event = sandbox
        .events()
        .into_iter()
        .find(|e| e["id"] == id.as_str());
    match event {
        Some(event) => {
            sandbox.post_event(&event).await;
            StatusCode::NO_CONTENT.into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
