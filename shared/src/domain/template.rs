//! Message templates (SPEC §11): email, SMS and message (MMS / rich) templates.
//!
//! One input type serves create, full replace and partial update: the fields a request
//! sends are merged over the stored template (or over nothing, for a create) and the result
//! is validated as a whole, so every path enforces the same rules.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::sms::{self, SmsMeasure};
use super::{OrgId, RecordId};
use crate::http::FieldErrors;
use crate::render::{self, Escape, RenderError};

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_SUBJECT_CHARS: usize = 998;
pub const MAX_EMAIL_BODY_BYTES: usize = 256 * 1024;
pub const MAX_SMS_BODY_CHARS: usize = 1600;
pub const MAX_MEDIA_URLS: usize = 10;
pub const MAX_VARIABLES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    Email,
    Sms,
    Message,
}

impl TemplateKind {
    pub const ALL: [Self; 3] = [Self::Email, Self::Sms, Self::Message];

    /// The path segment (`/services/templates/{kind}/`).
    pub fn parse(segment: &str) -> Option<Self> {
        match segment {
            "email" => Some(Self::Email),
            "sms" => Some(Self::Sms),
            "message" => Some(Self::Message),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
            Self::Message => "message",
        }
    }
}

/// The kind-specific part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateContent {
    Email {
        subject: String,
        html: Option<String>,
        text: Option<String>,
        variables: Vec<String>,
    },
    Sms {
        body: String,
    },
    Message {
        body: String,
        media_urls: Vec<String>,
    },
}

impl TemplateContent {
    pub fn kind(&self) -> TemplateKind {
        match self {
            Self::Email { .. } => TemplateKind::Email,
            Self::Sms { .. } => TemplateKind::Sms,
            Self::Message { .. } => TemplateKind::Message,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub id: RecordId,
    pub org: OrgId,
    pub name: String,
    pub is_active: bool,
    pub content: TemplateContent,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped on every write; updates are conditional on it (no lost updates).
    pub version: u64,
}

/// The fields a create, replace or update request may carry. Which ones apply depends on
/// the kind; sending a field of another kind is a validation error, not silently ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    pub name: Option<String>,
    pub is_active: Option<bool>,
    pub subject: Option<String>,
    pub html: Option<String>,
    pub text: Option<String>,
    pub variables: Option<Vec<String>>,
    pub body: Option<String>,
    pub media_urls: Option<Vec<String>>,
}

/// The validated fields of a template, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateFields {
    pub name: String,
    pub is_active: bool,
    pub content: TemplateContent,
}

impl TemplateInput {
    /// Merges this input over `base` (the stored template for an update, `None` for a
    /// create or replace) and validates the result.
    ///
    /// # Errors
    /// Every field that fails, with its messages.
    pub fn validate(
        self,
        kind: TemplateKind,
        base: Option<&Template>,
    ) -> Result<TemplateFields, FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut complain = |field: &str, message: String| {
            errors.entry(field.to_owned()).or_default().push(message)
        };

        let foreign: &[(&str, bool)] = match kind {
            TemplateKind::Email => &[
                ("body", self.body.is_some()),
                ("media_urls", self.media_urls.is_some()),
            ],
            TemplateKind::Sms => &[
                ("subject", self.subject.is_some()),
                ("html", self.html.is_some()),
                ("text", self.text.is_some()),
                ("variables", self.variables.is_some()),
                ("media_urls", self.media_urls.is_some()),
            ],
            TemplateKind::Message => &[
                ("subject", self.subject.is_some()),
                ("html", self.html.is_some()),
                ("text", self.text.is_some()),
                ("variables", self.variables.is_some()),
            ],
        };
        for (field, present) in foreign {
            if *present {
                complain(
                    field,
                    format!("is not a field of {} templates", kind.as_str()),
                );
            }
        }

        let name = self
            .name
            .or_else(|| base.map(|t| t.name.clone()))
            .map(|n| n.trim().to_owned())
            .unwrap_or_default();
        if name.is_empty() {
            complain("name", "is required".to_owned());
        } else if name.chars().count() > MAX_NAME_CHARS {
            complain(
                "name",
                format!("must be at most {MAX_NAME_CHARS} characters"),
            );
        }
        let is_active = self
            .is_active
            .or_else(|| base.map(|t| t.is_active))
            .unwrap_or(true);

