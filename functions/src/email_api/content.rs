//! The content of a send: a stored email template or the request's own subject and bodies,
//! and its rendering for each recipient.

use std::sync::OnceLock;

use serde_json::Value;

use shared::auth::Caller;
use shared::domain::RecordId;
use shared::domain::email::{BodyParts, EmailContent, SharedBody};
use shared::domain::template::{TemplateContent, TemplateKind};
use shared::http::{ApiError, FieldErrorCollector};
use shared::providers::sendgrid::MAX_SUBSTITUTION_BYTES;
use shared::render::{Compiled, Escape, RenderError, Segments};

use super::EmailApi;
use super::send::SendRequest;

/// The content every recipient of one send shares, before per-recipient variables.
pub(super) struct ContentSource {
    subject: String,
    html: Option<String>,
    text: Option<String>,
    /// Literal content (a simple send) is not rendered.
    render: bool,
    pub(super) template_id: Option<String>,
    /// Subject and bodies parsed once for all recipients, on first use.
    compiled: OnceLock<Result<CompiledContent, RenderError>>,
}

struct CompiledContent {
    subject: Compiled,
    html: Option<Compiled>,
    text: Option<Compiled>,
}

impl ContentSource {
    /// Subject, html, text for one recipient. Subjects and text are not HTML-escaped.
    pub(super) fn render_for(&self, variables: &Value) -> Result<EmailContent, RenderError> {
        if !self.render {
            return Ok(EmailContent {
                subject: self.subject.clone(),
                html: self.html.clone(),
                text: self.text.clone(),
            });
        }
        let compiled = self
            .compiled
            .get_or_init(|| {
                let compile = |body: &Option<String>, escape| {
                    body.as_deref()
                        .map(|b| Compiled::new(b, escape))
                        .transpose()
                };
                Ok(CompiledContent {
                    subject: Compiled::new(&self.subject, Escape::None)?,
                    html: compile(&self.html, Escape::Html)?,
                    text: compile(&self.text, Escape::None)?,
                })
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let render =
            |body: &Option<Compiled>| body.as_ref().map(|b| b.render(variables)).transpose();
        Ok(EmailContent {
            subject: compiled.subject.render(variables)?,
            html: render(&compiled.html)?,
            text: render(&compiled.text)?,
        })
    }
}

impl ContentSource {
    /// A rendered bulk's bodies split once into what every recipient shares and what varies
    /// (issue 20), or `None` when they cannot be split (literal content, partials).
    pub(super) fn split(&self, bulk_id: &str) -> Option<BulkSplit> {
        if !self.render {
            return None;
        }
        let compile = |body: &Option<String>, escape| match body {
            Some(source) => Segments::compile(source, escape).map(Some),
            None => Some(None),
        };
        let html = compile(&self.html, Escape::Html)?;
        let text = compile(&self.text, Escape::None)?;
        let pieces = |segments: &Option<Segments>| segments.as_ref().map(|s| s.pieces().to_vec());
        let (html_pieces, text_pieces) = (pieces(&html), pieces(&text));
        let all: Vec<&String> = html_pieces.iter().chain(&text_pieces).flatten().collect();
        let nonce = (0u32..).map(|n| format!("{n:x}")).find(|nonce| {
            !all.iter()
                .any(|piece| piece.contains(&format!("%hx{nonce}")))
        })?;
        Some(BulkSplit {
            shared: SharedBody {
                nonce,
                html: html_pieces,
                text: text_pieces,
            },
            bulk_id: bulk_id.to_owned(),
            html,
            text,
        })
    }
}

/// A bulk's content split into the body every recipient shares and the parts that vary.
pub(super) struct BulkSplit {
    pub(super) shared: SharedBody,
    pub(super) bulk_id: String,
    html: Option<Segments>,
    text: Option<Segments>,
}

impl BulkSplit {
    /// One recipient's parts, when they rebuild exactly `content` (what Herald rendered for
    /// them), hold no token, and fit one personalization's substitutions; else `None`, and
    /// the email keeps its whole bodies.
    pub(super) fn parts_for(&self, variables: &Value, content: &EmailContent) -> Option<BodyParts> {
        let render = |segments: &Option<Segments>| {
            segments
                .as_ref()
                .map(|s| s.parts(variables))
                .transpose()
                .ok()
                .map(Option::unwrap_or_default)
        };
        let parts = BodyParts {
            shared: self.bulk_id.clone(),
            html: render(&self.html)?,
            text: render(&self.text)?,
            body: None,
        };
        let exact = self.shared.fill(&parts) == (content.html.clone(), content.text.clone());
        let prefix = self.shared.token_prefix();
        let holds_a_token = content.subject.contains(&prefix)
            || parts
                .html
                .iter()
                .chain(&parts.text)
                .any(|p| p.contains(&prefix));
        let bytes: usize = self
            .shared
            .substitutions(&parts)
            .iter()
            .map(|(token, part)| token.len() + part.len())
            .sum();
        (exact && !holds_a_token && bytes <= MAX_SUBSTITUTION_BYTES).then_some(parts)
    }
}

impl EmailApi {
    /// The shared content: a stored template (active, the caller's) or the request's own
    /// subject and bodies.
    pub(super) async fn content_source(
        &self,
        body: &SendRequest,
        caller: &Caller,
        errors: &mut FieldErrorCollector,
    ) -> Result<Option<ContentSource>, ApiError> {
        match &body.template_id {
            Some(template_id) => {
                self.template_source(body, caller, template_id, errors)
                    .await
            }
            None => Ok(Some(literal_source(body, errors))),
        }
    }

    /// The content of an active email template of the caller's organization.
    async fn template_source(
        &self,
        body: &SendRequest,
        caller: &Caller,
        template_id: &str,
        errors: &mut FieldErrorCollector,
    ) -> Result<Option<ContentSource>, ApiError> {
        for (field, present) in [
            ("subject", body.subject.is_some()),
            ("html", body.html.is_some()),
            ("text", body.text.is_some()),
        ] {
            if present {
                errors.add(
                    field,
                    "comes from the template; do not send it with template_id",
                );
            }
        }
        let Some(id) = RecordId::parse(template_id) else {
            errors.add("template_id", "no such email template");
            return Ok(None);
        };
        let template = match self
            .templates
            .get(&caller.org, TemplateKind::Email, id)
            .await
        {
            Ok(template) => template,
            Err(shared::store::StoreError::NotFound) => {
                errors.add("template_id", "no such email template");
                return Ok(None);
            }
            Err(other) => return Err(other.into()),
        };
        if !template.is_active {
            errors.add("template_id", "the template is not active");
            return Ok(None);
        }
        let TemplateContent::Email {
            subject,
            html,
            text,
            ..
        } = template.content
        else {
            return Err(ApiError::internal(anyhow::anyhow!(
                "email template {id} has non-email content"
            )));
        };
        Ok(Some(ContentSource {
            subject,
            html,
            text,
            render: true,
            template_id: Some(template_id.to_owned()),
            compiled: OnceLock::new(),
        }))
    }
}

/// The request's own subject and bodies, checked. A bulk send's are templates over each
/// recipient's variables; a simple send's are sent as they are.
fn literal_source(body: &SendRequest, errors: &mut FieldErrorCollector) -> ContentSource {
    let subject = body.subject.clone().unwrap_or_default();
    if subject.trim().is_empty() {
        errors.add("subject", "is required");
    } else if subject.chars().count() > 998 || subject.contains(['\r', '\n']) {
        errors.add("subject", "must be one line of at most 998 characters");
    }
    let html = body.html.clone().filter(|h| !h.trim().is_empty());
    let text = body.text.clone().filter(|t| !t.trim().is_empty());
    if html.is_none() && text.is_none() {
        errors.add("text", "text or html is required");
    }
    for (field, value) in [("html", &html), ("text", &text)] {
        if value.as_ref().is_some_and(|v| v.len() > 256 * 1024) {
            errors.add(field, "must be at most 256 KiB");
        }
    }
    ContentSource {
        subject,
        html,
        text,
        render: body.recipients.is_some(),
        template_id: None,
        compiled: OnceLock::new(),
    }
}
