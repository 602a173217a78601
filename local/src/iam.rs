//! Local IAM: every function's AWS calls checked against the policies `template.yaml` gives
//! its role, because moto enforces none (issue 17 §1).
//!
//! The runner gives each function its own clients carrying an [`IamInterceptor`] (see
//! [`LocalIam::instrument`]). Each SDK operation becomes the IAM actions and resources AWS
//! authorizes it as ([`authorized_as`]): `SendMessageBatch` is `sqs:SendMessage`,
//! `HeadObject` is `s3:GetObject`, a transaction is the item actions it holds, a
//! `CreateSchedule` also passes its target's role (`iam:PassRole` to
//! `scheduler.amazonaws.com`). A call the function's policies do not allow fails before it
//! leaves the process, as AWS would answer it `AccessDenied`, and is kept in [`denials`].
//!
//! Every call, allowed or not, is recorded per function in a process-wide registry
//! ([`recorded`]) and, when `HERALD_IAM_USAGE_FILE` names a file, appended to it (one
//! tab-separated line per new (function, action, resource)), so a whole test-suite run can be
//! compared with the template afterwards ([`audit`], `tests/tests/api/permissions.rs`).
//!
//! Resources are written in ARN form with the template's logical ids for the local names and
//! `*` for partition, region and account — `arn:*:dynamodb:*:*:table/HeraldTable/index/GSI1`
//! — on both sides, so the runner's per-bundle name prefixes drop out. S3 keys keep their
//! first segment (`…:::HeraldBucket/receipts/{key}`) and schedules their group, which is the
//! granularity the template grants at.
//!
//! `HERALD_LOCAL_IAM=record` records without denying; `off` skips the check altogether.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex};

use anyhow::{Context, bail};
use aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::Input;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use serde_yaml::Value;
use shared::aws::AwsClients;

use crate::resources::ResourceNames;
use crate::sdk_counters::with_interceptor;
use crate::template::BundleTemplate;

/// The SAM policy templates Herald uses, verbatim from aws-sam-translator 1.115.0
/// (`samtranslator/policy_templates_data/policy_templates.json`, the file SAM expands
/// `Policies:` entries with); `permissions::sam_policy_templates_match_the_translator` checks
/// them against the installed translator.
pub const SAM_POLICY_TEMPLATES: &str = include_str!("iam_sam_policy_templates.json");

/// What SAM attaches to every function role, and which Herald does not list: Lambda's own
/// log writes (`AWSLambdaBasicExecutionRole`). Neither side of the check counts them.
const BASIC_EXECUTION_ROLE: &str = "AWSLambdaBasicExecutionRole";

/// What an SQS event source mapping does with its function's role (AWS Lambda Developer
/// Guide, "Using Lambda with Amazon SQS", execution role permissions).
const SQS_EVENT_SOURCE_ACTIONS: [&str; 3] = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
];

/// Prefix of a resource the template does not declare (a test pointed a function at a
/// fixture of its own, such as a missing bucket): not checked, not recorded.
const UNDECLARED: &str = "undeclared:";

/// One authorization AWS makes for a call: an action on a resource, and for `iam:PassRole`
/// the service the role is passed to (`iam:PassedToService`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Use {
    pub action: String,
    pub resource: String,
    pub passed_to_service: Option<String>,
}

impl Use {
    fn new(action: &str, resource: String) -> Self {
        Self {
            action: action.to_owned(),
            resource,
            passed_to_service: None,
        }
    }
}

impl std::fmt::Display for Use {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.action, self.resource)?;
        if let Some(service) = &self.passed_to_service {
            write!(f, " (passed to {service})")?;
        }
        Ok(())
    }
}

/// One (action, resource) pair a policy statement allows; both may hold `*` wildcards.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub action: String,
    pub resource: String,
    /// `iam:PassedToService` values the statement requires (empty: no condition).
    pub passed_to_service: Vec<String>,
    /// Where it comes from: `DynamoDBCrudPolicy`, `Statement`.
    pub source: String,
}

impl Grant {
    /// Whether this grant allows `used` (IAM matches actions case-insensitively).
    pub fn allows(&self, used: &Use) -> bool {
        glob(
            &self.action.to_ascii_lowercase(),
            &used.action.to_ascii_lowercase(),
        ) && glob(&self.resource, &used.resource)
            && (self.passed_to_service.is_empty()
                || used
                    .passed_to_service
                    .as_ref()
                    .is_some_and(|s| self.passed_to_service.contains(s)))
    }
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {} [{}]", self.action, self.resource, self.source)?;
        if !self.passed_to_service.is_empty() {
            write!(f, " if passed to {}", self.passed_to_service.join("|"))?;
        }
        Ok(())
    }
}

