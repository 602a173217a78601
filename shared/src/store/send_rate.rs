//! The per-organization SMS send cap, held over every sliding second (issue 20).
//!
//! | item | `pk` / `sk` |
//! |---|---|
//! | send window | `RATE#SMS#<org>` / `WINDOW#<cap>` (expires an hour after its last send) |
//!
//! A cap of `cap` sends a second holds over *any* second, not only over calendar seconds,
//! when the window is a ring of `cap` slots and each slot's sends are at least a second
//! apart: a second then holds at most one send per slot. `t<i>` is the time (unix ms) of
//! the latest send booked on slot `i`, and `seq` counts the sends booked so far (send `n`
//! takes slot `n % cap`).
//!
//! Senders *book* send times instead of racing for a free slot: a sender works out the
//! next times from the ring it last saw (each slot's next send a second after its last,
//! never before now) and writes them with one conditional update — `seq` is still what it
//! saw, so nobody booked in between. Then each send sleeps until its time and goes. A refused
//! update returns the item as it is (`ReturnValuesOnConditionCheckFailure` `ALL_OLD`,
//! Amazon DynamoDB API Reference, `UpdateItem`), from which the sender books again at
//! once, without a read. So concurrent senders book distinct times and wait on the clock,
//! not on each other, and one write books up to a second's sends (one per slot) while
//! the worker is the organization's only sender. (The first version raced every sender for each freed slot the moment it
//! freed: with 10 workers at a cap of 20 it reached 34 % of the cap locally, and on
//! DynamoDB it would write the one item `workers × cap` times a second.)
//!
//! `seq` only grows, so a refused booking can never be mistaken for a current one (a
//! slot index would repeat every `cap` bookings). Send times are the senders' clocks: a
//! send that leaves late, or a clock a few ms off, can bring two sends of a slot a little
//! under a second apart; the bench measures what the provider saw.
//!
//! The cap is part of the key, so a changed cap starts a fresh ring instead of reading
//! slots numbered for another size (for the one second after the change, the old ring's
//! sends are not counted against the new one).

use std::fmt::Write as _;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::{Item, StoreError, s};
use crate::aws::DynamoDbClient;
use crate::domain::OrgId;

/// The window every cap is held over.
const WINDOW_MS: i64 = 1_000;

/// How far ahead of now a send is booked at the earliest: the sender claims its record
/// before the time comes, so a send booked for "now" does not leave late.
const LEAD_MS: i64 = 100;

/// How long an idle organization's window item lives.
const IDLE_SECONDS: i64 = 3_600;

/// The most sends one booking takes: its update expression names each (DynamoDB limits an
/// expression to 4 KB, Amazon DynamoDB Developer Guide, "Expression parameters").
pub const MAX_BOOKING: usize = 100;

#[derive(Debug, Clone)]
pub struct SendRate {
    dynamodb: DynamoDbClient,
    table: String,
}

/// An organization's send window as a sender last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Sends booked so far.
    seq: u64,
    /// The latest send booked on each slot (unix ms; 0 for none).
    sent: Vec<i64>,
}

/// What a booking found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Booking {
    /// The times are the sender's; the window as it now is.
    Booked(Window),
    /// Someone booked first: the window as it now is, to book from again.
    Changed(Window),
}

impl Window {
    /// A window nobody has booked in (or one not seen yet: the first booking learns it).
    pub fn unseen(cap: u32) -> Self {
        Self {
            seq: 0,
            sent: vec![0; cap.max(1) as usize],
        }
    }

    fn cap(&self) -> u64 {
        self.sent.len() as u64
    }

    /// The times of the next `count` sends from unix ms `now`, none later than `latest`:
    /// each slot's next send a second after its last, and none sooner than [`LEAD_MS`]. At most one send per slot (an
    /// update may set an attribute once) and at most [`MAX_BOOKING`].
    pub fn next_times(&self, count: usize, now: i64, latest: i64) -> Vec<i64> {
        let mut times = Vec::new();
        let count = count.min(MAX_BOOKING).min(self.sent.len());
        for n in 0..count as u64 {
            let slot = ((self.seq + n) % self.cap()) as usize;
            let at = (now + LEAD_MS).max(self.sent[slot] + WINDOW_MS);
            // Later slots could be earlier, but sends are booked in turn: stop at the first
            // one too late, so the next booking starts where this one ended.
            if at > latest {
                break;
            }
            times.push(at);
        }
        times
    }

