//! The per-organization SMS send cap, held over every sliding second (issue 20).
//!
//! | item | `pk` / `sk` |
//! |---|---|
//! | send window | `RATE#SMS#<org>` / `WINDOW#<cap>` (expires an hour after its last send) |
//!
//! A cap of `cap` sends a second holds over *any* second, not only over calendar seconds,
//! exactly when every send is at least one second after the send `cap` places before it.
//! The window item is a ring of `cap` slots: `t<i>` holds the time (unix ms) of the latest
//! send that took slot `i`, and `next` the slot the next send takes. A send takes slot
//! `next` with one conditional update — `next` still names that slot (nobody took it
//! meanwhile) and the slot's previous send is at least a second old — and moves `next` on.
//! So sends take slots strictly in turn, send `k + cap` reuses send `k`'s slot, and no
//! second can hold more than `cap` sends however many workers send at once.
//!
//! A refused update returns the item as it was (`ReturnValuesOnConditionCheckFailure`
//! `ALL_OLD`, Amazon DynamoDB API Reference, `UpdateItem`), which tells the sender the slot
//! to try next and when it frees: no read in between. A worker that remembers the slot it
//! was told pays one write per send while it is the only sender of its organization. (The
//! fixed-second counter this replaces let up to twice the cap through across a second's
//! boundary: `cap` at the end of one second, `cap` more at the start of the next.)
//!
//! The cap is part of the key, so a changed cap starts a fresh ring instead of reading
//! slots numbered for another size (for the one second after the change, the old ring's
//! sends are not counted against the new one).

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::{Item, StoreError, s};
use crate::aws::DynamoDbClient;
use crate::domain::OrgId;

/// The window every cap is held over.
const WINDOW_MS: i64 = 1_000;

/// How long an idle organization's window item lives.
const IDLE_SECONDS: i64 = 3_600;

#[derive(Debug, Clone)]
pub struct SendRate {
    dynamodb: DynamoDbClient,
    table: String,
}

/// What an attempt at a send slot found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotClaim {
    /// The send may go now; `next` is the slot the following send should try.
    Taken { next: u32 },
    /// Slot `next` is the one to try, and it is free from unix ms `free_at` (which may
    /// already have passed: someone else took the slot that was tried).
    TryAgain { next: u32, free_at: i64 },
}

impl SendRate {
    pub fn new(dynamodb: DynamoDbClient, table: impl Into<String>) -> Self {
        Self {
            dynamodb,
            table: table.into(),
        }
    }

    /// Tries to take slot `slot` of `org`'s window of `cap` sends a second at unix ms `now`.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn take(
        &self,
        org: &OrgId,
        cap: u32,
        slot: u32,
        now: i64,
    ) -> Result<SlotClaim, StoreError> {
        let slot = slot % cap;
        let next = (slot + 1) % cap;
        // Slot 0 of a window nobody has sent in yet may also be taken.
        let turn = if slot == 0 {
            "(attribute_not_exists(#next) OR #next = :slot)"
        } else {
            "#next = :slot"
        };
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("RATE#SMS#{org}")))
            .key("sk", s(format!("WINDOW#{cap}")))
            .update_expression("SET #slot = :now, #next = :following, expires_at = :ttl")
            .condition_expression(format!(
                "{turn} AND (attribute_not_exists(#slot) OR #slot <= :cutoff)"
            ))
            .expression_attribute_names("#next", "next")
            .expression_attribute_names("#slot", format!("t{slot}"))
            .expression_attribute_values(":slot", number(slot))
            .expression_attribute_values(":following", number(next))
            .expression_attribute_values(":now", number(now))
            .expression_attribute_values(":cutoff", number(now - WINDOW_MS))
            .expression_attribute_values(":ttl", number(now / 1_000 + IDLE_SECONDS))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(SlotClaim::Taken { next }),
            Err(error) => match error.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(refused)) => {
                    Ok(where_to_try(refused.item(), cap))
                }
                _ => Err(anyhow::Error::new(error)
                    .context("UpdateItem SMS send window")
                    .into()),
            },
        }
    }
}

/// The slot the window as it was names next, and when that slot frees.
fn where_to_try(item: Option<&Item>, cap: u32) -> SlotClaim {
    let read = |name: &str| {
        item.and_then(|item| item.get(name))
            .and_then(|value| value.as_n().ok())
            .and_then(|n| n.parse::<i64>().ok())
    };
    let next = read("next")
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
        % cap;
    let free_at = read(&format!("t{next}")).map_or(0, |sent| sent + WINDOW_MS);
    SlotClaim::TryAgain { next, free_at }
}

fn number(n: impl ToString) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: &[(&str, i64)]) -> Item {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), number(v)))
            .collect()
    }

    #[test]
    fn a_refusal_names_the_next_slot_and_when_it_frees() {
        let window = item(&[("next", 2), ("t2", 10_000), ("t1", 10_500)]);
        assert_eq!(
            where_to_try(Some(&window), 3),
            SlotClaim::TryAgain {
                next: 2,
                free_at: 11_000
            }
        );
        // A slot never taken is free at once.
        let fresh = item(&[("next", 1)]);
        assert_eq!(
            where_to_try(Some(&fresh), 3),
            SlotClaim::TryAgain {
                next: 1,
                free_at: 0
            }
        );
        assert_eq!(
            where_to_try(None, 3),
            SlotClaim::TryAgain {
                next: 0,
                free_at: 0
            }
        );
    }
}