/// `*` matches any run of characters, `?` one; everything else literally.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Every function's grants, by logical id, expanded from its `Policies:`.
///
/// # Errors
/// When a policy entry is neither a known SAM policy template, the basic execution role nor
/// an inline `Statement` list, or a statement uses a condition the check cannot evaluate.
pub fn function_grants(template: &BundleTemplate) -> anyhow::Result<BTreeMap<String, Vec<Grant>>> {
    let sam: Value = serde_yaml::from_str(SAM_POLICY_TEMPLATES)
        .context("the embedded SAM policy templates are not JSON")?;
    let mut grants = BTreeMap::new();
    for function in &template.functions {
        let properties = template
            .resources
            .get(&function.logical_id)
            .map(|(_, p)| p)
            .context("function without properties")?;
        let mut function_grants = Vec::new();
        let policies = properties
            .get("Policies")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        for policy in &policies {
            expand_policy(policy, template, &sam, &mut function_grants)
                .with_context(|| format!("{}: {policy:?}", function.logical_id))?;
        }
        grants.insert(function.logical_id.clone(), function_grants);
    }
    Ok(grants)
}

fn expand_policy(
    policy: &Value,
    template: &BundleTemplate,
    sam: &Value,
    out: &mut Vec<Grant>,
) -> anyhow::Result<()> {
    if policy.as_str() == Some(BASIC_EXECUTION_ROLE) {
        return Ok(());
    }
    let Some((name, body)) = policy.as_mapping().and_then(|m| m.iter().next()) else {
        bail!("a managed policy other than {BASIC_EXECUTION_ROLE} (not expanded)");
    };
    let name = name.as_str().context("policy key is not a string")?;
    let empty = BTreeMap::new();
    if name == "Statement" {
        let statements = body.as_sequence().context("Statement is not a list")?;
        for statement in statements {
            expand_statement(statement, template, &empty, "Statement", out)?;
        }
        return Ok(());
    }
    let definition = sam
        .get(name)
        .and_then(|t| t.get("Definition"))
        .with_context(|| format!("{name} is not one of the SAM policy templates Herald knows"))?;
    let parameters: BTreeMap<String, Vec<String>> = body
        .as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), resolve(v, template, &empty))))
                .collect()
        })
        .unwrap_or_default();
    for statement in definition
        .get("Statement")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        expand_statement(statement, template, &parameters, name, out)?;
    }
    Ok(())
}

fn expand_statement(
    statement: &Value,
    template: &BundleTemplate,
    parameters: &BTreeMap<String, Vec<String>>,
    source: &str,
    out: &mut Vec<Grant>,
) -> anyhow::Result<()> {
    if statement.get("Effect").and_then(Value::as_str) != Some("Allow") {
        bail!("only Allow statements are expanded");
    }
    let strings = |key: &str| -> Vec<String> {
        match statement.get(key) {
            Some(Value::Sequence(items)) => items
                .iter()
                .flat_map(|v| resolve(v, template, parameters))
                .collect(),
            Some(value) => resolve(value, template, parameters),
            None => Vec::new(),
        }
    };
    let mut passed_to_service = Vec::new();
    if let Some(condition) = statement.get("Condition") {
        let map = condition
            .as_mapping()
            .context("Condition is not a mapping")?;
        for (operator, keys) in map {
            let keys = keys
                .as_mapping()
                .context("condition keys are not a mapping")?;
            for (key, values) in keys {
                if operator.as_str() != Some("StringEquals")
                    || key.as_str() != Some("iam:PassedToService")
                {
                    bail!("condition {operator:?} {key:?} is not evaluated locally");
                }
                passed_to_service.extend(match values {
                    Value::Sequence(items) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect::<Vec<_>>(),
                    other => other.as_str().map(str::to_owned).into_iter().collect(),
                });
            }
        }
    }
    let resources = strings("Resource");
    for action in strings("Action") {
        for resource in &resources {
            out.push(Grant {
                action: action.clone(),
                resource: resource.clone(),
                passed_to_service: passed_to_service.clone(),
                source: source.to_owned(),
            });
        }
    }
    Ok(())
}

