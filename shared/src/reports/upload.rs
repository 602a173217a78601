//! Streams a file to S3 in parts, so memory holds at most one part (plus the row being
//! written) however large the file grows.

use anyhow::Context;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};

use crate::aws::S3Client;

/// S3's smallest part (all but the last part must be at least this big).
pub const PART_SIZE: usize = 5 * 1024 * 1024;

/// Where full parts go.
pub trait PartSink: Send {
    fn upload_part(&mut self, part: Vec<u8>) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Collects written bytes and hands them to the sink one part at a time.
#[derive(Debug)]
pub struct PartBuffer<S> {
    sink: S,
    buffer: Vec<u8>,
    part_size: usize,
    /// The most bytes the buffer held at once.
    pub peak_buffered: usize,
    pub total_bytes: u64,
    pub parts: usize,
}

impl<S: PartSink> PartBuffer<S> {
    pub fn new(sink: S, part_size: usize) -> Self {
        Self {
            sink,
            buffer: Vec::with_capacity(part_size + 64 * 1024),
            part_size,
            peak_buffered: 0,
            total_bytes: 0,
            parts: 0,
        }
    }

    /// The buffer to append to; call [`Self::flush_full`] after appending.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    /// Uploads a part once the buffer holds a full one.
    ///
    /// # Errors
    /// When the part cannot be uploaded.
    pub async fn flush_full(&mut self) -> anyhow::Result<()> {
        self.peak_buffered = self.peak_buffered.max(self.buffer.len());
        if self.buffer.len() >= self.part_size {
            self.send_part().await?;
        }
        Ok(())
    }

    async fn send_part(&mut self) -> anyhow::Result<()> {
        let part = std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(self.part_size + 64 * 1024),
        );
        self.total_bytes += part.len() as u64;
        self.parts += 1;
        self.sink.upload_part(part).await
    }

    /// The sink, dropping what is buffered (to abort an upload).
    pub fn into_sink(self) -> S {
        self.sink
    }

    /// Uploads what is left (an empty file still gets its one part) and returns the sink.
    ///
    /// # Errors
    /// When the last part cannot be uploaded.
    pub async fn finish(mut self) -> anyhow::Result<(S, u64)> {
        self.peak_buffered = self.peak_buffered.max(self.buffer.len());
        if !self.buffer.is_empty() || self.parts == 0 {
            self.send_part().await?;
        }
        Ok((self.sink, self.total_bytes))
    }
}

/// An S3 multipart upload, server-side encrypted with AES256.
#[derive(Debug)]
pub struct S3Multipart {
    s3: S3Client,
    bucket: String,
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
}

impl S3Multipart {
    /// # Errors
    /// When S3 refuses to start the upload.
    pub async fn start(
        s3: &S3Client,
        bucket: &str,
        key: &str,
        content_type: &str,
    ) -> anyhow::Result<Self> {
        let output = s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .server_side_encryption(ServerSideEncryption::Aes256)
            .send()
            .await
            .context("CreateMultipartUpload")?;
        Ok(Self {
            s3: s3.clone(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            upload_id: output.upload_id.context("no upload id")?,
            parts: Vec::new(),
        })
    }

    /// # Errors
    /// When S3 refuses to assemble the parts.
    pub async fn complete(self) -> anyhow::Result<()> {
        self.s3
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(self.parts))
                    .build(),
            )
            .send()
            .await
            .context("CompleteMultipartUpload")?;
        Ok(())
    }

    /// Drops the uploaded parts (S3 bills them until then).
    pub async fn abort(self) {
        let result = self
            .s3
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
        if let Err(error) = result {
            tracing::warn!(error = %aws_sdk_s3::error::DisplayErrorContext(&error), "could not abort a multipart upload");
        }
    }

    pub fn upload_id(&self) -> &str {
        &self.upload_id
    }
}

impl PartSink for S3Multipart {
    async fn upload_part(&mut self, part: Vec<u8>) -> anyhow::Result<()> {
        let number = i32::try_from(self.parts.len() + 1).context("too many parts")?;
        let output = self
            .s3
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(ByteStream::from(part))
            .send()
            .await
            .context("UploadPart")?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(output.e_tag)
                .build(),
        );
        Ok(())
    }
}

/// A sink that keeps only counts (benchmarks and tests of the buffer itself).
#[derive(Debug, Default)]
pub struct CountingSink {
    pub parts: Vec<usize>,
}

impl PartSink for CountingSink {
    async fn upload_part(&mut self, part: Vec<u8>) -> anyhow::Result<()> {
        self.parts.push(part.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::{Cell, csv};

    #[tokio::test]
    async fn a_100k_row_csv_never_buffers_more_than_a_part_and_a_row() {
        let mut buffer = PartBuffer::new(CountingSink::default(), PART_SIZE);
        csv::write_header(buffer.buffer(), &["campaign".into(), "sent".into()]);
        let mut longest_row = 0;
        for n in 0..100_000 {
            let before = buffer.buffer().len();
            csv::write_row(
                buffer.buffer(),
                &[
                    Cell::text(format!(
                        "campaign number {n} with a longer name, Кампания =x"
                    )),
                    Cell::Percent(0.5),
                    Cell::Int(n),
                ],
            );
            longest_row = longest_row.max(buffer.buffer().len() - before);
            buffer.flush_full().await.unwrap();
        }
        let peak = buffer.peak_buffered;
        let (sink, total) = buffer.finish().await.unwrap();
        assert!(total > PART_SIZE as u64, "{total}");
        assert!(sink.parts.len() >= 2);
        assert_eq!(sink.parts.iter().sum::<usize>() as u64, total);
        assert!(
            sink.parts[..sink.parts.len() - 1]
                .iter()
                .all(|p| *p >= PART_SIZE)
        );
        assert!(peak < PART_SIZE + longest_row, "peak {peak}");
    }

    #[tokio::test]
    async fn an_empty_file_still_uploads_one_part() {
        let buffer = PartBuffer::new(CountingSink::default(), PART_SIZE);
        let (sink, total) = buffer.finish().await.unwrap();
        assert_eq!((sink.parts, total), (vec![0], 0));
    }
}