    /// The window once `times` are booked on it.
    fn with(&self, times: &[i64]) -> Self {
        let mut after = self.clone();
        for (n, at) in times.iter().enumerate() {
            let slot = ((self.seq + n as u64) % self.cap()) as usize;
            after.sent[slot] = *at;
        }
        after.seq += times.len() as u64;
        after
    }

    fn from_item(item: Option<&Item>, cap: u32) -> Self {
        let read = |name: &str| {
            item.and_then(|item| item.get(name))
                .and_then(|value| value.as_n().ok())
                .and_then(|n| n.parse::<i64>().ok())
        };
        let mut window = Self::unseen(cap);
        window.seq = read("seq").and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        for (slot, sent) in window.sent.iter_mut().enumerate() {
            *sent = read(&format!("t{slot}")).unwrap_or(0);
        }
        window
    }
}

impl SendRate {
    pub fn new(dynamodb: DynamoDbClient, table: impl Into<String>) -> Self {
        Self {
            dynamodb,
            table: table.into(),
        }
    }

    /// Books `times` (from [`Window::next_times`] on `seen`) in `org`'s window.
    ///
    /// # Errors
    /// Storage failures only.
    pub async fn book(
        &self,
        org: &OrgId,
        seen: &Window,
        times: &[i64],
    ) -> Result<Booking, StoreError> {
        let cap = u32::try_from(seen.cap()).unwrap_or(u32::MAX);
        let mut update = "SET #seq = :booked, expires_at = :ttl".to_owned();
        let mut request = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("RATE#SMS#{org}")))
            .key("sk", s(format!("WINDOW#{cap}")));
        for (n, at) in times.iter().enumerate() {
            let slot = (seen.seq + n as u64) % seen.cap();
            let _ = write!(update, ", t{slot} = :t{n}");
            request = request.expression_attribute_values(format!(":t{n}"), number(at));
        }
        let last = times.iter().max().copied().unwrap_or(0);
        let result = request
            .update_expression(update)
            .condition_expression(if seen.seq == 0 {
                "attribute_not_exists(#seq) OR #seq = :seen"
            } else {
                "#seq = :seen"
            })
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_values(":seen", number(seen.seq))
            .expression_attribute_values(":booked", number(seen.seq + times.len() as u64))
            .expression_attribute_values(":ttl", number(last / 1_000 + IDLE_SECONDS))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Booking::Booked(seen.with(times))),
            Err(error) => match error.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(refused)) => {
                    Ok(Booking::Changed(Window::from_item(refused.item(), cap)))
                }
                _ => Err(anyhow::Error::new(error)
                    .context("UpdateItem SMS send window")
                    .into()),
            },
        }
    }
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
    fn each_slots_next_send_is_a_second_after_its_last_and_never_before_now() {
        // Cap 3; slot 2 is next, then 0 and 1.
        let window = Window::from_item(
            Some(&item(&[
                ("seq", 5),
                ("t0", 10_200),
                ("t1", 10_400),
                ("t2", 9_000),
            ])),
            3,
        );
        assert_eq!(
            window.next_times(5, 10_300, i64::MAX),
            vec![10_400, 11_200, 11_400],
            "one send per slot in a booking, none sooner than the lead"
        );
        // None later than `latest`: the booking stops at the first that is.
        assert_eq!(window.next_times(5, 10_300, 11_250), vec![10_400, 11_200]);
    }

    #[test]
    fn no_second_holds_more_than_the_cap_however_bookings_interleave() {
        let cap = 4;
        let mut window = Window::unseen(cap);
        let mut all = Vec::new();
        // Bookings of different sizes at different moments, as concurrent senders make them.
        for (count, now) in [
            (3, 0),
            (6, 100),
            (1, 150),
            (9, 900),
            (2, 2_500),
            (4, 2_600),
            (4, 2_700),
        ] {
            let times = window.next_times(count, now, i64::MAX);
            window = window.with(&times);
            all.extend(times);
        }
        all.sort_unstable();
        for (i, start) in all.iter().enumerate() {
            let within = all[i..]
                .iter()
                .take_while(|t| **t < start + WINDOW_MS)
                .count();
            assert!(
                within <= cap as usize,
                "{within} sends from {start}: {all:?}"
            );
        }
        assert_eq!(window.seq, 22);
    }

    #[test]
    fn a_refusal_reads_back_the_window_as_it_is() {
        let window = Window::from_item(Some(&item(&[("seq", 7), ("t1", 500)])), 2);
        assert_eq!(
            window,
            Window {
                seq: 7,
                sent: vec![0, 500]
            }
        );
        assert_eq!(Window::from_item(None, 2), Window::unseen(2));
    }
}
