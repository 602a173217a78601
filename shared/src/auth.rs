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
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Admin => "admin",
            Self::Superuser => "superuser",
        }
    }
}

/// The claim value that grants each role, matched exactly: no case folding, no trimming, no
/// splitting — an identity-provider group named "Billing Admin" is not `admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleValues {
    pub member: String,
    pub admin: String,
    pub superuser: String,
}

impl RoleValues {
    /// The role `value` grants, if any.
    pub fn role_of(&self, value: &str) -> Option<Role> {
        [
            (&self.superuser, Role::Superuser),
            (&self.admin, Role::Admin),
            (&self.member, Role::Member),
        ]
        .into_iter()
        .find(|(accepted, _)| accepted.as_str() == value)
        .map(|(_, role)| role)
    }
}

impl Default for RoleValues {
    fn default() -> Self {
        Self {
            member: Role::Member.as_str().to_owned(),
            admin: Role::Admin.as_str().to_owned(),
            superuser: Role::Superuser.as_str().to_owned(),
        }
    }
}

/// How the token describes the caller (template parameters `OrgClaim`, `RoleClaims`,
/// `MemberRole`, `AdminRole`, `SuperuserRole`, `PlatformOrg`).
#[derive(Debug, Clone)]
pub struct ClaimNames {
    /// The claim that carries the organization id.
    pub org: String,
    /// The claims whose values grant roles; the roles of all of them count.
    pub roles: Vec<String>,
    pub role_values: RoleValues,
    /// The one organization whose superusers are honoured; a superuser claim from any other
    /// organization counts as `admin` (`superuser` reads every tenant's data).
    pub platform_org: String,
}

