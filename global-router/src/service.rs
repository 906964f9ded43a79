//! The global router's HTTP service: OpenAI endpoints through the phases parse → probe →
//! decide → forward → retry-before-first-byte → log, plus `/v1/models` (merged over pools),
//! `/pools` (live state), `/health` and `/metrics`. Errors become OpenAI-style JSON in one
//! place ([`GlobalError`]).
#![allow(clippy::disallowed_methods)] // the I/O edge may read clocks

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use kvroute_pool_select::{BestWorkerResponse, Decision, Policy, PoolState, RequestFeatures, Selector};
use kvroute_protocol::openai::{ChatMessage, ErrorBody, Prompt};
use kvroute_tokenizer::{RecentTexts, Tokenizer};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::config::GlobalRouterConfig;
use crate::metrics::Metrics;
use kvroute_serve::Upstream;

/// Where a started global router listens.
#[derive(Clone, Debug)]
pub struct RunningGlobalRouter {
    pub http_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid global router configuration: {0}")]
    Config(#[from] kvroute_pool_select::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
}

/// A refused or failed request; the only place errors become responses.
#[derive(Debug)]
struct GlobalError {
    status: StatusCode,
    message: String,
}

impl GlobalError {
    fn bad_request(message: impl Into<String>) -> Self {
        GlobalError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
}

impl IntoResponse for GlobalError {
    fn into_response(self) -> Response {
        let kind = if self.status.is_server_error() { "service_unavailable" } else { "invalid_request_error" };
        (self.status, Json(ErrorBody::new(self.status.as_u16(), kind, self.message))).into_response()
    }
}

/// One kv-router replica of a pool's router group.
pub(crate) struct Replica {
    pub url: String,
    pub healthy: AtomicBool,
}

/// One pool at run time.
pub(crate) struct PoolRuntime {
    pub name: String,
    pub replicas: Vec<Replica>,
    pub in_flight: AtomicU64,
    next_replica: AtomicUsize,
}

impl PoolRuntime {
    pub fn healthy(&self) -> bool {
        self.replicas.iter().any(|r| r.healthy.load(Ordering::Relaxed))
    }

    /// A healthy replica, in turn (any replica if none is known healthy).
    fn replica(&self) -> &Replica {
        let n = self.replicas.len();
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &self.replicas[(start + k) % n])
            .find(|r| r.healthy.load(Ordering::Relaxed))
            .unwrap_or(&self.replicas[start % n])
    }
}

pub(crate) struct Shared {
    pub config: GlobalRouterConfig,
    selector: Mutex<Selector<SmallRng>>,
    pub pools: Vec<PoolRuntime>,
    pub http: Upstream,
    pub metrics: Metrics,
    tokenizer: Arc<Tokenizer>,
    /// Recent prompts (for policies that need the input length): a conversation's next turn
    /// tokenizes only what is new.
    recent: RecentTexts,
    needs_isl: bool,
}

/// Start health checks and the HTTP server; returns once it listens.
pub async fn start(config: GlobalRouterConfig, tokenizer: Arc<Tokenizer>) -> Result<RunningGlobalRouter, StartError> {
    config.validate()?;
    let seed = config.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    });
    let selector = Selector::new(config.select_config(), SmallRng::seed_from_u64(seed))?;
    let pools = config
        .pools
        .iter()
        .map(|p| PoolRuntime {
            name: p.name.clone(),
            replicas: p
                .routers
                .iter()
                .map(|u| Replica { url: u.trim_end_matches('/').to_owned(), healthy: AtomicBool::new(true) })
                .collect(),
            in_flight: AtomicU64::new(0),
            next_replica: AtomicUsize::new(0),
        })
        .collect();
    let addr = config.http_addr();
    let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Http { addr, source })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Http { addr, source })?;
    let shared = Arc::new(Shared {
        needs_isl: matches!(config.policy, Policy::Grid(_)),
        selector: Mutex::new(selector),
        pools,
        http: Upstream::new(),
        metrics: Metrics::new(),
        tokenizer,
        recent: RecentTexts::default(),
        config,
    });
    tokio::spawn(crate::health::run(shared.clone()));
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/pools", get(pools_state))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(shared.config.max_body_bytes))
        .with_state(shared);
    kvroute_serve::spawn(listener, app, "global router");
    Ok(RunningGlobalRouter { http_addr })
}

