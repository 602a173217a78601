//! Topics and the consent ledger (issue 19), in the organization's partition:
//!
//! | item | `sk` |
//! |---|---|
//! | topic | `TOPIC#<key>` |
//! | the organization's answer to an SMS HELP | `SMSHELP` |
//! | current state of one (channel, address or number, topic) | `CONSENT#<channel>#<subject>#<topic>` |
//! | one change, never rewritten | `CONSENTLOG#<channel>#<subject>#<time>#<ulid>` |
//!
//! A change writes its state and its history entry in one transaction, so the history is
//! never missing a change the state shows. Subjects are lowercase addresses or E.164
//! numbers: neither contains `#` after its `@` or at all, so a subject's prefix query
//! cannot reach another subject's items.

use std::collections::{BTreeMap, HashMap};

use crate::aws::DynamoDbClient;
use anyhow::Context;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Item, StoreError, batch_get, cancelled_by_a_condition, is_condition_failure, s};
use crate::consent::{ALL_TOPICS, Channel, ConsentSource, ConsentState};
use crate::domain::{OrgId, RecordId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topic {
    pub key: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub channels: Vec<Channel>,
    /// Whether an address that never chose is in (`true`: opt-out topics, such as a
    /// newsletter people signed up for) or out (`false`: sends reach only those who opted in).
    pub default_opted_in: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One (channel, subject, topic)'s current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consent {
    pub channel: Channel,
    pub subject: String,
    pub topic: String,
    pub state: ConsentState,
    pub source: ConsentSource,
    pub updated_at: DateTime<Utc>,
}

/// One change, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentChange {
    pub channel: Channel,
    pub subject: String,
    pub topic: String,
    pub state: ConsentState,
    pub source: ConsentSource,
    /// The user who made it (API), else who or what reported it (`one-click`, `sendgrid`).
    pub actor: String,
    /// What proves it: the webhook event id, the message whose link was used, a note.
    #[serde(default)]
    pub evidence: BTreeMap<String, String>,
    pub at: DateTime<Utc>,
}

/// One message of a job as consent sees it: its id, its recipient as the ledger keys them,
/// and its send's topic (`None`: transactional).
#[derive(Debug, Clone)]
pub struct Addressed {
    pub id: String,
    pub subject: String,
    pub topic: Option<String>,
}

/// Changes one unsubscribe link may make in a minute.
pub const LINK_CHANGES_PER_MINUTE: i64 = 10;

#[derive(Clone)]
pub struct ConsentStore {
    dynamodb: DynamoDbClient,
    table: String,
}

fn n(value: impl ToString) -> aws_sdk_dynamodb::types::AttributeValue {
    aws_sdk_dynamodb::types::AttributeValue::N(value.to_string())
}

fn org_pk(org: &OrgId) -> String {
    format!("ORG#{org}")
}

const SMS_HELP_SK: &str = "SMSHELP";

fn topic_sk(key: &str) -> String {
    format!("TOPIC#{key}")
}

fn state_sk(channel: Channel, subject: &str, topic: &str) -> String {
    format!("CONSENT#{}#{subject}#{topic}", channel.as_str())
}

fn log_prefix(channel: Channel, subject: &str) -> String {
    format!("CONSENTLOG#{}#{subject}#", channel.as_str())
}

impl ConsentStore {
    pub fn new(dynamodb: DynamoDbClient, table: impl Into<String>) -> Self {
        Self {
            dynamodb,
            table: table.into(),
        }
    }

