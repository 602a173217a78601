//! Handlebars-compatible rendering (the syntax SendGrid dynamic templates use).
//!
//! Strict mode makes a missing variable an error naming it, instead of an empty string
//! silently sent to thousands of people.

use handlebars::{Handlebars, RenderErrorReason};

/// Whether the output is HTML (values are escaped) or plain text (values are copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    Html,
    None,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("missing variable: {0}")]
    MissingVariable(String),
    #[error("template error: {0}")]
    Template(String),
}

fn registry(escape: Escape) -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    if escape == Escape::None {
        registry.register_escape_fn(handlebars::no_escape);
    }
    registry
}

/// Renders `source` with `variables` (a JSON object).
///
/// # Errors
/// [`RenderError::MissingVariable`] names the first variable the template uses that
/// `variables` lacks; [`RenderError::Template`] reports a syntax error.
pub fn render(
    source: &str,
    variables: &serde_json::Value,
    escape: Escape,
) -> Result<String, RenderError> {
    registry(escape)
        .render_template(source, variables)
        .map_err(|error| match error.reason() {
            RenderErrorReason::MissingVariable(Some(name)) => {
                RenderError::MissingVariable(name.clone())
            }
            RenderErrorReason::MissingVariable(None) => {
                RenderError::MissingVariable("(unnamed)".to_owned())
            }
            RenderErrorReason::TemplateError(inner) => {
                RenderError::Template(inner.reason().to_string())
            }
            other => RenderError::Template(other.to_string()),
        })
}

/// Checks that `source` parses, without rendering it.
///
/// # Errors
/// The parser's message.
pub fn check_syntax(source: &str) -> Result<(), String> {
    handlebars::Template::compile(source)
        .map(|_| ())
        .map_err(|error| error.reason().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn html_is_escaped_only_in_html() {
        let vars = json!({"name": "<b>Ann & Bob</b>"});
        assert_eq!(
            render("Hi {{name}}", &vars, Escape::Html).unwrap(),
            "Hi &lt;b&gt;Ann &amp; Bob&lt;/b&gt;"
        );
        assert_eq!(
            render("Hi {{name}}", &vars, Escape::None).unwrap(),
            "Hi <b>Ann & Bob</b>"
        );
    }

    #[test]
    fn missing_variable_is_named() {
        let error = render(
            "Hi {{first_name}} {{last}}",
            &json!({"last": "x"}),
            Escape::None,
        )
        .unwrap_err();
        assert_eq!(error, RenderError::MissingVariable("first_name".to_owned()));
    }

    #[test]
    fn sendgrid_style_blocks_render() {
        let vars = json!({"items": [{"name": "a"}, {"name": "b"}], "vip": true});
        let out = render(
            "{{#if vip}}VIP {{/if}}{{#each items}}{{name}};{{/each}}",
            &vars,
            Escape::Html,
        )
        .unwrap();
        assert_eq!(out, "VIP a;b;");
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(check_syntax("Hello {{#if x}}").is_err());
        assert!(check_syntax("Hello {{name}}").is_ok());
    }
}
