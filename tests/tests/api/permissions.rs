//! Least privilege, measured (issue 17 §1): every function's AWS calls against the policies
//! `template.yaml` gives its role.
//!
//! The local runner checks every call a function makes against its expanded policies
//! (`local::iam`) and refuses those that AWS would answer `AccessDenied`, in every test of
//! the suite. What it cannot see from one test is the other direction — a grant nothing
//! uses — because that needs every path the suite exercises. So
//! `every_function_uses_exactly_what_its_policy_grants` reads the calls of a whole suite
//! run: the file a run with `HERALD_IAM_USAGE_FILE` wrote (`scripts/test.sh` sets it for its
//! `cargo test` and then runs this test with `HERALD_IAM_USAGE_FROM` naming that file), or,
//! run on its own, the calls of the rest of this binary, which it runs as a child process.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use local::iam::{self, FunctionAudit, Use};
use local::template::BundleTemplate;
use serde_json::json;

use crate::helpers::{spawn_bundle_with, workspace_root};

/// Grants no call in the suite uses, each with why it stays: (function, action, resource,
/// reason). Everything else granted must be used.
const EXPLAINED: &[(&str, &str, &str, &str)] = &[
    (
        "SmsApiFunction",
        "dynamodb:DeleteItem",
        "arn:*:dynamodb:*:*:table/HeraldTable",
        "error path: a request with an Idempotency-Key that ends in a 5xx releases its key (shared/src/http/idempotency.rs); no SMS test answers such a request with a 5xx",
    ),
    (
        "ReportsApiFunction",
        "dynamodb:DeleteItem",
        "arn:*:dynamodb:*:*:table/HeraldTable",
        "error path: a request with an Idempotency-Key that ends in a 5xx releases its key (shared/src/http/idempotency.rs); no reports test answers such a request with a 5xx",
    ),
    (
        "ReportWorkerFunction",
        "s3:AbortMultipartUpload",
        "arn:*:s3:::HeraldBucket/reports/*",
        "error path: a report upload that fails part-way is aborted (shared/src/reports/upload.rs); no test makes a part fail",
    ),
];

fn template() -> BundleTemplate {
    BundleTemplate::load(&workspace_root().join("template.yaml")).expect("template.yaml loads")
}

/// Calls of a whole suite run, by function, and whether that run passed (a failing run
/// may have skipped paths, so its unused grants prove less).
fn suite_usage() -> (BTreeMap<String, BTreeSet<Use>>, bool) {
    if let Some(path) = std::env::var_os("HERALD_IAM_USAGE_FROM") {
        let usage = iam::read_usage_file(Path::new(&path)).expect("the usage file reads");
        return (usage, true);
    }
    let path = workspace_root().join("target").join("iam-usage-child.tsv");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--skip", "permissions::", "-q"])
        .env("HERALD_IAM_USAGE_FILE", &path)
        .status()
        .expect("the rest of the suite runs");
    // Kept: HERALD_IAM_USAGE_FROM=<this file> checks a changed template without a rerun.
    let usage = iam::read_usage_file(&path).expect("the suite wrote its usage");
    (usage, status.success())
}

