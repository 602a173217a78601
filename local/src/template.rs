//! Reads `template.yaml`: the functions, their events and environment, and the resources
//! the local runner must create. The template is the single source of truth; a route or
//! table that is not declared there does not exist locally either.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde_yaml::Value;

/// One `AWS::Serverless::Function`.
#[derive(Debug, Clone)]
pub struct FunctionDef {
    pub logical_id: String,
    pub binary: String,
    /// Environment variables, `!Ref`s still unresolved.
    pub environment: BTreeMap<String, Value>,
    pub http_routes: Vec<HttpRouteDef>,
    /// The SQS queues its `AWS::Lambda::EventSourceMapping`s poll.
    pub queues: Vec<QueueSourceDef>,
    /// Schedule expressions (`rate(5 minutes)`, `cron(0 2 * * ? *)`).
    pub schedules: Vec<String>,
    /// Whether the function has a function URL (webhooks).
    pub function_url: bool,
    /// `Timeout` (the function's, else the Globals'), at which Lambda stops an invocation.
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSourceDef {
    pub queue: String,
    pub batch_size: usize,
    pub report_failures: bool,
}

/// An `HttpApi` event: `Method: ANY` matches every method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRouteDef {
    pub method: String,
    pub path: String,
    pub authorized: bool,
}

#[derive(Debug, Clone)]
pub struct BundleTemplate {
    pub functions: Vec<FunctionDef>,
    /// Every resource's logical id → (type, properties).
    pub resources: BTreeMap<String, (String, Value)>,
    pub parameter_defaults: BTreeMap<String, String>,
}

impl BundleTemplate {
    /// # Errors
    /// When the file cannot be read or a function lacks what the runner needs.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text)
    }

    /// # Errors
    /// When the YAML is malformed or a function has no binary.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let doc: Value = serde_yaml::from_str(text).context("template.yaml is not YAML")?;
        let global_function = doc
            .get("Globals")
            .and_then(|g| g.get("Function"))
            .cloned()
            .unwrap_or(Value::Null);
        let global_env = global_function
            .get("Environment")
            .and_then(|e| e.get("Variables"))
            .map(mapping_of)
            .unwrap_or_default();
        let parameter_defaults = doc
            .get("Parameters")
            .and_then(Value::as_mapping)
            .map(|params| {
                params
                    .iter()
                    .filter_map(|(name, spec)| {
                        let default = spec.get("Default")?;
                        Some((name.as_str()?.to_owned(), scalar(default)?))
                    })
                    .collect()
            })
            .unwrap_or_default();

        let mut functions = Vec::new();
        let mut resources = BTreeMap::new();
        let Some(mapping) = doc.get("Resources").and_then(Value::as_mapping) else {
            bail!("template.yaml has no Resources");
        };
        for (id, resource) in mapping {
            let id = id
                .as_str()
                .context("resource id is not a string")?
                .to_owned();
            let kind = resource
                .get("Type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let properties = resource.get("Properties").cloned().unwrap_or(Value::Null);
            if kind == "AWS::Serverless::Function" {
                functions.push(function_def(
                    &id,
                    resource,
                    &properties,
                    &global_function,
                    &global_env,
                )?);
            }
            resources.insert(id, (kind, properties));
        }
        attach_event_source_mappings(&mut functions, &resources)?;
        Ok(Self {
            functions,
            resources,
            parameter_defaults,
        })
    }

    pub fn resources_of_type<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.resources
            .iter()
            .filter(move |(_, (k, _))| k == kind)
            .map(|(id, (_, properties))| (id.as_str(), properties))
    }
}