/// What a template value stands for in an ARN, with logical ids for names and `*` for the
/// partition, region and account. Several strings where a list is given.
fn resolve(
    value: &Value,
    template: &BundleTemplate,
    parameters: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let kind = |id: &str| template.resources.get(id).map(|(k, _)| k.as_str());
    let reference = |target: &str| -> String {
        if let Some(value) = parameters.get(target).and_then(|v| v.first()) {
            return value.clone();
        }
        match target {
            "AWS::Partition" | "AWS::Region" | "AWS::AccountId" => return "*".to_owned(),
            _ => {}
        }
        match kind(target) {
            Some("AWS::SecretsManager::Secret") => {
                format!("arn:*:secretsmanager:*:*:secret:{target}")
            }
            Some(_) => target.to_owned(),
            None => template
                .parameter_defaults
                .get(target)
                .cloned()
                .unwrap_or_else(|| target.to_owned()),
        }
    };
    let attribute = |target: &str| -> String {
        let (id, attr) = target.split_once('.').unwrap_or((target, ""));
        match (kind(id), attr) {
            (Some("AWS::DynamoDB::Table"), "Arn") => format!("arn:*:dynamodb:*:*:table/{id}"),
            (Some("AWS::SQS::Queue"), "Arn") => format!("arn:*:sqs:*:*:{id}"),
            (Some("AWS::S3::Bucket"), "Arn") => format!("arn:*:s3:::{id}"),
            (Some("AWS::IAM::Role"), "Arn") => format!("arn:*:iam::*:role/{id}"),
            (Some("AWS::Scheduler::ScheduleGroup"), "Arn") => {
                format!("arn:*:scheduler:*:*:schedule-group/{id}")
            }
            _ => id.to_owned(),
        }
    };
    let substitute = |text: &str, vars: &BTreeMap<String, String>| -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                break;
            };
            let key = &rest[start + 2..start + end];
            out.push_str(&match vars.get(key) {
                Some(value) => value.clone(),
                None if key.contains('.') => attribute(key),
                None => reference(key),
            });
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        out
    };
    let sub = |inner: &Value| -> Option<String> {
        match inner {
            Value::String(text) => Some(substitute(text, &BTreeMap::new())),
            Value::Sequence(parts) => {
                let text = parts.first()?.as_str()?;
                let vars = parts
                    .get(1)
                    .and_then(Value::as_mapping)
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| {
                                Some((
                                    k.as_str()?.to_owned(),
                                    resolve(v, template, parameters).into_iter().next()?,
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Some(substitute(text, &vars))
            }
            _ => None,
        }
    };
    let get_att = |inner: &Value| -> Option<String> {
        match inner {
            Value::String(target) => Some(attribute(target)),
            Value::Sequence(parts) => Some(attribute(&format!(
                "{}.{}",
                parts.first()?.as_str()?,
                parts.get(1)?.as_str()?
            ))),
            _ => None,
        }
    };
    let (function, inner) = match value {
        Value::String(text) => return vec![text.clone()],
        Value::Sequence(items) => {
            return items
                .iter()
                .flat_map(|v| resolve(v, template, parameters))
                .collect();
        }
        Value::Tagged(tagged) => (
            tagged.tag.to_string().trim_start_matches('!').to_owned(),
            &tagged.value,
        ),
        Value::Mapping(map) if map.len() == 1 => {
            let Some((key, inner)) = map.iter().next() else {
                return Vec::new();
            };
            let key = key.as_str().unwrap_or_default();
            (key.trim_start_matches("Fn::").to_owned(), inner)
        }
        _ => return Vec::new(),
    };
    let resolved = match function.as_str() {
        "Ref" => inner.as_str().map(reference),
        "GetAtt" => get_att(inner),
        "Sub" => sub(inner),
        _ => None,
    };
    resolved.into_iter().collect()
}

/// What the Lambda service itself does with a function's role: an SQS event source mapping
/// polls, deletes and reads the attributes of its queue ([`SQS_EVENT_SOURCE_ACTIONS`]; the
/// template grants them per queue, `template.rs` refuses SAM's SQS events, whose managed
/// policy allows them on every queue). The local runner polls with its own clients, so these are
/// counted as used from the template's event sources rather than observed.
pub fn event_source_uses(template: &BundleTemplate) -> BTreeMap<String, BTreeSet<Use>> {
    template
        .functions
        .iter()
        .map(|function| {
            let uses = function
                .queues
                .iter()
                .flat_map(|source| {
                    SQS_EVENT_SOURCE_ACTIONS
                        .map(|action| Use::new(action, format!("arn:*:sqs:*:*:{}", source.queue)))
                })
                .collect();
            (function.logical_id.clone(), uses)
        })
        .collect()
}

/// A call refused because no grant allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The bundle's resource-name prefix (`BundleOptions::prefix`).
    pub bundle: String,
    pub function: String,
    pub operation: String,
    pub denied: Use,
}

#[derive(Default)]
struct Registry {
    used: BTreeMap<String, BTreeSet<Use>>,
    denials: Vec<Denial>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

/// Everything every function of every bundle in this process has called, by logical id.
pub fn recorded() -> BTreeMap<String, BTreeSet<Use>> {
    REGISTRY.lock().map(|r| r.used.clone()).unwrap_or_default()
}

/// Every call refused in this process so far.
pub fn denials() -> Vec<Denial> {
    REGISTRY
        .lock()
        .map(|r| r.denials.clone())
        .unwrap_or_default()
}

/// Reads a usage file written by runs with `HERALD_IAM_USAGE_FILE` set.
///
/// # Errors
/// When the file cannot be read.
pub fn read_usage_file(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, BTreeSet<Use>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut used: BTreeMap<String, BTreeSet<Use>> = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split('\t');
        let (Some(function), Some(action), Some(resource)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let passed_to_service = fields.next().filter(|s| !s.is_empty()).map(str::to_owned);
        used.entry(function.to_owned()).or_default().insert(Use {
            action: action.to_owned(),
            resource: resource.to_owned(),
            passed_to_service,
        });
    }
    Ok(used)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Enforce,
    Record,
    Off,
}

/// The policies of one bundle's functions, and the local names its calls carry.
#[derive(Debug)]
pub struct LocalIam {
    grants: BTreeMap<String, Vec<Grant>>,
    /// Local name, URL or ARN → logical id.
    logical: BTreeMap<String, String>,
    /// The prefix of the bundle's local names.
    bundle: String,
    mode: Mode,
    usage_file: Option<std::path::PathBuf>,
}

impl LocalIam {
    /// # Errors
    /// When a function's policies cannot be expanded ([`function_grants`]).
    pub fn new(template: &BundleTemplate, names: &ResourceNames) -> anyhow::Result<Arc<Self>> {
        let mode = match std::env::var("HERALD_LOCAL_IAM").as_deref() {
            Ok("record") => Mode::Record,
            Ok("off") => Mode::Off,
            _ => Mode::Enforce,
        };
        let mut logical = BTreeMap::new();
        let mut bundle = String::new();
        for (id, resource) in names {
            if let Some(prefix) = resource.reference.strip_suffix(&format!("-{id}")) {
                prefix.clone_into(&mut bundle);
            }
            logical.insert(resource.reference.clone(), id.clone());
            for value in resource.attributes.values() {
                logical.insert(value.clone(), id.clone());
            }
        }
        Ok(Arc::new(Self {
            grants: function_grants(template)?,
            logical,
            bundle,
            mode,
            usage_file: std::env::var_os("HERALD_IAM_USAGE_FILE").map(Into::into),
        }))
    }

    /// `aws` for the function `logical_id`: every call is checked against its grants and
    /// recorded.
    pub fn instrument(self: &Arc<Self>, logical_id: &str, aws: &AwsClients) -> AwsClients {
        if self.mode == Mode::Off {
            return aws.clone();
        }
        with_interceptor(
            aws,
            IamInterceptor {
                iam: Arc::clone(self),
                function: logical_id.to_owned(),
            },
        )
    }

    fn name_of(&self, local: &str) -> String {
        self.logical
            .get(local)
            .cloned()
            .unwrap_or_else(|| format!("{UNDECLARED}{local}"))
    }

    /// Records `uses` for `function`; the first one no grant allows, if any.
    fn check(&self, function: &str, operation: &str, uses: Vec<Use>) -> Option<Use> {
        let grants = self.grants.get(function).map_or(&[][..], Vec::as_slice);
        let mut denied = None;
        let Ok(mut registry) = REGISTRY.lock() else {
            return None;
        };
        for used in uses {
            if used.resource.contains(UNDECLARED) {
                continue;
            }
            if denied.is_none() && !grants.iter().any(|g| g.allows(&used)) {
                registry.denials.push(Denial {
                    bundle: self.bundle.clone(),
                    function: function.to_owned(),
                    operation: operation.to_owned(),
                    denied: used.clone(),
                });
                denied = Some(used.clone());
            }
            let new = registry
                .used
                .entry(function.to_owned())
                .or_default()
                .insert(used.clone());
            if new && let Some(path) = &self.usage_file {
                let line = format!(
                    "{function}\t{}\t{}\t{}\n",
                    used.action,
                    used.resource,
                    used.passed_to_service.as_deref().unwrap_or_default()
                );
                let appended = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut file| file.write_all(line.as_bytes()));
                if let Err(error) = appended {
                    tracing::warn!(%error, path = %path.display(), "could not record IAM usage");
                }
            }
        }
        denied
    }
}

#[derive(Debug, Clone)]
struct IamInterceptor {
    iam: Arc<LocalIam>,
    function: String,
}

impl Intercept for IamInterceptor {
    fn name(&self) -> &'static str {
        "HeraldLocalIam"
    }

    fn read_before_serialization(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(metadata) = cfg.load::<Metadata>() else {
            return Ok(());
        };
        let operation = format!("{}.{}", metadata.service(), metadata.name());
        let uses = authorized_as(
            metadata.service(),
            metadata.name(),
            context.input(),
            &|local| self.iam.name_of(local),
        );
        let Some(denied) = self.iam.check(&self.function, &operation, uses) else {
            return Ok(());
        };
        tracing::error!(
            function = self.function,
            operation,
            denied = %denied,
            "AccessDenied: template.yaml does not allow this call"
        );
        if self.iam.mode == Mode::Enforce {
            return Err(format!(
                "AccessDenied (local IAM): {} is not authorized to perform {denied} \
                 ({operation}); template.yaml grants its role no such permission",
                self.function
            )
            .into());
        }
        Ok(())
    }
}

