//! The local KV router's core: what is cached where, what is in flight where, and which worker
//! a request should go to. Pure logic (no I/O, no clocks; randomness is injected).
//!
//! - [`index`]: the radix index of cached blocks per worker, fed by KV events;
//! - [`load`]: active sequences per worker (prefill tokens, reference-counted blocks);
//! - [`select`]: the cost function, temperature sampling and the router configuration;
//! - [`router`]: [`router::KvRouter`], the three put together behind Dynamo's `KvRouter` API.
#![forbid(unsafe_code)]

pub mod index;
pub mod load;
pub mod router;
pub mod select;

pub use index::{IndexError, KvIndex, Overlap};
pub use load::ActiveSequences;
pub use router::KvRouter;
pub use select::{KvRouterConfig, RouterConfigOverride};
