//! The mocker's OpenAI-compatible HTTP server: a thin shell over one [`Engine`] per dp rank.
//!
//! `POST /v1/completions` and `/v1/chat/completions` (streaming SSE or not, `usage` with cached
//! prompt tokens), `POST /reset_prefix_cache`, `GET /v1/models`, `/health`, `/metrics`, `/debug/kv_blocks` (the cached
//! blocks per rank, for checking KV events against). Requests are tokenized with the
//! shared tokenizer (and chat template), queued on a rank (`X-Data-Parallel-Rank`, else the
//! least busy), and answered as the rank's passes produce tokens. KV events go out on each
//! rank's ZMQ publisher.
//!
//! This is the I/O edge: it may read the wall clock (response `created` stamps, event batch
//! timestamps); the engine core below it may not.
#![allow(clippy::disallowed_methods)]

pub mod http_push;
mod metrics;
mod openai;
pub mod publisher;
pub mod rank;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kvroute_protocol::openai::{ChatCompletionRequest, CompletionRequest, ErrorBody, Prompt, SamplingFields};
use kvroute_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::engine::RejectError;
use crate::{Engine, EngineConfig, EngineRequest, OutputIds};
use metrics::Metrics;
use publisher::{Publisher, PublisherEndpoints};
use rank::{RankHandle, SubmitError};

/// Everything a mocker server needs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub engine: EngineConfig,
    /// The name served in `/v1/models` and expected in requests' `model` (when they give one).
    pub model_name: String,
    /// Where the HTTP server listens (port 0: any free port).
    pub http_addr: SocketAddr,
    /// Data-parallel ranks, each with its own engine and KV cache.
    pub data_parallel_size: u32,
    /// KV event publishing; `None` disables it.
    pub kv_events: Option<KvEventsConfig>,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: u32,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Also push KV events in Dynamo's JSON form to this router (`POST <url>/events`).
    pub kv_events_http: Option<EventPushConfig>,
    /// Also publish KV events in Dynamo's JSON form on NATS JetStream (subjects
    /// `kvroute.kv_events.<worker_id>.<dp_rank>`).
    pub kv_events_nats: Option<NatsPushConfig>,
}

/// Dynamo-JSON KV events on NATS JetStream.
#[derive(Clone, Debug)]
pub struct NatsPushConfig {
    /// The NATS server (`nats://host:port`).
    pub url: String,
    /// This worker's id in the routers' configuration.
    pub worker_id: u64,
    /// When the publisher compacts the worker's history into a snapshot.
    pub options: kvroute_nats::PublisherOptions,
}

/// Dynamo-JSON KV events pushed to a router over HTTP.
#[derive(Clone, Debug)]
pub struct EventPushConfig {
    /// The router's base URL.
    pub url: String,
    /// This worker's id in the router's configuration.
    pub worker_id: u64,
}

/// ZMQ KV-event publishing (vLLM's `--kv-events-config` equivalent).
#[derive(Clone, Debug)]
pub struct KvEventsConfig {
    /// Host to bind.
    pub host: String,
    /// Port of rank 0's PUB socket; rank r uses `port + 2r`, its replay socket `port + 2r + 1`.
    /// 0: any free ports.
    pub port: u16,
    pub topic: String,
    /// Messages kept for the replay socket.
    pub replay_buffer: usize,
}

