//! Report schedules: an EventBridge Scheduler schedule per Herald schedule, whose runs put
//! a `ReportScheduleRun` job on the generate queue; list and delete.

use chrono::Utc;
use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use shared::auth::Caller;
use shared::domain::email::EmailAddress;
use shared::domain::{OrgId, RecordId};
use shared::http::{self, ApiError, FieldErrorCollector, PageRequest};
use shared::queue::{Envelope, Job};
use shared::reports::{ReportFormat, ReportKind, ReportSchedule};

use super::reports::MAX_PERIOD_DAYS;
use super::{ReportsApi, parse_format, parse_kind};

/// Addresses one schedule emails its link to.
const MAX_RECIPIENTS: usize = 50;
/// Report schedules an organization may keep: each run aggregates, renders and emails, so
/// schedules are a cost the platform bounds (issue 17).
pub const MAX_SCHEDULES_PER_ORG: usize = 25;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleRequest {
    expression: String,
    #[serde(rename = "type")]
    kind: String,
    format: String,
    #[serde(default = "default_period")]
    period_days: u32,
    recipients: Vec<String>,
}

fn default_period() -> u32 {
    7
}

/// A schedule as a request asks for it, checked.
struct NewSchedule {
    expression: String,
    kind: ReportKind,
    format: ReportFormat,
    period_days: u32,
    recipients: Vec<EmailAddress>,
}

impl TryFrom<ScheduleRequest> for NewSchedule {
    type Error = ApiError;

    fn try_from(body: ScheduleRequest) -> Result<Self, ApiError> {
        let mut errors = FieldErrorCollector::new();
        let kind = parse_kind(&body.kind, &mut errors);
        let format = parse_format(&body.format, &mut errors);
        let expression = body.expression.trim().to_owned();
        let well_formed = (expression.starts_with("cron(") || expression.starts_with("rate("))
            && expression.ends_with(')')
            && expression.len() <= 256;
        if !well_formed {
            errors.add("expression", "must be a cron(...) or rate(...) expression");
        } else if let Err(message) = at_most_hourly(&expression) {
            errors.add("expression", message);
        }
        if !(1..=MAX_PERIOD_DAYS as u32).contains(&body.period_days) {
            errors.add(
                "period_days",
                format!("must be between 1 and {MAX_PERIOD_DAYS}"),
            );
        }
        if body.recipients.is_empty() || body.recipients.len() > MAX_RECIPIENTS {
            errors.add(
                "recipients",
                format!("must hold 1 to {MAX_RECIPIENTS} addresses"),
            );
        }
        let recipients = body
            .recipients
            .iter()
            .enumerate()
            .filter_map(|(index, address)| {
                EmailAddress::parse(address)
                    .map_err(|m| errors.add(format!("recipients[{index}]"), m))
                    .ok()
            })
            .collect();
        errors.finish()?;
        let (Some(kind), Some(format)) = (kind, format) else {
            return Err(ApiError::internal(anyhow::anyhow!(
                "a checked schedule lacks its type or format"
            )));
        };
        Ok(Self {
            expression,
            kind,
            format,
            period_days: body.period_days,
            recipients,
        })
    }
}

/// A schedule runs at most once an hour: `rate(n minutes)` needs n ≥ 60, and a
/// `cron(...)` its minutes field one fixed minute (EventBridge Scheduler's cron has six
/// fields, minutes first: "Schedule types on EventBridge Scheduler", Scheduler User Guide).
fn at_most_hourly(expression: &str) -> Result<(), String> {
    let too_often = || {
        "runs at most once an hour (e.g. rate(1 hour), rate(1 day) or cron(0 8 * * ? *))".to_owned()
    };
    if let Some(rate) = expression
        .strip_prefix("rate(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let mut parts = rate.split_whitespace();
        let (Some(value), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err("must be rate(<value> <unit>)".to_owned());
        };
        let Ok(value) = value.parse::<u64>() else {
            return Err("must be rate(<value> <unit>) with a whole number".to_owned());
        };
        let minutes = match unit {
            "minute" | "minutes" => value,
            "hour" | "hours" => value.saturating_mul(60),
            "day" | "days" => value.saturating_mul(1440),
            _ => return Err("a rate's unit is minutes, hours or days".to_owned()),
        };
        return if minutes >= 60 {
            Ok(())
        } else {
            Err(too_often())
        };
    }
    if let Some(cron) = expression
        .strip_prefix("cron(")
        .and_then(|c| c.strip_suffix(')'))
    {
        let fields: Vec<&str> = cron.split_whitespace().collect();
        if fields.len() != 6 {
            return Err("a cron expression has six fields: minutes hours day-of-month month day-of-week year".to_owned());
        }
        return match fields[0].parse::<u32>() {
            Ok(minute) if minute < 60 => Ok(()),
            _ => Err(too_often()),
        };
    }
    Err("must be a cron(...) or rate(...) expression".to_owned())
}

