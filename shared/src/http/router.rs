//! A small path router for endpoint functions.
//!
//! API Gateway hands each function every request under its `{proxy+}` routes; the function
//! matches the path itself so that the trailing slash stays optional (SPEC §3) and the same
//! table drives the local runner's checks and the route-coverage test.

use std::collections::BTreeMap;

use super::ApiError;

/// One route: a method and a path pattern such as `/services/templates/{kind}/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub pattern: &'static str,
}

/// A matched route with its path parameters.
#[derive(Debug)]
pub struct RouteMatch {
    pub route: Route,
    pub params: BTreeMap<String, String>,
}

impl RouteMatch {
    /// A path parameter; every parameter named in the pattern is present.
    pub fn param(&self, name: &str) -> &str {
        self.params
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct Router {
    routes: &'static [Route],
}

impl Router {
    pub const fn new(routes: &'static [Route]) -> Self {
        Self { routes }
    }

    pub fn routes(&self) -> &'static [Route] {
        self.routes
    }

    /// Finds the route for a request: 404 when no pattern matches the path, 405 when one
    /// does but not with this method.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] or [`ApiError::MethodNotAllowed`].
    pub fn find(&self, method: &str, path: &str) -> Result<RouteMatch, ApiError> {
        let mut path_matched = false;
        for route in self.routes {
            if let Some(params) = match_path(route.pattern, path) {
                if route.method.eq_ignore_ascii_case(method) {
                    return Ok(RouteMatch {
                        route: *route,
                        params,
                    });
                }
                path_matched = true;
            }
        }
        Err(if path_matched {
            ApiError::MethodNotAllowed
        } else {
            ApiError::NotFound
        })
    }
}

/// Declares a function's operations as one typed table: an enum with, per operation, its
/// method, path pattern and the role it needs. The enum gets `ROUTES` (the table the local
/// runner, the OpenAPI drift tests and the isolation matrix read), `route()`, `role()` and
/// `find()`; the function dispatches with an exhaustive `match` on the operation, so a row
/// without a handler does not compile, and checks `role()` once before it.
///
/// ```
/// shared::operations! {
///     pub enum TopicOperation {
///         ListTopics = "GET" "/services/topics" Member,
///         CreateTopic = "POST" "/services/topics" Admin,
///     }
/// }
/// let (operation, _) = TopicOperation::find("POST", "/services/topics/").unwrap();
/// assert_eq!(operation, TopicOperation::CreateTopic);
/// assert_eq!(operation.role(), shared::auth::Role::Admin);
/// ```
#[macro_export]
macro_rules! operations {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $method:literal $pattern:literal $role:ident ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$variant_meta])* $variant ),+
        }

        impl $name {
            /// Every operation, in the table's order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];
            /// The routes, in the same order.
            pub const ROUTES: &'static [$crate::http::Route] =
                &[$($crate::http::Route { method: $method, pattern: $pattern }),+];
            /// Each route with the role it needs, in the same order.
            pub const TABLE: &'static [($crate::http::Route, $crate::auth::Role)] = &[$((
                $crate::http::Route { method: $method, pattern: $pattern },
                $crate::auth::Role::$role,
            )),+];

            pub const fn route(self) -> $crate::http::Route {
                match self {
                    $(Self::$variant => $crate::http::Route { method: $method, pattern: $pattern }),+
                }
            }

            /// The role a caller needs for this operation.
            pub const fn role(self) -> $crate::auth::Role {
                match self {
                    $(Self::$variant => $crate::auth::Role::$role),+
                }
            }

            /// What an `Idempotency-Key` is scoped to for this operation: its method and
            /// route.
            pub fn idempotency_scope(self) -> String {
                let route = self.route();
                format!("{} {}", route.method, route.pattern)
            }

            /// The operation a request names, its path parameters, and its caller, who is
            /// checked to hold the operation's role before anything else of the request is
            /// read.
            ///
            /// # Errors
            /// 404 or 405 for no such operation, 401 without a valid caller, 403 for a
            /// caller below the operation's role.
            pub fn authorize(
                request: &::lambda_http::Request,
                claims: &$crate::auth::ClaimNames,
            ) -> Result<(Self, $crate::http::RouteMatch, $crate::auth::Caller), $crate::http::ApiError> {
                let (operation, found) = Self::find(request.method().as_str(), request.uri().path())?;
                let caller = $crate::auth::Caller::from_request(request, claims)?;
                ::tracing::Span::current().record("org", caller.org.as_str());
                caller.require(operation.role())?;
                Ok((operation, found, caller))
            }

            /// The operation a request asks for, with its path parameters.
            ///
            /// # Errors
            /// [`$crate::http::ApiError::NotFound`] when no pattern matches the path,
            /// `MethodNotAllowed` when one does with another method.
            pub fn find(
                method: &str,
                path: &str,
            ) -> Result<(Self, $crate::http::RouteMatch), $crate::http::ApiError> {
                let found = $crate::http::Router::new(Self::ROUTES).find(method, path)?;
                let operation = Self::ALL
                    .iter()
                    .copied()
                    .find(|operation| operation.route() == found.route)
                    .ok_or($crate::http::ApiError::NotFound)?;
                Ok((operation, found))
            }
        }
    };
}

/// Matches `path` against `pattern`, ignoring one trailing slash on either.
pub fn match_path(pattern: &str, path: &str) -> Option<BTreeMap<String, String>> {
    let pattern_parts: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let path_parts: Vec<&str> = path
        .trim_end_matches('/')
        .trim_start_matches('/')
        .split('/')
        .collect();
    let mut params = BTreeMap::new();
    for (index, part) in pattern_parts.iter().enumerate() {
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix("+}")) {
            let rest = path_parts.get(index..)?.join("/");
            if rest.is_empty() {
                return None;
            }
            params.insert(name.to_owned(), rest);
            return Some(params);
        }
        let segment = path_parts.get(index)?;
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if segment.is_empty() {
                return None;
            }
            params.insert(name.to_owned(), (*segment).to_owned());
        } else if part != segment {
            return None;
        }
    }
    (pattern_parts.len() == path_parts.len()).then_some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &[Route] = &[
        Route {
            method: "GET",
            pattern: "/services/templates/{kind}",
        },
        Route {
            method: "GET",
            pattern: "/services/templates/{kind}/{id}",
        },
        Route {
            method: "POST",
            pattern: "/services/templates/{kind}/{id}/preview",
        },
    ];

    #[test]
    fn trailing_slash_is_optional() {
        let router = Router::new(ROUTES);
        for path in ["/services/templates/email", "/services/templates/email/"] {
            let found = router.find("GET", path).unwrap();
            assert_eq!(found.param("kind"), "email");
        }
        let found = router
            .find("POST", "/services/templates/sms/01ABC/preview/")
            .unwrap();
        assert_eq!(found.param("id"), "01ABC");
    }

    #[test]
    fn unknown_path_is_404_and_wrong_method_405() {
        let router = Router::new(ROUTES);
        assert!(matches!(
            router.find("GET", "/services/other"),
            Err(ApiError::NotFound)
        ));
        assert!(matches!(
            router.find("DELETE", "/services/templates/email"),
            Err(ApiError::MethodNotAllowed)
        ));
    }

    #[test]
    fn greedy_parameter_takes_the_rest() {
        let params = match_path(
            "/services/templates/{proxy+}",
            "/services/templates/email/1/preview/",
        )
        .unwrap();
        assert_eq!(params["proxy"], "email/1/preview");
        assert!(match_path("/services/templates/{proxy+}", "/services/templates/").is_none());
    }
}
