//! AWS clients, built once per cold start from one shared configuration.
//!
//! `AWS_ENDPOINT_URL` (the SDK's own variable) points every client at a local endpoint such
//! as moto; S3 then needs path-style addressing because `bucket.localhost` does not resolve.

use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::config::Env;

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
