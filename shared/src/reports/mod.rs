//! Reports (SPEC §9): what a report is, and the writers that turn its rows into files.
//!
//! - [`csv`]: RFC 4180 rows with formula-injection-safe cells.
//! - [`upload`]: a part buffer that streams a file to S3 as a multipart upload, so a
//!   report's bytes never sit in memory beyond one 5 MiB part.
//! - [`download`]: the presigned link a report is fetched with.
//! - The PDF writer lives in [`crate::pdf`].

pub mod content;
pub mod csv;
pub mod download;
pub mod file;
pub mod upload;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::OrgId;
use crate::domain::email::EmailAddress;

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    CampaignPerformance,
    ConversationAnalytics,
    UserAnalytics,
    Summary,
}

impl ReportKind {
    pub const ALL: [Self; 4] = [
        Self::CampaignPerformance,
        Self::ConversationAnalytics,
        Self::UserAnalytics,
        Self::Summary,
    ];

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CampaignPerformance => "campaign_performance",
            Self::ConversationAnalytics => "conversation_analytics",
            Self::UserAnalytics => "user_analytics",
            Self::Summary => "summary",
        }
    }

    /// The heading of the report's PDF.
    pub fn title(self) -> &'static str {
        match self {
            Self::CampaignPerformance => "Campaign performance",
            Self::ConversationAnalytics => "Conversation analytics (SMS)",
            Self::UserAnalytics => "User analytics",
            Self::Summary => "Summary",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportFormat {
    Csv,
    Pdf,
}

impl ReportFormat {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "csv" => Some(Self::Csv),
            "pdf" => Some(Self::Pdf),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Pdf => "pdf",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Pdf => "application/pdf",
        }
    }
}

/// Where a report is: `queued` → `generating` → `generated` (the file is in S3) →
/// `ready` (finalised by the export step, downloadable); or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    Queued,
    Generating,
    Generated,
    Ready,
    Failed,
}

impl ReportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Generating => "generating",
            Self::Generated => "generated",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }
}

/// One requested report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    pub org_id: OrgId,
    #[serde(rename = "type")]
    pub kind: ReportKind,
    pub format: ReportFormat,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub status: ReportStatus,
    /// The S3 key: `reports/<org>/<id>.<ext>`.
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The schedule whose run produced it (its recipients get the link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<DateTime<Utc>>,
}

/// What a new report covers: its kind, format and period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportSpec {
    pub kind: ReportKind,
    pub format: ReportFormat,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Report {
    /// A report `queued` for the worker, asked for by `requested_by` (a user, or
    /// `schedule/<id>` for a schedule's run).
    pub fn queued(
        id: String,
        org_id: OrgId,
        spec: ReportSpec,
        requested_by: String,
        schedule_id: Option<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            key: Self::key_for(&org_id, &id, spec.format),
            id,
            org_id,
            kind: spec.kind,
            format: spec.format,
            from: spec.from,
            to: spec.to,
            status: ReportStatus::Queued,
            rows: None,
            bytes: None,
            error: None,
            schedule_id,
            requested_by,
            created_at: now,
            updated_at: now,
            ready_at: None,
        }
    }

    pub fn key_for(org: &OrgId, id: &str, format: ReportFormat) -> String {
        format!("reports/{org}/{id}.{}", format.extension())
    }

    /// The API shape (the S3 key stays internal; downloads go through presigned URLs).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "type": self.kind,
            "format": self.format,
            "from": self.from,
            "to": self.to,
            "status": self.status,
            "rows": self.rows,
            "bytes": self.bytes,
            "error": self.error,
            "schedule_id": self.schedule_id,
            "requested_by": self.requested_by,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "ready_at": self.ready_at,
        })
    }
}

/// A recurring report: an EventBridge Scheduler schedule that drops a run message on the
/// report generate queue; each run covers the last `period_days` and is emailed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportSchedule {
    pub id: String,
    pub org_id: OrgId,
    /// The Scheduler schedule's name.
    pub schedule_name: String,
    /// `cron(...)` or `rate(...)`, as Scheduler takes it (UTC).
    pub expression: String,
    #[serde(rename = "type")]
    pub kind: ReportKind,
    pub format: ReportFormat,
    pub period_days: u32,
    pub recipients: Vec<EmailAddress>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

impl ReportSchedule {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.schedule_name,
            "expression": self.expression,
            "type": self.kind,
            "format": self.format,
            "period_days": self.period_days,
            "recipients": self.recipients,
            "created_by": self.created_by,
            "created_at": self.created_at,
        })
    }
}

/// One cell of a report row. Numbers are written as they are; text goes through the CSV
/// formula guard (see [`csv::escape_formula`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Int(i64),
    /// A ratio, written as a percentage with one decimal.
    Percent(f64),
}

impl Cell {
    pub fn text(value: impl Into<String>) -> Self {
        Self::Text(value.into())
    }

    /// The cell as shown in a PDF table (no formula guard: a PDF runs nothing).
    pub fn display(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Int(n) => n.to_string(),
            Self::Percent(ratio) => format!("{:.1}%", ratio * 100.0),
        }
    }
}

/// `part / whole`, 0 when there is no whole.
pub fn ratio(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// A report's content: what the PDF shows above its table, and the table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportContent {
    /// Totals shown in the PDF's summary table (label, value).
    pub summary: Vec<(String, String)>,
    /// Daily volume for the PDF's chart (day `YYYY-MM-DD`, count), oldest first.
    pub daily: Vec<(String, i64)>,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}