async fn completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    route(shared, headers, body, "/v1/completions").await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    route(shared, headers, body, "/v1/chat/completions").await.unwrap_or_else(IntoResponse::into_response)
}

/// Bodies at least this long are parsed (and their prompt tokenized) off the async runtime.
const TOKENIZE_OFF_RUNTIME_BYTES: usize = 16 << 10;

/// What a request without a `kvroute` object hints: nothing.
static NO_HINTS: Value = Value::Null;

/// The fields of a request the global router reads. The prompt and the messages stay raw JSON
/// (never copied, never parsed into values) unless the policy needs the input length.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(default, borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(default, borrow)]
    messages: Option<&'a RawValue>,
    #[serde(default)]
    kvroute: Option<Value>,
}

/// Phase 1, parse: the body to forward (without the `kvroute` object) and the request's features.
fn parse(shared: &Shared, headers: &HeaderMap, body: &Bytes) -> Result<(Bytes, RequestFeatures), GlobalError> {
    if !kvroute_protocol::api::is_json_object(body) {
        return Err(GlobalError::bad_request("the request body must be a JSON object"));
    }
    let peek: Peek =
        serde_json::from_slice(body).map_err(|e| GlobalError::bad_request(format!("invalid request: {e}")))?;
    let stripped = peek.kvroute.is_some();
    let from_body = peek.kvroute.as_ref().unwrap_or(&NO_HINTS);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).map(str::to_owned);
    let number = |name: &str, key: &str| -> Result<Option<f64>, GlobalError> {
        match header(name) {
            Some(v) => v
                .parse::<f64>()
                .map(Some)
                .map_err(|_| GlobalError::bad_request(format!("{name} must be a number, got {v:?}"))),
            None => Ok(from_body[key].as_f64()),
        }
    };
    let priority = match header("x-kvroute-priority") {
        Some(v) => Some(
            v.parse::<i64>()
                .map_err(|_| GlobalError::bad_request(format!("x-kvroute-priority must be an integer, got {v:?}")))?,
        ),
        None => from_body["priority"].as_i64(),
    };
    let isl_tokens = if shared.needs_isl { prompt_tokens(shared, &peek) } else { 0 };
    let features = RequestFeatures {
        model: peek.model.as_deref().map(str::to_owned),
        isl_tokens,
        ttft_target_ms: number("x-kvroute-ttft-target-ms", "ttft_target_ms")?,
        itl_target_ms: number("x-kvroute-itl-target-ms", "itl_target_ms")?,
        priority,
    };
    // Re-encode only when the `kvroute` object is to be taken out (rare); otherwise forward the
    // bytes as received.
    let forwarded = if stripped { without_kvroute(body)? } else { body.clone() };
    Ok((forwarded, features))
}

/// The body with its `kvroute` object removed.
fn without_kvroute(body: &Bytes) -> Result<Bytes, GlobalError> {
    kvroute_protocol::api::without_fields(body, &["kvroute"])
        .map(Bytes::from)
        .map_err(|e| GlobalError::bad_request(format!("invalid request: {e}")))
}

/// The prompt's length in tokens, with the shared tokenizer (only policies that use it pay).
fn prompt_tokens(shared: &Shared, peek: &Peek) -> u64 {
    if let Some(prompt) = peek.prompt.and_then(|p| serde_json::from_str::<Prompt>(p.get()).ok()) {
        return match prompt {
            Prompt::Tokens(ids) => ids.len() as u64,
            Prompt::Text(text) => shared.recent.encode(&shared.tokenizer, &text).map_or(0, |(ids, _)| ids.len() as u64),
        };
    }
    let Some(messages) = peek.messages.and_then(|m| serde_json::from_str::<Vec<ChatMessage>>(m.get()).ok()) else {
        return 0;
    };
    shared
        .tokenizer
        .apply_chat_template(&messages, true)
        .ok()
        .and_then(|t| shared.recent.encode(&shared.tokenizer, &t).ok())
        .map_or(0, |(ids, _)| ids.len() as u64)
}

