//! Configuration from the environment (SPEC §12).
//!
//! Functions read resource names from variables the template sets. Secrets come from
//! Secrets Manager when `<NAME>_SECRET_ARN` is set, otherwise from the plain `<NAME>`
//! variable (local use). The local runner hands each in-process function its own [`Env`]
//! built from the template, so several functions can share one process.
//!
//! Nothing here is read from the network while a function starts: what needs Secrets
//! Manager (a provider key, the MongoDB URI, or a client built from them) is an
//! [`OnFirstUse`], read by the first invocation that needs it (issue 10: init does no I/O).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use anyhow::Context;
use secrecy::SecretString;
use tokio::sync::OnceCell;

use crate::aws::SecretsClient;

#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is not set")]
    Missing(String),
    #[error("could not read secret {name}: {cause:#}")]
    Secret { name: String, cause: anyhow::Error },
    #[error("environment variable {name} is {value:?}, not {expected}")]
    Malformed {
        name: String,
        value: String,
        expected: &'static str,
    },
}

impl Env {
    /// The process environment (what Lambda gives a function).
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    pub fn from_map(vars: HashMap<String, String>) -> Self {
        Self { vars }
    }

    pub fn empty() -> Self {
        Self::default()
    }

    pub fn optional(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .filter(|value| !value.is_empty())
            .cloned()
    }

    /// A whole number from the environment, `default` when the variable is unset. A value
    /// that is not one fails (at init, where every function reads its numbers), naming the
    /// variable: a typo must not silently become the default (issue 21).
    ///
    /// # Errors
    /// [`ConfigError::Malformed`] for a value that is not a non-negative whole number.
    pub fn number<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr,
    {
        let Some(value) = self.optional(name) else {
            return Ok(default);
        };
        value.trim().parse().map_err(|_| ConfigError::Malformed {
            name: name.to_owned(),
            value,
            expected: "a non-negative whole number",
        })
    }

    /// # Errors
    /// [`ConfigError::Missing`] when the variable is unset or empty.
    pub fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.optional(name)
            .ok_or_else(|| ConfigError::Missing(name.to_owned()))
    }

    /// Reads a secret: from Secrets Manager when `<name>_SECRET_ARN` is set (a JSON secret
    /// may hold several values, keyed by `name`), else from the plain variable `<name>`.
    /// Several names may point at one secret (one JSON secret per provider).
    /// `None` means the secret is not configured at all.
    ///
    /// # Errors
    /// [`ConfigError::Secret`] when Secrets Manager cannot be read.
    pub async fn secret(
        &self,
        name: &str,
        secrets: &aws_sdk_secretsmanager::Client,
    ) -> Result<Option<SecretString>, ConfigError> {
        if let Some(arn) = self.optional(&format!("{name}_SECRET_ARN")) {
            let value =
                read_secret(secrets, &arn, name)
                    .await
                    .map_err(|cause| ConfigError::Secret {
                        name: name.to_owned(),
                        cause,
                    })?;
            return Ok(value.map(SecretString::from));
        }
        Ok(self.optional(name).map(SecretString::from))
    }

    /// Whether secret `name` is configured, without reading it: when `<name>_SECRET_ARN` is
    /// set, whether that secret has a current value (`DescribeSecret`: `VersionIdsToStages`
    /// names `AWSCURRENT`; the template creates provider secrets without one), else whether
    /// the plain variable `<name>` is set. A function that only needs to know holds
    /// `secretsmanager:DescribeSecret`, never the key.
    ///
    /// # Errors
    /// [`ConfigError::Secret`] when Secrets Manager cannot be asked.
    pub async fn secret_is_set(
        &self,
        name: &str,
        secrets: &aws_sdk_secretsmanager::Client,
    ) -> Result<bool, ConfigError> {
        let Some(arn) = self.optional(&format!("{name}_SECRET_ARN")) else {
            return Ok(self.optional(name).is_some());
        };
        let described = secrets
            .describe_secret()
            .secret_id(&arn)
            .send()
            .await
            .map_err(|error| ConfigError::Secret {
                name: name.to_owned(),
                cause: anyhow::Error::new(error).context("DescribeSecret failed"),
            })?;
        Ok(described.version_ids_to_stages().is_some_and(|versions| {
            versions
                .values()
                .any(|stages| stages.iter().any(|stage| stage == "AWSCURRENT"))
        }))
    }

    /// A value `build` makes from this environment and Secrets Manager on first use (see
    /// [`OnFirstUse`]). `build` gets its own copies, so the value outlives the caller.
    pub fn on_first_use<T, F, Fut>(&self, secrets: &SecretsClient, build: F) -> OnFirstUse<T>
    where
        F: Fn(Env, SecretsClient) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let (env, secrets) = (self.clone(), secrets.clone());
        OnFirstUse::new(move || build(env.clone(), secrets.clone()))
    }
}

type BuildFuture<T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send>>;

/// A value built asynchronously by the first call that needs it, then kept for the life of
/// the execution environment: how a function reads its secrets (and builds the clients
/// that hold them) without a network round trip before its first poll.
///
/// Concurrent first callers wait for one build. A failed build is not kept: the caller gets
/// the error (a 5xx, a retried message) and the next call builds again, so a Secrets
/// Manager outage lasts as long as the outage, not as long as the execution environment.
///
/// A caller that finds the value stale — a provider refusing the key it holds, after the
/// secret was rotated — calls [`rebuild_once`](Self::rebuild_once): the next call builds it
/// again (reading the secret anew), once per execution environment. A key still refused
/// after that is a configuration error to alarm on, not a rotation to chase.
pub struct OnFirstUse<T> {
    value: OnceCell<T>,
    rebuilt: OnceCell<T>,
    stale: std::sync::atomic::AtomicBool,
    build: Box<dyn Fn() -> BuildFuture<T> + Send + Sync>,
}