/// The S3 key as the template grants it: its first segment and a placeholder.
fn key_pattern(key: &str) -> String {
    match key.split_once('/') {
        Some((first, _)) => format!("{first}/{{key}}"),
        None => "{key}".to_owned(),
    }
}

/// The IAM authorizations AWS makes for one SDK operation (Service Authorization Reference:
/// "Actions, resources, and condition keys" for DynamoDB, SQS, S3, Secrets Manager and
/// EventBridge Scheduler). `name` turns a local resource name, URL or ARN into its logical id.
pub fn authorized_as(
    service: &str,
    operation: &str,
    input: &Input,
    name: &dyn Fn(&str) -> String,
) -> Vec<Use> {
    match service {
        "DynamoDB" => dynamodb(operation, input, name),
        "SQS" => sqs(operation, input, name),
        "S3" => s3(operation, input, name),
        "Secrets Manager" => secrets(operation, input, name),
        "Scheduler" => scheduler(operation, input, name),
        _ => vec![Use::new(
            &format!("{}:{operation}", service.to_ascii_lowercase()),
            "*".to_owned(),
        )],
    }
}

fn dynamodb(operation: &str, input: &Input, name: &dyn Fn(&str) -> String) -> Vec<Use> {
    use aws_sdk_dynamodb::operation::{
        batch_get_item::BatchGetItemInput, batch_write_item::BatchWriteItemInput,
        delete_item::DeleteItemInput, describe_table::DescribeTableInput, get_item::GetItemInput,
        put_item::PutItemInput, query::QueryInput, scan::ScanInput,
        transact_get_items::TransactGetItemsInput, transact_write_items::TransactWriteItemsInput,
        update_item::UpdateItemInput,
    };
    let table = |t: Option<&str>| format!("arn:*:dynamodb:*:*:table/{}", name(t.unwrap_or("*")));
    let index = |t: Option<&str>, i: Option<&str>| match i {
        Some(i) => format!("{}/index/{i}", table(t)),
        None => table(t),
    };
    let one = |action: &str, resource: String| vec![Use::new(action, resource)];
    match operation {
        "GetItem" => input
            .downcast_ref::<GetItemInput>()
            .map(|i| one("dynamodb:GetItem", table(i.table_name())))
            .unwrap_or_default(),
        "PutItem" => input
            .downcast_ref::<PutItemInput>()
            .map(|i| one("dynamodb:PutItem", table(i.table_name())))
            .unwrap_or_default(),
        "UpdateItem" => input
            .downcast_ref::<UpdateItemInput>()
            .map(|i| one("dynamodb:UpdateItem", table(i.table_name())))
            .unwrap_or_default(),
        "DeleteItem" => input
            .downcast_ref::<DeleteItemInput>()
            .map(|i| one("dynamodb:DeleteItem", table(i.table_name())))
            .unwrap_or_default(),
        "DescribeTable" => input
            .downcast_ref::<DescribeTableInput>()
            .map(|i| one("dynamodb:DescribeTable", table(i.table_name())))
            .unwrap_or_default(),
        "Query" => input
            .downcast_ref::<QueryInput>()
            .map(|i| one("dynamodb:Query", index(i.table_name(), i.index_name())))
            .unwrap_or_default(),
        "Scan" => input
            .downcast_ref::<ScanInput>()
            .map(|i| one("dynamodb:Scan", index(i.table_name(), i.index_name())))
            .unwrap_or_default(),
        "BatchWriteItem" => input
            .downcast_ref::<BatchWriteItemInput>()
            .and_then(|i| i.request_items())
            .map(|tables| {
                tables
                    .keys()
                    .map(|t| Use::new("dynamodb:BatchWriteItem", table(Some(t))))
                    .collect()
            })
            .unwrap_or_default(),
        "BatchGetItem" => input
            .downcast_ref::<BatchGetItemInput>()
            .and_then(|i| i.request_items())
            .map(|tables| {
                tables
                    .keys()
                    .map(|t| Use::new("dynamodb:BatchGetItem", table(Some(t))))
                    .collect()
            })
            .unwrap_or_default(),
        // IAM has no TransactWriteItems action: each item is authorized as its own action
        // (DynamoDB Developer Guide, "Using IAM with DynamoDB transactions").
        "TransactWriteItems" => input
            .downcast_ref::<TransactWriteItemsInput>()
            .map(|i| {
                i.transact_items()
                    .iter()
                    .flat_map(|item| {
                        [
                            item.put()
                                .map(|p| Use::new("dynamodb:PutItem", table(Some(p.table_name())))),
                            item.update().map(|u| {
                                Use::new("dynamodb:UpdateItem", table(Some(u.table_name())))
                            }),
                            item.delete().map(|d| {
                                Use::new("dynamodb:DeleteItem", table(Some(d.table_name())))
                            }),
                            item.condition_check().map(|c| {
                                Use::new("dynamodb:ConditionCheckItem", table(Some(c.table_name())))
                            }),
                        ]
                    })
                    .flatten()
                    .collect()
            })
            .unwrap_or_default(),
        "TransactGetItems" => input
            .downcast_ref::<TransactGetItemsInput>()
            .map(|i| {
                i.transact_items()
                    .iter()
                    .filter_map(|item| item.get())
                    .map(|g| Use::new("dynamodb:GetItem", table(Some(g.table_name()))))
                    .collect()
            })
            .unwrap_or_default(),
        other => one(&format!("dynamodb:{other}"), "*".to_owned()),
    }
}

