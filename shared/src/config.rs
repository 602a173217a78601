//! Configuration from the environment (SPEC §12).
//!
//! Functions read resource names from variables the template sets. Secrets come from
//! Secrets Manager when `<NAME>_SECRET_ARN` is set, otherwise from the plain `<NAME>`
//! variable (local use). The local runner hands each in-process function its own [`Env`]
//! built from the template, so several functions can share one process.

use std::collections::HashMap;

use anyhow::Context;
use secrecy::SecretString;

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
}

async fn read_secret(
    secrets: &aws_sdk_secretsmanager::Client,
    arn: &str,
    name: &str,
) -> anyhow::Result<Option<String>> {
    let output = secrets
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .context("GetSecretValue failed")?;
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
}
