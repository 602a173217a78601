//! The local runner: the whole bundle on one local address, without Docker (SPEC §14).
//!
//! It reads `template.yaml`, creates the declared resources on the local AWS endpoint
//! (moto), builds every function with the environment the template gives it, and serves the
//! HTTP API routes with a local JWT authorizer. Handlers are the code Lambda runs, called
//! in-process with the same event payloads. Queue pollers, schedules, function URLs and the
//! provider sandbox plug in beside [`http_api`] as further event sources.

pub mod auth;
pub mod aws_limits;
pub mod emf;
pub mod http_api;
pub mod iam;
pub mod index_lag;
pub mod invocation;
pub mod report_schedules;
pub mod resources;
pub mod sandbox;
pub mod sdk_counters;
pub mod sources;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use functions::registry;
use functions::runtime::Handler;
use shared::aws::AwsClients;
use shared::config::Env;

use crate::auth::LocalAuth;
use crate::http_api::{FunctionUrl, HttpApi, HttpRoute};
use crate::index_lag::IndexLag;
use crate::resources::ResourceNames;
use crate::sandbox::sendgrid::SendGridSandbox;
use crate::sandbox::stripe::StripeSandbox;
use crate::sandbox::twilio::TwilioSandbox;
use crate::sdk_counters::SdkCallCounter;
use crate::sources::{QueuePoller, Schedule};
use crate::template::{BundleTemplate, resolve};

/// Process variables every local function inherits: how to reach local AWS, and logging.
const INHERITED: &[&str] = &[
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "RUST_LOG",
];

#[derive(Debug, Clone)]
pub struct BundleOptions {
    pub template: PathBuf,
    /// Prefix of every local resource name, so bundles can share one moto server.
    pub prefix: String,
    pub bind: SocketAddr,
    pub jwt_secret: String,
    /// The runner's environment: AWS access, and real provider keys (which switch the
    /// sandbox off for that provider).
    pub env: BTreeMap<String, String>,
    /// Variables every function gets on top of the template's (tests tune retries here).
    pub overrides: BTreeMap<String, String>,
    /// Poll the queues (tests that drive pollers by hand turn this off).
    pub poll_queues: bool,
    /// Fire `rate(...)` schedules on their own (otherwise only `POST /local/schedules/…`).
    pub run_schedules: bool,
    /// Stand in for providers whose keys are not in `env` (off: they are unconfigured).
    pub sandbox: bool,
    /// How long an item written by a function stays missing from index queries, as on AWS
    /// ([`index_lag`]); `HERALD_LOCAL_GSI_LAG_MS`, zero (off) unless set.
    pub index_lag: std::time::Duration,
    /// A function's `Timeout` other than the template's, by binary name: tests shorten one
    /// to see what its callers get when Lambda stops it.
    pub timeouts: BTreeMap<String, std::time::Duration>,
}

impl BundleOptions {
    /// Options for `template` with the current process environment as the base.
    pub fn new(template: impl Into<PathBuf>, prefix: impl Into<String>) -> Self {
        Self {
            template: template.into(),
            prefix: prefix.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            jwt_secret: auth::DEFAULT_SECRET.to_owned(),
            env: std::env::vars().collect(),
            overrides: BTreeMap::new(),
            poll_queues: true,
            run_schedules: true,
            sandbox: true,
            index_lag: std::time::Duration::from_millis(
                std::env::var("HERALD_LOCAL_GSI_LAG_MS")
                    .ok()
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(0),
            ),
            timeouts: BTreeMap::new(),
        }
    }
}

