//! Creates the template's resources on the local AWS endpoint (moto), named
//! `<prefix>-<LogicalId>` so several bundles (one per test) can share one moto server.

use std::collections::BTreeMap;

use anyhow::Context;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use serde_yaml::Value;
use shared::aws::AwsClients;

use aws_sdk_sqs::types::QueueAttributeName;

use crate::template::{BundleTemplate, LocalResource, referenced_id};

/// The local copy of every resource, by logical id.
pub type ResourceNames = BTreeMap<String, LocalResource>;

/// Creates every resource the runner supports (skipping those that exist) and returns what
/// every resource of the template resolves to. Secrets get their keys from `secret_values`
/// (a key the runner has no value for stays empty, i.e. "not configured").
///
/// # Errors
/// When a create call fails for a reason other than "already exists".
pub async fn create_all(
    template: &BundleTemplate,
    aws: &AwsClients,
    prefix: &str,
    secret_values: &BTreeMap<String, String>,
) -> anyhow::Result<ResourceNames> {
    let mut names = ResourceNames::new();
    // Dead-letter queues first: their ARNs go into the other queues' redrive policies.
    let mut queues: Vec<(&String, &Value)> = template
        .resources
        .iter()
        .filter(|(_, (kind, _))| kind == "AWS::SQS::Queue")
        .map(|(id, (_, properties))| (id, properties))
        .collect();
    queues.sort_by_key(|(_, properties)| properties.get("RedrivePolicy").is_some());
    for (id, properties) in queues {
        let queue = create_queue(aws, &format!("{prefix}-{id}"), properties, &names)
            .await
            .with_context(|| format!("creating queue {id}"))?;
        names.insert(id.clone(), queue);
    }
    for (id, (kind, properties)) in &template.resources {
        let name = format!("{prefix}-{id}");
        let resource = match kind.as_str() {
            "AWS::DynamoDB::Table" => {
                create_table(aws, &name, properties)
                    .await
                    .with_context(|| format!("creating table {id}"))?;
                let mut table = LocalResource::named(&name);
                table.attributes.insert(
                    "Arn".into(),
                    format!("arn:aws:dynamodb:us-east-1:123456789012:table/{name}"),
                );
                table
            }
            "AWS::SecretsManager::Secret" => {
                let mut keys = secret_keys(template, id, properties);
                let mut values = secret_values.clone();
                let generated = generated_secret(properties);
                if let Some((key, value)) = &generated {
                    keys.push(key.clone());
                    values.entry(key.clone()).or_insert_with(|| value.clone());
                }
                let empty = properties.get("SecretString").is_none()
                    && generated.is_none()
                    && !keys.iter().any(|key| secret_values.contains_key(key));
                create_secret(aws, &name, &keys, &values, empty)
                    .await
                    .with_context(|| format!("creating secret {id}"))?
            }
            "AWS::S3::Bucket" => create_bucket(aws, &name)
                .await
                .with_context(|| format!("creating bucket {id}"))?,
            "AWS::Scheduler::ScheduleGroup" => create_schedule_group(aws, &name)
                .await
                .with_context(|| format!("creating schedule group {id}"))?,
            "AWS::IAM::Role" => {
                let mut role = LocalResource::named(&name);
                role.attributes.insert(
                    "Arn".into(),
                    format!("arn:aws:iam::123456789012:role/{name}"),
                );
                role
            }
            "AWS::SQS::Queue" => continue,
            _ => LocalResource::named(&name),
        };
        names.insert(id.clone(), resource);
    }
    Ok(names)
}

async fn create_queue(
    aws: &AwsClients,
    name: &str,
    properties: &Value,
    names: &ResourceNames,
) -> anyhow::Result<LocalResource> {
    let mut request = aws.sqs.create_queue().queue_name(name);
    for attribute in [
        "VisibilityTimeout",
        "MessageRetentionPeriod",
        "DelaySeconds",
        "ReceiveMessageWaitTimeSeconds",
    ] {
        if let Some(value) = properties.get(attribute).and_then(|v| v.as_u64()) {
            request = request.attributes(QueueAttributeName::from(attribute), value.to_string());
        }
    }
    if let Some(redrive) = properties.get("RedrivePolicy") {
        let target = redrive
            .get("deadLetterTargetArn")
            .and_then(referenced_id)
            .context("RedrivePolicy without a target")?;
        let arn = names
            .get(&target)
            .and_then(|q| q.attributes.get("Arn"))
            .context("dead-letter queue not created yet")?;
        let max = redrive
            .get("maxReceiveCount")
            .and_then(Value::as_u64)
            .unwrap_or(3);
        let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max});
        request = request.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
    }
    let url = request
        .send()
        .await?
        .queue_url
        .context("CreateQueue returned no URL")?;
    let attributes = aws
        .sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?;
    let arn = attributes
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .context("queue has no ARN")?;
    let mut queue = LocalResource::named(url);
    queue.attributes.insert("Arn".into(), arn);
    queue.attributes.insert("QueueName".into(), name.to_owned());
    Ok(queue)
}

/// A bucket named like the other local resources (lowercase: S3 names allow no capitals).
async fn create_bucket(aws: &AwsClients, name: &str) -> anyhow::Result<LocalResource> {
    let name = name.to_ascii_lowercase();
    let created = aws.s3.create_bucket().bucket(&name).send().await;
    if let Err(error) = created {
        let already = error
            .as_service_error()
            .is_some_and(|e| e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists());
        anyhow::ensure!(
            already,
            "{}",
            aws_sdk_s3::error::DisplayErrorContext(&error)
        );
    }
    let mut bucket = LocalResource::named(&name);
    bucket
        .attributes
        .insert("Arn".into(), format!("arn:aws:s3:::{name}"));
    Ok(bucket)
}

