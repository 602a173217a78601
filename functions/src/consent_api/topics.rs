//! Consent topics: what an organization's people opt in to or out of.

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;

use shared::auth::Caller;
use shared::consent::{Channel, valid_topic_key};
use shared::http::{self, ApiError, FieldErrorCollector};
use shared::store::Topic;

use super::ConsentApi;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicInput {
    key: Option<String>,
    name: Option<String>,
    description: Option<String>,
    channels: Option<Vec<String>>,
    default_opted_in: Option<bool>,
}

impl ConsentApi {
    pub(super) async fn list_topics(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let org = caller.listed_org(&http::query_map(request))?;
        let topics = self.store.topics(&org).await?;
        http::json(200, &json!({ "items": topics, "next_cursor": null }))
    }

    pub(super) async fn create_topic(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let input: TopicInput = http::parse_json(request)?;
        let now = chrono::Utc::now();
        let topic = topic_from(input, None, now)?;
        self.store.create_topic(&caller.org, &topic).await?;
        self.audit(
            request,
            caller,
            "topic.create",
            format!("topic/{}", topic.key),
        )
        .await;
        http::json(201, &topic)
    }

    pub(super) async fn update_topic(
        &self,
        request: &Request,
        caller: &Caller,
        key: &str,
    ) -> Result<Response<Body>, ApiError> {
        let current = self.store.topic(&caller.org, key).await?;
        let input: TopicInput = http::parse_json(request)?;
        if input.key.as_deref().is_some_and(|k| k != key) {
            return Err(ApiError::field("key", "cannot change: it names the topic"));
        }
        let topic = topic_from(input, Some(&current), chrono::Utc::now())?;
        self.store.replace_topic(&caller.org, &topic).await?;
        self.audit(request, caller, "topic.update", format!("topic/{key}"))
            .await;
        http::json(200, &topic)
    }

    pub(super) async fn delete_topic(
        &self,
        request: &Request,
        caller: &Caller,
        key: &str,
    ) -> Result<Response<Body>, ApiError> {
        self.store.delete_topic(&caller.org, key).await?;
        self.audit(request, caller, "topic.delete", format!("topic/{key}"))
            .await;
        Ok(http::no_content())
    }
}

/// A topic from a create (`current` is `None`) or a partial update of `current`.
fn topic_from(
    input: TopicInput,
    current: Option<&Topic>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Topic, ApiError> {
    let mut errors = FieldErrorCollector::new();
    let key = match (current, input.key) {
        (Some(current), _) => current.key.clone(),
        (None, Some(key)) if valid_topic_key(&key) => key,
        (None, _) => {
            errors.add(
                "key",
                "is required: 1-64 of a-z, 0-9, - and _ (and not \"all\")",
            );
            String::new()
        }
    };
    let name = input
        .name
        .or_else(|| current.map(|c| c.name.clone()))
        .unwrap_or_default();
    if name.trim().is_empty() || name.chars().count() > 200 {
        errors.add("name", "is required, at most 200 characters");
    }
    let description = input
        .description
        .or_else(|| current.map(|c| c.description.clone()))
        .unwrap_or_default();
    if description.chars().count() > 2000 {
        errors.add("description", "at most 2000 characters");
    }
    let channels = match input.channels {
        Some(names) => {
            let parsed: Vec<Option<Channel>> = names.iter().map(|n| Channel::parse(n)).collect();
            if parsed.is_empty() || parsed.iter().any(Option::is_none) {
                errors.add("channels", "must list email and/or sms");
            }
            let mut channels: Vec<Channel> = parsed.into_iter().flatten().collect();
            channels.sort();
            channels.dedup();
            channels
        }
        None => current.map_or_else(|| vec![Channel::Email], |c| c.channels.clone()),
    };
    let default_opted_in = input
        .default_opted_in
        .or(current.map(|c| c.default_opted_in))
        .unwrap_or(true);
    errors.finish()?;
    Ok(Topic {
        key,
        name,
        description,
        channels,
        default_opted_in,
        created_at: current.map_or(now, |c| c.created_at),
        updated_at: now,
    })
}
