//! Consent (issue 19): topics, the states an address or number can be in for a topic, what
//! changed them, and the signed tokens of one-click unsubscribe links (RFC 8058).
//!
//! A send names a topic or none. A send without a topic is transactional: only bounces,
//! spam reports (the suppression list) and an opt-out of [`ALL_TOPICS`] stop it. A send with
//! a topic also stops for an opt-out of that topic, and, for a topic that is opt-in by
//! default, for an address that never opted in.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::OrgId;

/// The topic an opt-out of everything is recorded under (a topic key cannot take it).
pub const ALL_TOPICS: &str = "all";

/// A channel consent is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "email" => Some(Self::Email),
            "sms" => Some(Self::Sms),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentState {
    OptedIn,
    OptedOut,
}

/// What made a change: the ledger's "who or what".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentSource {
    /// `PUT /services/consent/` by a user of the organization, for a change made elsewhere
    /// (the organization's own preference page, a signed form).
    Api,
    /// `PUT` of a list the organization brought from another system.
    Import,
    /// The one-click unsubscribe link (RFC 8058 POST) or its confirmation page.
    OneClick,
    /// An email to the `mailto:` address of `List-Unsubscribe` (RFC 2369), as SendGrid's
    /// Inbound Parse posts it (evidence: the email whose link it was, and its sender).
    MailReply,
    /// SendGrid's `unsubscribe` / `group_unsubscribe` events.
    ProviderUnsubscribe,
    /// SendGrid's `spamreport` event.
    SpamReport,
    /// A bounce or drop.
    Bounce,
    /// An SMS STOP or START keyword.
    SmsKeyword,
}

impl ConsentSource {
    /// The sources a caller may name in `PUT /services/consent/` (the others are Herald's
    /// own observations).
    pub fn parse_declared(value: &str) -> Option<Self> {
        match value {
            "api" => Some(Self::Api),
            "import" => Some(Self::Import),
            _ => None,
        }
    }
}

/// The answer to an inbound SMS HELP or INFO when neither the organization nor the
/// deployment (`SmsHelpText`) set one; `{organization}` is replaced by its id.
pub const DEFAULT_SMS_HELP_TEXT: &str = "Messages from {organization}. Reply STOP to opt out, START to opt back in. Msg & data rates may apply.";

/// Longest HELP answer an organization may set: two GSM-7 segments.
pub const MAX_SMS_HELP_CHARS: usize = 306;

/// The deployment's HELP answer for `org`: `SmsHelpText` (`configured`), else the default.
pub fn deployment_sms_help_text(configured: Option<&str>, org: &OrgId) -> String {
    configured
        .filter(|text| !text.trim().is_empty())
        .unwrap_or(DEFAULT_SMS_HELP_TEXT)
        .replace("{organization}", org.as_str())
}

/// Why an organization's HELP answer is refused, or `None`. CTIA's Messaging Principles and
/// Best Practices ask a HELP answer to name the program and to say how to opt out; the
/// name cannot be checked, the opt-out can (the word STOP).
pub fn sms_help_text_problem(text: &str) -> Option<&'static str> {
    if text.trim().is_empty() || text.chars().count() > MAX_SMS_HELP_CHARS {
        return Some("is required, at most 306 characters (two SMS segments)");
    }
    if !text.to_uppercase().contains("STOP") {
        return Some("must say how to opt out (reply STOP), as CTIA asks of a HELP answer");
    }
    None
}

/// Whether `key` can name a topic: 1–64 of `a-z 0-9 - _`, not [`ALL_TOPICS`].
pub fn valid_topic_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key != ALL_TOPICS
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// What an unsubscribe token names: who may be opted out of what, and the message whose
/// link it was (the ledger's evidence).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeClaim {
    #[serde(rename = "o")]
    pub org: OrgId,
    #[serde(rename = "c")]
    pub channel: Channel,
    /// The address, as suppression lists key it (lowercase).
    #[serde(rename = "a")]
    pub subject: String,
    /// A topic key, or [`ALL_TOPICS`].
    #[serde(rename = "t")]
    pub topic: String,
    #[serde(rename = "m")]
    pub message_id: String,
}

/// Why a token is refused. Every refusal answers the same to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token was signed with a key that is no longer accepted")]
    UnknownKey,
    #[error("the token's signature does not match")]
    BadSignature,
}

type HmacSha256 = Hmac<Sha256>;

/// The signing keys of unsubscribe links: the first signs, every one verifies. The secret
/// holds them comma-separated, newest first; rotating is putting a new key in front and,
/// once the overlap is over (mail lives long: months), removing the old one — which
/// revokes every link signed with it.
#[derive(Clone)]
pub struct UnsubscribeKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for UnsubscribeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("UnsubscribeKeys")
            .field("key_ids", &ids)
            .finish()
    }
}

/// Keys shorter than this are refused: HMAC-SHA256 wants at least its output size.
pub const MIN_KEY_BYTES: usize = 32;

/// The secret entry holding the unsubscribe signing keys (comma-separated, newest first).
pub const SIGNING_KEYS: &str = "UNSUBSCRIBE_SIGNING_KEYS";