        let base_content = base.map(|t| &t.content);
        let content = match kind {
            TemplateKind::Email => {
                let (b_subject, b_html, b_text, b_vars) = match base_content {
                    Some(TemplateContent::Email {
                        subject,
                        html,
                        text,
                        variables,
                    }) => (
                        Some(subject.clone()),
                        html.clone(),
                        text.clone(),
                        variables.clone(),
                    ),
                    _ => (None, None, None, Vec::new()),
                };
                let subject = self.subject.or(b_subject).unwrap_or_default();
                let html = non_empty(self.html.or(b_html));
                let text = non_empty(self.text.or(b_text));
                let variables = self.variables.unwrap_or(b_vars);
                if subject.trim().is_empty() {
                    complain("subject", "is required".to_owned());
                } else if subject.chars().count() > MAX_SUBJECT_CHARS {
                    complain(
                        "subject",
                        format!("must be at most {MAX_SUBJECT_CHARS} characters"),
                    );
                } else if subject.contains(['\r', '\n']) {
                    complain("subject", "must be one line".to_owned());
                }
                check_template(&mut complain, "subject", &subject);
                if html.is_none() && text.is_none() {
                    complain("html", "html or text is required".to_owned());
                }
                for (field, value) in [("html", &html), ("text", &text)] {
                    if let Some(value) = value {
                        if value.len() > MAX_EMAIL_BODY_BYTES {
                            complain(
                                field,
                                format!("must be at most {MAX_EMAIL_BODY_BYTES} bytes"),
                            );
                        }
                        check_template(&mut complain, field, value);
                    }
                }
                if variables.len() > MAX_VARIABLES {
                    complain("variables", format!("at most {MAX_VARIABLES} variables"));
                }
                for variable in &variables {
                    if !is_identifier(variable) {
                        complain("variables", format!("{variable:?} is not a variable name"));
                    }
                }
                TemplateContent::Email {
                    subject,
                    html,
                    text,
                    variables,
                }
            }
            TemplateKind::Sms | TemplateKind::Message => {
                let (b_body, b_media) = match base_content {
                    Some(TemplateContent::Sms { body }) => (Some(body.clone()), Vec::new()),
                    Some(TemplateContent::Message { body, media_urls }) => {
                        (Some(body.clone()), media_urls.clone())
                    }
                    _ => (None, Vec::new()),
                };
                let body = self.body.or(b_body).unwrap_or_default();
                if body.trim().is_empty() {
                    complain("body", "is required".to_owned());
                } else if body.chars().count() > MAX_SMS_BODY_CHARS {
                    complain(
                        "body",
                        format!("must be at most {MAX_SMS_BODY_CHARS} characters"),
                    );
                }
                check_template(&mut complain, "body", &body);
                if kind == TemplateKind::Sms {
                    TemplateContent::Sms { body }
                } else {
                    let media_urls = self.media_urls.unwrap_or(b_media);
                    if media_urls.len() > MAX_MEDIA_URLS {
                        complain("media_urls", format!("at most {MAX_MEDIA_URLS} media URLs"));
                    }
                    for media in &media_urls {
                        match url::Url::parse(media) {
                            Ok(parsed)
                                if parsed.scheme() == "https" || parsed.scheme() == "http" => {}
                            _ => complain("media_urls", format!("{media:?} is not an http(s) URL")),
                        }
                    }
                    TemplateContent::Message { body, media_urls }
                }
            }
        };

