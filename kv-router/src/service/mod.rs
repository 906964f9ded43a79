//! The local KV router as a service: Dynamo's `KvRouter` API over HTTP, fed by the workers' KV
//! events on ZMQ, proxying `generate` to the chosen worker.
//!
//! I/O edge around the pure core. The router ([`crate::router::KvRouter`]: load and selection)
//! and the KV index it reads are behind separate mutexes (every call is microseconds): event
//! sources apply events to the index while requests are routed, and the router reads the index
//! through an [`IndexReader`], which waits for no writer. Owns:
//! - [`config`]: the service's typed configuration (workers, selection, limits);
//! - `api`: the JSON endpoints (`/best_worker`, `/potential_loads`, lifecycle, events, dumps);
//! - `generate`: `/v1/completions` and `/v1/chat/completions` — route, forward, stream back,
//!   and release the request's load however it ends (a guard frees it on drop);
//! - `events`: one ZMQ subscriber per worker rank, with gap detection and replay;
//! - `nats_events`: or the same events from NATS JetStream, replayed from the stream;
//! - [`relay`]: `kvroute kv-relay`, a worker's ZMQ events onto NATS JetStream;
//! - `health`: periodic health checks that take failing workers out and put them back, and
//!   read each worker's KV cache size from its metrics when it is not configured;
//! - `replica_sync`: the other replicas of the router group, over NATS (when configured);
//! - `metrics`: Prometheus metrics.
#![allow(clippy::disallowed_methods)] // the I/O edge may read clocks

pub mod config;

mod api;
mod events;
mod generate;
mod health;
mod metrics;
mod nats_events;
pub mod relay;
mod replica_sync;

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kvroute_protocol::openai::ErrorBody;
use kvroute_protocol::Worker;
use kvroute_tokenizer::Tokenizer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use config::{ReplicaSyncConfig, ServiceConfig, WorkerSpec};

use crate::index::{IndexReader, KvIndex};
use crate::replicas::LoadUpdate;
use crate::router::KvRouter;
use crate::select::ConfigError;

/// A started router: where it listens.
#[derive(Clone, Debug)]
pub struct RunningRouter {
    pub http_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid router configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("invalid worker list: {0}")]
    Workers(String),
    #[error("cannot listen on {addr}: {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
}

/// One configured worker at run time.
pub(crate) struct WorkerRuntime {
    pub spec: WorkerSpec,
    pub worker_id: u64,
    pub ranks: u32,
    pub healthy: AtomicBool,
    /// Bumped when the worker comes back, so its event subscribers reconnect.
    pub reconnect: watch::Sender<u64>,
    /// Whether its metrics were read for its KV cache size since it (last) came up.
    pub cache_size_asked: AtomicBool,
}

impl WorkerRuntime {
    pub fn dp_workers(&self) -> impl Iterator<Item = Worker> + '_ {
        (0..self.ranks).map(move |r| Worker::new(self.worker_id, r))
    }
}

/// The service's router: it reads an index that the event sources apply to.
pub(crate) type ServiceRouter = KvRouter<rand::rngs::SmallRng, IndexReader>;

pub(crate) struct Shared {
    pub config: ServiceConfig,
    /// When both are held, the router is taken first.
    router: Mutex<ServiceRouter>,
    index: Mutex<KvIndex>,
    pub tokenizer: Arc<Tokenizer>,
    /// Recently tokenized prompts: a probe and the request after it tokenize once, and a prompt
    /// that begins like a recent one tokenizes only what is new.
    pub encoded: kvroute_tokenizer::RecentTexts,
    pub workers: Vec<WorkerRuntime>,
    pub http: kvroute_serve::Upstream,
    pub metrics: metrics::Metrics,
    next_request: AtomicU64,
    /// Where the router's load updates go to be published to the other replicas.
    load_updates: Option<mpsc::UnboundedSender<Vec<LoadUpdate>>>,
}

impl Shared {
    /// The router core. Held for microseconds; never across an await.
    pub fn router(&self) -> RouterGuard<'_> {
        RouterGuard {
            router: self.router.lock().unwrap_or_else(|e| e.into_inner()),
            load_updates: self.load_updates.as_ref(),
        }
    }

    /// The KV index, to apply events or read its dump and counters. Held for microseconds;
    /// routing does not wait for it.
    pub fn index(&self) -> MutexGuard<'_, KvIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn worker(&self, worker_id: u64) -> Option<&WorkerRuntime> {
        self.workers.iter().find(|w| w.worker_id == worker_id)
    }

    /// A fresh id for a request tracked by `generate`.
    pub fn request_id(&self) -> String {
        format!("kvroute-{}", self.next_request.fetch_add(1, Ordering::Relaxed))
    }

    /// Take a worker out of selection (its cache and load are forgotten).
    pub fn mark_unhealthy(&self, w: &WorkerRuntime, why: &str) {
        if w.healthy.swap(false, Ordering::SeqCst) {
            tracing::warn!(worker_id = w.worker_id, url = %w.spec.url, reason = why, "worker taken out of selection");
            self.router().remove_worker(w.worker_id);
            self.index().remove_worker(w.worker_id);
            self.metrics.worker_healthy.with_label_values(&[&w.worker_id.to_string()]).set(0.0);
        }
    }

    /// Put a worker back into selection, with an empty cache view rebuilt from its events.
    pub fn mark_healthy(&self, w: &WorkerRuntime) {
        if !w.healthy.swap(true, Ordering::SeqCst) {
            tracing::info!(worker_id = w.worker_id, url = %w.spec.url, "worker back in selection");
            for worker in w.dp_workers() {
                self.router().add_worker(worker);
                self.index().add_worker(worker);
            }
            w.reconnect.send_modify(|g| *g += 1);
            w.cache_size_asked.store(false, Ordering::SeqCst);
            self.metrics.worker_healthy.with_label_values(&[&w.worker_id.to_string()]).set(1.0);
        }
    }
}

