//! Writes a report's file to S3: CSV rows stream through a part buffer as they are encoded;
//! a PDF is rendered (see [`crate::pdf`] for what it holds) and uploaded in parts.

use super::upload::{PART_SIZE, PartBuffer, PartSink, S3Multipart};
use super::{Cell, Report, ReportContent, ReportFormat, csv};
use crate::aws::S3Client;
use crate::pdf::{ReportHeading, render_report};

/// Encodes a CSV into `buffer` row by row, uploading each full part on the way.
///
/// # Errors
/// When a part cannot be uploaded.
pub async fn write_csv<S: PartSink>(
    buffer: &mut PartBuffer<S>,
    columns: &[String],
    rows: impl IntoIterator<Item = impl AsRef<[Cell]>>,
) -> anyhow::Result<u64> {
    csv::write_header(buffer.buffer(), columns);
    let mut count = 0;
    for row in rows {
        csv::write_row(buffer.buffer(), row.as_ref());
        buffer.flush_full().await?;
        count += 1;
    }
    Ok(count)
}

/// The heading a report's PDF carries.
pub fn heading(report: &Report) -> ReportHeading {
    let day = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    ReportHeading {
        title: report.kind.title().to_owned(),
        organization: report.org_id.to_string(),
        period: format!("{} – {}", day(report.from), day(report.to)),
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

/// Uploads the report's file to `s3://bucket/<report.key>` (AES256 server-side
/// encryption). Returns the rows written and the file's size.
///
/// # Errors
/// When the file cannot be written; the partial upload is aborted.
pub async fn upload(
    s3: &S3Client,
    bucket: &str,
    report: &Report,
    content: &ReportContent,
) -> anyhow::Result<(u64, u64)> {
    let upload = S3Multipart::start(s3, bucket, &report.key, report.format.content_type()).await?;
    let mut buffer = PartBuffer::new(upload, PART_SIZE);
    let written = async {
        match report.format {
            ReportFormat::Csv => write_csv(&mut buffer, &content.columns, &content.rows).await,
            ReportFormat::Pdf => {
                let bytes = render_report(&heading(report), content)?;
                for chunk in bytes.chunks(PART_SIZE) {
                    buffer.buffer().extend_from_slice(chunk);
                    buffer.flush_full().await?;
                }
                Ok(content.rows.len() as u64)
            }
        }
    }
    .await;
    let rows = match written {
        Ok(rows) => rows,
        Err(error) => {
            // Abort what was uploaded so far (S3 keeps parts until then).
            buffer.into_sink().abort().await;
            return Err(error);
        }
    };
    let (upload, bytes) = buffer.finish().await?;
    upload.complete().await?;
    Ok((rows, bytes))
}
