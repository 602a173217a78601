//! AWS clients, built once per cold start from one shared configuration.
//!
//! `AWS_ENDPOINT_URL` (the SDK's own variable) points every client at a local endpoint such
//! as moto; S3 then needs path-style addressing because `bucket.localhost` does not resolve.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::{
    HttpClient, RuntimeComponents, SharedCredentialsProvider, SharedHttpClient,
};
use aws_smithy_http_client::Builder as HttpClientBuilder;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{HttpConnectorSettings, SharedHttpConnector};

use std::ops::Deref;
use std::sync::{Arc, LazyLock};

use crate::config::Env;

/// The roots AWS service endpoints chain to (Amazon Trust Services and the Starfield roots
/// that cross-sign them), from the Mozilla store as Debian ships it.
const AMAZON_TRUST_SERVICES_ROOTS: &str = include_str!("../certs/amazon-trust-services.pem");

pub type DynamoDbClient = LazyClient<aws_sdk_dynamodb::Client>;
pub type SqsClient = LazyClient<aws_sdk_sqs::Client>;
pub type S3Client = LazyClient<aws_sdk_s3::Client>;
pub type SecretsClient = LazyClient<aws_sdk_secretsmanager::Client>;
pub type SchedulerClient = LazyClient<aws_sdk_scheduler::Client>;

/// Every AWS client a function may use, each built on its first use (see [`LazyClient`]).
/// Clients are cheap handles over one connection pool; building one does no I/O.
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub config: SdkConfig,
    pub dynamodb: DynamoDbClient,
    pub sqs: SqsClient,
    pub s3: S3Client,
    pub secrets: SecretsClient,
    pub scheduler: SchedulerClient,
}

impl AwsClients {
    /// Loads the shared SDK configuration, honouring `AWS_ENDPOINT_URL` and `AWS_REGION`
    /// from `env` (which for a deployed function is the process environment).
    pub async fn load(env: &Env) -> Self {
        let endpoint = env.optional("AWS_ENDPOINT_URL");
        // A custom HTTPS endpoint may be served under any certificate: it keeps the SDK's
        // default client, which trusts the platform's roots. AWS itself, and a plain-HTTP
        // endpoint such as moto, get the same small trust store.
        let custom_https_endpoint = endpoint
            .as_deref()
            .is_some_and(|url| url.starts_with("https://"));
        let http_client = if custom_https_endpoint {
            None
        } else {
            amazon_trust_services_client()
        };
        let config = match lambda_config(env, endpoint.as_deref(), http_client.clone()) {
            Some(config) => config,
            None => {
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                if let Some(region) = env.optional("AWS_REGION") {
                    loader = loader.region(Region::new(region));
                }
                if let Some(endpoint) = &endpoint {
                    loader = loader.endpoint_url(endpoint);
                }
                if let Some(client) = http_client {
                    loader = loader.http_client(client);
                }
                loader.load().await
            }
        };
        Self::from_config(config, endpoint.is_some())
    }

    pub fn from_config(config: SdkConfig, local_endpoint: bool) -> Self {
        let s3_config = aws_sdk_s3::config::Builder::from(&config).force_path_style(local_endpoint);
        Self {
            dynamodb: LazyClient::from_config(&config, aws_sdk_dynamodb::Client::new),
            sqs: LazyClient::from_config(&config, aws_sdk_sqs::Client::new),
            s3: LazyClient::new(move || aws_sdk_s3::Client::from_conf(s3_config.build())),
            secrets: LazyClient::from_config(&config, aws_sdk_secretsmanager::Client::new),
            scheduler: LazyClient::from_config(&config, aws_sdk_scheduler::Client::new),
            config,
        }
    }
}

/// A service client built when it is first used, then shared by every clone.
///
/// Why: building an SDK client costs about 0.09 ms of CPU and a few hundred KiB of fresh
/// heap and code pages; a function uses two or three of the five, and most of them not
/// before its first request. Built at init they were a third of our cold start over the
/// hello-world floor (docs/PERFORMANCE.md). It derefs to the client, so calls read as
/// `store.dynamodb.put_item()`.
pub struct LazyClient<C>(Arc<LazyLock<C, BuildClient<C>>>);

type BuildClient<C> = Box<dyn FnOnce() -> C + Send>;

impl<C> LazyClient<C> {
    pub fn new(build: impl FnOnce() -> C + Send + 'static) -> Self {
        Self(Arc::new(LazyLock::new(Box::new(build))))
    }

    /// A client `build` makes from (its own copy of) `config`.
    pub fn from_config(config: &SdkConfig, build: fn(&SdkConfig) -> C) -> Self
    where
        C: 'static,
    {
        let config = config.clone();
        Self::new(move || build(&config))
    }

    /// An already built client (the local runner's instrumented ones).
    pub fn ready(client: C) -> Self
    where
        C: Send + 'static,
    {
        Self::new(move || client)
    }
}

impl<C> Clone for LazyClient<C> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<C> Deref for LazyClient<C> {
    type Target = C;

    fn deref(&self) -> &C {
        &self.0
    }
}