/// An EventBridge Scheduler group (kept if it exists: recreating it in moto would drop
/// its schedules).
async fn create_schedule_group(aws: &AwsClients, name: &str) -> anyhow::Result<LocalResource> {
    let existing = aws.scheduler.get_schedule_group().name(name).send().await;
    let arn = match existing {
        Ok(group) => group.arn.unwrap_or_default(),
        Err(_) => {
            aws.scheduler
                .create_schedule_group()
                .name(name)
                .send()
                .await?
                .schedule_group_arn
        }
    };
    let mut group = LocalResource::named(name);
    group.attributes.insert("Arn".into(), arn);
    Ok(group)
}

/// What CloudFormation puts in a secret with `GenerateSecretString`: its
/// `GenerateStringKey` with a random string of `PasswordLength` (here hex digits from
/// random UUIDs; the runner does not honour the other options).
fn generated_secret(properties: &Value) -> Option<(String, String)> {
    let spec = properties.get("GenerateSecretString")?;
    let key = spec.get("GenerateStringKey")?.as_str()?.to_owned();
    let length = spec
        .get("PasswordLength")
        .and_then(Value::as_u64)
        .unwrap_or(32) as usize;
    let mut value = String::new();
    while value.len() < length {
        value.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    value.truncate(length);
    Some((key, value))
}

/// The names a JSON secret holds: its template value's keys, or for a secret the template
/// creates without a value, every `<NAME>` a function finds in it (`<NAME>_SECRET_ARN:
/// !Ref <secret>`).
fn secret_keys(template: &BundleTemplate, id: &str, properties: &Value) -> Vec<String> {
    if let Some(text) = properties.get("SecretString").and_then(Value::as_str) {
        let value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).unwrap_or_default();
        return value.keys().cloned().collect();
    }
    let mut keys: Vec<String> = template
        .functions
        .iter()
        .flat_map(|f| f.environment.iter())
        .filter(|(_, value)| crate::template::referenced_id(value).as_deref() == Some(id))
        .filter_map(|(variable, _)| variable.strip_suffix("_SECRET_ARN").map(str::to_owned))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Creates a secret holding `keys` with the runner's `values`, or with no value at all when
/// `empty` (one the template creates without a value, for which the runner has none: as on
/// AWS, it has no current version until someone puts one).
async fn create_secret(
    aws: &AwsClients,
    name: &str,
    keys: &[String],
    values: &BTreeMap<String, String>,
    empty: bool,
) -> anyhow::Result<LocalResource> {
    if empty {
        let output = aws.secrets.create_secret().name(name).send().await?;
        let arn = output.arn.context("CreateSecret returned no ARN")?;
        let mut resource = LocalResource::named(&arn);
        resource.attributes.insert("Id".into(), arn);
        return Ok(resource);
    }
    let secret: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|key| {
            let value = values.get(key).cloned().unwrap_or_default();
            (key.clone(), serde_json::Value::String(value))
        })
        .collect();
    let secret_string = serde_json::Value::Object(secret).to_string();
    let arn = match aws
        .secrets
        .create_secret()
        .name(name)
        .secret_string(&secret_string)
        .send()
        .await
    {
        Ok(output) => output.arn.context("CreateSecret returned no ARN")?,
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_resource_exists_exception()) =>
        {
            let output = aws
                .secrets
                .put_secret_value()
                .secret_id(name)
                .secret_string(&secret_string)
                .send()
                .await?;
            output.arn.context("PutSecretValue returned no ARN")?
        }
        Err(error) => return Err(error.into()),
    };
    let mut resource = LocalResource::named(&arn);
    resource.attributes.insert("Id".into(), arn);
    Ok(resource)
}

fn key_schema(value: Option<&Value>) -> anyhow::Result<Vec<KeySchemaElement>> {
    value
        .and_then(Value::as_sequence)
        .context("KeySchema missing")?
        .iter()
        .map(|key| {
            let name = key
                .get("AttributeName")
                .and_then(Value::as_str)
                .context("AttributeName")?;
            let kind = match key.get("KeyType").and_then(Value::as_str) {
                Some("RANGE") => KeyType::Range,
                _ => KeyType::Hash,
            };
            Ok(KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()?)
        })
        .collect()
}

async fn create_table(aws: &AwsClients, name: &str, properties: &Value) -> anyhow::Result<()> {
    let mut request = aws
        .dynamodb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_key_schema(Some(key_schema(properties.get("KeySchema"))?));
    for attribute in properties
        .get("AttributeDefinitions")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let attribute_name = attribute
            .get("AttributeName")
            .and_then(Value::as_str)
            .context("AttributeName")?;
        let kind = match attribute.get("AttributeType").and_then(Value::as_str) {
            Some("N") => ScalarAttributeType::N,
            Some("B") => ScalarAttributeType::B,
            _ => ScalarAttributeType::S,
        };
        request = request.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(attribute_name)
                .attribute_type(kind)
                .build()?,
        );
    }
    for index in properties
        .get("GlobalSecondaryIndexes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let index_name = index
            .get("IndexName")
            .and_then(Value::as_str)
            .context("IndexName")?;
        request = request.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(index_name)
                .set_key_schema(Some(key_schema(index.get("KeySchema"))?))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()?,
        );
    }
    match request.send().await {
        Ok(_) => Ok(()),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}
