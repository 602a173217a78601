//! Twilio as a deployment configures it: the client and the default sender, read from the
//! environment and Secrets Manager on first use. The one place a Twilio client is built.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::TwilioClient;
use crate::aws::{AwsClients, SecretsClient};
use crate::config::{ConfigError, Env, OnFirstUse};

/// Twilio as configured: the client and the default sender.
#[derive(Debug, Clone)]
pub struct TwilioSettings {
    pub client: TwilioClient,
    pub default_from: Option<String>,
}

impl TwilioSettings {
    /// The Twilio settings, built on first use by [`Self::from_env`].
    /// `TWILIO_TIMEOUT_MS` is read now, at init: a malformed value fails the function's
    /// start, naming the variable.
    ///
    /// # Errors
    /// [`ConfigError::Malformed`] for a timeout that is not a number.
    pub fn on_first_use(
        aws: &AwsClients,
        env: &Env,
    ) -> Result<OnFirstUse<Option<Self>>, ConfigError> {
        let timeout = Duration::from_millis(env.number("TWILIO_TIMEOUT_MS", 10_000)?);
        Ok(
            env.on_first_use(&aws.secrets, move |env, secrets| async move {
                Self::from_env(&env, &secrets, timeout).await
            }),
        )
    }

    /// Builds the Twilio client from `TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN` and the
    /// optional `TWILIO_FROM` (secrets) and `TWILIO_BASE_URL`; `None` when the credentials
    /// are not set.
    ///
    /// # Errors
    /// When the secret cannot be read or the base URL is unusable.
    pub async fn from_env(
        env: &Env,
        secrets: &SecretsClient,
        timeout: Duration,
    ) -> anyhow::Result<Option<Self>> {
        let sid = env.secret("TWILIO_ACCOUNT_SID", secrets).await?;
        let token = env.secret("TWILIO_AUTH_TOKEN", secrets).await?;
        let (Some(sid), Some(token)) = (sid, token) else {
            return Ok(None);
        };
        let default_from = env
            .secret("TWILIO_FROM", secrets)
            .await?
            .map(|f| f.expose_secret().to_owned());
        let base = env
            .optional("TWILIO_BASE_URL")
            .unwrap_or_else(|| "https://api.twilio.com".to_owned());
        Ok(Some(Self {
            client: TwilioClient::new(&base, sid.expose_secret(), token, timeout)?,
            default_from,
        }))
    }
}
