//! The local stand-in for CloudWatch Logs' metric extraction (issue 18): every Embedded
//! Metric Format document a function writes is checked against the specification
//! ([`shared::metrics::validate`]) and kept, so tests read what CloudWatch would have
//! extracted, and a document CloudWatch would silently drop is on record as refused.

use std::sync::{Mutex, PoisonError};

use serde_json::Value;

static DOCUMENTS: Mutex<Vec<Value>> = Mutex::new(Vec::new());
static REFUSED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Collects this process's metric documents (the first call wins: the runner's `main`
/// prints them too, so a developer sees them beside the logs; the tests do not).
pub fn install(print: bool) {
    shared::metrics::set_sink(move |line| {
        if print {
            println!("{line}");
        }
        match shared::metrics::validate(line) {
            Ok(document) => DOCUMENTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(document),
            Err(reason) => {
                tracing::error!(
                    reason,
                    line,
                    "CloudWatch would not extract this EMF document"
                );
                REFUSED
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((reason, line.to_owned()));
            }
        }
    });
}

/// Every valid document so far.
pub fn documents() -> Vec<Value> {
    DOCUMENTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// The documents refused so far, with the rule each broke.
pub fn refused() -> Vec<(String, String)> {
    REFUSED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}