impl ReportsApi {
    pub(super) async fn create_schedule(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let new = NewSchedule::try_from(http::parse_json::<ScheduleRequest>(request)?)?;
        if self.schedule_count(&caller.org).await? >= MAX_SCHEDULES_PER_ORG {
            return Err(ApiError::BadRequest(format!(
                "an organization may have at most {MAX_SCHEDULES_PER_ORG} report schedules; delete one first"
            )));
        }
        // Every run emails its link: without an email provider a schedule cannot work.
        if !*self
            .email_configured
            .get()
            .await
            .map_err(ApiError::internal)?
        {
            return Err(ApiError::ProviderNotConfigured("SendGrid"));
        }
        let id = RecordId::new().to_string();
        let schedule = ReportSchedule {
            schedule_name: format!("herald-report-{id}"),
            id: id.clone(),
            org_id: caller.org.clone(),
            expression: new.expression,
            kind: new.kind,
            format: new.format,
            period_days: new.period_days,
            recipients: new.recipients,
            created_by: caller.user.clone(),
            created_at: Utc::now(),
        };
        self.create_scheduler_schedule(&schedule).await?;
        if let Err(error) = self.reports.create_schedule(&schedule).await {
            self.remove_scheduler_schedule(&schedule.schedule_name)
                .await;
            return Err(error.into());
        }
        let detail = json!({"type": schedule.kind, "format": schedule.format, "expression": schedule.expression});
        let resource = format!("report-schedule/{id}");
        self.audit(request, caller, "report.schedule.create", resource, detail)
            .await;
        http::json(201, &schedule.to_json())
    }

    /// The Scheduler schedule whose runs put the schedule's job on the generate queue.
    async fn create_scheduler_schedule(&self, schedule: &ReportSchedule) -> Result<(), ApiError> {
        let job = Job::ReportScheduleRun {
            schedule_id: schedule.id.clone(),
        };
        let input = serde_json::to_string(&Envelope::new(schedule.org_id.clone(), job))
            .map_err(ApiError::internal)?;
        let target = aws_sdk_scheduler::types::Target::builder()
            .arn(&self.generate_queue_arn)
            .role_arn(&self.schedule_role_arn)
            .input(input)
            .build()
            .map_err(ApiError::internal)?;
        let window = aws_sdk_scheduler::types::FlexibleTimeWindow::builder()
            .mode(aws_sdk_scheduler::types::FlexibleTimeWindowMode::Off)
            .build()
            .map_err(ApiError::internal)?;
        let description = format!(
            "Herald {} report for {}",
            schedule.kind.as_str(),
            schedule.org_id
        );
        let created = self
            .scheduler
            .create_schedule()
            .name(&schedule.schedule_name)
            .group_name(&self.schedule_group)
            .schedule_expression(&schedule.expression)
            .schedule_expression_timezone("UTC")
            .flexible_time_window(window)
            .target(target)
            .description(description)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(error)
                if error.as_service_error().is_some_and(
                    aws_sdk_scheduler::operation::create_schedule::CreateScheduleError::is_validation_exception,
                ) =>
            {
                Err(ApiError::field(
                    "expression",
                    "EventBridge Scheduler does not accept this expression",
                ))
            }
            Err(error) => Err(ApiError::internal(error)),
        }
    }

    /// The organization's live schedules, counted up to the cap.
    async fn schedule_count(&self, org: &OrgId) -> Result<usize, ApiError> {
        let params = std::collections::BTreeMap::from([("limit".to_owned(), "100".to_owned())]);
        let mut page = PageRequest::from_query(&params, org.as_str())?;
        let mut count = 0;
        loop {
            let (schedules, next) = self.reports.list_schedules(org, &page).await?;
            count += schedules.len();
            match next {
                Some(cursor) if count < MAX_SCHEDULES_PER_ORG => page.after = Some(cursor),
                _ => return Ok(count),
            }
        }
    }

    pub(super) async fn list_schedules(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let org = caller.listed_org(&params)?;
        let page = PageRequest::from_query(&params, org.as_str())?;
        let (schedules, next) = self.reports.list_schedules(&org, &page).await?;
        let items: Vec<Value> = schedules.iter().map(ReportSchedule::to_json).collect();
        http::page(&page, &items, next)
    }

    pub(super) async fn delete_schedule(
        &self,
        request: &Request,
        caller: &Caller,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        if RecordId::parse(id).is_none() {
            return Err(ApiError::NotFound);
        }
        let schedule = self
            .reports
            .delete_schedule(&caller.org, id, Utc::now())
            .await?;
        self.remove_scheduler_schedule(&schedule.schedule_name)
            .await;
        let resource = format!("report-schedule/{id}");
        self.audit(
            request,
            caller,
            "report.schedule.delete",
            resource,
            json!({}),
        )
        .await;
        Ok(http::no_content())
    }

    /// Deletes a Scheduler schedule; one already gone is fine, anything else is logged
    /// (a run of a deleted schedule finds no record and does nothing).
    async fn remove_scheduler_schedule(&self, name: &str) {
        let result = self
            .scheduler
            .delete_schedule()
            .name(name)
            .group_name(&self.schedule_group)
            .send()
            .await;
        if let Err(error) = result {
            let gone = error
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception());
            if !gone {
                tracing::error!(error = %aws_sdk_scheduler::error::DisplayErrorContext(&error), name, "could not delete a Scheduler schedule");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_run_at_most_hourly() {
        for ok in [
            "rate(1 hour)",
            "rate(60 minutes)",
            "rate(2 days)",
            "cron(0 8 * * ? *)",
            "cron(15 * * * ? *)",
        ] {
            assert_eq!(at_most_hourly(ok), Ok(()), "{ok}");
        }
        for too_often in [
            "rate(1 minute)",
            "rate(59 minutes)",
            "cron(* * * * ? *)",
            "cron(0/5 * * * ? *)",
            "cron(0,30 * * * ? *)",
        ] {
            assert!(
                at_most_hourly(too_often)
                    .unwrap_err()
                    .contains("once an hour"),
                "{too_often}"
            );
        }
        assert!(at_most_hourly("rate(1 fortnight)").is_err());
        assert!(at_most_hourly("cron(0 8 * *)").is_err());
    }
}
