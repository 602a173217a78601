//! AWS clients, built once per cold start from one shared configuration.
//!
//! `AWS_ENDPOINT_URL` (the SDK's own variable) points every client at a local endpoint such
//! as moto; S3 then needs path-style addressing because `bucket.localhost` does not resolve.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::SharedHttpClient;
use aws_smithy_http_client::Builder as HttpClientBuilder;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};

use crate::config::Env;

/// The roots AWS service endpoints chain to (Amazon Trust Services and the Starfield roots
/// that cross-sign them), from the Mozilla store as Debian ships it.
const AMAZON_TRUST_SERVICES_ROOTS: &str = include_str!("../certs/amazon-trust-services.pem");

/// Every AWS client a function may use. Clients are cheap handles over one connection pool;
/// building one does no I/O.
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub config: SdkConfig,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub scheduler: aws_sdk_scheduler::Client,
}

impl AwsClients {
    /// Loads the shared SDK configuration, honouring `AWS_ENDPOINT_URL` and `AWS_REGION`
    /// from `env` (which for a deployed function is the process environment).
    pub async fn load(env: &Env) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = env.optional("AWS_REGION") {
            loader = loader.region(Region::new(region));
        }
        let endpoint = env.optional("AWS_ENDPOINT_URL");
        if let Some(endpoint) = &endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        // A custom HTTPS endpoint may be served under any certificate: it keeps the SDK's
        // default client, which trusts the platform's roots. AWS itself, and a plain-HTTP
        // endpoint such as moto, get the same small trust store.
        let custom_https_endpoint = endpoint
            .as_deref()
            .is_some_and(|url| url.starts_with("https://"));
        if !custom_https_endpoint && let Some(client) = amazon_trust_services_client() {
            loader = loader.http_client(client);
        }
        Self::from_config(loader.load().await, endpoint.is_some())
    }

    pub fn from_config(config: SdkConfig, local_endpoint: bool) -> Self {
        let s3_config = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(local_endpoint)
            .build();
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            sqs: aws_sdk_sqs::Client::new(&config),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            secrets: aws_sdk_secretsmanager::Client::new(&config),
            scheduler: aws_sdk_scheduler::Client::new(&config),
            config,
        }
    }
}

/// The SDK's own HTTPS client (rustls with aws-lc, as its default), trusting only the roots
/// AWS endpoints chain to.
///
/// Why: the default client builds its root store from every certificate the platform has
/// (about 140 on Lambda's image) each time a service client is created, and we create five
/// at init; that parsing was most of our init time over the hello-world floor
/// (docs/PERFORMANCE.md). Six roots parse in microseconds.
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
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Creating a service client makes the SDK build the TLS connector, parsing every root
    /// (and panicking on one it cannot use): this is that path, without a network.
    #[tokio::test]
    async fn clients_build_with_the_amazon_trust_services_roots() {
        let env = Env::from_map([("AWS_REGION".to_owned(), "eu-west-1".to_owned())].into());
        let clients = AwsClients::load(&env).await;
        assert_eq!(
            clients.config.region().map(|r| r.as_ref()),
            Some("eu-west-1")
        );
        assert!(clients.config.http_client().is_some());
        assert!(amazon_trust_services_client().is_some());
    }
}
