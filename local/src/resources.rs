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

use crate::template::BundleTemplate;

/// Local names of the resources, by logical id.
pub type ResourceNames = BTreeMap<String, String>;

/// Creates every resource the runner supports (skipping those that exist) and returns the
/// local name of every resource in the template.
///
/// # Errors
/// When a create call fails for a reason other than "already exists".
pub async fn create_all(
    template: &BundleTemplate,
    aws: &AwsClients,
    prefix: &str,
) -> anyhow::Result<ResourceNames> {
    let mut names = ResourceNames::new();
    for (id, (kind, properties)) in &template.resources {
        let name = format!("{prefix}-{id}");
        if kind == "AWS::DynamoDB::Table" {
            create_table(aws, &name, properties)
                .await
                .with_context(|| format!("creating table {id}"))?;
        }
        names.insert(id.clone(), name);
    }
    Ok(names)
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
