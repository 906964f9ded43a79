//! How every kvroute HTTP service (mocker, kv-router, global router) speaks HTTP, so they
//! behave alike on the wire:
//! - serving ([`spawn`]): the app runs on a listener the caller bound (so it can report an
//!   ephemeral port before serving), every accepted connection has Nagle's algorithm off (a
//!   streamed token is a small write that must not wait for the peer's delayed ACK: latency
//!   over bytes), and a server that stops is logged with the service's name;
//! - stopping ([`stop_signal`], [`shut_down`]): on Ctrl-C or SIGTERM every server of the process
//!   stops accepting and finishes the requests it is serving — a streamed answer runs to its
//!   end — within a grace period, as an orchestrator that replaces a pod expects;
//! - calling the next hop ([`Upstream`]): hyper's pooled client, likewise without Nagle.
#![forbid(unsafe_code)]

mod upstream;

pub use upstream::{json, Upstream};

use std::sync::OnceLock;
use std::time::Duration;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The servers [`spawn`] started in this process: whether they were told to stop, and how many
/// still run (a server runs until its last connection has finished after the stop).
struct Servers {
    stop: watch::Sender<bool>,
    running: watch::Sender<usize>,
}

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| Servers { stop: watch::Sender::new(false), running: watch::Sender::new(0) })
}

/// Serves `app` on `listener` in a background task, until [`shut_down`] (then it finishes the
/// requests in flight) or the runtime ends.
pub fn spawn(listener: TcpListener, app: Router, service: &'static str) {
    let mut stop = servers().stop.subscribe();
    servers().running.send_modify(|n| *n += 1);
    tokio::spawn(async move {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let stopped = async move {
            let _ = stop.wait_for(|&stop| stop).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
            tracing::error!(error = %e, "{service} HTTP server stopped");
        }
        servers().running.send_modify(|n| *n -= 1);
    });
}

/// Waits for Ctrl-C or SIGTERM (what a terminal and an orchestrator send to stop a service) and
/// says which came.
pub async fn stop_signal() -> std::io::Result<&'static str> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map(|()| "Ctrl-C"),
        _ = terminate.recv() => Ok("SIGTERM"),
    }
}

/// Tells every server [`spawn`] started to stop accepting connections, and waits until they
/// have finished the requests they were serving, at most `grace`. Returns how many servers were
/// still finishing when the grace ran out (0: everything in flight completed).
pub async fn shut_down(grace: Duration) -> usize {
    servers().stop.send_replace(true);
    let mut running = servers().running.subscribe();
    let finished = tokio::time::timeout(grace, running.wait_for(|&n| n == 0)).await.is_ok();
    if finished {
        0
    } else {
        *running.borrow()
    }
}

/// The service's whole stop sequence for a `main`: wait for [`stop_signal`], log it, then
/// [`shut_down`] within `grace` — cut short by a second signal — and log how it ended.
pub async fn run_until_stopped(service: &str, grace: Duration) -> std::io::Result<()> {
    let signal = stop_signal().await?;
    tracing::info!(
        "{service}: {signal} received; finishing the requests in flight (at most {} s; send it again to stop now)",
        grace.as_secs()
    );
    tokio::select! {
        busy = shut_down(grace) => match busy {
            0 => tracing::info!("{service}: stopped"),
            _ => tracing::warn!("{service}: stopped with requests still in flight after {} s", grace.as_secs()),
        },
        again = stop_signal() => {
            again?;
            tracing::warn!("{service}: stopped at once, requests in flight cut");
        }
    }
    Ok(())
}
