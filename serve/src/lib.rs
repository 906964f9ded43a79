//! How every kvroute HTTP service (mocker, kv-router, global router) speaks HTTP, so they
//! behave alike on the wire:
//! - serving ([`spawn`]): the app runs on a listener the caller bound (so it can report an
//!   ephemeral port before serving), every accepted connection has Nagle's algorithm off (a
//!   streamed token is a small write that must not wait for the peer's delayed ACK: latency
//!   over bytes), and a server that stops is logged with the service's name;
//! - calling the next hop ([`Upstream`]): hyper's pooled client, likewise without Nagle.
#![forbid(unsafe_code)]

mod upstream;

pub use upstream::{json, Upstream};

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;

/// Serves `app` on `listener` in a background task for as long as the runtime runs.
pub fn spawn(listener: TcpListener, app: Router, service: &'static str) {
    tokio::spawn(async move {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "{service} HTTP server stopped");
        }
    });
}