impl UnsubscribeKeys {
    /// The signing keys (the [`SIGNING_KEYS`] secret), read on first use: `None` when the
    /// secret holds none.
    pub fn on_first_use(
        aws: &crate::aws::AwsClients,
        env: &crate::config::Env,
    ) -> crate::config::OnFirstUse<Option<Self>> {
        env.on_first_use(&aws.secrets, |env, secrets| async move {
            let Some(secret) = env.secret(SIGNING_KEYS, &secrets).await? else {
                return Ok(None);
            };
            let keys = Self::parse(secrecy::ExposeSecret::expose_secret(&secret))
                .map_err(anyhow::Error::msg)?;
            Ok(Some(keys))
        })
    }

    /// # Errors
    /// When there is no key or a key is shorter than [`MIN_KEY_BYTES`].
    pub fn parse(secret: &str) -> Result<Self, String> {
        let keys: Vec<(String, Vec<u8>)> = secret
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|key| (key_id(key.as_bytes()), key.as_bytes().to_vec()))
            .collect();
        if keys.is_empty() {
            return Err("no unsubscribe signing key".to_owned());
        }
        if keys.iter().any(|(_, key)| key.len() < MIN_KEY_BYTES) {
            return Err(format!(
                "an unsubscribe signing key is shorter than {MIN_KEY_BYTES} bytes"
            ));
        }
        Ok(Self { keys })
    }

    /// `v1.<key id>.<claim>.<mac>`, all base64url: the key id lets a verifier pick the key
    /// without trying each, the MAC covers everything before it.
    pub fn sign(&self, claim: &UnsubscribeClaim) -> String {
        let (id, key) = &self.keys[0];
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claim).unwrap_or_default());
        let signed = format!("v1.{id}.{payload}");
        let mac = URL_SAFE_NO_PAD.encode(mac_of(key, signed.as_bytes()));
        format!("{signed}.{mac}")
    }

    /// # Errors
    /// [`TokenError`]: malformed, signed by a key no longer held, or a MAC that does not match.
    pub fn verify(&self, token: &str) -> Result<UnsubscribeClaim, TokenError> {
        let (signed, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = signed.split('.');
        let (Some("v1"), Some(id), Some(payload), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Malformed)?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(known, _)| known == id)
            .ok_or(TokenError::UnknownKey)?;
        let mut check = HmacSha256::new_from_slice(key).map_err(|_| TokenError::Malformed)?;
        check.update(signed.as_bytes());
        // Constant-time comparison (`Mac::verify_slice`).
        check
            .verify_slice(&mac)
            .map_err(|_| TokenError::BadSignature)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
    }
}

fn mac_of(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length, so this never fails; an empty MAC would verify nothing.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// A key's id: the first 6 bytes of its SHA-256, base64url (8 characters).
fn key_id(key: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(&Sha256::digest(key)[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "old-key-old-key-old-key-old-key-old-key!";
    const NEW: &str = "new-key-new-key-new-key-new-key-new-key!";

    fn claim() -> UnsubscribeClaim {
        UnsubscribeClaim {
            org: OrgId::parse("acme").unwrap(),
            channel: Channel::Email,
            subject: "ann@example.com".to_owned(),
            topic: "newsletter".to_owned(),
            message_id: "01JXYZ".to_owned(),
        }
    }

    #[test]
    fn a_signed_claim_verifies_and_survives_a_rotation_until_its_key_is_removed() {
        let before = UnsubscribeKeys::parse(OLD).unwrap();
        let token = before.sign(&claim());
        assert_eq!(before.verify(&token).unwrap(), claim());
        let overlap = UnsubscribeKeys::parse(&format!("{NEW},{OLD}")).unwrap();
        assert_eq!(overlap.verify(&token).unwrap(), claim());
        let new_token = overlap.sign(&claim());
        assert_ne!(new_token, token, "the newest key signs");
        let after = UnsubscribeKeys::parse(NEW).unwrap();
        assert_eq!(after.verify(&token), Err(TokenError::UnknownKey));
        assert_eq!(after.verify(&new_token).unwrap(), claim());
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let keys = UnsubscribeKeys::parse(OLD).unwrap();
        let token = keys.sign(&claim());
        let mut other = claim();
        other.org = OrgId::parse("globex").unwrap();
        let (prefix, _) = token.rsplit_once('.').unwrap();
        let (head, _) = prefix.rsplit_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        let forged = format!(
            "{head}.{forged_payload}.{}",
            token.rsplit_once('.').unwrap().1
        );
        assert_eq!(keys.verify(&forged), Err(TokenError::BadSignature));
        assert_eq!(keys.verify("v1.abc"), Err(TokenError::Malformed));
        assert_eq!(keys.verify(""), Err(TokenError::Malformed));
        assert!(UnsubscribeKeys::parse("short").is_err());
        assert!(UnsubscribeKeys::parse(" , ").is_err());
    }

    #[test]
    fn topic_keys() {
        assert!(valid_topic_key("newsletter"));
        assert!(valid_topic_key("product-updates_2"));
        assert!(!valid_topic_key("all"));
        assert!(!valid_topic_key("News"));
        assert!(!valid_topic_key(""));
        assert!(!valid_topic_key(&"a".repeat(65)));
    }
}
