//! Performance measurements that need more than criterion: the cold-start benchmark and the
//! bulk-efficiency counters.

pub mod bulk_efficiency;
pub mod coldstart;
pub mod runtime_api;