        if errors.is_empty() {
            Ok(TemplateFields {
                name,
                is_active,
                content,
            })
        } else {
            Err(errors)
        }
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn check_template(complain: &mut impl FnMut(&str, String), field: &str, source: &str) {
    if let Err(message) = render::check_syntax(source) {
        complain(field, format!("is not a valid template: {message}"));
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

impl Template {
    pub fn kind(&self) -> TemplateKind {
        self.content.kind()
    }

    /// The text `search` matches against: name, subject and bodies, lowercased.
    pub fn search_text(&self) -> String {
        let mut text = self.name.clone();
        match &self.content {
            TemplateContent::Email {
                subject,
                html,
                text: plain,
                ..
            } => {
                for part in [Some(subject), html.as_ref(), plain.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    text.push('\n');
                    text.push_str(part);
                }
            }
            TemplateContent::Sms { body } | TemplateContent::Message { body, .. } => {
                text.push('\n');
                text.push_str(body);
            }
        }
        text.to_lowercase()
    }

    /// The SMS measurement of the (unrendered) body, shown in lists.
    pub fn sms_measure(&self) -> Option<SmsMeasure> {
        match &self.content {
            TemplateContent::Sms { body } => Some(sms::measure(body)),
            _ => None,
        }
    }

    /// The API representation, with the list fields of SPEC §11.
    pub fn to_json(&self) -> Value {
        let mut view = json!({
            "id": self.id.to_string(),
            "organization": self.org.as_str(),
            "kind": self.kind().as_str(),
            "name": self.name,
            "is_active": self.is_active,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        });
        let extra = match &self.content {
            TemplateContent::Email {
                subject,
                html,
                text,
                variables,
            } => {
                json!({"subject": subject, "html": html, "text": text, "variables": variables})
            }
            TemplateContent::Sms { body } => {
                let m = sms::measure(body);
                json!({"body": body, "characters": m.characters, "encoding": m.encoding, "segments": m.segments})
            }
            TemplateContent::Message { body, media_urls } => {
                json!({"body": body, "media_urls": media_urls, "has_media": !media_urls.is_empty()})
            }
        };
        if let (Value::Object(view), Value::Object(extra)) = (&mut view, extra) {
            view.extend(extra);
        }
        view
    }

    /// Renders the template with `variables`: HTML bodies escape values, subjects and
    /// plain-text bodies do not.
    ///
    /// # Errors
    /// The first missing variable, or a template error.
    pub fn render(&self, variables: &Value) -> Result<Value, RenderError> {
        Ok(match &self.content {
            TemplateContent::Email {
                subject,
                html,
                text,
                ..
            } => json!({
                "subject": render::render(subject, variables, Escape::None)?,
                "html": html.as_deref().map(|s| render::render(s, variables, Escape::Html)).transpose()?,
                "text": text.as_deref().map(|s| render::render(s, variables, Escape::None)).transpose()?,
            }),
            TemplateContent::Sms { body } => {
                let body = render::render(body, variables, Escape::None)?;
                let m = sms::measure(&body);
                json!({"body": body, "characters": m.characters, "encoding": m.encoding, "segments": m.segments})
            }
            TemplateContent::Message { body, media_urls } => json!({
                "body": render::render(body, variables, Escape::None)?,
                "media_urls": media_urls,
                "has_media": !media_urls.is_empty(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(value: Value) -> TemplateInput {
        serde_json::from_value(value).unwrap()
    }

    fn stored(fields: TemplateFields) -> Template {
        let now = Utc::now();
        Template {
            id: RecordId::new(),
            org: OrgId::parse("acme").unwrap(),
            name: fields.name,
            is_active: fields.is_active,
            content: fields.content,
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    #[test]
    fn email_needs_subject_and_a_body() {
        let errors = input(json!({"name": "x"}))
            .validate(TemplateKind::Email, None)
            .unwrap_err();
        assert!(
            errors.contains_key("subject") && errors.contains_key("html"),
            "{errors:?}"
        );
    }

    #[test]
    fn fields_of_another_kind_are_refused() {
        let errors = input(json!({"name": "x", "body": "hi", "subject": "s"}))
            .validate(TemplateKind::Sms, None)
            .unwrap_err();
        assert_eq!(errors.keys().collect::<Vec<_>>(), vec!["subject"]);
    }

    #[test]
    fn bad_template_syntax_is_a_field_error() {
        let errors = input(json!({"name": "x", "body": "Hi {{#if a}}"}))
            .validate(TemplateKind::Sms, None)
            .unwrap_err();
        assert!(errors["body"][0].contains("not a valid template"));
    }

    #[test]
    fn update_merges_over_the_stored_template() {
        let created = input(
            json!({"name": "promo", "body": "Hi {{n}}", "media_urls": ["https://x.test/a.png"]}),
        )
        .validate(TemplateKind::Message, None)
        .unwrap();
        let template = stored(created);
        let updated = input(json!({"is_active": false}))
            .validate(TemplateKind::Message, Some(&template))
            .unwrap();
        assert_eq!(updated.name, "promo");
        assert!(!updated.is_active);
        assert_eq!(updated.content, template.content);
    }

    #[test]
    fn views_carry_list_fields() {
        let sms = stored(
            input(json!({"name": "otp", "body": "Код {{code}}"}))
                .validate(TemplateKind::Sms, None)
                .unwrap(),
        );
        let view = sms.to_json();
        assert_eq!(view["encoding"], "UCS-2");
        assert_eq!(view["segments"], 1);
        assert_eq!(view["characters"], 12);
        let message = stored(
            input(json!({"name": "m", "body": "b"}))
                .validate(TemplateKind::Message, None)
                .unwrap(),
        );
        assert_eq!(message.to_json()["has_media"], false);
    }

    #[test]
    fn email_render_escapes_html_only() {
        let email = stored(
            input(json!({"name": "w", "subject": "Hi {{name}}", "html": "<p>{{name}}</p>", "text": "{{name}}"}))
                .validate(TemplateKind::Email, None)
                .unwrap(),
        );
        let out = email.render(&json!({"name": "<Ann>"})).unwrap();
        assert_eq!(out["subject"], "Hi <Ann>");
        assert_eq!(out["html"], "<p>&lt;Ann&gt;</p>");
        assert_eq!(out["text"], "<Ann>");
        assert_eq!(
            email.render(&json!({})).unwrap_err(),
            RenderError::MissingVariable("name".to_owned())
        );
    }
}
