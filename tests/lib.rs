//! Herald's workspace integration tests live in `tests/`; this crate has no code of its own.
