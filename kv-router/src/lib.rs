//! The local KV router: what is cached where, what is in flight where, and which worker a
//! request should go to. The core (`index`, `load`, `select`, `router`) is pure logic (no I/O,
//! no clocks; randomness is injected); `service` is the I/O shell around it.
//!
//! - [`index`]: the radix index of cached blocks per worker, fed by KV events;
//! - [`load`]: active sequences per worker (prefill tokens, reference-counted blocks);
//! - [`select`]: the cost function, temperature sampling and the router configuration;
//! - [`router`]: [`router::KvRouter`], the three put together behind Dynamo's `KvRouter` API;
//! - [`replicas`]: replica sync's messages and bookkeeping (the replicas of a router group
//!   share the load each routed);
//! - [`service`]: the HTTP service around it (the I/O edge: ZMQ event subscribers, health
//!   checks, proxying `generate` to workers).
//!
//! ```
//! use kvroute_kv_router::router::{BlockedRequest, RouteOptions};
//! use kvroute_kv_router::{KvRouter, KvRouterConfig};
//! use kvroute_protocol::{HashSeed, Worker};
//!
//! let config = KvRouterConfig { block_size: 16, ..KvRouterConfig::default() };
//! let mut router = KvRouter::with_seed(config, 42).unwrap();
//! router.add_worker(Worker::new(1, 0));
//! router.add_worker(Worker::new(2, 0));
//! // Feed it the engines' KV events: router.apply_event(&event)
//! let prompt: Vec<u32> = (0..512).collect();
//! let request = BlockedRequest::from_tokens(&prompt, 16, HashSeed::default());
//! // Query only (no state change) ...
//! let routed = router.best_worker(&request, RouteOptions::default()).unwrap();
//! assert_eq!(routed.request_blocks, 32);
//! // ... or tracked: its load counts on the chosen worker until `free`.
//! let options = RouteOptions { request_id: Some("req-1"), ..RouteOptions::default() };
//! let routed = router.best_worker(&request, options).unwrap();
//! assert_eq!(router.load(routed.worker).active_prefill_tokens, 512);
//! router.mark_prefill_complete("req-1").unwrap();
//! router.free("req-1").unwrap();
//! ```
#![forbid(unsafe_code)]

pub mod index;
pub mod load;
pub mod replicas;
pub mod router;
pub mod select;
pub mod service;

pub use index::{IndexError, IndexReader, KvIndex, Overlap};
pub use load::ActiveSequences;
pub use router::KvRouter;
pub use select::{KvRouterConfig, RouterConfigOverride};
