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

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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
    Compiled::new(source, escape)?.render(variables)
}

/// A template parsed once and rendered for many variable sets (a bulk's recipients: parsing
/// a 60 KB newsletter per recipient would cost more than rendering it).
pub struct Compiled {
    registry: Handlebars<'static>,
}

const COMPILED_NAME: &str = "compiled";

impl Compiled {
    /// # Errors
    /// [`RenderError::Template`] for a syntax error.
    pub fn new(source: &str, escape: Escape) -> Result<Self, RenderError> {
        let mut registry = registry(escape);
        registry
            .register_template_string(COMPILED_NAME, source)
            .map_err(|error| RenderError::Template(error.reason().to_string()))?;
        Ok(Self { registry })
    }

    /// # Errors
    /// As [`render`].
    pub fn render(&self, variables: &serde_json::Value) -> Result<String, RenderError> {
        self.registry
            .render(COMPILED_NAME, variables)
            .map_err(render_error)
    }
}

fn render_error(error: handlebars::RenderError) -> RenderError {
    match error.reason() {
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
    }
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

/// Static text between two parts shorter than this joins the parts into one: fewer,
/// slightly longer substitutions cost less than many tokens (each token's bytes count
/// towards SendGrid's substitution limit, as its value's do).
const JOIN_GAP_BYTES: usize = 64;

/// A template split into the text every recipient shares and the parts that vary (issue 20).
///
/// The template's top-level elements render one after another, each into the output, with
/// whitespace control and standalone-line stripping already applied to the literal text by
/// the parser; so rendering a run of elements on its own yields exactly its share of the
/// whole rendering. [`Segments::parts`] renders the varying runs, and
/// `pieces[0] + parts[0] + pieces[1] + … + pieces[n]` is the whole rendering. Callers still
/// compare that with [`render`] before relying on it.
pub struct Segments {
    pieces: Vec<String>,
    registry: Handlebars<'static>,
    parts: usize,
}

impl Segments {
    /// `None` when the template does not parse or uses partials or decorators (they change how the elements after them render, so a part cannot be
    /// rendered alone).
    #[must_use]
    pub fn compile(source: &str, escape: Escape) -> Option<Self> {
        use handlebars::template::TemplateElement as E;
        let template = handlebars::Template::compile(source).ok()?;
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        let mut pieces = vec![String::new()];
        for (index, element) in template.elements.iter().enumerate() {
            match element {
                E::RawString(text) => pieces.last_mut()?.push_str(text),
                E::Comment(_) => {}
                E::Expression(_) | E::HtmlExpression(_) | E::HelperBlock(_) => {
                    let joins = pieces.last()?.len() < JOIN_GAP_BYTES;
                    match runs.last_mut() {
                        Some(run) if joins => {
                            pieces.last_mut()?.clear();
                            run.end = index + 1;
                        }
                        _ => {
                            runs.push(index..index + 1);
                            pieces.push(String::new());
                        }
                    }
                }
                // Partials, decorators, and whatever a later parser adds.
                _ => return None,
            }
        }
        let mut registry = registry(escape);
        for (number, run) in runs.iter().enumerate() {
            let mut part = handlebars::Template::default();
            part.name = Some(number.to_string());
            part.elements = template.elements[run.clone()].to_vec();
            part.mapping = template
                .mapping
                .get(run.clone())
                .map(<[_]>::to_vec)
                .unwrap_or_default();
            registry.register_template(&number.to_string(), part);
        }
        Some(Self {
            pieces,
            registry,
            parts: runs.len(),
        })
    }

    /// The shared text: one more piece than there are parts.
    #[must_use]
    pub fn pieces(&self) -> &[String] {
        &self.pieces
    }

    /// Each varying part rendered with `variables`.
    ///
    /// # Errors
    /// As [`render`].
    pub fn parts(&self, variables: &serde_json::Value) -> Result<Vec<String>, RenderError> {
        (0..self.parts)
            .map(|number| {
                self.registry
                    .render(&number.to_string(), variables)
                    // The renderer's output starts with room for 8 KB; a bulk keeps
                    // thousands of parts of a few dozen bytes.
                    .map(|mut part| {
                        part.shrink_to_fit();
                        part
                    })
                    .map_err(render_error)
            })
            .collect()
    }
}

/// `pieces` with `parts` between them: the rendering [`Segments`] split.
#[must_use]
pub fn fill(pieces: &[String], parts: &[String]) -> String {
    let mut out = String::with_capacity(
        pieces.iter().map(String::len).sum::<usize>()
            + parts.iter().map(String::len).sum::<usize>(),
    );
    for (index, piece) in pieces.iter().enumerate() {
        out.push_str(piece);
        if let Some(part) = parts.get(index) {
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Templates whose literal text the parser trims: standalone block lines, `~`, comments,
    /// `else`, nested blocks, triple braces.
    const TRICKY: &[&str] = &[
        "<p>Hi {{name}}</p>\n{{#if vip}}\n  <b>VIP</b>\n{{else}}\n  <i>regular</i>\n{{/if}}\n<ul>\n  {{#each items}}\n  <li>{{this.name}} &amp; {{{this.raw}}}</li>\n  {{/each}}\n</ul>\nBye {{name}}.",
        "{{! a comment }}\nA {{~name~}} B\n   {{#unless vip}}   x   {{/unless}}   \nC",
        "{{#each items}}{{@index}}:{{name}}{{#if @last}}.{{else}}, {{/if}}{{/each}}",
        "  {{#if vip}}\n\nyes\n\n  {{/if}}  \n{{name}}{{name}} {{{raw}}}",
        "static {{name}} {{! inline }} and {{#with nested}}{{deep}}{{/with}} tail",
    ];

    #[test]
    fn parts_between_the_pieces_are_the_whole_rendering() {
        let variables = [
            json!({"name": "<Ann & \"Bob\">", "vip": true, "raw": "<b>", "nested": {"deep": "d'"},
                   "items": [{"name": "a<", "raw": "&"}, {"name": "b", "raw": ""}]}),
            json!({"name": "", "vip": false, "raw": "", "nested": {"deep": ""}, "items": []}),
        ];
        for source in TRICKY {
            for escape in [Escape::Html, Escape::None] {
                let segments = Segments::compile(source, escape).expect("segments");
                assert_eq!(segments.pieces().len(), segments.parts + 1);
                for vars in &variables {
                    let whole = render(source, vars, escape).unwrap();
                    let parts = segments.parts(vars).unwrap();
                    assert_eq!(fill(segments.pieces(), &parts), whole, "{source:?} {vars}");
                }
            }
        }
    }

    #[test]
    fn close_parts_join_and_the_shared_text_stays_out_of_them() {
        let long = "x".repeat(JOIN_GAP_BYTES);
        let source = format!("<h1>{{{{a}}}} {{{{b}}}}</h1>{long}<p>{{{{c}}}}</p>");
        let segments = Segments::compile(&source, Escape::Html).unwrap();
        assert_eq!(segments.parts, 2);
        let parts = segments
            .parts(&json!({"a": "1", "b": "2", "c": "3"}))
            .unwrap();
        assert_eq!(parts, ["1 2", "3"]);
        assert_eq!(segments.pieces()[1], format!("</h1>{long}<p>"));
    }

    #[test]
    fn templates_with_partials_are_not_split_and_plain_ones_are_one_piece() {
        let plain = Segments::compile("plain text", Escape::Html).unwrap();
        assert_eq!(
            (plain.pieces(), plain.parts),
            (&["plain text".to_owned()][..], 0)
        );
        assert!(Segments::compile("{{> header}} {{name}}", Escape::Html).is_none());
        assert!(Segments::compile("{{#if}", Escape::Html).is_none());
    }

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
