//! The bundle's shape holds together: every function in `template.yaml` has a binary and
//! every binary a function, every route its handler, and every sample event parses into
//! its function's event type.

use std::collections::BTreeSet;

use functions::registry::FUNCTIONS;
use local::template::BundleTemplate;
use shared::http::match_path;

use crate::helpers::workspace_root;

fn template() -> BundleTemplate {
    BundleTemplate::load(&workspace_root().join("template.yaml")).unwrap()
}

fn stems(dir: &str, extension: &str) -> BTreeSet<String> {
    std::fs::read_dir(workspace_root().join(dir))
        .unwrap()
        .filter_map(|entry| {
            let path = entry.unwrap().path();
            (path.extension()? == extension)
                .then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect()
}

/// A concrete path for a pattern: every parameter replaced by a sample segment.
fn sample_path(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|part| if part.starts_with('{') { "x" } else { part })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_function_has_a_binary_and_every_binary_a_function() {
    let in_template: BTreeSet<String> = template()
        .functions
        .iter()
        .map(|f| f.binary.clone())
        .collect();
    let bin_files = stems("functions/src/bin", "rs");
    let registered: BTreeSet<String> = FUNCTIONS.iter().map(|f| f.binary.to_owned()).collect();
    assert_eq!(
        in_template, bin_files,
        "template.yaml functions vs functions/src/bin"
    );
    assert_eq!(
        in_template, registered,
        "template.yaml functions vs functions::registry"
    );
}

#[test]
fn every_route_has_its_handler_and_every_handler_route_is_declared() {
    let template = template();
    for function in &template.functions {
        let info = FUNCTIONS
            .iter()
            .find(|f| f.binary == function.binary)
            .unwrap();
        for route in info.routes {
            let path = sample_path(route.pattern);
            let declared = function.http_routes.iter().any(|declared| {
                (declared.method == "ANY" || declared.method == route.method)
                    && match_path(&declared.path, &path).is_some()
            });
            assert!(
                declared,
                "{} {} of {} is not routed by template.yaml",
                route.method, route.pattern, function.binary
            );
        }
        for declared in &function.http_routes {
            let path = sample_path(&declared.path);
            let handled = info.routes.iter().any(|route| {
                (declared.method == "ANY" || declared.method == route.method)
                    && match_path(route.pattern, &path).is_some()
            });
            assert!(
                handled,
                "{} {} is routed to {} but it has no handler",
                declared.method, declared.path, function.binary
            );
            // Only the admin page's static files are open; every API route has the authorizer.
            assert!(
                declared.authorized || function.binary == "admin-page",
                "{} is open: API routes go through the JWT authorizer",
                declared.path
            );
        }
    }
}

#[test]
fn every_event_file_parses_into_its_functions_event_type() {
    let template = template();
    let event_dirs: BTreeSet<String> = std::fs::read_dir(workspace_root().join("events"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let binaries: BTreeSet<String> = template
        .functions
        .iter()
        .map(|f| f.binary.clone())
        .collect();
    assert_eq!(
        event_dirs, binaries,
        "events/<binary>/ for every function, and no others"
    );

    for function in &template.functions {
        let info = FUNCTIONS
            .iter()
            .find(|f| f.binary == function.binary)
            .unwrap();
        let files = stems(&format!("events/{}", function.binary), "json");
        assert!(!files.is_empty(), "{} has no sample event", function.binary);
        for file in files {
            let path = workspace_root().join(format!("events/{}/{file}.json", function.binary));
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.display();
            if !function.queues.is_empty() {
                let event: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{name}: not an SQS event: {e}"));
                for record in &event.records {
                    let body = record.body.as_deref().unwrap_or_default();
                    if function.binary == "event-recorder" {
                        shared::events::parse_message(body)
                            .unwrap_or_else(|e| panic!("{name}: not an events message: {e}"));
                    } else {
                        shared::queue::Envelope::parse(body).unwrap_or_else(|e| {
                            panic!("{name}: not a Herald queue message: {e:#}")
                        });
                    }
                }
            } else if !function.schedules.is_empty() {
                let _: aws_lambda_events::event::eventbridge::EventBridgeEvent =
                    serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("{name}: not a scheduled event: {e}"));
            } else {
                let request =
                    lambda_http::request::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
                if !function.function_url {
                    let routed = info.routes.iter().any(|route| {
                        route.method == request.method().as_str()
                            && match_path(route.pattern, request.uri().path()).is_some()
                    });
                    assert!(
                        routed,
                        "{name} is not a request {} answers",
                        function.binary
                    );
                }
            }
        }
    }
}

#[test]
fn every_function_has_exactly_one_kind_of_event_source() {
    for function in &template().functions {
        let kinds = [
            !function.http_routes.is_empty(),
            function.function_url,
            !function.queues.is_empty(),
            !function.schedules.is_empty(),
        ];
        assert_eq!(
            kinds.iter().filter(|k| **k).count(),
            1,
            "{} mixes event sources",
            function.binary
        );
    }
}

#[test]
fn workers_know_their_queues_max_receives() {
    // The worker records `failed` on the attempt SQS will not redeliver; that only works if
    // its MAX_RECEIVES matches the queue's redrive policy.
    let template = template();
    for function in &template.functions {
        let Some(max) = function.environment.get("MAX_RECEIVES") else {
            continue;
        };
        for source in &function.queues {
            let (_, queue) = &template.resources[&source.queue];
            let redrive = queue["RedrivePolicy"]["maxReceiveCount"].as_u64().unwrap();
            assert_eq!(
                max.as_str().unwrap(),
                redrive.to_string(),
                "{}",
                function.binary
            );
        }
    }
}

#[test]
fn functions_follow_the_bundle_conventions() {
    let text = std::fs::read_to_string(workspace_root().join("template.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let globals = &doc["Globals"]["Function"];
    assert_eq!(globals["Runtime"], "provided.al2023");
    assert_eq!(globals["Handler"], "bootstrap");
    assert_eq!(globals["Architectures"][0], "arm64");
    for (id, resource) in doc["Resources"].as_mapping().unwrap() {
        if resource["Type"] == "AWS::Serverless::Function" {
            assert_eq!(resource["Metadata"]["BuildMethod"], "makefile", "{id:?}");
            assert!(
                resource["Properties"]["Policies"]
                    .as_sequence()
                    .is_some_and(|p| !p.is_empty()),
                "{id:?} has no policies"
            );
            // A log group of its own, kept `LogRetentionDays` and named by the template
            // (not Lambda's `/aws/lambda/…`, which Lambda creates itself, without
            // retention, and which a later deploy could not create again).
            let group = reference(&resource["Properties"]["LoggingConfig"]["LogGroup"])
                .unwrap_or_else(|| panic!("{id:?} has no LoggingConfig.LogGroup"));
            let group = &doc["Resources"][group];
            assert_eq!(group["Type"], "AWS::Logs::LogGroup", "{id:?}");
            assert_eq!(
                reference(&group["Properties"]["RetentionInDays"]),
                Some("LogRetentionDays"),
                "{id:?}"
            );
        }
    }
}

/// The logical id a `!Ref` names.
fn reference(value: &serde_yaml::Value) -> Option<&str> {
    match value {
        serde_yaml::Value::Tagged(tagged) if tagged.tag == "Ref" => tagged.value.as_str(),
        other => other.get("Ref")?.as_str(),
    }
}

/// The Makefile's `build-<LogicalId>` targets (what `sam build` runs for a function whose
/// `BuildMethod` is `makefile`), each mapped to the binary its recipe copies: the target's
/// line `build-<Id>: lambda-binaries` and, below it, `$(call copy-bootstrap,<binary>)`.
fn makefile_build_targets(makefile: &str) -> std::collections::BTreeMap<String, String> {
    let mut targets = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in makefile.lines() {
        if let Some(rest) = line.strip_prefix("build-") {
            let (id, prerequisites) = rest.split_once(':').expect("a build- rule");
            assert_eq!(
                prerequisites.trim(),
                "lambda-binaries",
                "build-{id} must depend on the one shared cargo build"
            );
            current = Some(id.to_owned());
        } else if let Some(id) = &current
            && let Some(call) = line.trim().strip_prefix("$(call copy-bootstrap,")
        {
            let binary = call
                .strip_suffix(')')
                .expect("$(call copy-bootstrap,<binary>)");
            assert!(
                targets.insert(id.clone(), binary.to_owned()).is_none(),
                "build-{id} copies twice"
            );
            current = None;
        }
    }
    targets
}

#[test]
fn sam_build_builds_every_function_from_one_shared_cargo_build() {
    let makefile = std::fs::read_to_string(workspace_root().join("Makefile")).unwrap();
    let targets = makefile_build_targets(&makefile);
    let in_template: std::collections::BTreeMap<String, String> = template()
        .functions
        .iter()
        .map(|f| (f.logical_id.clone(), f.binary.clone()))
        .collect();
    assert_eq!(
        targets, in_template,
        "Makefile build-<LogicalId> targets vs template.yaml functions and their Binary"
    );
    // The shared build: every function, release profile, for Lambda's arm64 (provided.al2023
    // runs the artifact root's `bootstrap`, which each target copies from cargo lambda's
    // output directory).
    let shared = makefile
        .split("\nlambda-binaries:\n")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .expect("a lambda-binaries rule");
    for part in [
        "$(CARGO) lambda build",
        "--release",
        "--arm64",
        "-p herald-functions",
    ] {
        assert!(
            shared.contains(part),
            "lambda-binaries runs {shared:?}, without {part}"
        );
    }
    assert!(makefile.contains(r#"cp "$(LAMBDA_DIR)/$(1)/bootstrap" "$(ARTIFACTS_DIR)/bootstrap""#));
}

#[test]
fn the_events_queue_takes_the_messages_the_publisher_makes() {
    // The publisher sizes messages to MAX_MESSAGE_BYTES; a smaller queue limit would refuse
    // them, so the template states the limit instead of leaving it to the account default.
    let template = template();
    let (_, queue) = &template.resources["EventsQueue"];
    assert_eq!(
        queue["MaximumMessageSize"].as_u64(),
        Some(shared::events::MAX_MESSAGE_BYTES as u64)
    );
}

/// The dimension names a metric is published under: its own set and its rollups.
fn published_dimension_sets(metric: &shared::metrics::Metric) -> Vec<BTreeSet<&'static str>> {
    std::iter::once(metric.dimensions)
        .chain(metric.rollups.iter().copied())
        .map(|set| set.iter().copied().collect())
        .collect()
}

/// Holds one use of a Herald metric (by name and dimension names) against the code.
fn check_metric_use(context: &str, name: &str, dimensions: BTreeSet<String>) {
    let Some(metric) = shared::metrics::ALL.iter().find(|m| m.name == name) else {
        panic!("{context}: Herald emits no metric {name}");
    };
    let dimensions: BTreeSet<&str> = dimensions.iter().map(String::as_str).collect();
    assert!(
        published_dimension_sets(metric).contains(&dimensions),
        "{context}: {name} is not published with dimensions {dimensions:?}"
    );
}

fn is_herald_namespace(value: &serde_yaml::Value) -> bool {
    let text = match value {
        serde_yaml::Value::Tagged(tagged) => tagged.value.as_str(),
        other => other.as_str(),
    };
    text == Some("Herald/${Stage}")
}

fn dimension_names(dimensions: Option<&serde_yaml::Value>) -> BTreeSet<String> {
    dimensions
        .and_then(serde_yaml::Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("Name")?.as_str().map(str::to_owned))
        .collect()
}

/// CloudWatch accepts an alarm or a dashboard on a metric nobody publishes and shows it as
/// "no data" forever: so every Herald metric the template names must be one the code
/// emits (`shared::metrics::ALL`), with a dimension set it is published under.
#[test]
fn alarms_and_the_dashboard_name_metrics_the_code_emits() {
    let template = template();
    let mut checked = 0;
    for (id, alarm) in template.resources_of_type("AWS::CloudWatch::Alarm") {
        if alarm.get("Namespace").is_some_and(is_herald_namespace) {
            let name = alarm["MetricName"].as_str().unwrap();
            check_metric_use(id, name, dimension_names(alarm.get("Dimensions")));
            checked += 1;
        }
        for query in alarm
            .get("Metrics")
            .and_then(serde_yaml::Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let Some(metric) = query.get("MetricStat").map(|stat| &stat["Metric"]) else {
                continue;
            };
            assert!(is_herald_namespace(&metric["Namespace"]), "{id}");
            let name = metric["MetricName"].as_str().unwrap();
            check_metric_use(id, name, dimension_names(metric.get("Dimensions")));
            checked += 1;
        }
    }
    let (_, dashboard) = template
        .resources_of_type("AWS::CloudWatch::Dashboard")
        .next()
        .expect("an operations dashboard");
    let serde_yaml::Value::Tagged(body) = &dashboard["DashboardBody"] else {
        panic!("the dashboard body is a !Sub string");
    };
    // `${…}` substitutions stand inside JSON strings, so the body parses as it is.
    let body: serde_json::Value = serde_json::from_str(body.value.as_str().unwrap()).unwrap();
    for widget in body["widgets"].as_array().unwrap() {
        let title = widget["properties"]["title"].as_str().unwrap_or_default();
        for line in widget["properties"]["metrics"].as_array().unwrap() {
            let parts: Vec<&str> = line
                .as_array()
                .unwrap()
                .iter()
                .filter_map(serde_json::Value::as_str)
                .collect();
            if parts[0] != "Herald/${Stage}" {
                continue;
            }
            let dimensions = parts[2..].chunks(2).map(|kv| kv[0].to_owned()).collect();
            check_metric_use(title, parts[1], dimensions);
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} metric uses found");
}

/// Issue 21: a number the environment gets wrong fails the function's start, naming the
/// variable, instead of silently becoming the default (a provider timeout included, though
/// the client itself is built on first use).
#[tokio::test]
async fn a_malformed_number_fails_the_function_at_init_naming_the_variable() {
    for variable in [
        "SENDGRID_TIMEOUT_MS",
        "TWILIO_TIMEOUT_MS",
        "STRIPE_TIMEOUT_MS",
        "STRIPE_BUDGET_SECONDS",
        "MAX_RECEIVES",
        "RETRY_BASE_SECONDS",
    ] {
        let options = crate::helpers::test_options(|options| {
            options
                .overrides
                .insert(variable.to_owned(), "10s".to_owned());
        });
        let Err(error) = local::start(options).await else {
            panic!("{variable}=10s: the bundle started");
        };
        let error = format!("{error:#}");
        assert!(error.contains(variable) && error.contains("10s"), "{error}");
    }
}