fn function_def(
    id: &str,
    resource: &Value,
    properties: &Value,
    global_function: &Value,
    global_env: &BTreeMap<String, Value>,
) -> anyhow::Result<FunctionDef> {
    let timeout = properties
        .get("Timeout")
        .or_else(|| global_function.get("Timeout"))
        .and_then(Value::as_u64)
        .map_or(
            crate::invocation::DEFAULT_TIMEOUT,
            std::time::Duration::from_secs,
        );
    let binary = resource
        .get("Metadata")
        .and_then(|m| m.get("BuildProperties"))
        .and_then(|b| b.get("Binary"))
        .and_then(Value::as_str)
        .with_context(|| format!("{id} has no Metadata.BuildProperties.Binary"))?
        .to_owned();
    let mut environment = global_env.clone();
    if let Some(vars) = properties
        .get("Environment")
        .and_then(|e| e.get("Variables"))
    {
        environment.extend(mapping_of(vars));
    }
    let mut http_routes = Vec::new();
    let mut schedules = Vec::new();
    if let Some(events) = properties.get("Events").and_then(Value::as_mapping) {
        for event in events.values() {
            let props = event.get("Properties").cloned().unwrap_or(Value::Null);
            match event.get("Type").and_then(Value::as_str) {
                // SAM gives the role of a function with an SQS event
                // AWSLambdaSQSQueueExecutionRole, which allows receiving from and deleting in
                // every queue of the account; Herald declares its event source mappings as
                // `AWS::Lambda::EventSourceMapping` resources and grants each role its own queue.
                Some("SQS") => bail!(
                    "{id}: an SQS event attaches AWSLambdaSQSQueueExecutionRole (every queue); \
                     declare an AWS::Lambda::EventSourceMapping and grant the queue instead"
                ),
                Some("Schedule" | "ScheduleV2") => {
                    let expression = props
                        .get("ScheduleExpression")
                        .or_else(|| props.get("Schedule"))
                        .and_then(Value::as_str);
                    schedules.push(
                        expression
                            .with_context(|| format!("{id}: schedule without an expression"))?
                            .to_owned(),
                    );
                }
                _ => {}
            }
            if event.get("Type").and_then(Value::as_str) == Some("HttpApi") {
                let props = event.get("Properties").cloned().unwrap_or(Value::Null);
                let authorizer = props
                    .get("Auth")
                    .and_then(|a| a.get("Authorizer"))
                    .and_then(Value::as_str);
                http_routes.push(HttpRouteDef {
                    method: props
                        .get("Method")
                        .and_then(Value::as_str)
                        .unwrap_or("ANY")
                        .to_ascii_uppercase(),
                    path: props
                        .get("Path")
                        .and_then(Value::as_str)
                        .unwrap_or("/")
                        .to_owned(),
                    authorized: authorizer != Some("NONE"),
                });
            }
        }
    }
    let function_url = properties.get("FunctionUrlConfig").is_some();
    Ok(FunctionDef {
        logical_id: id.to_owned(),
        binary,
        environment,
        http_routes,
        queues: Vec::new(),
        schedules,
        function_url,
        timeout,
    })
}

/// Gives each function the SQS queues its `AWS::Lambda::EventSourceMapping`s poll.
fn attach_event_source_mappings(
    functions: &mut [FunctionDef],
    resources: &BTreeMap<String, (String, Value)>,
) -> anyhow::Result<()> {
    for (id, (kind, props)) in resources {
        if kind != "AWS::Lambda::EventSourceMapping" {
            continue;
        }
        let function = props
            .get("FunctionName")
            .and_then(referenced_id)
            .with_context(|| format!("{id}: FunctionName is not a !Ref of a function"))?;
        let queue = props
            .get("EventSourceArn")
            .and_then(referenced_id)
            .with_context(|| format!("{id}: EventSourceArn is not a !GetAtt of a queue"))?;
        let source = QueueSourceDef {
            queue,
            batch_size: props
                .get("BatchSize")
                .and_then(Value::as_u64)
                .map_or(10, |n| n as usize),
            report_failures: props
                .get("FunctionResponseTypes")
                .and_then(Value::as_sequence)
                .is_some_and(|types| {
                    types
                        .iter()
                        .any(|t| t.as_str() == Some("ReportBatchItemFailures"))
                }),
        };
        functions
            .iter_mut()
            .find(|f| f.logical_id == function)
            .with_context(|| format!("{id}: {function} is not a function of the template"))?
            .queues
            .push(source);
    }
    Ok(())
}

/// The logical id a `!Ref X`, `!GetAtt X.Attr` or `{"Fn::GetAtt": [X, Attr]}` points at.
pub fn referenced_id(value: &Value) -> Option<String> {
    match value {
        Value::Tagged(tagged) => {
            let inner = &tagged.value;
            let target = inner.as_str().map(str::to_owned).or_else(|| {
                inner
                    .as_sequence()
                    .and_then(|s| s.first())
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })?;
            Some(target.split('.').next()?.to_owned())
        }
        Value::Mapping(map) => {
            let (key, inner) = map.iter().next()?;
            match key.as_str()? {
                "Ref" => inner.as_str().map(str::to_owned),
                "Fn::GetAtt" => inner.as_sequence()?.first()?.as_str().map(str::to_owned),
                _ => None,
            }
        }
        _ => None,
    }
}

fn mapping_of(value: &Value) -> BTreeMap<String, Value> {
    value
        .as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.clone())))
                .collect()
        })
        .unwrap_or_default()
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Sequence(items) => Some(
            items
                .iter()
                .filter_map(scalar)
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    }
}

/// What the local copy of a resource answers to `!Ref` and `!GetAtt`.
#[derive(Debug, Clone, Default)]
pub struct LocalResource {
    /// What `!Ref` gives: a table or queue name, a queue URL, a secret ARN.
    pub reference: String,
    /// `!GetAtt` attributes such as `Arn` and `QueueName`.
    pub attributes: BTreeMap<String, String>,
}

impl LocalResource {
    pub fn named(reference: impl Into<String>) -> Self {
        Self {
            reference: reference.into(),
            attributes: BTreeMap::new(),
        }
    }

    fn attribute(&self, name: &str) -> String {
        self.attributes
            .get(name)
            .cloned()
            .unwrap_or_else(|| self.reference.clone())
    }
}

