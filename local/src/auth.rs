//! The local stand-in for API Gateway's JWT authorizer: it mints HS256 tokens for an
//! organization and role, and verifies them as the authorizer would (signature, issuer,
//! audience, expiry) before the function sees the claims.

use std::collections::HashMap;

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

pub const DEFAULT_SECRET: &str = "herald-local-development-secret";
pub const ISSUER: &str = "https://herald.local/";
pub const AUDIENCE: &str = "herald-local";

#[derive(Clone)]
pub struct LocalAuth {
    secret: String,
    org_claim: String,
}

impl std::fmt::Debug for LocalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAuth")
            .field("org_claim", &self.org_claim)
            .finish_non_exhaustive()
    }
}

impl LocalAuth {
    pub fn new(secret: impl Into<String>, org_claim: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
            org_claim: org_claim.into(),
        }
    }

    /// A token for `user` in `org` with `roles`, valid for `ttl_seconds`.
    ///
    /// # Errors
    /// Only if signing fails.
    pub fn mint(
        &self,
        user: &str,
        org: Option<&str>,
        roles: &[&str],
        ttl_seconds: i64,
    ) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user,
            "iat": now,
            "exp": now + ttl_seconds,
            "roles": roles,
        });
        if let (Some(org), Value::Object(map)) = (org, &mut claims) {
            map.insert(self.org_claim.clone(), Value::String(org.to_owned()));
        }
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .context("signing token")
    }

    /// Verifies an `Authorization` header value and returns the claims flattened to strings,
    /// exactly as API Gateway passes them to the function (arrays become `[a b]`).
    ///
    /// # Errors
    /// When the header is not `Bearer <token>` or the token does not verify.
    pub fn verify(&self, authorization: &str) -> anyhow::Result<HashMap<String, String>> {
        let token = authorization
            .strip_prefix("Bearer ")
            .or_else(|| authorization.strip_prefix("bearer "))
            .unwrap_or(authorization)
            .trim();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        let data = jsonwebtoken::decode::<HashMap<String, Value>>(
            token,
            &DecodingKey::from_secret(self.secret.as_bytes()),
            &validation,
        )?;
        Ok(data
            .claims
            .into_iter()
            .map(|(name, value)| (name, flatten(&value)))
            .collect())
    }
}

fn flatten(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(flatten).collect::<Vec<_>>().join(" ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_with_flattened_claims() {
        let auth = LocalAuth::new("s", "org_id");
        let token = auth
            .mint("u1", Some("acme"), &["admin", "member"], 60)
            .unwrap();
        let claims = auth.verify(&format!("Bearer {token}")).unwrap();
        assert_eq!(claims["org_id"], "acme");
        assert_eq!(claims["roles"], "[admin member]");
        assert!(LocalAuth::new("other", "org_id").verify(&token).is_err());
        let expired = auth.mint("u1", Some("acme"), &["admin"], -120).unwrap();
        assert!(auth.verify(&expired).is_err());
    }
}
