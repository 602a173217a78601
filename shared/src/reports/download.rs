//! A report's download: a presigned S3 GET that saves the file under a readable name.

use std::time::Duration;

use super::Report;

/// How long the API's download link works (SPEC §9).
pub const DOWNLOAD_URL_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// A presigned GET of the report's object, downloaded as `<type>-<id>.<ext>`.
///
/// # Errors
/// When the URL cannot be signed.
pub async fn presigned_download(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    report: &Report,
    lifetime: Duration,
) -> anyhow::Result<String> {
    let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(lifetime)?;
    let filename = format!(
        "{}-{}.{}",
        report.kind.as_str(),
        report.id,
        report.format.extension()
    );
    let request = s3
        .get_object()
        .bucket(bucket)
        .key(&report.key)
        .response_content_disposition(format!("attachment; filename=\"{filename}\""))
        .presigned(config)
        .await?;
    Ok(request.uri().to_owned())
}