/// Resolves an environment value: plain scalars, `!Ref` to a parameter or resource, and
/// `!GetAtt`/`!Sub` of local resources.
pub fn resolve(
    value: &Value,
    resources: &BTreeMap<String, LocalResource>,
    parameters: &BTreeMap<String, String>,
) -> Option<String> {
    let reference = |target: &str| {
        resources
            .get(target)
            .map(|r| r.reference.clone())
            .or_else(|| parameters.get(target).cloned())
    };
    let attribute = |target: &str| {
        let (id, attr) = target.split_once('.').unwrap_or((target, ""));
        resources.get(id).map(|r| r.attribute(attr))
    };
    match value {
        Value::Tagged(tagged) => {
            let inner = &tagged.value;
            match tagged.tag.to_string().trim_start_matches('!') {
                "Ref" => reference(inner.as_str()?),
                "GetAtt" => match inner {
                    Value::String(target) => attribute(target),
                    Value::Sequence(parts) => attribute(&format!(
                        "{}.{}",
                        parts.first()?.as_str()?,
                        parts.get(1)?.as_str()?
                    )),
                    _ => None,
                },
                "Sub" => {
                    let mut text = inner.as_str()?.to_owned();
                    while let Some(start) = text.find("${") {
                        let end = start + text[start..].find('}')?;
                        let key = text[start + 2..end].to_owned();
                        let replacement = if key.contains('.') {
                            attribute(&key)
                        } else {
                            reference(&key)
                        };
                        text.replace_range(
                            start..=end,
                            &replacement.unwrap_or_else(|| "local".to_owned()),
                        );
                    }
                    Some(text)
                }
                _ => None,
            }
        }
        Value::Mapping(map) if map.len() == 1 => {
            let (key, inner) = map.iter().next()?;
            match key.as_str()? {
                "Ref" => reference(inner.as_str()?),
                "Fn::GetAtt" => {
                    let parts = inner.as_sequence()?;
                    attribute(&format!(
                        "{}.{}",
                        parts.first()?.as_str()?,
                        parts.get(1)?.as_str()?
                    ))
                }
                _ => None,
            }
        }
        other => scalar(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKER: &str = r"
Resources:
  Queue: { Type: AWS::SQS::Queue, Properties: {} }
  Worker:
    Type: AWS::Serverless::Function
    Metadata: { BuildProperties: { Binary: email-worker } }
    Properties: {}
";

    #[test]
    fn queue_sources_come_from_event_source_mappings() {
        let template = BundleTemplate::parse(&format!(
            "{WORKER}
  WorkerSource:
    Type: AWS::Lambda::EventSourceMapping
    Properties:
      FunctionName: !Ref Worker
      EventSourceArn: !GetAtt Queue.Arn
      BatchSize: 3
      FunctionResponseTypes: [ReportBatchItemFailures]
"
        ))
        .unwrap();
        assert_eq!(
            template.functions[0].queues,
            vec![QueueSourceDef {
                queue: "Queue".to_owned(),
                batch_size: 3,
                report_failures: true
            }]
        );
    }

    #[test]
    fn a_sam_sqs_event_is_refused_for_its_every_queue_policy() {
        let text = WORKER.replace(
            "Properties: {}\n",
            "Properties:\n      Events:\n        Q: { Type: SQS, Properties: { Queue: !GetAtt Queue.Arn } }\n",
        );
        let error = BundleTemplate::parse(&text).unwrap_err().to_string();
        assert!(error.contains("AWSLambdaSQSQueueExecutionRole"), "{error}");
    }

    #[test]
    fn reads_functions_routes_and_refs() {
        let template = BundleTemplate::parse(
            r"
Parameters:
  OrgClaim: { Type: String, Default: org_id }
Globals:
  Function:
    Environment:
      Variables:
        TABLE_NAME: !Ref Table
        ORG_CLAIM: !Ref OrgClaim
Resources:
  Table: { Type: AWS::DynamoDB::Table, Properties: {} }
  Fn:
    Type: AWS::Serverless::Function
    Metadata: { BuildProperties: { Binary: templates-api } }
    Properties:
      Events:
        A: { Type: HttpApi, Properties: { Path: '/services/x/{proxy+}', Method: any } }
",
        )
        .unwrap();
        let function = &template.functions[0];
        assert_eq!(function.binary, "templates-api");
        assert_eq!(function.http_routes[0].method, "ANY");
        let names = BTreeMap::from([("Table".to_owned(), LocalResource::named("local-table"))]);
        assert_eq!(
            resolve(
                &function.environment["TABLE_NAME"],
                &names,
                &template.parameter_defaults
            )
            .unwrap(),
            "local-table"
        );
        assert_eq!(
            resolve(
                &function.environment["ORG_CLAIM"],
                &names,
                &template.parameter_defaults
            )
            .unwrap(),
            "org_id"
        );
    }
}
