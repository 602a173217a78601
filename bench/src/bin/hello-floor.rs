//! The cold-start floor: the smallest `lambda_http` function, built with the same profile
//! as Herald's functions, so each function's figures read as a ratio to what any Rust
//! HTTP Lambda costs.

use lambda_http::{Body, Error, Request, Response, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::run(service_fn(|_request: Request| async {
        Ok::<_, Error>(Response::new(Body::from("hello")))
    }))
    .await
}
