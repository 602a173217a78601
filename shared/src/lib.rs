//! Herald's library crate: everything the Lambda functions and the local runner share.
//!
//! - [`domain`]: types and rules, no I/O (organizations, templates, SMS measurement).
//! - [`store`]: DynamoDB adapters that turn storage conditions into domain errors.
//! - [`http`]: the HTTP API conventions (problem+json, routing, JSON bodies, pagination).
//! - [`auth`]: the caller as the JWT authorizer's claims describe them.
//! - [`config`], [`aws`], [`logging`]: what every function does at cold start.
//! - [`render`]: Handlebars-compatible template rendering.

pub mod auth;
pub mod aws;
pub mod bulk;
pub mod config;
pub mod consent;
pub mod contacts;
pub mod domain;
pub mod events;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod pagination;
pub mod payments;
pub mod pdf;
pub mod providers;
pub mod queue;
pub mod render;
pub mod reports;
pub mod store;