impl<T> OnFirstUse<T> {
    pub fn new<F, Fut>(build: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        Self {
            value: OnceCell::new(),
            rebuilt: OnceCell::new(),
            stale: std::sync::atomic::AtomicBool::new(false),
            build: Box::new(move || Box::pin(build())),
        }
    }

    /// The value, built now if no call has built it yet (or built again after
    /// [`rebuild_once`](Self::rebuild_once)).
    ///
    /// # Errors
    /// The build's error; the next call tries again.
    pub async fn get(&self) -> anyhow::Result<&T> {
        if self.stale.load(std::sync::atomic::Ordering::Acquire) {
            return self.rebuilt.get_or_try_init(|| (self.build)()).await;
        }
        self.value.get_or_try_init(|| (self.build)()).await
    }

    /// Marks the value stale: the next [`get`](Self::get) builds it again. Only the first
    /// call has an effect.
    pub fn rebuild_once(&self) {
        self.stale.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Says whether the value is built, never what it is (it may hold a secret).
impl<T> std::fmt::Debug for OnFirstUse<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnFirstUse")
            .field("built", &self.value.initialized())
            .finish_non_exhaustive()
    }
}

async fn read_secret(
    secrets: &aws_sdk_secretsmanager::Client,
    arn: &str,
    name: &str,
) -> anyhow::Result<Option<String>> {
    let output = match secrets.get_secret_value().secret_id(arn).send().await {
        Ok(output) => output,
        // A secret created without a value (as the template creates provider secrets) has
        // no AWSCURRENT version yet: not configured.
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            return Ok(None);
        }
        Err(error) => return Err(anyhow::Error::new(error).context("GetSecretValue failed")),
    };
    let text = output
        .secret_string()
        .context("the secret has no string value")?;
    // A JSON object holds several secrets by name; a missing or empty entry is "not configured".
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text) {
        return Ok(map
            .get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_owned));
    }
    Ok(Some(text.to_owned()).filter(|v| !v.is_empty()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn empty_values_count_as_unset() {
        let env = Env::from_map(HashMap::from([
            ("A".to_owned(), String::new()),
            ("B".to_owned(), "b".to_owned()),
        ]));
        assert!(env.optional("A").is_none());
        assert!(matches!(env.required("A"), Err(ConfigError::Missing(_))));
        assert_eq!(env.required("B").unwrap(), "b");
    }

    #[test]
    fn a_malformed_number_is_an_error_naming_the_variable_not_the_default() {
        let env = Env::from_map(HashMap::from([
            ("GOOD".to_owned(), "250".to_owned()),
            ("BAD".to_owned(), "10s".to_owned()),
        ]));
        assert_eq!(env.number("GOOD", 1_u64).unwrap(), 250);
        assert_eq!(env.number("UNSET", 7_u64).unwrap(), 7);
        let error = env.number("BAD", 7_u64).unwrap_err().to_string();
        assert!(error.contains("BAD") && error.contains("10s"), "{error}");
    }

    fn counting(builds: &Arc<AtomicUsize>, fail_first: bool) -> OnFirstUse<usize> {
        let builds = Arc::clone(builds);
        OnFirstUse::new(move || {
            let builds = Arc::clone(&builds);
            async move {
                let attempt = builds.fetch_add(1, Ordering::SeqCst) + 1;
                // Long enough for every concurrent caller to arrive while the build runs.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                if fail_first && attempt == 1 {
                    anyhow::bail!("Secrets Manager is unavailable");
                }
                Ok(attempt)
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_first_calls_share_one_build() {
        let builds = Arc::new(AtomicUsize::new(0));
        let value = Arc::new(counting(&builds, false));
        assert_eq!(
            builds.load(Ordering::SeqCst),
            0,
            "nothing is built up front"
        );
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let value = Arc::clone(&value);
                tokio::spawn(async move { *value.get().await.unwrap() })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), 1);
        }
        assert_eq!(*value.get().await.unwrap(), 1);
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_build_is_retried_by_the_next_call() {
        let builds = Arc::new(AtomicUsize::new(0));
        let value = counting(&builds, true);
        let error = value.get().await.unwrap_err();
        assert!(error.to_string().contains("unavailable"), "{error}");
        assert_eq!(format!("{value:?}"), "OnFirstUse { built: false, .. }");
        assert_eq!(*value.get().await.unwrap(), 2);
        assert_eq!(*value.get().await.unwrap(), 2, "kept once built");
        assert_eq!(builds.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_stale_value_is_built_again_once() {
        let builds = Arc::new(AtomicUsize::new(0));
        let value = counting(&builds, false);
        assert_eq!(*value.get().await.unwrap(), 1);
        value.rebuild_once();
        assert_eq!(*value.get().await.unwrap(), 2, "the secret is read anew");
        value.rebuild_once();
        assert_eq!(*value.get().await.unwrap(), 2, "only once");
        assert_eq!(builds.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_plain_variable_is_read_on_first_use_without_secrets_manager() {
        let env = Env::from_map(HashMap::from([("KEY".to_owned(), "k".to_owned())]));
        // No endpoint is reachable here: a plain variable needs none.
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .build();
        let secrets =
            crate::aws::LazyClient::ready(aws_sdk_secretsmanager::Client::from_conf(config));
        let key = env.on_first_use(&secrets, |env, secrets| async move {
            Ok(env.secret("KEY", &secrets).await?)
        });
        let read = key
            .get()
            .await
            .unwrap()
            .as_ref()
            .map(|k| secrecy::ExposeSecret::expose_secret(k).to_owned());
        assert_eq!(read.as_deref(), Some("k"));
    }
}
