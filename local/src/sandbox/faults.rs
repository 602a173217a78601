//! Injected provider failures, one home for every sandbox: a queue of faults for the next
//! calls (`{"status": 503, "count": 2}`, `{"delay_ms": 5000}`, `{"connection": "drop"}`), and
//! a seeded chaos plan that fails a share of all later calls with a mix of kinds
//! (`{"chaos": {"share": 0.3, "seed": 7}}`), for the fault-injection accounting run in
//! docs/RELIABILITY.md. The sandbox reports what it injected (`GET …/_faults`).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// One call's fault.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Fault {
    pub status: Option<u16>,
    /// The provider's error code in the error body (Twilio: 21211, 21610, 20429, …).
    pub code: Option<i64>,
    pub delay_ms: Option<u64>,
    #[serde(default = "one")]
    pub count: u32,
    pub connection: Option<ConnectionFault>,
    /// `{"webhooks": false}` stops webhook posting; `true` resumes it (sandbox-specific).
    pub webhooks: Option<bool>,
    /// Post this call's webhooks (Twilio: status callbacks; SendGrid: events) before
    /// answering it, as when they overtake the API's answer on its way back
    /// (`{"callbacks_first": true}`).
    #[serde(default)]
    pub callbacks_first: bool,
    /// Replaces the chaos plan (`share` 0 turns it off).
    pub chaos: Option<Chaos>,
}

fn one() -> u32 {
    1
}

/// What happens to the connection instead of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionFault {
    /// Closed before the provider acts: nothing was sent.
    Drop,
    /// The provider acts (the message goes out), then the connection closes unanswered:
    /// the caller cannot know it was sent.
    AcceptThenDrop,
    /// The provider acts and never answers: the caller times out, or is killed waiting.
    AcceptThenHold,
}

/// A share of calls failing with kinds drawn from a seeded generator, so a run can be
/// repeated exactly.
#[derive(Debug, Clone, Deserialize)]
pub struct Chaos {
    pub share: f64,
    #[serde(default)]
    pub seed: u64,
    /// How long a `timeout` fault waits before answering 503 (longer than the caller's
    /// timeout).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5_000
}

/// The kinds chaos draws from, evenly. `401` stands for a key being rotated: the provider
/// refuses it once, then takes it again (issue 15: a refused key is retried, not final).
const CHAOS_KINDS: [&str; 7] = [
    "500",
    "503",
    "429",
    "401",
    "timeout",
    "drop",
    "accept_then_drop",
];

#[derive(Debug, Default)]
pub struct Faults {
    queue: VecDeque<Fault>,
    chaos: Option<(Chaos, SplitMix64)>,
    injected: BTreeMap<String, u64>,
}

impl Faults {
    /// Queues a fault for the next calls, or replaces the chaos plan.
    pub fn add(&mut self, fault: Fault) {
        match fault.chaos {
            Some(chaos) if chaos.share > 0.0 => {
                let rng = SplitMix64(chaos.seed);
                self.chaos = Some((chaos, rng));
            }
            Some(_) => self.chaos = None,
            None => self.queue.push_back(fault),
        }
    }

    /// The fault for this call, if any: queued faults first, then a chaos draw.
    pub fn for_this_call(&mut self) -> Option<Fault> {
        let fault = self.take_queued().or_else(|| self.draw())?;
        *self.injected.entry(kind_of(&fault)).or_default() += 1;
        Some(fault)
    }

    /// How many faults of each kind were injected so far.
    pub fn injected(&self) -> BTreeMap<String, u64> {
        self.injected.clone()
    }

    fn take_queued(&mut self) -> Option<Fault> {
        let fault = self.queue.front_mut()?;
        fault.count = fault.count.saturating_sub(1);
        let taken = fault.clone();
        if fault.count == 0 {
            self.queue.pop_front();
        }
        Some(taken)
    }

    fn draw(&mut self) -> Option<Fault> {
        let (chaos, rng) = self.chaos.as_mut()?;
        if rng.unit() >= chaos.share {
            return None;
        }
        let kinds = CHAOS_KINDS.len() as u64;
        let kind = CHAOS_KINDS[usize::try_from(rng.next() % kinds).unwrap_or(0)];
        Some(match kind {
            "timeout" => Fault {
                delay_ms: Some(chaos.timeout_ms),
                status: Some(503),
                ..Fault::default()
            },
            "drop" => Fault {
                connection: Some(ConnectionFault::Drop),
                ..Fault::default()
            },
            "accept_then_drop" => Fault {
                connection: Some(ConnectionFault::AcceptThenDrop),
                ..Fault::default()
            },
            status => Fault {
                status: status.parse().ok(),
                ..Fault::default()
            },
        })
    }
}

/// The name a fault is counted under.
fn kind_of(fault: &Fault) -> String {
    match (fault.connection, fault.delay_ms, fault.status) {
        (Some(connection), _, _) => serde_json::to_value(connection)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        (None, Some(_), Some(_)) => "timeout".to_owned(),
        (None, Some(_), None) => "delay".to_owned(),
        (None, None, Some(status)) => status.to_string(),
        (None, None, None) => "none".to_owned(),
    }
}

/// Ends the connection without an answer: unwinding out of the handler ends the server's
/// connection task, which closes the socket, as a crashed or cut-off provider would.
/// (`resume_unwind` skips the panic hook: this is expected, not a bug to print.)
pub fn drop_connection() -> ! {
    std::panic::resume_unwind(Box::new("sandbox fault: connection dropped"))
}

/// Never answers.
pub async fn hold_forever() -> ! {
    let never: std::convert::Infallible = std::future::pending().await;
    match never {}
}

/// A small, seedable generator (SplitMix64), enough for drawing faults reproducibly.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    #[allow(clippy::cast_precision_loss)] // 53 bits are exactly representable
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_faults_come_first_and_count_down() {
        let mut faults = Faults::default();
        faults.add(Fault {
            status: Some(503),
            count: 2,
            ..Fault::default()
        });
        assert_eq!(faults.for_this_call().and_then(|f| f.status), Some(503));
        assert_eq!(faults.for_this_call().and_then(|f| f.status), Some(503));
        assert!(faults.for_this_call().is_none());
        assert_eq!(faults.injected()["503"], 2);
    }

    #[test]
    fn chaos_fails_about_its_share_with_every_kind_and_repeats_with_its_seed() {
        let run = |seed| {
            let mut faults = Faults::default();
            faults.add(Fault {
                chaos: Some(Chaos {
                    share: 0.3,
                    seed,
                    timeout_ms: 10,
                }),
                ..Fault::default()
            });
            let failed = (0..10_000)
                .filter(|_| faults.for_this_call().is_some())
                .count();
            (failed, faults.injected())
        };
        let (failed, kinds) = run(7);
        assert!((2_700..3_300).contains(&failed), "{failed}");
        assert_eq!(kinds.len(), CHAOS_KINDS.len(), "{kinds:?}");
        assert_eq!(run(7), (failed, kinds));
    }
}
