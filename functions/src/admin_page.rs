//! The template admin web page (SPEC §11): static HTML/JS served by the bundle. It holds
//! no data path of its own: the page calls the public HTTP API with the token the person
//! gives it.

use lambda_http::{Body, Request, Response};

use lambda_http::http::{HeaderValue, header};
use shared::http::{self, ApiError, Route, Router};

use crate::runtime::{BoxFuture, HttpFunction};

pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        pattern: "/admin",
    },
    Route {
        method: "GET",
        pattern: "/admin/{asset}",
    },
    Route {
        method: "GET",
        pattern: OPENAPI_PATH,
    },
];
const ROUTER: Router = Router::new(ROUTES);

/// Where the API's OpenAPI document is served (public, like the page: it holds no data).
pub const OPENAPI_PATH: &str = "/services/openapi.yaml";
/// The committed document, checked against every function's routes by the `openapi` tests.
const OPENAPI: &str = include_str!("../../docs/openapi.yaml");

/// (file name, content type, content), compiled into the binary.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../admin/index.html"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("../admin/admin.js"),
    ),
    (
        "admin.css",
        "text/css; charset=utf-8",
        include_str!("../admin/admin.css"),
    ),
    (
        "dashboard.html",
        "text/html; charset=utf-8",
        include_str!("../admin/dashboard.html"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../admin/dashboard.js"),
    ),
];

/// The page loads only its own files and calls only its own origin. Scripts come from
/// files (no inline script), so an injected `<script>` cannot run; inline styles stay
/// allowed for the email HTML shown in the sandboxed preview frame. No framing: the page
/// holds a bearer token, so it must not be clickjacked.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    connect-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
    frame-ancestors 'self'";

pub struct AdminPage;

impl HttpFunction for AdminPage {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

impl AdminPage {
    pub fn new() -> Self {
        Self
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond("admin-page", &request, || async { self.serve(&request) }).await
    }

    fn serve(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        let found = ROUTER.find(request.method().as_str(), request.uri().path())?;
        if found.route.pattern == OPENAPI_PATH {
            let mut response = Response::new(Body::Text(OPENAPI.to_owned()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/yaml"),
            );
            return Ok(response);
        }
        let name = found
            .params
            .get("asset")
            .map_or("index.html", String::as_str);
        let (_, content_type, content) = ASSETS
            .iter()
            .find(|(file, _, _)| *file == name)
            .ok_or(ApiError::NotFound)?;
        let mut response = Response::new(Body::Text((*content).to_owned()));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("content-security-policy", HeaderValue::from_static(CSP));
        headers.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        Ok(response)
    }
}

impl Default for AdminPage {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::http::StatusCode;

    fn get(path: &str) -> Result<Response<Body>, ApiError> {
        let request = lambda_http::http::Request::builder()
            .uri(path)
            .body(Body::Empty)
            .unwrap();
        AdminPage::new().serve(&request)
    }

    #[test]
    fn serves_every_file_the_page_links_with_its_type() {
        let page = get("/admin").unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let Body::Text(html) = page.body() else {
            panic!("the page is text")
        };
        for (path, content_type) in [
            ("/admin/admin.js", "text/javascript; charset=utf-8"),
            ("/admin/admin.css", "text/css; charset=utf-8"),
        ] {
            assert!(html.contains(path), "index.html links {path}");
            let asset = get(path).unwrap();
            assert_eq!(asset.headers()[header::CONTENT_TYPE], content_type);
            assert!(asset.headers().contains_key("content-security-policy"));
        }
    }

    #[test]
    fn serves_the_openapi_document() {
        let document = get(OPENAPI_PATH).unwrap();
        assert_eq!(document.headers()[header::CONTENT_TYPE], "application/yaml");
        let Body::Text(text) = document.body() else {
            panic!("the document is text")
        };
        assert!(text.starts_with("openapi: 3.1"));
    }

    #[test]
    fn unknown_files_are_not_found() {
        assert!(matches!(get("/admin/secrets.txt"), Err(ApiError::NotFound)));
    }
}