/// Phase 2, probe: every healthy pool's group, in parallel, query-only, bounded by the timeout.
async fn probe(shared: &Shared, body: &Bytes) -> Vec<Option<BestWorkerResponse>> {
    let timeout = shared.config.probe_timeout();
    let calls = shared.pools.iter().map(|pool| async move {
        if !pool.healthy() {
            return None;
        }
        let replica = pool.replica();
        let started = Instant::now();
        let answer = async {
            let r = shared.http.post(&format!("{}/best_worker", replica.url), &[], body.clone()).await.ok()?;
            kvroute_serve::json::<BestWorkerResponse>(r).await.ok()
        };
        let result = tokio::time::timeout(timeout, answer).await.ok().flatten();
        shared.metrics.probe_latency.observe(started.elapsed().as_secs_f64());
        if result.is_none() {
            shared.metrics.probe_failures.with_label_values(&[&pool.name]).inc();
        }
        result
    });
    futures::future::join_all(calls).await
}

/// Counts a request against its pool until the response ends, however it ends.
struct InFlight {
    shared: Arc<Shared>,
    pool: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.pools[self.pool].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn route(
    shared: Arc<Shared>,
    headers: HeaderMap,
    body: Bytes,
    path: &'static str,
) -> Result<Response, GlobalError> {
    let (forwarded, features) = if shared.needs_isl && body.len() >= TOKENIZE_OFF_RUNTIME_BYTES {
        // Tokenizing a long prompt takes long enough (≈ 150 ms for 220 KB of new text) to stall
        // every request queued on this runtime worker: do it on a blocking thread.
        let (s, h, b) = (shared.clone(), headers.clone(), body.clone());
        tokio::task::spawn_blocking(move || parse(&s, &h, &b)).await.map_err(|e| GlobalError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("parsing the request failed: {e}"),
        })??
    } else {
        parse(&shared, &headers, &body)?
    };
    let states: Vec<PoolState> = shared
        .pools
        .iter()
        .map(|p| PoolState { healthy: p.healthy(), in_flight: p.in_flight.load(Ordering::Relaxed) })
        .collect();
    // One candidate pool: nothing to decide, so no probe round trip.
    let needs_probes = shared.selector.lock().unwrap_or_else(|e| e.into_inner()).needs_probes_for(&features, &states);
    let probes = if needs_probes { probe(&shared, &forwarded).await } else { vec![None; shared.pools.len()] };
    let probe_refs: Vec<Option<&BestWorkerResponse>> = probes.iter().map(Option::as_ref).collect();
    // Phase 3, decide.
    let decision = shared.selector.lock().unwrap_or_else(|e| e.into_inner()).decide(&features, &states, &probe_refs);
    let decision =
        decision.map_err(|e| GlobalError { status: StatusCode::SERVICE_UNAVAILABLE, message: e.to_string() })?;
    shared.metrics.decisions.with_label_values(&[&decision.pool_name, decision.reason.policy]).inc();
    tracing::debug!(pool = %decision.pool_name, reason = %decision.reason, "pool chosen");

    // Phases 4 and 5: forward, retrying on the next pool while nothing was sent back.
    let order: Vec<usize> = std::iter::once(decision.pool).chain(decision.fallbacks.iter().copied()).collect();
    let mut last_error = String::new();
    for (attempt, &pool) in order.iter().enumerate() {
        if attempt > 0 {
            shared.metrics.retries.with_label_values(&[&shared.pools[pool].name]).inc();
        }
        match forward(&shared, pool, &decision, probes[pool].as_ref(), &forwarded, path).await {
            Ok(response) => return Ok(response),
            Err(e) => {
                tracing::warn!(pool = %shared.pools[pool].name, error = %e, "pool failed before the first byte; trying the next");
                last_error = e;
            }
        }
    }
    Err(GlobalError {
        status: StatusCode::BAD_GATEWAY,
        message: format!("every eligible pool failed; last: {last_error}"),
    })
}

