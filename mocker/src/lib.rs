//! The mocker: a simulated LLM inference engine whose routing-relevant behaviour (prefix reuse,
//! eviction, load-dependent latency, KV events) follows vLLM and Dynamo's mocker.
//!
//! The engine core is plain Rust on an explicit clock (no tokio timers), so a replay can run it
//! in virtual time:
//! - [`timing`]: Dynamo's polynomial prefill/decode step-time model;
//! - [`block_pool`]: the paged KV cache — prefix reuse by sequence hash, reference counts, LRU
//!   eviction by release time, and the KV events it emits;
//! - [`engine`]: continuous batching over the pool (chunked prefill, admission, preemption),
//!   one pass at a time;
//! - [`config`]: engine settings with Dynamo's mocker defaults;
//! - [`server`]: the OpenAI-compatible HTTP shell and the ZMQ KV-event publisher (tokio), one
//!   engine task per dp rank.
#![forbid(unsafe_code)]

pub mod block_pool;
pub mod config;
pub mod engine;
pub mod server;
pub mod timing;

pub use config::EngineConfig;
pub use engine::{Engine, EngineRequest, OutputIds, Pass};
