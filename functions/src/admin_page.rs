//! The template admin web page (SPEC §11): static HTML/JS served by the bundle. It holds
//! no data path of its own: the page calls the public HTTP API with the token the person
//! gives it.

use lambda_http::{Body, Request, Response};

use lambda_http::http::{HeaderValue, header};
use shared::http::{self, ApiError, Route, Router};

use crate::registry::{BoxFuture, HttpFunction};

pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        pattern: "/admin",
    },
    Route {
        method: "GET",
        pattern: "/admin/{asset}",
    },
];
const ROUTER: Router = Router::new(ROUTES);

/// (file name, content type, content), compiled into the binary.
const ASSETS: &[(&str, &str, &str)] = &[(
    "index.html",
    "text/html; charset=utf-8",
    include_str!("../admin/index.html"),
)];

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
        headers.insert(
            "content-security-policy",
            HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; connect-src 'self'"),
        );
        Ok(response)
    }
}

impl Default for AdminPage {
    fn default() -> Self {
        Self::new()
    }
}
