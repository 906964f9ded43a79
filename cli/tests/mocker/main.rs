//! End-to-end tests of `kvroute mocker` as a real process.

#[path = "../support/mod.rs"]
mod support;

mod api;
mod kv_events;