fn sqs(operation: &str, input: &Input, name: &dyn Fn(&str) -> String) -> Vec<Use> {
    if operation == "StartMessageMoveTask" {
        return message_move(input, name);
    }
    use aws_sdk_sqs::operation::{
        change_message_visibility::ChangeMessageVisibilityInput,
        change_message_visibility_batch::ChangeMessageVisibilityBatchInput,
        delete_message::DeleteMessageInput, delete_message_batch::DeleteMessageBatchInput,
        get_queue_attributes::GetQueueAttributesInput, receive_message::ReceiveMessageInput,
        send_message::SendMessageInput, send_message_batch::SendMessageBatchInput,
    };
    let queue_url = match operation {
        "SendMessage" => input
            .downcast_ref::<SendMessageInput>()
            .and_then(|i| i.queue_url()),
        "SendMessageBatch" => input
            .downcast_ref::<SendMessageBatchInput>()
            .and_then(|i| i.queue_url()),
        "ReceiveMessage" => input
            .downcast_ref::<ReceiveMessageInput>()
            .and_then(|i| i.queue_url()),
        "DeleteMessage" => input
            .downcast_ref::<DeleteMessageInput>()
            .and_then(|i| i.queue_url()),
        "DeleteMessageBatch" => input
            .downcast_ref::<DeleteMessageBatchInput>()
            .and_then(|i| i.queue_url()),
        "ChangeMessageVisibility" => input
            .downcast_ref::<ChangeMessageVisibilityInput>()
            .and_then(|i| i.queue_url()),
        "ChangeMessageVisibilityBatch" => input
            .downcast_ref::<ChangeMessageVisibilityBatchInput>()
            .and_then(|i| i.queue_url()),
        "GetQueueAttributes" => input
            .downcast_ref::<GetQueueAttributesInput>()
            .and_then(|i| i.queue_url()),
        _ => None,
    };
    // The batch operations have no IAM actions of their own: SendMessageBatch is authorized
    // as sqs:SendMessage, and so on (Service Authorization Reference, Amazon SQS: "the
    // SendMessageBatch … API actions are authorized through the corresponding actions").
    let action = match operation {
        "SendMessageBatch" => "SendMessage",
        "DeleteMessageBatch" => "DeleteMessage",
        "ChangeMessageVisibilityBatch" => "ChangeMessageVisibility",
        other => other,
    };
    let resource = queue_url.map_or_else(
        || "*".to_owned(),
        |url| format!("arn:*:sqs:*:*:{}", name(url)),
    );
    vec![Use::new(&format!("sqs:{action}"), resource)]
}

