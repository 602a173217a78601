//! The caller, as API Gateway's JWT authorizer describes them (SPEC §2).
//!
//! API Gateway verifies the token and passes its claims to the function as strings in
//! `requestContext.authorizer.jwt.claims`; list claims arrive flattened (`"[admin member]"`).
//! The organization is taken from the token alone — never from a body, query or cursor.

use std::collections::{BTreeSet, HashMap};

use lambda_http::{Request, RequestExt, request::RequestContext};

use crate::config::Env;
use crate::domain::OrgId;
use crate::http::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Member,
    Admin,
    Superuser,
}

impl Role {
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "member" => Some(Self::Member),
            "admin" => Some(Self::Admin),
            "superuser" => Some(Self::Superuser),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Admin => "admin",
            Self::Superuser => "superuser",
        }
    }
}

/// Which claims carry the organization and the roles (template parameters).
#[derive(Debug, Clone)]
pub struct ClaimNames {
    pub org: String,
    pub roles: Vec<String>,
}

impl ClaimNames {
    pub fn from_env(env: &Env) -> Self {
        Self {
            org: env
                .optional("ORG_CLAIM")
                .unwrap_or_else(|| "org_id".to_owned()),
            roles: vec!["roles".to_owned(), "cognito:groups".to_owned()],
        }
    }
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self::from_env(&Env::empty())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub org: OrgId,
    pub roles: BTreeSet<Role>,
}

impl Caller {
    /// Reads the caller from the request's authorizer claims.
    ///
    /// # Errors
    /// 401 when there are no claims, no subject or no valid organization claim.
    pub fn from_request(request: &Request, names: &ClaimNames) -> Result<Self, ApiError> {
        let claims = match request.request_context_ref() {
            Some(RequestContext::ApiGatewayV2(context)) => context
                .authorizer
                .as_ref()
                .and_then(|authorizer| authorizer.jwt.as_ref())
                .map(|jwt| &jwt.claims),
            _ => None,
        };
        let claims = claims
            .ok_or_else(|| ApiError::Unauthenticated("no verified token claims".to_owned()))?;
        Self::from_claims(claims, names)
    }

    /// # Errors
    /// 401 when the subject or organization claim is missing or the organization is malformed.
    pub fn from_claims(
        claims: &HashMap<String, String>,
        names: &ClaimNames,
    ) -> Result<Self, ApiError> {
        let user = claims
            .get("sub")
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| ApiError::Unauthenticated("the token has no subject".to_owned()))?
            .clone();
        let org = claims
            .get(&names.org)
            .filter(|org| !org.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthenticated(format!("the token has no {} claim", names.org))
            })?;
        let org = OrgId::parse(org).map_err(|_| {
            ApiError::Unauthenticated(format!(
                "the {} claim is not a valid organization id",
                names.org
            ))
        })?;
        let roles = names
            .roles
            .iter()
            .filter_map(|name| claims.get(name))
            .flat_map(|value| parse_list_claim(value))
            .filter_map(|name| Role::parse(&name))
            .collect();
        Ok(Self { user, org, roles })
    }

    /// Superusers hold every role; admins also hold `member`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.iter().any(|held| *held >= role)
    }

    pub fn is_superuser(&self) -> bool {
        self.has(Role::Superuser)
    }

    /// # Errors
    /// 403 when the caller lacks `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.has(role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this action needs the {} role",
                role.as_str()
            )))
        }
    }
}

/// Reads a list claim in any of the shapes it arrives in: a JSON array, API Gateway's
/// flattened `[a b]`, or a comma- or space-separated string.
pub fn parse_list_claim(value: &str) -> Vec<String> {
    if let Ok(items) = serde_json::from_str::<Vec<String>>(value) {
        return items;
    }
    value
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split([',', ' '])
        .map(|item| item.trim().trim_matches('"').to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reads_every_list_claim_shape() {
        assert_eq!(parse_list_claim("[admin member]"), vec!["admin", "member"]);
        assert_eq!(
            parse_list_claim(r#"["admin","member"]"#),
            vec!["admin", "member"]
        );
        assert_eq!(parse_list_claim("admin, member"), vec!["admin", "member"]);
        assert!(parse_list_claim("[]").is_empty());
    }

    #[test]
    fn organization_and_roles_come_from_claims() {
        let names = ClaimNames {
            org: "custom:org_id".to_owned(),
            roles: vec!["cognito:groups".to_owned()],
        };
        let caller = Caller::from_claims(
            &claims(&[
                ("sub", "u1"),
                ("custom:org_id", "acme"),
                ("cognito:groups", "[admin]"),
            ]),
            &names,
        )
        .unwrap();
        assert_eq!(caller.org.as_str(), "acme");
        assert!(caller.has(Role::Member) && caller.has(Role::Admin) && !caller.is_superuser());
    }

    #[test]
    fn missing_or_bad_organization_is_401() {
        let names = ClaimNames::default();
        for bad in [
            claims(&[("sub", "u1")]),
            claims(&[("sub", "u1"), ("org_id", "a#b")]),
            claims(&[("org_id", "acme")]),
        ] {
            assert!(matches!(
                Caller::from_claims(&bad, &names),
                Err(ApiError::Unauthenticated(_))
            ));
        }
    }

    #[test]
    fn no_role_is_403() {
        let caller = Caller::from_claims(
            &claims(&[("sub", "u"), ("org_id", "acme")]),
            &ClaimNames::default(),
        )
        .unwrap();
        assert!(matches!(
            caller.require(Role::Member),
            Err(ApiError::Forbidden(_))
        ));
    }
}
