//! Herald's Lambda functions. Each module is one function's logic; `src/bin/<name>.rs` is
//! its short `main`. The local runner and the tests call the same code through [`registry`].

pub mod registry;
pub mod templates_api;