/// A running bundle: its address, its resources, its token minter and sandboxes.
pub struct RunningBundle {
    pub addr: SocketAddr,
    pub names: ResourceNames,
    pub auth: LocalAuth,
    pub aws: AwsClients,
    /// The SendGrid stand-in, unless real SendGrid keys were given.
    pub sendgrid: Option<Arc<SendGridSandbox>>,
    /// The Stripe stand-in, unless a real Stripe key was given.
    pub stripe: Option<Arc<StripeSandbox>>,
    /// The Twilio stand-in, unless real Twilio credentials were given.
    pub twilio: Option<Arc<TwilioSandbox>>,
    pub pollers: Vec<Arc<QueuePoller>>,
    /// The AWS operations the functions made (not the runner's own polling and setup).
    pub sdk_calls: Arc<SdkCallCounter>,
    pub schedules: Arc<HashMap<String, Schedule>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningBundle {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The local name or URL of a resource (what `!Ref` gives).
    pub fn resource(&self, logical_id: &str) -> &str {
        self.names
            .get(logical_id)
            .map_or("", |r| r.reference.as_str())
    }

    /// Waits until the server stops (it does not on its own).
    pub async fn wait(mut self) {
        if let Some(server) = self.tasks.first_mut() {
            let _ = server.await;
        }
    }
}

impl Drop for RunningBundle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the bundle: resources, functions, HTTP server, queue pollers, schedules.
///
/// # Errors
/// When the template cannot be read, a resource cannot be created, a function cannot be
/// built or the address cannot be bound.
pub async fn start(options: BundleOptions) -> anyhow::Result<RunningBundle> {
    emf::install(false);
    let template = BundleTemplate::load(&options.template)?;
    let base_env = Env::from_map(options.env.clone().into_iter().collect());
    base_env
        .required("AWS_ENDPOINT_URL")
        .context("the local runner needs AWS_ENDPOINT_URL (the moto server)")?;
    let aws = AwsClients::load(&base_env).await;

    // Bind first: the sandboxes and webhooks need the address.
    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .with_context(|| format!("binding {}", options.bind))?;
    let addr = listener.local_addr()?;
    let base_url = format!("http://{addr}");

    let mut overrides = BTreeMap::from([(
        "EMAIL_DEFAULT_FROM".to_owned(),
        "no-reply@herald.local".to_owned(),
    )]);
    let mut secret_values = BTreeMap::new();
    let sendgrid = if base_env.optional("SENDGRID_API_KEY").is_some() {
        for name in ["SENDGRID_API_KEY", "SENDGRID_WEBHOOK_PUBLIC_KEY"] {
            if let Some(value) = base_env.optional(name) {
                secret_values.insert(name.to_owned(), value);
            }
        }
        tracing::info!("SENDGRID_API_KEY is set: sending through the real SendGrid");
        None
    } else if !options.sandbox {
        None
    } else {
        let sandbox = SendGridSandbox::new(
            format!("{base_url}/hooks/sendgrid-webhook"),
            format!(
                "{base_url}/hooks/unsubscribe/{}",
                functions::unsubscribe::INBOUND_PATH
            ),
        );
        secret_values.extend(sandbox.secret_values());
        // The sandbox stands in for Inbound Parse too: the links offer a mailto: whose mail
        // it posts to the unsubscribe function (`_mail_reply`).
        overrides.insert(
            "UNSUBSCRIBE_MAILBOX".to_owned(),
            "unsubscribe@parse.sandbox.test".to_owned(),
        );
        overrides.insert(
            "SENDGRID_BASE_URL".to_owned(),
            format!("{base_url}/sandbox/sendgrid"),
        );
        Some(sandbox)
    };
    let stripe = if base_env.optional("STRIPE_SECRET_KEY").is_some() {
        for name in ["STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRETS"] {
            if let Some(value) = base_env.optional(name) {
                secret_values.insert(name.to_owned(), value);
            }
        }
        tracing::info!("STRIPE_SECRET_KEY is set: charging through the real Stripe");
        None
    } else if !options.sandbox {
        None
    } else {
        let sandbox =
            StripeSandbox::new(format!("{base_url}/hooks/stripe-webhook"), base_url.clone());
        secret_values.extend(sandbox.secret_values());
        overrides.insert(
            "STRIPE_BASE_URL".to_owned(),
            format!("{base_url}/sandbox/stripe"),
        );
        Some(sandbox)
    };
    // The one-click unsubscribe links point at the unsubscribe function's URL (on AWS
    // `!GetAtt UnsubscribeFunctionUrl.FunctionUrl`).
    overrides.insert(
        "UNSUBSCRIBE_URL".to_owned(),
        format!("{base_url}/hooks/unsubscribe/"),
    );
    // Twilio signs callbacks over this URL and the worker sends it as StatusCallback.
    let twilio_webhook_url = base_env
        .optional("TWILIO_WEBHOOK_URL")
        .unwrap_or_else(|| format!("{base_url}/hooks/twilio-webhook/"));
    overrides.insert("TWILIO_WEBHOOK_URL".to_owned(), twilio_webhook_url.clone());
    let twilio = if base_env.optional("TWILIO_ACCOUNT_SID").is_some() {
        for name in ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM"] {
            if let Some(value) = base_env.optional(name) {
                secret_values.insert(name.to_owned(), value);
            }
        }
        tracing::info!("TWILIO_ACCOUNT_SID is set: sending through the real Twilio");
        None
    } else if !options.sandbox {
        None
    } else {
        let sandbox = TwilioSandbox::new(twilio_webhook_url);
        secret_values.extend(sandbox.secret_values());
        overrides.insert(
            "TWILIO_BASE_URL".to_owned(),
            format!("{base_url}/sandbox/twilio"),
        );
        Some(sandbox)
    };
    if let Some(uri) = base_env.optional("MONGODB_URI") {
        secret_values.insert("MONGODB_URI".to_owned(), uri);
    }
    overrides.extend(options.overrides.clone());

