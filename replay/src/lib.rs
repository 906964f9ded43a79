//! Offline, virtual-time replay of a request trace through mocker engines and a KV router.
//!
//! The job: measure routing quality on real traffic, deterministically and fast, in a way whose
//! numbers can be set beside Dynamo's own offline replay. The trade-off: it reuses the real
//! engine core ([`kvroute_mocker::Engine`]) and router core ([`kvroute_kv_router::KvRouter`])
//! rather than a simplified model, so its figures are the components' figures, at the cost of
//! simulating every scheduler pass.
//!
//! - [`trace`]: the Mooncake trace format, hash-id → token expansion (as Dynamo's), time scale;
//! - [`sim`]: the discrete-event loop in virtual time and the per-request records;
//! - [`summary`]: percentiles, throughput and prefix reuse, and the printable table;
//! - [`compare`]: the standard routing settings side by side, as a table and charts;
//! - [`floor`]: the physical floor of TTFT (each request alone on an idle worker holding what
//!   the trace reused before it), with an infinite or a shared LRU cache;
//! - [`plot`]: SVG charts of a comparison (TTFT CDFs, per-policy bars).
//!
//! Pure: no async runtime, no clock, randomness only from the seed.
//!
//! ```
//! use kvroute_kv_router::select::RouterMode;
//! use kvroute_replay::{run, ReplayConfig, Summary, trace::{expand, TraceOptions, TraceRecord}};
//!
//! let records = vec![
//!     TraceRecord { timestamp: 0, input_length: 600, output_length: 4, hash_ids: vec![0, 1] },
//!     TraceRecord { timestamp: 500, input_length: 600, output_length: 4, hash_ids: vec![0, 2] },
//! ];
//! let requests = expand(&records, &TraceOptions::default()).unwrap();
//! let outcome = run(&ReplayConfig::dynamo_defaults(2, RouterMode::Kv), &requests).unwrap();
//! let summary = Summary::of(&outcome.records);
//! assert_eq!(summary.completed, 2);
//! // The second request finds the first one's 512-token block cached on the same worker.
//! assert_eq!(outcome.records[1].cached_tokens, 512);
//! println!("{summary}");
//! ```
#![forbid(unsafe_code)]

pub mod compare;
pub mod floor;
pub mod plot;
pub mod sim;
pub mod summary;
pub mod trace;

pub use floor::{ttft_floor, FloorCache, FloorError, FloorRecord, TtftFloor};
pub use plot::{bars_svg, ttft_cdf_svg, PlotError, Series};
pub use sim::{run, LateWorkers, PoolSplit, ReplayConfig, ReplayError, ReplayOutcome, RequestRecord, SimStats};
pub use summary::{Latency, Summary};
pub use trace::{ReplayRequest, TraceError, TraceOptions, TraceRecord};
