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

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub struct TestBundle {
    pub bundle: RunningBundle,
    pub http: reqwest::Client,
}

/// A bundle on a random port with resources under a fresh prefix.
pub async fn spawn_bundle() -> TestBundle {
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let mut options = BundleOptions::new(workspace_root().join("template.yaml"), &prefix[..12]);
    for (name, value) in [
        ("AWS_ENDPOINT_URL", aws_endpoint()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
    ] {
        options.env.insert(name.to_owned(), value);
    }
    let bundle = local::start(options)
        .await
        .expect("the local bundle starts");
    TestBundle {
        bundle,
        http: reqwest::Client::new(),
    }
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

impl Reply {
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
        let response = request.send().await.expect("the bundle answers");
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
        Reply {
            status,
            content_type,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call("POST", path, Some(token), Some(body)).await
    }
}