impl<C> std::fmt::Debug for LazyClient<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LazyClient<{}>", std::any::type_name::<C>())
    }
}

/// Inside Lambda, the whole configuration from the environment Lambda sets: the region and
/// the function role's credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, read again whenever the cached identity expires).
///
/// Why: `aws_config::load` resolves each setting through the environment *and* the shared
/// profile files (which a function does not have) and prepares the provider chains for
/// containers and EC2 — about 0.4 ms of a cold start for nothing Lambda uses. Elsewhere (the
/// local runner, tests, tools) `None`, and the full loader runs.
fn lambda_config(
    env: &Env,
    endpoint: Option<&str>,
    http_client: Option<SharedHttpClient>,
) -> Option<SdkConfig> {
    env.optional("AWS_LAMBDA_FUNCTION_NAME")?;
    env.optional("AWS_ACCESS_KEY_ID")?;
    let region = env.optional("AWS_REGION")?;
    let credentials = SharedCredentialsProvider::new(
        aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
    );
    let mut config = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(credentials)
        .http_client(http_client?);
    config.set_endpoint_url(endpoint.map(str::to_owned));
    Some(config.build())
}

/// The SDK's own HTTPS client (rustls with aws-lc, as its default), trusting only the roots
/// AWS endpoints chain to, and building its TLS connector on the first request.
///
/// Why: the default client builds its root store from every certificate the platform has
/// (about 140 on Lambda's image), and does so each time a service client is created — five
/// at init — to validate the configuration early; that was most of our init time over the
/// hello-world floor (docs/PERFORMANCE.md). Six roots parse in microseconds, and the
/// connector is built once, when a request first needs it, and then cached.
fn amazon_trust_services_client() -> Option<SharedHttpClient> {
    let trust_store = TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(AMAZON_TRUST_SERVICES_ROOTS);
    // Building a context with only a trust store does not fail today; if a later SDK
    // makes it, the default client (platform roots) is still correct, only slower.
    let tls_context = match TlsContext::builder().with_trust_store(trust_store).build() {
        Ok(context) => context,
        Err(error) => {
            tracing::warn!(%error, "using the SDK's default HTTPS client");
            return None;
        }
    };
    let client = HttpClientBuilder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(tls_context)
        .build_https();
    Some(SharedHttpClient::new(ConnectOnFirstRequest(client)))
}

/// An HTTP client that skips the SDK's eager connector build when a service client is
/// created (`validate_base_client_config`); the connector is built and cached by the inner
/// client on the first request, as it would be anyway.
#[derive(Debug)]
struct ConnectOnFirstRequest(SharedHttpClient);

impl HttpClient for ConnectOnFirstRequest {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lazy_client_is_built_once_on_first_use_and_shared_by_its_clones() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static BUILDS: AtomicUsize = AtomicUsize::new(0);
        let client = LazyClient::new(|| {
            BUILDS.fetch_add(1, Ordering::SeqCst);
            String::from("client")
        });
        let copy = client.clone();
        assert_eq!(BUILDS.load(Ordering::SeqCst), 0, "nothing built before use");
        assert_eq!(copy.len(), 6);
        assert_eq!(client.as_str(), "client");
        assert_eq!(BUILDS.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_bundled_roots_are_the_six_amazon_trust_services_anchors() {
        assert_eq!(
            AMAZON_TRUST_SERVICES_ROOTS
                .matches("-----BEGIN CERTIFICATE-----")
                .count(),
            6
        );
        assert_eq!(
            AMAZON_TRUST_SERVICES_ROOTS
                .matches("-----END CERTIFICATE-----")
                .count(),
            6
        );
    }

    /// The TLS connector (and with it the root store, which panics on a root it cannot use)
    /// is built on the first request: this makes one, against a port nothing listens on.
    #[tokio::test]
    async fn the_first_request_builds_the_connector_with_the_amazon_trust_services_roots() {
        let env = Env::from_map(
            [
                ("AWS_REGION", "eu-west-1"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        );
        let clients = AwsClients::load(&env).await;
        assert_eq!(
            clients.config.region().map(|r| r.as_ref()),
            Some("eu-west-1")
        );
        let reply = clients.dynamodb.list_tables().send().await;
        let error = format!("{:?}", reply.expect_err("nothing listens on port 9"));
        assert!(
            error.contains("onnect"),
            "a connection error, not a panic: {error}"
        );
    }

    #[tokio::test]
    async fn inside_lambda_the_configuration_comes_from_the_environment_alone() {
        let lambda = |name: Option<&str>| {
            let mut vars: std::collections::HashMap<String, String> = [
                ("AWS_REGION", "eu-west-1"),
                ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
            if let Some(name) = name {
                vars.insert("AWS_LAMBDA_FUNCTION_NAME".into(), name.into());
            }
            Env::from_map(vars)
        };
        let config = lambda_config(
            &lambda(Some("email-worker")),
            None,
            amazon_trust_services_client(),
        )
        .expect("a Lambda environment");
        assert_eq!(config.region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert!(config.credentials_provider().is_some());
        assert!(config.http_client().is_some());
        assert!(lambda_config(&lambda(None), None, amazon_trust_services_client()).is_none());
    }
}