impl ClaimNames {
    pub fn from_env(env: &Env) -> Self {
        let value = |name: &str, default: &str| {
            env.optional(name)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let defaults = RoleValues::default();
        Self {
            org: value("ORG_CLAIM", "org_id"),
            roles: value("ROLE_CLAIMS", "roles,cognito:groups")
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect(),
            role_values: RoleValues {
                member: value("MEMBER_ROLE", &defaults.member),
                admin: value("ADMIN_ROLE", &defaults.admin),
                superuser: value("SUPERUSER_ROLE", &defaults.superuser),
            },
            platform_org: value("PLATFORM_ORG", "platform"),
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
        let mut roles: BTreeSet<Role> = names
            .roles
            .iter()
            .filter_map(|name| claims.get(name))
            .flat_map(|value| parse_list_claim(value))
            .filter_map(|value| names.role_values.role_of(&value))
            .collect();
        if org.as_str() != names.platform_org && roles.remove(&Role::Superuser) {
            roles.insert(Role::Admin);
        }
        Ok(Self { user, org, roles })
    }

    /// Superusers hold every role; admins also hold `member`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.iter().any(|held| *held >= role)
    }

    pub fn is_superuser(&self) -> bool {
        self.has(Role::Superuser)
    }

    /// The organization a list's `organization=` names, if any (SPEC §2): only a superuser may
    /// name one, so anyone else who sends it gets 403 on every list, never a silent answer
    /// about their own organization.
    ///
    /// # Errors
    /// 403 for a caller who is not a superuser, 400 for a malformed organization id.
    pub fn organization_filter(
        &self,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<OrgId>, ApiError> {
        match params.get("organization") {
            None => Ok(None),
            Some(_) if !self.is_superuser() => Err(ApiError::Forbidden(
                "only superusers may filter by organization".to_owned(),
            )),
            Some(org) => OrgId::parse(org)
                .map(Some)
                .map_err(|message| ApiError::field("organization", message)),
        }
    }

    /// The one organization a list keyed by organization reads: the one a superuser names
    /// with `organization=`, else the caller's own.
    ///
    /// # Errors
    /// As [`Caller::organization_filter`].
    pub fn listed_org(
        &self,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Result<OrgId, ApiError> {
        Ok(self
            .organization_filter(params)?
            .unwrap_or_else(|| self.org.clone()))
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

/// The values of a list claim, element for element: a JSON array as it is; API Gateway's
/// flattening of an array (`[a b]`, elements joined by one space) split on single spaces; any
/// other string is one value. Nothing is trimmed or case-folded. A flattened list with an
/// empty element (an element with a leading or trailing space, or two spaces) cannot be split
/// back faithfully, so it yields nothing: `["admin "]` arrives as `[admin ]` and must not
/// read as `admin`.
///
/// What flattening cannot tell apart is a group whose name holds a space-separated role
/// value (`[Billing admin]`); deployments whose identity provider lets such groups exist set
/// namespaced role values (`herald:admin`, docs/guides/deploy.md).
pub fn parse_list_claim(value: &str) -> Vec<String> {
    if let Ok(items) = serde_json::from_str::<Vec<String>>(value) {
        return items;
    }
    let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) else {
        return vec![value.to_owned()];
    };
    if inner.is_empty() {
        return Vec::new();
    }
    let items: Vec<String> = inner.split(' ').map(str::to_owned).collect();
    if items.iter().any(String::is_empty) {
        return Vec::new();
    }
    items
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
        assert_eq!(parse_list_claim("admin, member"), vec!["admin, member"]);
        assert_eq!(parse_list_claim("admin"), vec!["admin"]);
        assert!(parse_list_claim("[]").is_empty());
        assert!(parse_list_claim("[admin ]").is_empty());
        assert!(parse_list_claim("[ admin]").is_empty());
    }

    #[test]
    fn organization_and_roles_come_from_claims() {
        let names = ClaimNames {
            org: "custom:org_id".to_owned(),
            roles: vec!["cognito:groups".to_owned()],
            ..ClaimNames::default()
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

    fn roles_of(pairs: &[(&str, &str)], names: &ClaimNames) -> BTreeSet<Role> {
        let mut all = vec![("sub", "u1")];
        all.extend_from_slice(pairs);
        if !pairs.iter().any(|(k, _)| *k == "org_id") {
            all.push(("org_id", "acme"));
        }
        Caller::from_claims(&claims(&all), names).unwrap().roles
    }

    #[test]
    fn role_values_match_exactly() {
        let names = ClaimNames::default();
        let none = BTreeSet::new();
        // Group names that merely contain a role word, in every shape a claim arrives in.
        for value in [
            "[Billing Admin]",
            r#"["Billing Admin"]"#,
            "Billing Admin",
            "[Not Superuser]",
            r#"["Not Superuser"]"#,
            "Not Superuser",
            "admin ",
            r#"["admin "]"#,
            "[admin ]",
            " admin",
            "ADMIN",
            "[ADMIN]",
            r#"["Admin"]"#,
            "admin,member",
        ] {
            assert_eq!(
                roles_of(&[("roles", value)], &names),
                none,
                "{value:?} grants no role"
            );
            assert_eq!(
                roles_of(&[("cognito:groups", value)], &names),
                none,
                "{value:?} grants no role"
            );
        }
        assert_eq!(
            roles_of(&[("roles", "[admin member]")], &names),
            BTreeSet::from([Role::Admin, Role::Member])
        );
        assert_eq!(
            roles_of(&[("cognito:groups", r#"["admin"]"#)], &names),
            BTreeSet::from([Role::Admin])
        );
        assert_eq!(
            roles_of(&[("roles", "member")], &names),
            BTreeSet::from([Role::Member])
        );
    }

    #[test]
    fn role_values_and_claims_come_from_the_environment() {
        let env = Env::from_map(
            [
                ("ORG_CLAIM", "custom:org_id"),
                ("ROLE_CLAIMS", "cognito:groups"),
                ("MEMBER_ROLE", "herald:member"),
                ("ADMIN_ROLE", "herald:admin"),
                ("SUPERUSER_ROLE", "herald:superuser"),
                ("PLATFORM_ORG", "ops"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        );
        let names = ClaimNames::from_env(&env);
        let roles = |pairs: &[(&str, &str)]| {
            let mut all = vec![("sub", "u1"), ("custom:org_id", "acme")];
            all.extend_from_slice(pairs);
            Caller::from_claims(&claims(&all), &names).unwrap().roles
        };
        assert_eq!(
            roles(&[("cognito:groups", "[herald:admin]")]),
            BTreeSet::from([Role::Admin])
        );
        // The plain names are no longer roles, and the unconfigured claim is not read.
        assert!(roles(&[("cognito:groups", "[admin]")]).is_empty());
        assert!(roles(&[("roles", "[herald:admin]")]).is_empty());
    }

    #[test]
    fn a_token_with_both_role_claims_holds_the_roles_of_both() {
        let names = ClaimNames::default();
        assert_eq!(
            roles_of(
                &[("roles", "[member]"), ("cognito:groups", "[admin]")],
                &names
            ),
            BTreeSet::from([Role::Admin, Role::Member])
        );
        // With one role claim configured, the other grants nothing, however high.
        let groups_only = ClaimNames {
            roles: vec!["cognito:groups".to_owned()],
            ..ClaimNames::default()
        };
        assert_eq!(
            roles_of(
                &[
                    ("org_id", "platform"),
                    ("roles", "[superuser]"),
                    ("cognito:groups", "[member]")
                ],
                &groups_only
            ),
            BTreeSet::from([Role::Member])
        );
    }

    #[test]
    fn superuser_is_honoured_only_for_the_platform_organization() {
        let names = ClaimNames::default();
        let platform = Caller::from_claims(
            &claims(&[
                ("sub", "u1"),
                ("org_id", "platform"),
                ("roles", "[superuser]"),
            ]),
            &names,
        )
        .unwrap();
        assert!(platform.is_superuser());
        let tenant = Caller::from_claims(
            &claims(&[("sub", "u1"), ("org_id", "acme"), ("roles", "[superuser]")]),
            &names,
        )
        .unwrap();
        assert!(!tenant.is_superuser());
        assert!(tenant.has(Role::Admin) && tenant.has(Role::Member));
        assert_eq!(tenant.roles, BTreeSet::from([Role::Admin]));
    }
}
