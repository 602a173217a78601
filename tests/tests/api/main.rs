#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose
//! Integration tests through the local runner: real HTTP, the local JWT authorizer, the
//! handlers Lambda runs and real DynamoDB queries against moto. Each test gets its own bundle
//! (its own table), so tests run in parallel.

mod audit;
mod bulk_efficiency;
mod bundle_shape;
mod consent;
mod dead_letters;
mod docs;
mod email;
mod events;
mod faults;
mod helpers;
mod isolation;
mod metrics;
mod openapi;
mod payments;
mod permissions;
mod phonebook_fanout;
mod reports;
mod roles;
mod secrets;
mod sharding;
mod sms;
mod templates;
mod webhook_abuse;
