//! A Lambda Runtime API on loopback that serves one invocation, recording when the function
//! first asked for work (the end of its init) and when it answered.
//!
//! Only what a function binary calls: `GET …/invocation/next`, `POST …/{id}/response`,
//! `POST …/{id}/error` and `POST …/init/error`
//! (<https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::sync::watch;

pub const REQUEST_ID: &str = "coldstart-0001";

/// What happened during one cold start.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// The first `next` poll: the function finished its init.
    pub ready_at: Option<Instant>,
    /// The invocation's response (or error) arrived.
    pub answered_at: Option<Instant>,
    /// The function reported an init or invocation error.
    pub error: Option<String>,
}

struct Shared {
    event: Vec<u8>,
    timeline: Mutex<Timeline>,
    changed: watch::Sender<u32>,
}

/// A runtime API serving `event` once; later `next` polls wait forever (the process is
/// killed by then).
pub struct RuntimeApi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start(event: Vec<u8>) -> anyhow::Result<Self> {
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            event,
            timeline: Mutex::new(Timeline::default()),
            changed,
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(error))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            shared,
            server,
        })
    }

    /// Waits until the invocation is answered (or failed), at most `limit`.
    pub async fn wait_answered(&self, limit: std::time::Duration) -> Timeline {
        let mut changed = self.shared.changed.subscribe();
        let _ = tokio::time::timeout(limit, async {
            loop {
                {
                    let timeline = self.shared.timeline();
                    if timeline.answered_at.is_some() || timeline.error.is_some() {
                        return;
                    }
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.shared.timeline().clone()
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Shared {
    /// The timeline; a panicked holder cannot leave it half-written (plain field stores).
    fn timeline(&self) -> std::sync::MutexGuard<'_, Timeline> {
        self.timeline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn record(shared: &Shared, update: impl FnOnce(&mut Timeline)) {
    update(&mut shared.timeline());
    shared.changed.send_modify(|n| *n += 1);
}

async fn next(State(shared): State<Arc<Shared>>) -> axum::response::Response {
    let first = {
        let mut timeline = shared.timeline();
        let first = timeline.ready_at.is_none();
        if first {
            timeline.ready_at = Some(Instant::now());
        }
        first
    };
    shared.changed.send_modify(|n| *n += 1);
    if !first {
        std::future::pending::<()>().await;
    }
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        + 30_000;
    let mut headers = HeaderMap::new();
    headers.insert(
        "Lambda-Runtime-Aws-Request-Id",
        HeaderValue::from_static(REQUEST_ID),
    );
    headers.insert(
        "Lambda-Runtime-Deadline-Ms",
        HeaderValue::from(u64::try_from(deadline).unwrap_or(u64::MAX)),
    );
    headers.insert(
        "Lambda-Runtime-Invoked-Function-Arn",
        HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:coldstart"),
    );
    headers.insert(
        "Lambda-Runtime-Trace-Id",
        HeaderValue::from_static("Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Sampled=0"),
    );
    headers.insert("Content-Type", HeaderValue::from_static("application/json"));
    (StatusCode::OK, headers, shared.event.clone()).into_response()
}

async fn response(State(shared): State<Arc<Shared>>) -> StatusCode {
    record(&shared, |t| t.answered_at = Some(Instant::now()));
    StatusCode::ACCEPTED
}

async fn error(State(shared): State<Arc<Shared>>, body: String) -> StatusCode {
    record(&shared, |t| {
        t.answered_at = Some(Instant::now());
        t.error = Some(body);
    });
    StatusCode::ACCEPTED
}
