//! Performance measurements that need more than criterion: the cold-start benchmark.

pub mod coldstart;
pub mod runtime_api;