/// Forward to one pool. `Err` only before any byte of the answer was passed on.
async fn forward(
    shared: &Arc<Shared>,
    pool: usize,
    decision: &Decision,
    probe: Option<&BestWorkerResponse>,
    body: &Bytes,
    path: &str,
) -> Result<Response, String> {
    let runtime = &shared.pools[pool];
    let replica = runtime.replica();
    let mut headers = Vec::new();
    if let (true, Some(p), true) = (shared.config.forward_worker, probe, pool == decision.pool) {
        headers.push((HeaderName::from_static("x-worker-instance-id"), HeaderValue::from(p.worker_id)));
        headers.push((HeaderName::from_static("x-dp-rank"), HeaderValue::from(p.dp_rank)));
    }
    if let Some(d) = &decision.disaggregated {
        for (name, pool_name) in
            [("x-kvroute-prefill-pool", &d.prefill_pool_name), ("x-kvroute-decode-pool", &d.decode_pool_name)]
        {
            headers.push((HeaderName::from_static(name), HeaderValue::from_str(pool_name).map_err(|e| e.to_string())?));
        }
    }
    runtime.in_flight.fetch_add(1, Ordering::Relaxed);
    let guard = InFlight { shared: shared.clone(), pool };
    let upstream = match shared.http.post(&format!("{}{path}", replica.url), &headers, body.clone()).await {
        Ok(r) => r,
        Err(e) => {
            replica.healthy.store(false, Ordering::Relaxed);
            return Err(e);
        }
    };
    if upstream.status().is_server_error() {
        return Err(format!("{} answered {}", replica.url, upstream.status()));
    }
    let (head, body) = upstream.into_parts();
    let passed: Vec<(HeaderName, HeaderValue)> = head
        .headers
        .iter()
        .filter(|(k, _)| k.as_str() == "content-type" || k.as_str().starts_with("x-kvroute-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The guard lives as long as the body: the request counts against its pool until then.
    let body = body.map_frame(move |frame| {
        let _ = &guard;
        frame
    });
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = head.status;
    let h = response.headers_mut();
    for (name, value) in passed {
        h.insert(name, value);
    }
    h.insert("x-kvroute-pool", HeaderValue::from_str(&runtime.name).map_err(|e| e.to_string())?);
    h.insert(
        "x-kvroute-reason",
        HeaderValue::from_str(&decision.reason.summary).unwrap_or(HeaderValue::from_static("unprintable")),
    );
    if let Some(d) = &decision.disaggregated {
        h.insert("x-kvroute-prefill-pool", HeaderValue::from_str(&d.prefill_pool_name).map_err(|e| e.to_string())?);
        h.insert("x-kvroute-decode-pool", HeaderValue::from_str(&d.decode_pool_name).map_err(|e| e.to_string())?);
    }
    Ok(response)
}

/// The models of every healthy pool, merged by id.
async fn models(State(shared): State<Arc<Shared>>) -> Response {
    let healthy = shared.pools.iter().filter(|p| p.healthy()).map(|p| p.replica().url.clone()).collect();
    Json(shared.http.merged_models(healthy).await).into_response()
}

async fn pools_state(State(shared): State<Arc<Shared>>) -> Response {
    let list: Vec<Value> = shared
        .pools
        .iter()
        .zip(&shared.config.pools)
        .map(|(p, c)| {
            json!({
                "name": p.name, "model": c.model, "priority": c.priority, "weight": c.weight, "max_input_tokens": c.max_input_tokens,
                "healthy": p.healthy(), "in_flight": p.in_flight.load(Ordering::Relaxed),
                "routers": p.replicas.iter().map(|r| json!({"url": r.url, "healthy": r.healthy.load(Ordering::Relaxed)})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({"policy": shared.config.policy, "pools": list})).into_response()
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let healthy = shared.pools.iter().filter(|p| p.healthy()).count();
    let status = if healthy > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"healthy_pools": healthy, "pools": shared.pools.len()}))).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], shared.metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kvroute_object_is_taken_out_and_everything_else_kept() {
        let body =
            Bytes::from_static(br#"{"model": "m", "prompt": [1, 2], "kvroute": {"priority": 3}, "max_tokens": 4}"#);
        let forwarded: Value = serde_json::from_slice(&without_kvroute(&body).unwrap()).unwrap();
        assert_eq!(forwarded, json!({"model": "m", "prompt": [1, 2], "max_tokens": 4}));
    }

    #[test]
    fn the_peek_keeps_the_prompt_raw() {
        let body = br#"{"model": "m\u00e9", "prompt": "some \"quoted\" text", "extra": [1, {"x": 2}]}"#;
        let peek: Peek = serde_json::from_slice(body).unwrap();
        assert_eq!(peek.model.as_deref(), Some("mé"));
        assert_eq!(peek.prompt.map(RawValue::get), Some(r#""some \"quoted\" text""#));
        assert!(peek.messages.is_none() && peek.kvroute.is_none());
    }
}
