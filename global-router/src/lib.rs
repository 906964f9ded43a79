//! The global router: the native front door for deployments without Envoy. It applies
//! `kvroute-pool-select` policies in front of the pools' router groups (kv-routers).
//!
//! One request goes through named phases sharing one context (`service`): **parse** (body,
//! request features from headers or the `kvroute` body object) → **probe** (the groups the
//! policy needs, in parallel, query-only `/best_worker`, with a timeout) → **decide**
//! (`Selector::decide`) → **forward** (to a replica of the chosen group, streaming back) →
//! **retry** on the next pool only when a pool fails before its first byte (never duplicating
//! output) → **log**.
//!
//! - [`config`]: the typed configuration (pools, their routers, the policy, timeouts);
//! - `service`: the HTTP service and the phases above;
//! - `health`: periodic health checks of every router replica;
//! - `metrics`: decisions per pool and reason, probe latency and failures, retries.
#![forbid(unsafe_code)]

pub mod config;
mod health;
mod metrics;
mod service;

pub use config::{GlobalRouterConfig, PoolEntry};
pub use service::{start, RunningGlobalRouter, StartError};