/// A message move task is carried out by SQS with the caller's permissions: on the source
/// (the DLQ) `sqs:StartMessageMoveTask`, `sqs:ReceiveMessage`, `sqs:DeleteMessage` and
/// `sqs:GetQueueAttributes`, on the destination `sqs:SendMessage` (SQS Developer Guide,
/// "Configure queue permissions for dead-letter queue redrive"). A role missing any of
/// them starts a task that fails, so each is checked as the call's own.
fn message_move(input: &Input, name: &dyn Fn(&str) -> String) -> Vec<Use> {
    use aws_sdk_sqs::operation::start_message_move_task::StartMessageMoveTaskInput;
    let Some(input) = input.downcast_ref::<StartMessageMoveTaskInput>() else {
        return vec![Use::new("sqs:StartMessageMoveTask", "*".to_owned())];
    };
    let queue = |arn: Option<&str>| {
        arn.map_or_else(
            || "*".to_owned(),
            |arn| format!("arn:*:sqs:*:*:{}", name(arn)),
        )
    };
    let source = queue(input.source_arn());
    let mut uses: Vec<Use> = [
        "sqs:StartMessageMoveTask",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    ]
    .iter()
    .map(|action| Use::new(action, source.clone()))
    .collect();
    uses.push(Use::new("sqs:SendMessage", queue(input.destination_arn())));
    uses
}