    /// # Errors
    /// [`StoreError::Conflict`] when the organization has a topic with that key.
    pub async fn create_topic(&self, org: &OrgId, topic: &Topic) -> Result<(), StoreError> {
        let result = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.topic_item(org, topic)?))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Err(StoreError::Conflict(format!(
                "a topic {:?} exists",
                topic.key
            ))),
            Err(error) => Err(anyhow::Error::new(error).context("PutItem topic").into()),
        }
    }

    /// Replaces an existing topic (its key and creation time stay).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when there is no such topic.
    pub async fn replace_topic(&self, org: &OrgId, topic: &Topic) -> Result<(), StoreError> {
        let result = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.topic_item(org, topic)?))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Err(StoreError::NotFound),
            Err(error) => Err(anyhow::Error::new(error).context("PutItem topic").into()),
        }
    }

    fn topic_item(&self, org: &OrgId, topic: &Topic) -> Result<Item, StoreError> {
        let mut item: Item = serde_dynamo::to_item(topic).context("encoding topic")?;
        item.insert("pk".into(), s(org_pk(org)));
        item.insert("sk".into(), s(topic_sk(&topic.key)));
        item.insert("entity".into(), s("topic"));
        Ok(item)
    }

    /// # Errors
    /// [`StoreError::NotFound`] when there is no such topic.
    pub async fn topic(&self, org: &OrgId, key: &str) -> Result<Topic, StoreError> {
        let item = super::get_live(
            &self.dynamodb,
            &self.table,
            org_pk(org),
            topic_sk(key),
            "topic",
        )
        .await?;
        Ok(serde_dynamo::from_item(item).context("malformed topic")?)
    }

    /// Why a send on `channel` may not name topic `key`, or `None` when it may: the one
    /// check the email and SMS APIs make (a 400 naming `topic`).
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn topic_refusal(
        &self,
        org: &OrgId,
        key: &str,
        channel: Channel,
    ) -> Result<Option<String>, StoreError> {
        match self.topic(org, key).await {
            Ok(found) if found.channels.contains(&channel) => Ok(None),
            Ok(_) => Ok(Some(
                match channel {
                    Channel::Email => "is not a topic for email",
                    Channel::Sms => "is not a topic for SMS",
                }
                .to_owned(),
            )),
            Err(StoreError::NotFound) => Ok(Some("is not a topic of this organization".to_owned())),
            Err(error) => Err(error),
        }
    }

    /// Every topic of the organization, by key (organizations have a handful).
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn topics(&self, org: &OrgId) -> Result<Vec<Topic>, StoreError> {
        let items = self.query_prefix(org_pk(org), "TOPIC#".to_owned()).await?;
        items
            .into_iter()
            .map(|item| Ok(serde_dynamo::from_item(item).context("malformed topic")?))
            .collect()
    }

    /// Deletes a topic; its consent history stays (it is evidence).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when there is no such topic.
    pub async fn delete_topic(&self, org: &OrgId, key: &str) -> Result<(), StoreError> {
        let result = self
            .dynamodb
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(topic_sk(key)))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Err(StoreError::NotFound),
            Err(error) => Err(anyhow::Error::new(error).context("DeleteItem topic").into()),
        }
    }

    /// The organization's own answer to an inbound HELP or INFO, when it set one.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn sms_help_text(&self, org: &OrgId) -> Result<Option<String>, StoreError> {
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(SMS_HELP_SK))
            .send()
            .await
            .context("GetItem SMS help text")?
            .item;
        Ok(item.and_then(|item| item.get("text")?.as_s().ok().cloned()))
    }

    /// Sets the organization's answer to HELP, or with `None` goes back to the deployment's.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn set_sms_help_text(
        &self,
        org: &OrgId,
        text: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        match text {
            Some(text) => {
                self.dynamodb
                    .put_item()
                    .table_name(&self.table)
                    .item("pk", s(org_pk(org)))
                    .item("sk", s(SMS_HELP_SK))
                    .item("text", s(text))
                    .item("updated_at", s(now.to_rfc3339()))
                    .send()
                    .await
                    .context("PutItem SMS help text")?;
            }
            None => {
                self.dynamodb
                    .delete_item()
                    .table_name(&self.table)
                    .key("pk", s(org_pk(org)))
                    .key("sk", s(SMS_HELP_SK))
                    .send()
                    .await
                    .context("DeleteItem SMS help text")?;
            }
        }
        Ok(())
    }

    /// Records a change: the new state and its history entry, together. A change a provider
    /// reported carries its event id as `dedupe`: the same event again (a retried webhook
    /// batch) records nothing and answers `false`.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn record(
        &self,
        org: &OrgId,
        change: &ConsentChange,
        dedupe: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.write(org, change, dedupe, true).await
    }

    /// Adds a history entry that changes no state: an SMS HELP, kept with the answer it got
    /// as the proof CTIA audits ask for. `change.state` is the state it found. Once per
    /// `dedupe` key, as [`Self::record`].
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn note(
        &self,
        org: &OrgId,
        change: &ConsentChange,
        dedupe: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.write(org, change, dedupe, false).await
    }

    async fn write(
        &self,
        org: &OrgId,
        change: &ConsentChange,
        dedupe: Option<&str>,
        sets_state: bool,
    ) -> Result<bool, StoreError> {
        let state = Consent {
            channel: change.channel,
            subject: change.subject.clone(),
            topic: change.topic.clone(),
            state: change.state,
            source: change.source,
            updated_at: change.at,
        };
        let mut state_item: Item = serde_dynamo::to_item(&state).context("encoding consent")?;
        state_item.insert("pk".into(), s(org_pk(org)));
        state_item.insert(
            "sk".into(),
            s(state_sk(change.channel, &change.subject, &change.topic)),
        );
        state_item.insert("entity".into(), s("consent"));
        let mut log_item: Item =
            serde_dynamo::to_item(change).context("encoding consent change")?;
        log_item.insert("pk".into(), s(org_pk(org)));
        log_item.insert(
            "sk".into(),
            s(format!(
                "{}{}#{}",
                log_prefix(change.channel, &change.subject),
                // In the order recorded (`at` is when it happened: a provider's event
                // carries its own time, which may be earlier or a second later).
                Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                RecordId::new()
            )),
        );
        log_item.insert("entity".into(), s("consent_change"));
        let put = |item: Item, condition: Option<&str>| -> Result<TransactWriteItem, StoreError> {
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .set_condition_expression(condition.map(str::to_owned))
                .build()
                .context("consent Put")?;
            Ok(TransactWriteItem::builder().put(put).build())
        };
        let mut transaction = self
            .dynamodb
            .transact_write_items()
            .transact_items(put(log_item, Some("attribute_not_exists(pk)"))?);
        if sets_state {
            transaction = transaction.transact_items(put(state_item, None)?);
        }
        if let Some(key) = dedupe {
            // The event's own marker, in the same transaction: a second delivery of the
            // event fails its condition and cancels the whole change.
            let marker = Item::from([
                ("pk".to_owned(), s(org_pk(org))),
                ("sk".to_owned(), s(format!("CONSENTEVENT#{key}"))),
                ("entity".to_owned(), s("consent_event")),
            ]);
            transaction =
                transaction.transact_items(put(marker, Some("attribute_not_exists(pk)"))?);
        }
        match transaction.send().await {
            Ok(_) => {}
            Err(error) if dedupe.is_some() && cancelled_by_a_condition(&error) => {
                return Ok(false);
            }
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context("TransactWriteItems consent")
                    .into());
            }
        }
        Ok(true)
    }

    /// One (channel, subject, topic)'s current state, `None` when nothing was recorded.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn state(
        &self,
        org: &OrgId,
        channel: Channel,
        subject: &str,
        topic: &str,
    ) -> Result<Option<Consent>, StoreError> {
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(state_sk(channel, subject, topic)))
            .send()
            .await
            .context("GetItem consent")?
            .item;
        item.map(|item| Ok(serde_dynamo::from_item(item).context("malformed consent")?))
            .transpose()
    }

    /// Every topic's current state for one subject.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn states(
        &self,
        org: &OrgId,
        channel: Channel,
        subject: &str,
    ) -> Result<Vec<Consent>, StoreError> {
        let prefix = format!("CONSENT#{}#{subject}#", channel.as_str());
        let items = self.query_prefix(org_pk(org), prefix).await?;
        items
            .into_iter()
            .map(|item| Ok(serde_dynamo::from_item(item).context("malformed consent")?))
            .collect()
    }

    /// One subject's changes, in the order they were recorded.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn history(
        &self,
        org: &OrgId,
        channel: Channel,
        subject: &str,
    ) -> Result<Vec<ConsentChange>, StoreError> {
        let items = self
            .query_prefix(org_pk(org), log_prefix(channel, subject))
            .await?;
        items
            .into_iter()
            .map(|item| Ok(serde_dynamo::from_item(item).context("malformed consent change")?))
            .collect()
    }

    /// Of `subjects`, those a send of `topic` (`None`: transactional) must not reach: opted
    /// out of everything, opted out of the topic, or — for a topic out by default — never
    /// opted in. One BatchGetItem per 100 keys reads the topic and the states together; a
    /// topic deleted since the send was accepted counts as in by default.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn blocked(
        &self,
        org: &OrgId,
        channel: Channel,
        subjects: &[String],
        topic: Option<&str>,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut unique = subjects.to_vec();
        unique.sort();
        unique.dedup();
        let key = |sk: String| {
            HashMap::from([("pk".to_owned(), s(org_pk(org))), ("sk".to_owned(), s(sk))])
        };
        let topics: Vec<&str> = std::iter::once(ALL_TOPICS).chain(topic).collect();
        let keys = topic
            .map(|t| key(topic_sk(t)))
            .into_iter()
            .chain(unique.iter().flat_map(|subject| {
                topics
                    .iter()
                    .map(move |topic| key(state_sk(channel, subject, topic)))
            }))
            .collect();
        let mut default_opted_in = true;
        let mut found: Vec<Consent> = Vec::new();
        for item in batch_get(&self.dynamodb, &self.table, keys, None).await? {
            if item.get("entity") == Some(&s("topic")) {
                let topic: Topic = serde_dynamo::from_item(item).context("malformed topic")?;
                default_opted_in = topic.default_opted_in;
            } else {
                found.push(serde_dynamo::from_item(item).context("malformed consent")?);
            }
        }
        let state = |subject: &str, topic: &str| {
            found
                .iter()
                .find(|c| c.subject == subject && c.topic == topic)
                .map(|c| c.state)
        };
        Ok(unique
            .into_iter()
            .filter(|subject| {
                if state(subject, ALL_TOPICS) == Some(ConsentState::OptedOut) {
                    return true;
                }
                let Some(topic) = topic else { return false };
                match state(subject, topic) {
                    Some(choice) => choice == ConsentState::OptedOut,
                    None => !default_opted_in,
                }
            })
            .collect())
    }

    /// Up to `limit` of the organization's changes (every channel and subject, by subject
    /// then time), after the position `after` (an item's `sk`, as the previous page gave
    /// it), and the position to resume after when there are more.
    ///
    /// # Errors
    /// [`StoreError::InvalidCursor`] for a position that is not a ledger entry's.
    pub async fn history_page(
        &self,
        org: &OrgId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ConsentChange>, Option<String>), StoreError> {
        if after.is_some_and(|sk| !sk.starts_with("CONSENTLOG#")) {
            return Err(StoreError::InvalidCursor);
        }
        let mut start = after
            .map(|sk| Item::from([("pk".to_owned(), s(org_pk(org))), ("sk".to_owned(), s(sk))]));
        let mut changes = Vec::new();
        loop {
            let output = self
                .dynamodb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(org_pk(org)))
                .expression_attribute_values(":prefix", s("CONSENTLOG#"))
                .set_exclusive_start_key(start.take())
                .limit(i32::try_from(limit - changes.len()).unwrap_or(i32::MAX))
                .send()
                .await
                .context("Query consent history")?;
            let mut last = None;
            for item in output.items.unwrap_or_default() {
                last = item.get("sk").and_then(|v| v.as_s().ok()).cloned();
                changes.push(serde_dynamo::from_item(item).context("malformed consent change")?);
            }
            match output.last_evaluated_key {
                Some(key) if changes.len() < limit => start = Some(key),
                Some(_) => return Ok((changes, last)),
                None => return Ok((changes, None)),
            }
        }
    }

    /// Of a job's messages, the ids their recipients' consent excludes ([`Self::blocked`]):
    /// one read per topic of the job, not per message.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn blocked_messages(
        &self,
        org: &OrgId,
        channel: Channel,
        messages: &[Addressed],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut by_topic: BTreeMap<Option<&str>, Vec<&Addressed>> = BTreeMap::new();
        for message in messages {
            by_topic
                .entry(message.topic.as_deref())
                .or_default()
                .push(message);
        }
        let mut ids = std::collections::HashSet::new();
        for (topic, group) in by_topic {
            let subjects: Vec<String> = group.iter().map(|m| m.subject.clone()).collect();
            let blocked = self.blocked(org, channel, &subjects, topic).await?;
            ids.extend(
                group
                    .iter()
                    .filter(|m| blocked.contains(&m.subject))
                    .map(|m| m.id.clone()),
            );
        }
        Ok(ids)
    }

    /// Counts one change made through an unsubscribe link of `subject`: `false` once this
    /// minute has seen [`LINK_CHANGES_PER_MINUTE`] (a link is one person's; more than that
    /// is a script). The counter expires with DynamoDB TTL.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn allow_link_change(
        &self,
        org: &OrgId,
        channel: Channel,
        subject: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let minute = now.timestamp() / 60;
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key(
                "sk",
                s(format!(
                    "CONSENTRATE#{}#{subject}#{minute}",
                    channel.as_str()
                )),
            )
            .update_expression("SET expires_at = :expires ADD hits :one")
            .condition_expression("attribute_not_exists(hits) OR hits < :limit")
            .expression_attribute_values(":expires", n((minute + 2) * 60))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(LINK_CHANGES_PER_MINUTE))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if is_condition_failure(&error) => Ok(false),
            Err(error) => Err(anyhow::Error::new(error)
                .context("UpdateItem consent rate")
                .into()),
        }
    }

    async fn query_prefix(&self, pk: String, prefix: String) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .dynamodb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(&pk))
                .expression_attribute_values(":prefix", s(&prefix))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .context("Query consent")?;
            items.extend(output.items.unwrap_or_default());
            match output.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(items),
            }
        }
    }
}
