//! Fires EventBridge Scheduler schedules by hand. moto stores schedules but never runs
//! them, so `POST /local/report-schedules/<name>` does what Scheduler would at the
//! schedule's time: it reads the schedule's target and sends its input to the target
//! queue (found by ARN among the template's queues).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shared::aws::{SchedulerClient, SqsClient};

use crate::resources::ResourceNames;

pub struct ScheduleFirer {
    scheduler: SchedulerClient,
    sqs: SqsClient,
    /// The template's schedule groups, by local name.
    groups: Vec<String>,
    /// Queue URL by queue ARN.
    queues: HashMap<String, String>,
}

impl ScheduleFirer {
    pub fn new(
        aws: &shared::aws::AwsClients,
        template: &crate::template::BundleTemplate,
        names: &ResourceNames,
    ) -> Self {
        let groups = template
            .resources
            .iter()
            .filter(|(_, (kind, _))| kind == "AWS::Scheduler::ScheduleGroup")
            .filter_map(|(id, _)| names.get(id).map(|r| r.reference.clone()))
            .collect();
        let queues = names
            .values()
            .filter_map(|r| {
                let arn = r.attributes.get("Arn")?;
                arn.starts_with("arn:aws:sqs:")
                    .then(|| (arn.clone(), r.reference.clone()))
            })
            .collect();
        Self {
            scheduler: aws.scheduler.clone(),
            sqs: aws.sqs.clone(),
            groups,
            queues,
        }
    }

    /// Sends the named schedule's target input to its queue, as Scheduler would.
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown schedule, `BAD_GATEWAY` when its target is not a local
    /// queue or SQS refuses the message.
    pub async fn fire(&self, name: &str) -> Result<serde_json::Value, (StatusCode, String)> {
        for group in &self.groups {
            let Ok(schedule) = self
                .scheduler
                .get_schedule()
                .group_name(group)
                .name(name)
                .send()
                .await
            else {
                continue;
            };
            let target = schedule.target.ok_or((
                StatusCode::BAD_GATEWAY,
                "the schedule has no target\n".to_owned(),
            ))?;
            let queue = self.queues.get(target.arn()).ok_or((
                StatusCode::BAD_GATEWAY,
                format!("target {} is not a local queue\n", target.arn()),
            ))?;
            let sent = self
                .sqs
                .send_message()
                .queue_url(queue)
                .message_body(target.input().unwrap_or("{}"))
                .send()
                .await
                .map_err(|e| {
                    (
                        StatusCode::BAD_GATEWAY,
                        format!("{}\n", aws_sdk_sqs::error::DisplayErrorContext(&e)),
                    )
                })?;
            return Ok(serde_json::json!({
                "schedule": name,
                "group": group,
                "queue": queue,
                "message_id": sent.message_id,
            }));
        }
        Err((StatusCode::NOT_FOUND, format!("no schedule named {name}\n")))
    }
}

/// `POST /local/report-schedules/<name>` — run a Scheduler schedule now.
pub async fn fire_schedule(
    State(firer): State<Arc<ScheduleFirer>>,
    Path(name): Path<String>,
) -> Response {
    match firer.fire(&name).await {
        Ok(result) => axum::Json(result).into_response(),
        Err((status, message)) => (status, message).into_response(),
    }
}
