//! What every function's `main` does: start logging, read the environment, build the AWS
//! clients once, then hand the handler to the Lambda runtime for its event type.
//!
//! Init does no network I/O, so a cold start reaches its first poll without a round trip
//! (issue 10): building a client does not connect, the region comes from `AWS_REGION`
//! (always set in Lambda), and every constructor is a plain `fn` — secrets, and the
//! clients and stores built from them, are read by the first invocation that needs them
//! (`shared::config::OnFirstUse`). AWS service clients are built on first use too
//! (`shared::aws::LazyClient`).
//!
//! Every `main` runs on tokio's current-thread runtime: Lambda sends a process one
//! invocation at a time, and below 1,769 MB a function has less than one vCPU, so worker
//! threads would only add thread start-up to every cold start. The concurrency inside an
//! invocation (a batch's messages, a report's queries) is I/O and runs on one thread.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::aws::AwsClients;
use shared::config::Env;

use crate::registry::{HttpFunction, ScheduledFunction, SqsFunction};

/// Logging, environment and AWS clients, once per cold start.
pub async fn cold_start() -> (AwsClients, Env) {
    shared::logging::init_lambda();
    let env = Env::from_process();
    let aws = AwsClients::load(&env).await;
    (aws, env)
}

/// # Errors
/// When the runtime API fails.
pub async fn serve_http(function: impl HttpFunction) -> Result<(), Error> {
    let function = &function;
    lambda_http::run(lambda_http::service_fn(move |request| async move {
        Ok::<_, Error>(function.call(request).await)
    }))
    .await
}

/// # Errors
/// When the runtime API fails.
pub async fn serve_sqs(function: impl SqsFunction) -> Result<(), Error> {
    let function = &function;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let id = event.context.request_id;
        let response = shared::logging::with_lambda_request_id(id, function.call(event.payload));
        Ok::<_, Error>(response.await)
    }))
    .await
}

/// # Errors
/// When the runtime API fails.
pub async fn serve_scheduled(function: impl ScheduledFunction) -> Result<(), Error> {
    let function = &function;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent>| async move {
            let id = event.context.request_id;
            shared::logging::with_lambda_request_id(id, function.call(event.payload))
                .await
                .map_err(Error::from)
        },
    ))
    .await
}