/// A started server: where it listens.
#[derive(Clone, Debug)]
pub struct RunningServer {
    pub http_addr: SocketAddr,
    /// Per dp rank, its KV-event endpoints.
    pub kv_events: Vec<PublisherEndpoints>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid engine configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Zmq(#[from] publisher::BindError),
    #[error("data_parallel_size must be > 0")]
    NoRanks,
}

struct AppState {
    config: ServerConfig,
    tokenizer: Arc<Tokenizer>,
    ranks: Vec<RankHandle>,
    outstanding: Vec<AtomicUsize>,
    next_id: AtomicU64,
    /// Random per server: response ids are this and the request counter, so ids from several
    /// workers (or restarts) behind one router do not collide, as vLLM's random ones do not.
    response_tag: u64,
    metrics: Metrics,
    /// What the engines may generate: ids that stream as readable text one at a time.
    output_ids: Arc<[u32]>,
}

/// Start the engines, the publishers and the HTTP server; returns once everything listens.
/// The server runs until the process ends (or the tokio runtime is dropped).
pub async fn start(config: ServerConfig, tokenizer: Arc<Tokenizer>) -> Result<RunningServer, StartError> {
    config.engine.validate()?;
    if config.data_parallel_size == 0 {
        return Err(StartError::NoRanks);
    }
    let mut ranks = Vec::new();
    let mut endpoints = Vec::new();
    for r in 0..config.data_parallel_size {
        let publisher = match &config.kv_events {
            None => None,
            Some(kv) => {
                let (events_port, replay_port) =
                    if kv.port == 0 { (0, 0) } else { (kv.port + 2 * r as u16, kv.port + 2 * r as u16 + 1) };
                let (p, e) = Publisher::bind(
                    &format!("tcp://{}:{events_port}", kv.host),
                    &format!("tcp://{}:{replay_port}", kv.host),
                    &kv.topic,
                    r,
                    kv.replay_buffer,
                )
                .await?;
                endpoints.push(e);
                Some(p)
            }
        };
        let mut pushers = Vec::new();
        if config.engine.enable_prefix_caching {
            if let Some(h) = &config.kv_events_http {
                pushers.push(http_push::spawn(h.url.clone(), kvroute_protocol::Worker::new(h.worker_id, r)));
            }
            if let Some(n) = &config.kv_events_nats {
                pushers.push(kvroute_nats::spawn_kv_event_publisher(
                    n.url.clone(),
                    kvroute_protocol::Worker::new(n.worker_id, r),
                    n.options,
                ));
            }
        }
        ranks.push(rank::spawn(r, Engine::new(config.engine.clone()), publisher, pushers));
    }
    let listener = TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| StartError::Http { addr: config.http_addr, source })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Http { addr: config.http_addr, source })?;
    let state = Arc::new(AppState {
        outstanding: (0..ranks.len()).map(|_| AtomicUsize::new(0)).collect(),
        metrics: Metrics::new(&config.model_name, config.engine.block_size),
        config,
        output_ids: tokenizer.printable_ids().into(),
        tokenizer,
        ranks,
        next_id: AtomicU64::new(1),
        response_tag: {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new().build_hasher().finish()
        },
    });
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/metrics", get(metrics))
        .route("/debug/kv_blocks", get(kv_blocks))
        .route("/reset_prefix_cache", post(reset_prefix_cache))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state);
    kvroute_serve::spawn(listener, app, "mocker");
    Ok(RunningServer { http_addr, kv_events: endpoints })
}

/// An OpenAI-style error response.
pub(crate) fn error_response(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(status.as_u16(), kind, message))).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error_response(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

#[derive(Serialize, Deserialize)]
struct ModelCard {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "object": "list",
        "data": [ModelCard { id: state.config.model_name.clone(), object: "model", created: 0, owned_by: "kvroute-mocker" }],
    }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], state.metrics.render(&state.ranks))
}

/// The blocks each rank holds (sequence hashes), so tests can check the KV events add up.
async fn kv_blocks(State(state): State<Arc<AppState>>) -> Response {
    let mut ranks = Vec::new();
    for rank in &state.ranks {
        match rank.cached_blocks().await {
            Ok(blocks) => ranks.push(serde_json::json!({"dp_rank": rank.rank, "blocks": blocks})),
            Err(e) => return reject_response(e),
        }
    }
    Json(serde_json::json!({"ranks": ranks})).into_response()
}