fn s3(operation: &str, input: &Input, name: &dyn Fn(&str) -> String) -> Vec<Use> {
    use aws_sdk_s3::operation::{
        abort_multipart_upload::AbortMultipartUploadInput,
        complete_multipart_upload::CompleteMultipartUploadInput,
        create_multipart_upload::CreateMultipartUploadInput, delete_object::DeleteObjectInput,
        delete_objects::DeleteObjectsInput, get_object::GetObjectInput,
        head_object::HeadObjectInput, list_objects_v2::ListObjectsV2Input,
        put_object::PutObjectInput, upload_part::UploadPartInput,
    };
    let object = |bucket: Option<&str>, key: Option<&str>| {
        format!(
            "arn:*:s3:::{}/{}",
            name(bucket.unwrap_or("*")),
            key_pattern(key.unwrap_or("*"))
        )
    };
    macro_rules! object_call {
        ($input:ty, $action:literal) => {
            input
                .downcast_ref::<$input>()
                .map(|i| vec![Use::new($action, object(i.bucket(), i.key()))])
                .unwrap_or_default()
        };
    }
    // Object operations by the action that authorizes them (Service Authorization
    // Reference, Amazon S3: a multipart upload's create, parts and completion are
    // s3:PutObject; HeadObject is s3:GetObject; ListObjectsV2 is s3:ListBucket).
    match operation {
        "PutObject" => object_call!(PutObjectInput, "s3:PutObject"),
        "CreateMultipartUpload" => object_call!(CreateMultipartUploadInput, "s3:PutObject"),
        "UploadPart" => object_call!(UploadPartInput, "s3:PutObject"),
        "CompleteMultipartUpload" => object_call!(CompleteMultipartUploadInput, "s3:PutObject"),
        "AbortMultipartUpload" => {
            object_call!(AbortMultipartUploadInput, "s3:AbortMultipartUpload")
        }
        "GetObject" => object_call!(GetObjectInput, "s3:GetObject"),
        "HeadObject" => object_call!(HeadObjectInput, "s3:GetObject"),
        "DeleteObject" => object_call!(DeleteObjectInput, "s3:DeleteObject"),
        "DeleteObjects" => input
            .downcast_ref::<DeleteObjectsInput>()
            .map(|i| {
                i.delete()
                    .map(|d| d.objects())
                    .unwrap_or_default()
                    .iter()
                    .map(|o| Use::new("s3:DeleteObject", object(i.bucket(), Some(o.key()))))
                    .collect()
            })
            .unwrap_or_default(),
        "ListObjectsV2" => input
            .downcast_ref::<ListObjectsV2Input>()
            .map(|i| {
                vec![Use::new(
                    "s3:ListBucket",
                    format!("arn:*:s3:::{}", name(i.bucket().unwrap_or("*"))),
                )]
            })
            .unwrap_or_default(),
        other => vec![Use::new(&format!("s3:{other}"), "*".to_owned())],
    }
}

fn secrets(operation: &str, input: &Input, name: &dyn Fn(&str) -> String) -> Vec<Use> {
    use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretInput;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueInput;
    let secret = input
        .downcast_ref::<GetSecretValueInput>()
        .and_then(|i| i.secret_id())
        .or_else(|| {
            input
                .downcast_ref::<DescribeSecretInput>()
                .and_then(|i| i.secret_id())
        })
        .map_or_else(
            || "*".to_owned(),
            |id| format!("arn:*:secretsmanager:*:*:secret:{}", name(id)),
        );
    vec![Use::new(&format!("secretsmanager:{operation}"), secret)]
}

fn scheduler(operation: &str, input: &Input, name: &dyn Fn(&str) -> String) -> Vec<Use> {
    use aws_sdk_scheduler::operation::{
        create_schedule::CreateScheduleInput, delete_schedule::DeleteScheduleInput,
        get_schedule::GetScheduleInput, update_schedule::UpdateScheduleInput,
    };
    let schedule = |group: Option<&str>| {
        format!(
            "arn:*:scheduler:*:*:schedule/{}/{{name}}",
            group.map_or_else(|| "default".to_owned(), name)
        )
    };
    let action = format!("scheduler:{operation}");
    // Creating or updating a schedule passes its target's role to the scheduler
    // (EventBridge Scheduler User Guide, "Set up the execution role": iam:PassRole).
    let pass_role = |role: Option<&str>| Use {
        action: "iam:PassRole".to_owned(),
        resource: format!("arn:*:iam::*:role/{}", name(role.unwrap_or("*"))),
        passed_to_service: Some("scheduler.amazonaws.com".to_owned()),
    };
    match operation {
        "CreateSchedule" => input
            .downcast_ref::<CreateScheduleInput>()
            .map(|i| {
                vec![
                    Use::new(&action, schedule(i.group_name())),
                    pass_role(i.target().map(|t| t.role_arn())),
                ]
            })
            .unwrap_or_default(),
        "UpdateSchedule" => input
            .downcast_ref::<UpdateScheduleInput>()
            .map(|i| {
                vec![
                    Use::new(&action, schedule(i.group_name())),
                    pass_role(i.target().map(|t| t.role_arn())),
                ]
            })
            .unwrap_or_default(),
        "DeleteSchedule" => input
            .downcast_ref::<DeleteScheduleInput>()
            .map(|i| vec![Use::new(&action, schedule(i.group_name()))])
            .unwrap_or_default(),
        "GetSchedule" => input
            .downcast_ref::<GetScheduleInput>()
            .map(|i| vec![Use::new(&action, schedule(i.group_name()))])
            .unwrap_or_default(),
        _ => vec![Use::new(&action, "*".to_owned())],
    }
}

