//! `docs/openapi.yaml` does not drift from the code: every route of every function's route
//! table is documented with the same path parameters, every documented operation is
//! answered by a function, public operations are exactly the template's `Authorizer: NONE`
//! routes, and every error response is a problem document. (What the operations accept and
//! answer is checked against the running bundle by `scripts/contract.sh`.)

use std::collections::BTreeSet;

use functions::registry::FUNCTIONS;
use local::template::BundleTemplate;
use serde_json::Value;
use shared::http::match_path;

use crate::helpers::workspace_root;

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

fn document() -> Value {
    let text = std::fs::read_to_string(workspace_root().join("docs/openapi.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// Follows a local `$ref` (`#/components/...`) once, or gives the value back.
fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => document
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("{reference} is not in the document")),
        None => value,
    }
}

/// (method, path) of every documented operation.
fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(|method| (method.to_ascii_uppercase(), path.clone()))
        })
        .collect()
}

/// The `in: path` parameter names of an operation (path-level and operation-level).
fn path_parameters(document: &Value, path: &str, method: &str) -> BTreeSet<String> {
    let item = &document["paths"][path];
    let operation = &item[method.to_ascii_lowercase()];
    [&item["parameters"], &operation["parameters"]]
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .map(|parameter| resolve(document, parameter))
        .filter(|parameter| parameter["in"] == "path")
        .map(|parameter| parameter["name"].as_str().unwrap().to_owned())
        .collect()
}

fn pattern_parameters(pattern: &str) -> BTreeSet<String> {
    pattern
        .split('/')
        .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| name.trim_end_matches('+').to_owned())
        .collect()
}

fn code_routes() -> BTreeSet<(String, String)> {
    FUNCTIONS
        .iter()
        .flat_map(|function| function.routes)
        .map(|route| (route.method.to_owned(), route.pattern.to_owned()))
        .collect()
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let document = document();
    assert_eq!(document["openapi"].as_str().unwrap(), "3.1.0");
    let documented = documented_operations(&document);
    let routed = code_routes();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from docs/openapi.yaml: {undocumented:?}"
    );
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        unrouted.is_empty(),
        "docs/openapi.yaml documents operations no function routes: {unrouted:?}"
    );
    for (method, path) in &routed {
        assert_eq!(
            path_parameters(&document, path, method),
            pattern_parameters(path),
            "path parameters of {method} {path}"
        );
    }
}

#[test]
fn public_operations_are_exactly_the_routes_without_the_authorizer() {
    let document = document();
    assert_eq!(
        document["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    assert_eq!(document["security"][0]["bearerAuth"], serde_json::json!([]));
    let template = BundleTemplate::load(&workspace_root().join("template.yaml")).unwrap();
    for (method, path) in documented_operations(&document) {
        let operation = &document["paths"][&path][method.to_ascii_lowercase()];
        let public = operation["security"] == serde_json::json!([]);
        let sample: String = path
            .split('/')
            .map(|part| if part.starts_with('{') { "x" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        let declared = template
            .functions
            .iter()
            .flat_map(|function| &function.http_routes)
            .filter(|route| route.method == "ANY" || route.method == method)
            .find(|route| match_path(&route.path, &sample).is_some())
            .unwrap_or_else(|| panic!("{method} {path} is not routed by template.yaml"));
        assert_eq!(
            public, !declared.authorized,
            "{method} {path}: `security: []` in the document must match `Authorizer: NONE`"
        );
    }
}

#[test]
fn every_operation_answers_success_and_problem_documents() {
    let document = document();
    for (method, path) in documented_operations(&document) {
        let operation = &document["paths"][&path][method.to_ascii_lowercase()];
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|status| status.starts_with('2')),
            "{method} {path} documents no success response"
        );
        let errors: Vec<_> = responses
            .iter()
            .filter(|(status, _)| !status.starts_with('2'))
            .collect();
        // Every operation behind the authorizer can at least answer 401.
        let public = operation["security"] == serde_json::json!([]);
        assert!(
            public || responses.contains_key("401"),
            "{method} {path} documents no 401"
        );
        for (status, response) in errors {
            let content = resolve(&document, response)["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} {status} has no content"));
            let schema = resolve(&document, &content["application/problem+json"]["schema"]);
            assert_eq!(
                content.keys().collect::<Vec<_>>(),
                ["application/problem+json"],
                "{method} {path} {status} is a problem document"
            );
            let required = schema["required"].as_array().unwrap();
            for field in ["type", "title", "status", "detail"] {
                assert!(required.iter().any(|r| r == field), "problem {field}");
            }
        }
        if operation.get("requestBody").is_some() {
            assert!(
                responses.contains_key("400") && responses.contains_key("415"),
                "{method} {path} takes a body: document 400 and 415"
            );
        }
    }
}

#[test]
fn idempotent_operations_document_the_idempotency_key() {
    // The operations a dispatch wraps in `once!` (its `run_once` under the operation's
    // idempotency scope) are the ones that accept the header.
    let document = document();
    let mut wrapped = BTreeSet::new();
    for path in rust_files(&workspace_root().join("functions/src")) {
        wrapped.extend(once_operations(&std::fs::read_to_string(path).unwrap()));
    }
    assert!(wrapped.len() >= 10, "once! operations found: {wrapped:?}");
    for (method, path) in documented_operations(&document) {
        let operation = &document["paths"][&path][method.to_ascii_lowercase()];
        let takes_key = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|parameter| resolve(&document, parameter))
            .any(|parameter| parameter["name"] == "Idempotency-Key" && parameter["in"] == "header");
        assert_eq!(
            takes_key,
            wrapped.contains(&(method.clone(), path.clone())),
            "{method} {path}: Idempotency-Key documented iff the handler uses run_once"
        );
    }
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files
}

/// The `(method, pattern)` of each operation a file's dispatch runs through `once!`: the
/// rows of its `operations!` table (`Variant = "METHOD" "/pattern" Role`) whose match arm
/// (`Op::Variant => …`, up to the next arm) calls `once!(`.
fn once_operations(text: &str) -> Vec<(String, String)> {
    let Some(table) = text.split("shared::operations! {").nth(1) else {
        return Vec::new();
    };
    let table = &table[..table.find("\n}").unwrap()];
    let mut rows = std::collections::BTreeMap::new();
    for line in table.lines() {
        let Some((variant, rest)) = line.trim().split_once(" = ") else {
            continue;
        };
        let quoted: Vec<&str> = rest.split('"').collect();
        rows.insert(
            variant.to_owned(),
            (quoted[1].to_owned(), quoted[3].to_owned()),
        );
    }
    let arms: Vec<&str> = text.split("Op::").skip(1).collect();
    arms.iter()
        .filter_map(|arm| {
            let (variant, body) = arm.split_once(" =>")?;
            body.contains("once!(")
                .then(|| rows.get(variant).cloned())?
        })
        .collect()
}
