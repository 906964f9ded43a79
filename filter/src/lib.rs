//! kvroute's Envoy proxy-wasm filter: chooses the pool (router group) for an OpenAI request by
//! asking every group's kv-router what the request would cost there, then lets Envoy route on
//! the `x-kvroute-pool` header.
//!
//! The decision is `kvroute-pool-select`'s; this crate is glue. The pure parts (configuration,
//! body and answer reading, mapping answers to a decision) are [`config`] and [`route`] and are
//! tested natively. The host glue exists only on wasm32: `root` parses the configuration once,
//! `http` is the per-request state machine, `host` is the only caller of host functions.
//! The trade-off: a request waits up to `probe_timeout_ms` for the probes; any failure (a group
//! down, slow, answering garbage; a body that is not a completion request) fails open.

pub mod config;
pub mod route;

#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod root;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::<root::Root>::default() });
}}
