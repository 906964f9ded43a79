//! End-to-end tests of `kvroute kv-router` in front of real mocker processes.

#[path = "../support/mod.rs"]
mod support;

mod gaps;
mod http_events;
mod lifecycle;
mod nats_events;
mod replay;
mod replay_live;
mod replicas;
mod routing;
mod up;