/// The per-function table of docs/RELIABILITY.md.
fn table(audits: &[FunctionAudit]) -> String {
    let short = |s: &str| {
        s.replace("arn:*:dynamodb:*:*:table/", "")
            .replace("arn:*:sqs:*:*:", "")
            .replace("arn:*:s3:::", "")
            .replace("arn:*:secretsmanager:*:*:secret:", "")
            .replace("arn:*:scheduler:*:*:schedule/", "")
            .replace("arn:*:iam::*:role/", "")
    };
    let mut out = String::from(
        "| function | actions used (resource) | granted, unused: why |\n|---|---|---|\n",
    );
    for audit in audits {
        let mut used: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for u in &audit.used {
            used.entry(&u.action)
                .or_default()
                .insert(short(&u.resource));
        }
        let used = used
            .iter()
            .map(|(action, resources)| {
                format!(
                    "`{action}` ({})",
                    resources.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("<br>");
        let unused = audit
            .unused
            .iter()
            .map(|g| {
                let why = EXPLAINED
                    .iter()
                    .find(|(f, a, r, _)| *f == audit.function && *a == g.action && *r == g.resource)
                    .map_or("not explained", |(_, _, _, why)| why);
                format!("`{}` ({}): {why}", g.action, short(&g.resource))
            })
            .collect::<Vec<_>>()
            .join("<br>");
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            audit.function,
            if used.is_empty() {
                "—".to_owned()
            } else {
                used
            },
            if unused.is_empty() {
                "—".to_owned()
            } else {
                unused
            }
        ));
    }
    out
}

#[tokio::test]
#[ignore = "measures a whole suite run: scripts/test.sh runs it after the suite, or run it alone with --ignored (it runs the rest of the suite itself)"]
async fn every_function_uses_exactly_what_its_policy_grants() {
    let template = template();
    let grants = iam::function_grants(&template).unwrap();
    let (usage, suite_passed) = suite_usage();
    let audits = iam::audit(&grants, &usage, &template);
    let report = table(&audits);
    let out = workspace_root().join("target").join("iam-permissions.md");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, &report).unwrap();
    println!("{report}");

    let mut problems = Vec::new();
    if !suite_passed {
        problems.push("the rest of the suite failed, so some paths may not have run".to_owned());
    }
    for audit in &audits {
        for missing in &audit.missing {
            problems.push(format!(
                "{} calls {missing}, which its policies do not allow (AccessDenied on AWS)",
                audit.function
            ));
        }
        for grant in &audit.unused {
            let explained = EXPLAINED.iter().any(|(function, action, resource, _)| {
                *function == audit.function
                    && *action == grant.action
                    && *resource == grant.resource
            });
            if !explained {
                problems.push(format!(
                    "{} is granted {grant}, which no call in the suite uses \
                     (narrow the template, or list it in EXPLAINED with a reason)",
                    audit.function
                ));
            }
        }
    }
    for (function, action, resource, _) in EXPLAINED {
        let still_granted = audits.iter().any(|a| {
            a.function == *function
                && a.unused
                    .iter()
                    .any(|g| g.action == *action && g.resource == *resource)
        });
        if !still_granted {
            problems.push(format!(
                "EXPLAINED lists {function} {action} on {resource}, which is no longer an unused grant"
            ));
        }
    }
    assert!(problems.is_empty(), "{}\n\n{report}", problems.join("\n"));
}

/// The local check refuses a call the template does not allow, as AWS would: the templates
/// API without its DynamoDB grant cannot store a template.
#[tokio::test]
async fn a_call_outside_the_policy_is_denied() {
    let text = std::fs::read_to_string(workspace_root().join("template.yaml")).unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let policies = doc["Resources"]["TemplatesApiFunction"]["Properties"]["Policies"]
        .as_sequence_mut()
        .unwrap();
    let before = policies.len();
    // Every policy entry that mentions DynamoDB goes.
    policies.retain(|p| {
        !serde_yaml::to_string(p)
            .unwrap()
            .to_lowercase()
            .contains("dynamodb")
    });
    assert!(
        policies.len() < before,
        "the templates API has a DynamoDB grant to remove"
    );
    let path: PathBuf = workspace_root().join("target").join(format!(
        "template-without-dynamodb-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();

    let app = spawn_bundle_with(|options| options.template = path.clone()).await;
    let token = app.token("acme", "admin");
    let reply = app
        .http
        .post(app.bundle.url("/services/templates/email/"))
        .bearer_auth(&token)
        .json(&json!({"name": "welcome", "subject": "Hi", "text": "Hello"}))
        .send()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        reply.status().is_server_error(),
        "a write without a grant fails: {}",
        reply.status()
    );
    let prefix = app
        .bundle
        .resource("HeraldTable")
        .trim_end_matches("-HeraldTable");
    let denials: Vec<_> = iam::denials()
        .into_iter()
        .filter(|d| d.bundle == prefix)
        .collect();
    assert!(
        denials.iter().any(|d| d.function == "TemplatesApiFunction"
            && d.denied.action.starts_with("dynamodb:")
            && d.denied.resource == "arn:*:dynamodb:*:*:table/HeraldTable"),
        "{denials:?}"
    );
}

/// The SAM policy templates the check expands are the ones SAM deploys with.
#[test]
fn sam_policy_templates_match_the_translator() {
    let python = workspace_root().join(".venv/bin/python");
    let output = std::process::Command::new(&python)
        .args([
            "-c",
            "import samtranslator, os; print(os.path.join(os.path.dirname(samtranslator.__file__), 'policy_templates_data', 'policy_templates.json'))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{} (run scripts/setup.sh): {e}", python.display()));
    assert!(
        output.status.success(),
        "samtranslator is installed (scripts/setup.sh)"
    );
    let path = String::from_utf8(output.stdout).unwrap();
    let installed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.trim()).unwrap()).unwrap();
    let embedded: serde_json::Value = serde_json::from_str(iam::SAM_POLICY_TEMPLATES).unwrap();
    for (name, definition) in embedded.as_object().unwrap() {
        assert_eq!(
            &installed["Templates"][name], definition,
            "{name} differs from the installed aws-sam-translator"
        );
    }
}