/// The locked router core. When replicas share load, what the holder changed leaves for the
/// other replicas as the lock is released, in the order the changes were made.
pub(crate) struct RouterGuard<'a> {
    router: MutexGuard<'a, ServiceRouter>,
    load_updates: Option<&'a mpsc::UnboundedSender<Vec<LoadUpdate>>>,
}

impl Deref for RouterGuard<'_> {
    type Target = ServiceRouter;
    fn deref(&self) -> &ServiceRouter {
        &self.router
    }
}

impl DerefMut for RouterGuard<'_> {
    fn deref_mut(&mut self) -> &mut ServiceRouter {
        &mut self.router
    }
}

impl Drop for RouterGuard<'_> {
    fn drop(&mut self) {
        if let Some(tx) = self.load_updates {
            let updates = self.router.take_load_updates();
            if !updates.is_empty() {
                // Closed only when the publisher is gone (shutting down): nothing to tell.
                let _ = tx.send(updates);
            }
        }
    }
}

/// A refused request: the one place errors become (OpenAI-style JSON) responses.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.status, self.message)
    }
}

/// An OpenAI-style JSON error.
pub(crate) fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    let kind = match status {
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => "service_unavailable",
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        _ => "invalid_request_error",
    };
    (status, Json(ErrorBody::new(status.as_u16(), kind, message))).into_response()
}

/// Start subscribers, health checks and the HTTP server; returns once it listens.
pub async fn start(config: ServiceConfig, tokenizer: Arc<Tokenizer>) -> Result<RunningRouter, StartError> {
    config.router.validate()?;
    config.validate_workers().map_err(StartError::Workers)?;
    let seed = config.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    });
    let mut index = KvIndex::new();
    let mut router = KvRouter::reading(config.router.clone(), seed, index.reader())?;
    let metrics = metrics::Metrics::new();
    let (load_updates, outgoing) = match &config.replica_sync {
        Some(_) => {
            router.share_load();
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let workers: Vec<WorkerRuntime> = config
        .workers
        .iter()
        .map(|spec| {
            let (reconnect, _) = watch::channel(0);
            WorkerRuntime {
                worker_id: spec.id(),
                ranks: spec.ranks(),
                spec: spec.clone(),
                healthy: AtomicBool::new(true),
                reconnect,
                cache_size_asked: AtomicBool::new(false),
            }
        })
        .collect();
    for w in &workers {
        for worker in w.dp_workers() {
            router.add_worker(worker);
            index.add_worker(worker);
        }
        metrics.worker_healthy.with_label_values(&[&w.worker_id.to_string()]).set(1.0);
    }
    let listener = TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| StartError::Http { addr: config.http_addr, source })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Http { addr: config.http_addr, source })?;
    let shared = Arc::new(Shared {
        http: kvroute_serve::Upstream::new(),
        router: Mutex::new(router),
        index: Mutex::new(index),
        tokenizer,
        encoded: kvroute_tokenizer::RecentTexts::default(),
        workers,
        metrics,
        next_request: AtomicU64::new(1),
        load_updates,
        config,
    });
    if let Some(outgoing) = outgoing {
        tokio::spawn(replica_sync::run(shared.clone(), outgoing));
    }
    for (i, w) in shared.workers.iter().enumerate() {
        for rank in 0..w.ranks {
            if let Some(endpoint) = w.spec.kv_events.get(rank as usize) {
                tokio::spawn(events::subscribe(shared.clone(), i, rank, endpoint.clone()));
            }
        }
    }
    if let Some(url) = &shared.config.kv_events_nats {
        tokio::spawn(nats_events::run(shared.clone(), url.clone()));
    }
    tokio::spawn(health::run(shared.clone()));
    let app = Router::new()
        .route("/v1/completions", post(generate::completions))
        .route("/v1/chat/completions", post(generate::chat_completions))
        .route("/v1/models", get(api::models))
        .route("/best_worker", post(api::best_worker))
        .route("/potential_loads", post(api::potential_loads))
        .route("/mark_prefill_complete", post(api::mark_prefill_complete))
        .route("/free", post(api::free))
        .route("/dump_events", get(api::dump_events))
        .route("/events", post(api::events))
        .route("/workers", get(api::workers))
        .route("/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .layer(DefaultBodyLimit::max(shared.config.max_body_bytes))
        .with_state(shared);
    kvroute_serve::spawn(listener, app, "kv-router");
    Ok(RunningRouter { http_addr })
}
