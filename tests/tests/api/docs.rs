//! The README and the guides stay true (issue 21): every URL a shell block in them calls on
//! the local bundle names something that exists — an API route of some function, a function
//! URL, a page asset, one of the local runner's own routes or a provider sandbox.

use std::collections::BTreeMap;
use std::path::PathBuf;

use functions::registry::FUNCTIONS;
use shared::http::match_path;

use crate::helpers::workspace_root;

/// The local runner's own routes (`local/src/lib.rs`) and the sandboxes' prefixes.
const LOCAL_ROUTES: &[&str] = &[
    "/local/token",
    "/local/schedules/{function}",
    "/local/report-schedules/{name}",
    "/local/queues/{logical_id}",
];
const SANDBOXES: &[&str] = &["/sandbox/sendgrid/", "/sandbox/twilio/", "/sandbox/stripe/"];
const LOCAL_ORIGIN: &str = "http://127.0.0.1:3000";

fn documents() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = vec![root.join("README.md")];
    let mut guides: Vec<PathBuf> = std::fs::read_dir(root.join("docs/guides"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    guides.sort();
    files.extend(guides);
    files
}

/// The lines of a document's shell blocks.
fn shell_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            inside = !inside && (trimmed == "```sh" || trimmed == "```bash");
            continue;
        }
        if inside {
            lines.push(trimmed.to_owned());
        }
    }
    lines
}

/// `line` with the shell variables assigned so far (`NAME=value`) put in.
fn expand(line: &str, variables: &BTreeMap<String, String>) -> String {
    let mut expanded = line.to_owned();
    for (name, value) in variables.iter().rev() {
        expanded = expanded
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    expanded
}

/// The paths of the local-bundle URLs in `line`, without their query strings.
fn local_paths(line: &str) -> Vec<String> {
    line.match_indices(LOCAL_ORIGIN)
        .map(|(at, _)| {
            let rest = &line[at + LOCAL_ORIGIN.len()..];
            // `<id>` placeholders stay in the path; a query string does not.
            let end = rest
                .find(|c: char| c.is_whitespace() || "\"'`)?#|".contains(c))
                .unwrap_or(rest.len());
            rest[..end].to_owned()
        })
        .filter(|path| !path.is_empty())
        .collect()
}

/// A `$NAME/…` URL whose variable no earlier line of the same file set: each document must
/// stand on its own.
fn unresolved_base(line: &str) -> Option<String> {
    line.match_indices('$').find_map(|(at, _)| {
        let rest = line[at + 1..].trim_start_matches('{');
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
            .collect();
        let after = rest[name.len()..].trim_start_matches('}');
        (!name.is_empty() && after.starts_with('/')).then_some(name)
    })
}

fn exists(path: &str) -> bool {
    // A page asset is a file the admin-page function compiles in (its `{asset}` route
    // would match any name).
    if let Some(asset) = path.strip_prefix("/admin/") {
        return workspace_root()
            .join("functions/admin")
            .join(asset)
            .is_file();
    }
    let routed = FUNCTIONS
        .iter()
        .flat_map(|f| f.routes)
        .any(|route| match_path(route.pattern, path).is_some());
    let hook = path.strip_prefix("/hooks/").is_some_and(|rest| {
        let name = rest.trim_end_matches('/');
        FUNCTIONS.iter().any(|f| f.binary == name)
    });
    let local = LOCAL_ROUTES
        .iter()
        .any(|route| match_path(route, path).is_some());
    let sandbox = SANDBOXES.iter().any(|prefix| path.starts_with(prefix));
    routed || hook || local || sandbox
}

#[test]
fn every_url_in_the_readme_and_the_guides_names_something_that_exists() {
    let mut checked = 0;
    let mut missing = Vec::new();
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut variables = BTreeMap::new();
        for line in shell_lines(&text) {
            let line = expand(&line, &variables);
            if let Some((name, value)) = line.split_once('=')
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            {
                let value = value.split_whitespace().next().unwrap_or_default();
                variables.insert(name.to_owned(), value.trim_matches(['"', '\'']).to_owned());
                continue; // a base URL, checked where it is used
            }
            if let Some(name) = unresolved_base(&line) {
                missing.push(format!(
                    "{}: ${name} is not set in this file",
                    file.display()
                ));
            }
            for path in local_paths(&line) {
                checked += 1;
                if !exists(&path) {
                    missing.push(format!("{}: {path}", file.display()));
                }
            }
        }
    }
    assert!(missing.is_empty(), "URLs that name nothing: {missing:#?}");
    assert!(
        checked >= 60,
        "only {checked} URLs found in the shell blocks"
    );
}

#[test]
fn the_path_reader_keeps_placeholders_and_drops_queries() {
    let line =
        r#"curl -s "http://127.0.0.1:3000/services/email/<id>/?a=1" http://127.0.0.1:3000/admin"#;
    assert_eq!(local_paths(line), ["/services/email/<id>/", "/admin"]);
    let variables = BTreeMap::from([("E".to_owned(), format!("{LOCAL_ORIGIN}/services/email"))]);
    assert_eq!(
        expand("curl $E/ ${E}/x", &variables),
        format!("curl {LOCAL_ORIGIN}/services/email/ {LOCAL_ORIGIN}/services/email/x")
    );
    assert!(exists("/services/templates/email/<id>/preview/"));
    assert!(!exists("/services/nothing-here/"));
    assert!(exists("/admin/dashboard.html") && !exists("/admin/nothing.js"));
    assert_eq!(unresolved_base("curl $API/email/"), Some("API".to_owned()));
    assert_eq!(unresolved_base(r#"curl "${H[@]}" -X POST"#), None);
}
