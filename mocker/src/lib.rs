//! The mocker: a simulated LLM inference engine whose routing-relevant behaviour (prefix reuse,
//! eviction, load-dependent latency, KV events) follows vLLM and Dynamo's mocker.
//!
//! The engine core is plain Rust on an explicit clock (no tokio timers), so a replay can run it
//! in virtual time:
//! - [`timing`]: Dynamo's polynomial prefill/decode step-time model;
//! - [`block_pool`]: the paged KV cache — prefix reuse by sequence hash, reference counts, LRU
//!   eviction by release time, and the KV events it emits.
//!
//! Still to come (see the session notes): the scheduler (continuous batching, chunked prefill,
//! preemption), the OpenAI HTTP shell and the ZMQ publisher.
#![forbid(unsafe_code)]

pub mod block_pool;
pub mod timing;
