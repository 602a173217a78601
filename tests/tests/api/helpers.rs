use std::path::PathBuf;

use local::{BundleOptions, RunningBundle};
use serde_json::Value;

/// The moto endpoint started by `scripts/test.sh`. Without it the tests fail loudly: they
/// never pass by skipping.
pub fn aws_endpoint() -> String {
    std::env::var("HERALD_TEST_AWS_ENDPOINT").expect(
        "HERALD_TEST_AWS_ENDPOINT is not set: run the suite with scripts/test.sh, which starts moto",
    )
}

/// The MongoDB-compatible server started by `scripts/test.sh`.
pub fn mongodb_uri() -> String {
    std::env::var("HERALD_TEST_MONGODB_URI").expect(
        "HERALD_TEST_MONGODB_URI is not set: run the suite with scripts/test.sh, which starts the MongoDB-compatible server",
    )
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub struct TestBundle {
    pub bundle: RunningBundle,
    /// This bundle's MongoDB database.
    pub database: String,
    pub http: reqwest::Client,
}

/// A bundle on a random port with resources under a fresh prefix.
pub async fn spawn_bundle() -> TestBundle {
    spawn_bundle_with(|_| {}).await
}

/// A bundle with options adjusted by `tune`. Retries are immediate (no backoff wait) and
/// schedules fire only when a test asks.
/// How long the tests' indexes lag writes, unless `HERALD_LOCAL_GSI_LAG_MS` says otherwise.
pub const TEST_INDEX_LAG: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn spawn_bundle_with(tune: impl FnOnce(&mut BundleOptions)) -> TestBundle {
    let options = test_options(tune);
    let database = options.overrides["MONGODB_DATABASE"].clone();
    let bundle = local::start(options)
        .await
        .expect("the local bundle starts");
    TestBundle {
        bundle,
        database,
        http: reqwest::Client::new(),
    }
}

/// Every function's `Timeout` raised to 300 s, as `bulk-efficiency` does, for
/// tests of 1,000-email jobs: moto answers about
/// a hundred requests a second where DynamoDB answers thousands, so a 1,000-email job's
/// claims take 30–40 s here and the template's 60 s would cut the job short and count its
/// redelivery, measuring moto instead of Herald's calls.
pub fn long_timeouts(options: &mut local::BundleOptions) {
    let template = local::template::BundleTemplate::load(&options.template).unwrap();
    options.timeouts = template
        .functions
        .into_iter()
        .map(|function| (function.binary, std::time::Duration::from_secs(300)))
        .collect();
}

/// The options of a test bundle (see [`spawn_bundle_with`]), adjusted by `tune`.
pub fn test_options(tune: impl FnOnce(&mut BundleOptions)) -> BundleOptions {
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let mut options = BundleOptions::new(workspace_root().join("template.yaml"), &prefix[..12]);
    // Provider keys in the developer's shell must not reach the real providers from tests.
    options.env.remove("SENDGRID_API_KEY");
    options.env.remove("TWILIO_ACCOUNT_SID");
    options.env.remove("STRIPE_SECRET_KEY");
    options.run_schedules = false;
    // Indexes lag writes as on AWS, so code that reads an index right after writing it fails
    // here too (a second: at 300 ms a bulk already lost records; override with
    // HERALD_LOCAL_GSI_LAG_MS, 0 turns it off).
    if std::env::var_os("HERALD_LOCAL_GSI_LAG_MS").is_none() {
        options.index_lag = TEST_INDEX_LAG;
    }
    // Each bundle its own database, like its own table prefix.
    options
        .overrides
        .insert("MONGODB_DATABASE".to_owned(), prefix[..12].to_owned());
    options
        .overrides
        .insert("RETRY_BASE_SECONDS".to_owned(), "0".to_owned());
    for (name, value) in [
        ("AWS_ENDPOINT_URL", aws_endpoint()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("MONGODB_URI", mongodb_uri()),
    ] {
        options.env.insert(name.to_owned(), value);
    }
    tune(&mut options);
    options
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

impl Reply {
    /// Status, content type and body (JSON, else the text as a string; `null` when empty).
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Self {
            status,
            content_type,
            body,
        }
    }

    /// The `ids` a bulk send answered with.
    pub fn ids(&self) -> Vec<String> {
        self.body["ids"]
            .as_array()
            .unwrap_or_else(|| panic!("no ids: {}", self.body))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// Asserts a problem+json answer with this status and returns its body.
    pub fn problem(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(
            self.content_type, "application/problem+json",
            "body: {}",
            self.body
        );
        assert_eq!(self.body["status"], status);
        assert!(
            self.body["type"]
                .as_str()
                .unwrap()
                .starts_with("/problems/")
        );
        &self.body
    }
}

impl TestBundle {
    /// A token for `org` with comma-separated `roles`.
    pub fn token(&self, org: &str, roles: &str) -> String {
        let roles: Vec<&str> = roles.split(',').collect();
        self.bundle
            .auth
            .mint("user-1", Some(org), &roles, 600)
            .unwrap()
    }

    /// A valid token of `org` that carries no role at all.
    pub fn mint_without_roles(&self, org: &str) -> String {
        self.bundle
            .auth
            .mint("user-1", Some(org), &[], 600)
            .unwrap()
    }

    pub fn table(&self) -> &str {
        self.bundle.resource("HeraldTable")
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, self.bundle.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Reply::read(request.send().await.expect("the bundle answers")).await
    }

    /// The queue poller of a worker function (for tests that drive pollers by hand).
    pub fn poller(&self, function: &str) -> &std::sync::Arc<local::sources::QueuePoller> {
        self.bundle
            .pollers
            .iter()
            .find(|p| p.function == function)
            .unwrap_or_else(|| panic!("no poller for {function}"))
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call("POST", path, Some(token), Some(body)).await
    }
}

/// Polls `check` until it returns `Some`, for up to `seconds`.
pub async fn eventually<T, F, Fut>(seconds: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {seconds} s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

impl TestBundle {
    /// Waits until an email reaches `status` and returns it.
    pub async fn email_reaches(&self, token: &str, id: &str, status: &str, seconds: u64) -> Value {
        let path = format!("/services/email/{id}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let reply = self.get(&path, token).await;
            if reply.body["status"] == status {
                return reply.body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "email {id} never reached {status}: {}",
                reply.body
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Waits (60 s at most) until an SMS reaches `status` and returns it.
    pub async fn sms_reaches(&self, token: &str, id: &str, status: &str) -> Value {
        let path = format!("/services/sms/{id}");
        eventually(60, &format!("SMS {id} to reach {status}"), || async {
            let reply = self.get(&path, token).await;
            (reply.body["status"] == status).then_some(reply.body)
        })
        .await
    }

    /// An SMS from `from` to Herald's number, as the Twilio sandbox posts it to the signed
    /// webhook; the webhook's TwiML answer (asserted 200).
    pub async fn inbound_sms(&self, from: &str, body: &str) -> String {
        let reply: Value = self
            .http
            .post(self.bundle.url("/sandbox/twilio/_inbound"))
            .json(&serde_json::json!({"from": from, "body": body}))
            .send()
            .await
            .expect("the sandbox answers")
            .json()
            .await
            .expect("the sandbox answers JSON");
        assert_eq!(reply["webhook_status"], 200, "{reply}");
        reply["webhook_body"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn sandbox(&self) -> &local::sandbox::sendgrid::SendGridSandbox {
        self.bundle
            .sendgrid
            .as_deref()
            .expect("the SendGrid sandbox runs")
    }

    /// Makes the SendGrid sandbox fail its next calls.
    pub async fn sendgrid_fault(&self, fault: Value) {
        let response = self
            .http
            .post(self.bundle.url("/sandbox/sendgrid/_faults"))
            .json(&fault)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    /// Messages waiting in a queue (visible or in flight).
    /// Takes records `ids` out of the send jobs the API created them in
    /// ([`bench::out_of_send_jobs`]), for a test that enqueues them in jobs of its own.
    pub async fn out_of_send_jobs(&self, ids: &[String]) {
        bench::out_of_send_jobs(&self.bundle, ids).await.unwrap();
    }

    pub async fn queue_depth(&self, logical_id: &str) -> usize {
        let attributes = self
            .bundle
            .aws
            .sqs
            .get_queue_attributes()
            .queue_url(self.bundle.resource(logical_id))
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(
                aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            )
            // A job handed back with a delay is neither visible nor in flight until it ends.
            .attribute_names(
                aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesDelayed,
            )
            .send()
            .await
            .unwrap();
        attributes
            .attributes()
            .map(|a| a.values().filter_map(|v| v.parse::<usize>().ok()).sum())
            .unwrap_or(0)
    }

    /// Waits until the queue holds no message, visible, in flight or delayed.
    pub async fn queue_empties(&self, logical_id: &str, seconds: u64) {
        eventually(seconds, &format!("{logical_id} to empty"), || async {
            (self.queue_depth(logical_id).await == 0).then_some(())
        })
        .await;
    }

    /// The bundle bucket's object at `key`, or `None` when there is none.
    pub async fn bucket_object(
        &self,
        key: &str,
    ) -> Option<aws_sdk_s3::operation::head_object::HeadObjectOutput> {
        let head = self
            .bundle
            .aws
            .s3
            .head_object()
            .bucket(self.bundle.resource("HeraldBucket"))
            .key(key)
            .send()
            .await;
        match head {
            Ok(head) => Some(head),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => None,
            Err(error) => panic!("HeadObject {key}: {error:?}"),
        }
    }

    /// Runs a schedule's function as EventBridge would (the local runner's
    /// `/local/schedules/<name>`) and returns its result.
    pub async fn fire_schedule(&self, name: &str) -> Value {
        let response = self
            .http
            .post(self.bundle.url(&format!("/local/schedules/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "schedule {name}");
        response.json().await.unwrap()
    }

    /// The bodies of the messages a queue holds, received (up to 50) and left hidden for a
    /// minute, so a second look does not see them again.
    pub async fn message_bodies_in(&self, logical_id: &str) -> Vec<String> {
        let mut bodies = Vec::new();
        for _ in 0..5 {
            let output = self
                .bundle
                .aws
                .sqs
                .receive_message()
                .queue_url(self.bundle.resource(logical_id))
                .max_number_of_messages(10)
                .visibility_timeout(60)
                .send()
                .await
                .unwrap();
            bodies.extend(
                output
                    .messages()
                    .iter()
                    .filter_map(|m| m.body().map(str::to_owned)),
            );
        }
        bodies
    }
}

/// A MongoDB-compatible server of a test's own, on a free port with its own storage, so the
/// test can stop and restart it without disturbing the other tests' database.
pub struct PrivateMongo {
    port: u16,
    storage: PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateMongo {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            port,
            storage: std::env::temp_dir().join(format!("herald-mongo-{port}")),
            child: None,
        };
        server.restart().await;
        server
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and storage, and returns once it answers a
    /// MongoDB `ping`: an open port alone is not a ready server, and under load a batch sent
    /// between the two fails and spends one of its receives.
    pub async fn restart(&mut self) {
        let child = std::process::Command::new(workspace_root().join(".venv/bin/secantusd-py"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(&self.storage)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("secantusd-py starts (scripts/setup.sh installs it)");
        self.child = Some(child);
        let mut options = mongodb::options::ClientOptions::parse(self.uri())
            .await
            .unwrap();
        options.server_selection_timeout = Some(std::time::Duration::from_millis(500));
        let client = mongodb::Client::with_options(options).unwrap();
        let ping = mongodb::bson::doc! {"ping": 1};
        eventually(
            30,
            "the private MongoDB server to answer a ping",
            || async {
                client
                    .database("admin")
                    .run_command(ping.clone())
                    .await
                    .ok()
                    .map(drop)
            },
        )
        .await;
    }

    /// Stops the server as an operator or a failover would (SIGTERM, then waits). Not
    /// SIGKILL: SecantusDB keeps recent writes in memory until it shuts down, so a kill loses
    /// writes it had acknowledged, which a journaled MongoDB never does.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateMongo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.storage);
    }
}