    let names = resources::create_all(&template, &aws, &options.prefix, &secret_values).await?;
    let org_claim = template
        .parameter_defaults
        .get("OrgClaim")
        .cloned()
        .unwrap_or_else(|| "org_id".to_owned());
    let auth = LocalAuth::new(options.jwt_secret.clone(), org_claim);

    let mut routes = Vec::new();
    let mut function_urls = HashMap::new();
    let mut pollers = Vec::new();
    let mut schedules = HashMap::new();
    let sdk_calls = SdkCallCounter::new();
    // The functions' clients: counted, with lagging indexes and AWS's size limits.
    let function_aws = aws_limits::instrument(
        &IndexLag::new(options.index_lag).instrument(&sdk_calls.instrument(&aws)),
    );
    let iam = iam::LocalIam::new(&template, &names)?;
    for function in &template.functions {
        let vars = function_environment(function, &template, &names, &base_env, &overrides);
        if let Some(namespace) = vars.get("METRICS_NAMESPACE") {
            shared::metrics::set_namespace(namespace);
        }
        let function_aws = iam.instrument(&function.logical_id, &function_aws);
        let timeout = options
            .timeouts
            .get(&function.binary)
            .copied()
            .unwrap_or(function.timeout);
        let handler = registry::load(&function.binary, &function_aws, &Env::from_map(vars))
            .with_context(|| format!("building {}", function.logical_id))?;
        match handler {
            Handler::Http(http_function) => {
                for route in &function.http_routes {
                    routes.push(HttpRoute {
                        method: route.method.clone(),
                        path: route.path.clone(),
                        authorized: route.authorized,
                        function: Arc::clone(&http_function),
                        timeout,
                    });
                }
                if function.function_url {
                    function_urls.insert(
                        function.binary.clone(),
                        FunctionUrl {
                            function: http_function,
                            timeout,
                        },
                    );
                }
            }
            Handler::Sqs(sqs_function) => {
                for source in &function.queues {
                    let queue = names.get(&source.queue).with_context(|| {
                        format!("{}: no queue {}", function.logical_id, source.queue)
                    })?;
                    pollers.push(Arc::new(QueuePoller {
                        function: function.binary.clone(),
                        queue_url: queue.reference.clone(),
                        queue_arn: queue.attributes.get("Arn").cloned().unwrap_or_default(),
                        batch_size: source.batch_size,
                        report_failures: source.report_failures,
                        handler: Arc::clone(&sqs_function),
                        timeout,
                        sqs: aws.sqs.clone(),
                    }));
                }
            }
            Handler::Scheduled(scheduled) => {
                for expression in &function.schedules {
                    schedules.insert(
                        function.binary.clone(),
                        Schedule {
                            function: function.binary.clone(),
                            expression: expression.clone(),
                            handler: Arc::clone(&scheduled),
                            timeout,
                        },
                    );
                }
            }
        }
    }

