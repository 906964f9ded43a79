//! Wire types shared by every kvroute component.
//!
//! This crate is pure (no I/O, no clocks, no randomness) and builds for `wasm32-wasip1`, so the
//! Envoy filter uses exactly the code the native services use. It owns:
//!
//! - [`api`]: the local router's probe API shapes (`/best_worker` query and answer);
//! - [`hashing`]: Dynamo-compatible block hashing (local block hash, chained sequence hash,
//!   LoRA / cache-salt seeds);
//! - [`worker`]: the identity of a worker, `(worker_id, dp_rank)`;
//! - [`openai`]: the OpenAI request view (prompt, messages, sampling fields) and error body;
//! - [`engine_metrics`]: what a router reads from an engine's `/metrics` (its KV cache size);
//! - [`events`]: KV cache events in Dynamo's JSON form and the decoder/encoder for the
//!   vLLM/SGLang ZMQ msgpack wire form;
//! - [`step_time`]: Dynamo's fit of an engine's step time, which the mocker runs on and the
//!   routers predict with.
//!
//! It does not own any index, scheduling or transport: those live in `kvroute-kv-router`.
#![forbid(unsafe_code)]

pub mod api;
pub mod engine_metrics;
pub mod events;
pub mod hashing;
pub mod openai;
pub mod step_time;
pub mod worker;

pub use hashing::{block_hashes, sequence_hashes, HashSeed, LocalBlockHash, SequenceHash};
pub use worker::Worker;