/// Drop every cached block no request uses, on every rank (vLLM's endpoint of the same name).
async fn reset_prefix_cache(State(state): State<Arc<AppState>>) -> StatusCode {
    for rank in &state.ranks {
        rank.reset_prefix_cache();
    }
    StatusCode::OK
}

async fn completions(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let request: CompletionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid completion request: {e}")),
    };
    let prompt = match &request.prompt {
        Prompt::Text(text) => match state.tokenizer.encode(text) {
            Ok(ids) => ids,
            Err(e) => return bad_request(format!("cannot tokenize the prompt: {e}")),
        },
        Prompt::Tokens(ids) => ids.clone(),
    };
    generate(state, headers, prompt, request.sampling, openai::Endpoint::Completions).await
}

async fn chat_completions(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let request: ChatCompletionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid chat completion request: {e}")),
    };
    if request.messages.is_empty() {
        return bad_request("messages must not be empty");
    }
    let text = match state.tokenizer.apply_chat_template(&request.messages, true) {
        Ok(t) => t,
        Err(e) => return bad_request(format!("cannot apply the chat template: {e}")),
    };
    let prompt = match state.tokenizer.encode(&text) {
        Ok(ids) => ids,
        Err(e) => return bad_request(format!("cannot tokenize the conversation: {e}")),
    };
    generate(state, headers, prompt, request.sampling, openai::Endpoint::Chat).await
}

/// Validate, queue on a rank, answer (streaming or not).
async fn generate(
    state: Arc<AppState>,
    headers: HeaderMap,
    prompt: Vec<u32>,
    sampling: SamplingFields,
    endpoint: openai::Endpoint,
) -> Response {
    if let Some(model) = sampling.model.as_deref() {
        if model != state.config.model_name {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found_error",
                format!("The model `{model}` does not exist."),
            );
        }
    }
    if sampling.n.is_some_and(|n| n != 1) {
        return bad_request("only n = 1 is supported");
    }
    if prompt.is_empty() {
        return bad_request("the prompt is empty");
    }
    let rank = match choose_rank(&state, &headers) {
        Ok(r) => r,
        Err(message) => return bad_request(message),
    };
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let max_tokens = sampling.max_tokens().unwrap_or(state.config.default_max_tokens) as usize;
    let request = EngineRequest {
        id,
        seed: sampling.seed.unwrap_or_else(|| prompt_seed(&prompt)),
        prompt,
        max_tokens,
        eos_token_id: if sampling.ignore_eos { None } else { state.tokenizer.eos_token_id() },
        output_ids: OutputIds::Among(state.output_ids.clone()),
    };
    openai::respond(state, rank, request, sampling, endpoint).await
}

/// The output seed of a request that gives none: a hash of its prompt, so the same request
/// always gets the same output.
fn prompt_seed(prompt: &[u32]) -> u64 {
    let bytes: Vec<u8> = prompt.iter().flat_map(|t| t.to_le_bytes()).collect();
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// The rank a request goes to: the one `X-Data-Parallel-Rank` names, else the least busy.
fn choose_rank(state: &AppState, headers: &HeaderMap) -> Result<usize, String> {
    if let Some(value) = headers.get("x-data-parallel-rank") {
        let rank = value.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok());
        return match rank {
            Some(r) if r < state.ranks.len() => Ok(r),
            _ => Err(format!(
                "X-Data-Parallel-Rank must be an integer below the data parallel size {}",
                state.ranks.len()
            )),
        };
    }
    Ok((0..state.ranks.len()).min_by_key(|&r| state.outstanding[r].load(Ordering::Relaxed)).unwrap_or(0))
}

fn reject_response(e: SubmitError) -> Response {
    match e {
        SubmitError::Rejected(RejectError::Duplicate(_)) | SubmitError::Stopped => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", e.to_string())
        }
        SubmitError::Rejected(reject) => bad_request(reject.to_string()),
    }
}