/// One function's measured permissions against its template grants.
#[derive(Debug, Clone)]
pub struct FunctionAudit {
    pub function: String,
    pub used: BTreeSet<Use>,
    pub granted: Vec<Grant>,
    /// Calls no grant allows (AccessDenied on AWS).
    pub missing: Vec<Use>,
    /// Grants no call used.
    pub unused: Vec<Grant>,
}

/// Compares what each function used (observed calls plus [`event_source_uses`]) with what
/// its policies grant.
pub fn audit(
    grants: &BTreeMap<String, Vec<Grant>>,
    used: &BTreeMap<String, BTreeSet<Use>>,
    template: &BundleTemplate,
) -> Vec<FunctionAudit> {
    let implicit = event_source_uses(template);
    grants
        .iter()
        .map(|(function, granted)| {
            let mut all: BTreeSet<Use> = used.get(function).cloned().unwrap_or_default();
            all.extend(implicit.get(function).cloned().unwrap_or_default());
            let missing = all
                .iter()
                .filter(|u| !granted.iter().any(|g| g.allows(u)))
                .cloned()
                .collect();
            let unused = granted
                .iter()
                .filter(|g| !all.iter().any(|u| g.allows(u)))
                .cloned()
                .collect();
            FunctionAudit {
                function: function.clone(),
                used: all,
                granted: granted.clone(),
                missing,
                unused,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_iam() {
        assert!(glob("sqs:SendMessage*", "sqs:SendMessage"));
        assert!(glob(
            "arn:*:s3:::B/receipts/*",
            "arn:*:s3:::B/receipts/{key}"
        ));
        assert!(!glob(
            "arn:*:s3:::B/receipts/*",
            "arn:*:s3:::B/reports/{key}"
        ));
        assert!(!glob(
            "arn:*:dynamodb:*:*:table/T/index/*",
            "arn:*:dynamodb:*:*:table/T"
        ));
        assert!(glob("a?c", "abc"));
    }

    #[test]
    fn expands_sam_templates_and_statements() {
        let template = BundleTemplate::parse(
            r#"
Resources:
  Table: { Type: AWS::DynamoDB::Table, Properties: {} }
  Queue: { Type: AWS::SQS::Queue, Properties: {} }
  Bucket: { Type: AWS::S3::Bucket, Properties: {} }
  Role: { Type: AWS::IAM::Role, Properties: {} }
  Fn:
    Type: AWS::Serverless::Function
    Metadata: { BuildProperties: { Binary: templates-api } }
    Properties:
      Policies:
        - AWSLambdaBasicExecutionRole
        - SQSSendMessagePolicy: { QueueName: !GetAtt Queue.QueueName }
        - Statement:
            - Effect: Allow
              Action: [dynamodb:Query]
              Resource: !Sub "${Table.Arn}/index/*"
            - Effect: Allow
              Action: s3:PutObject
              Resource: !Sub "${Bucket.Arn}/receipts/*"
            - Effect: Allow
              Action: iam:PassRole
              Resource: !GetAtt Role.Arn
              Condition:
                StringEquals: { iam:PassedToService: scheduler.amazonaws.com }
"#,
        )
        .unwrap();
        let grants = &function_grants(&template).unwrap()["Fn"];
        let shown: Vec<String> = grants.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "sqs:SendMessage* on arn:*:sqs:*:*:Queue [SQSSendMessagePolicy]",
                "dynamodb:Query on arn:*:dynamodb:*:*:table/Table/index/* [Statement]",
                "s3:PutObject on arn:*:s3:::Bucket/receipts/* [Statement]",
                "iam:PassRole on arn:*:iam::*:role/Role [Statement] if passed to scheduler.amazonaws.com",
            ]
        );
        let pass = |service: Option<&str>| Use {
            action: "iam:PassRole".into(),
            resource: "arn:*:iam::*:role/Role".into(),
            passed_to_service: service.map(str::to_owned),
        };
        assert!(grants[3].allows(&pass(Some("scheduler.amazonaws.com"))));
        assert!(!grants[3].allows(&pass(Some("lambda.amazonaws.com"))));
        assert!(!grants[3].allows(&pass(None)));
        assert!(grants[0].allows(&Use::new("SQS:sendmessage", "arn:*:sqs:*:*:Queue".into())));
    }

    #[test]
    fn the_bundle_template_expands() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");
        let template = BundleTemplate::load(std::path::Path::new(path)).unwrap();
        let grants = function_grants(&template).unwrap();
        assert_eq!(grants.len(), template.functions.len());
    }
}