    let schedules = Arc::new(schedules);
    let api = Arc::new(HttpApi {
        routes,
        function_urls,
        auth: auth.clone(),
    });
    let gateway = axum::Router::new()
        .fallback(http_api::serve)
        .with_state(api);
    let mut app = axum::Router::new()
        .route("/local/token", get(mint_token).with_state(auth.clone()))
        .route(
            "/local/schedules/{function}",
            post(fire_schedule).with_state(Arc::clone(&schedules)),
        )
        .route(
            "/local/queues/{logical_id}",
            post(put_on_queue).with_state((aws.clone(), Arc::new(names.clone()))),
        )
        .route(
            "/local/report-schedules/{name}",
            post(report_schedules::fire_schedule).with_state(Arc::new(
                report_schedules::ScheduleFirer::new(&aws, &template, &names),
            )),
        );
    if let Some(sandbox) = &sendgrid {
        app = app.merge(sandbox.router());
    }
    if let Some(sandbox) = &stripe {
        app = app.merge(sandbox.router());
    }
    if let Some(sandbox) = &twilio {
        app = app.merge(sandbox.router());
    }
    let app = app.fallback_service(gateway);
    let mut tasks = vec![tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "local HTTP server stopped");
        }
    })];
    if options.poll_queues {
        for poller in &pollers {
            let poller = Arc::clone(poller);
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Err(error) = poller.poll_once().await {
                        tracing::warn!(
                            function = poller.function,
                            error = format!("{error:#}"),
                            "queue poll failed"
                        );
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }));
        }
    }
    if options.run_schedules {
        tasks.extend(schedules.values().cloned().filter_map(Schedule::spawn));
    }
    Ok(RunningBundle {
        addr,
        names,
        auth,
        aws,
        sendgrid,
        stripe,
        twilio,
        pollers,
        sdk_calls,
        schedules,
        tasks,
    })
}

/// The environment a function gets, as Lambda would give it: the template's variables with
/// local resource names, `overrides` on top, and the process variables in [`INHERITED`].
pub fn function_environment(
    function: &template::FunctionDef,
    template: &BundleTemplate,
    names: &ResourceNames,
    base_env: &Env,
    overrides: &BTreeMap<String, String>,
) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = INHERITED
        .iter()
        .filter_map(|name| Some(((*name).to_owned(), base_env.optional(name)?)))
        .collect();
    for (name, value) in &function.environment {
        if let Some(value) = resolve(value, names, &template.parameter_defaults) {
            vars.insert(name.clone(), value);
        }
    }
    vars.extend(overrides.clone());
    vars.insert(
        "AWS_LAMBDA_FUNCTION_NAME".to_owned(),
        function.binary.clone(),
    );
    vars
}

/// `POST /local/schedules/<function>` — run a scheduled function now.
async fn fire_schedule(
    State(schedules): State<Arc<HashMap<String, Schedule>>>,
    Path(function): Path<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match schedules.get(&function) {
        None => (
            axum::http::StatusCode::NOT_FOUND,
            format!("no schedule for {function}\n"),
        )
            .into_response(),
        Some(schedule) => match schedule.fire().await {
            Ok(result) => axum::Json(result).into_response(),
            Err(error) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, error).into_response(),
        },
    }
}

/// `POST /local/queues/<LogicalId>` — puts the body on that queue as one message: what a
/// DLQ holds after `maxReceiveCount` failed receives, put there by hand (the dashboard's
/// browser test fills a DLQ this way; there is no such route on AWS).
async fn put_on_queue(
    State((aws, names)): State<(AwsClients, Arc<ResourceNames>)>,
    Path(logical_id): Path<String>,
    body: String,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let Some(queue) = names
        .get(&logical_id)
        .filter(|r| r.reference.starts_with("http"))
    else {
        return (StatusCode::NOT_FOUND, format!("no queue {logical_id}\n")).into_response();
    };
    let sent = aws
        .sqs
        .send_message()
        .queue_url(&queue.reference)
        .message_body(body)
        .send()
        .await;
    match sent {
        Ok(output) => {
            axum::Json(serde_json::json!({"message_id": output.message_id()})).into_response()
        }
        Err(error) => (StatusCode::BAD_GATEWAY, format!("{error:?}\n")).into_response(),
    }
}

#[derive(Debug, serde::Deserialize)]
struct TokenQuery {
    org: Option<String>,
    role: Option<String>,
    sub: Option<String>,
}

/// `GET /local/token?org=acme&role=admin` — a token for local use (there is no such route
/// in AWS: real tokens come from the identity provider).
async fn mint_token(
    State(auth): State<LocalAuth>,
    Query(query): Query<TokenQuery>,
) -> axum::response::Response {
    let roles: Vec<&str> = query
        .role
        .as_deref()
        .unwrap_or("admin")
        .split(',')
        .collect();
    let sub = query.sub.as_deref().unwrap_or("local-user");
    match auth.mint(
        sub,
        Some(query.org.as_deref().unwrap_or("acme")),
        &roles,
        12 * 3600,
    ) {
        Ok(token) => axum::response::IntoResponse::into_response(token),
        Err(error) => http_api::into_axum(shared::http::ApiError::internal(error).into_response()),
    }
}
