//! The JSON endpoints: Dynamo's `KvRouter` methods over HTTP, plus discovery and metrics.
//! Bad input gets a 4xx JSON error and leaves the index and the loads untouched.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kvroute_protocol::api::{RequestIdBody, RouteQuery};
use kvroute_protocol::events::parse_router_events;
use kvroute_protocol::openai::Prompt;
use kvroute_protocol::HashSeed;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error_response, ApiError, Shared};
use crate::load::LoadError;
use crate::router::{BlockedRequest, RouteError, RouteOptions};
use crate::select::RouterConfigOverride;

/// Parse a JSON body or answer 400 saying why.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid {what}: {e}")))
}

/// `text`'s ids through the router's cache of recent texts, counted by how they were obtained.
fn tokenize(shared: &Shared, text: &str) -> Result<Vec<u32>, kvroute_tokenizer::TokenizerError> {
    let (ids, how) = shared.encoded.encode(&shared.tokenizer, text)?;
    shared.metrics.record_tokenization(how, ids.len());
    Ok(ids)
}

/// How much of a text prompt a call needs turned into ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// All of it: the request is tracked (or served), its every block counts.
    All,
    /// A query (`best_worker` without `request_id`, `potential_loads`): only as far as some
    /// worker holds (or is computing) its blocks — overlaps are exact, the length past that
    /// is estimated. What keeps a probe of a long text nobody has seen cheap.
    CachedPrefix,
}

/// A query tokenizes a long text prompt this far first (≈ 3 ms of tokenizing), then twice as
/// much more each round while some worker holds every block so far. Texts shorter than twice
/// this are tokenized whole.
const QUERY_FIRST_BYTES: usize = 4 * 1024;

/// The request's prompt before tokenization: ids, or text.
enum PromptInput<'a> {
    Ids(&'a [u32]),
    Text(std::borrow::Cow<'a, str>),
}

/// `token_ids`, else `prompt`, else `messages` through the chat template.
fn prompt_of<'q>(shared: &Shared, q: &'q RouteQuery) -> Result<PromptInput<'q>, ApiError> {
    let bad = ApiError::bad_request;
    Ok(if let Some(ids) = &q.token_ids {
        PromptInput::Ids(ids)
    } else if let Some(prompt) = &q.prompt {
        match prompt {
            Prompt::Tokens(ids) => PromptInput::Ids(ids),
            Prompt::Text(text) => PromptInput::Text(text.as_str().into()),
        }
    } else if let Some(messages) = &q.messages {
        if messages.is_empty() {
            return Err(bad("messages must not be empty".into()));
        }
        let text = shared
            .tokenizer
            .apply_chat_template(messages, true)
            .map_err(|e| bad(format!("cannot apply the chat template: {e}")))?;
        PromptInput::Text(text.into())
    } else {
        return Err(bad("one of token_ids, prompt or messages is required".into()));
    })
}

fn non_empty(tokens: &[u32]) -> Result<&[u32], ApiError> {
    match tokens.is_empty() {
        true => Err(ApiError::bad_request("the prompt is empty")),
        false => Ok(tokens),
    }
}

fn cannot_tokenize(e: kvroute_tokenizer::TokenizerError) -> ApiError {
    ApiError::bad_request(format!("cannot tokenize the prompt: {e}"))
}

pub(crate) fn blocked(shared: &Shared, q: &RouteQuery, need: Need) -> Result<BlockedRequest, ApiError> {
    let seed = HashSeed::for_request(q.lora_name.as_deref(), q.cache_salt.as_deref());
    let block_size = shared.config.router.block_size;
    let tokens = match prompt_of(shared, q)? {
        PromptInput::Ids(ids) => return Ok(BlockedRequest::from_tokens(non_empty(ids)?, block_size, seed)),
        PromptInput::Text(text)
            if need == Need::CachedPrefix && text.len() >= 2 * QUERY_FIRST_BYTES && shared.tokenizer.resumes() =>
        {
            return cached_prefix_blocked(shared, &text, seed);
        }
        PromptInput::Text(text) => tokenize(shared, &text).map_err(cannot_tokenize)?,
    };
    Ok(BlockedRequest::from_tokens(non_empty(&tokens)?, block_size, seed))
}

/// A long text prompt for a query: its beginning tokenized only as far as some worker holds
/// or computes its blocks (and a little past), the tokens after that estimated from the bytes
/// left at the bytes per token of the part tokenized last. Exact overlaps for every worker;
/// the request that follows carries on tokenizing from where this stopped (the recent-text
/// cache). A beginning shared with a recent text costs nothing to tokenize, so each round
/// asks for `step` bytes past what the last one got, `step` doubling.
fn cached_prefix_blocked(shared: &Shared, text: &str, seed: HashSeed) -> Result<BlockedRequest, ApiError> {
    let block_size = shared.config.router.block_size;
    let (mut want, mut step) = (QUERY_FIRST_BYTES, QUERY_FIRST_BYTES);
    let mut last = (0u64, 0u64); // (ids, bytes) of the last round's beginning
                                 // Counted once per query: ids reused from other texts (the first round's), ids tokenized.
    let (mut first_reused, mut tokenized) = (None, 0);
    loop {
        let beginning = shared.encoded.encode_beginning(&shared.tokenizer, text, want).map_err(cannot_tokenize)?;
        let this_round = beginning.how.reused(beginning.ids.len());
        let reused = *first_reused.get_or_insert(this_round);
        tokenized += beginning.ids.len() - this_round;
        let done = |request| {
            shared.metrics.count_tokenization(beginning.how, reused, tokenized);
            Ok(request)
        };
        if beginning.bytes >= text.len() {
            return done(BlockedRequest::from_tokens(non_empty(&beginning.ids)?, block_size, seed));
        }
        // Bytes per token of the part this round added (the text nearest the rest): a long
        // document before a question tokenizes differently from the question.
        let (ids, bytes) = (beginning.ids.len() as u64, beginning.bytes as u64);
        let (new_ids, new_bytes) = match ids > last.0 && bytes > last.1 {
            true => (ids - last.0, bytes - last.1),
            false => (ids.max(1), bytes.max(1)),
        };
        let isl_tokens = ids + ((text.len() as u64 - bytes) * new_ids).div_ceil(new_bytes);
        last = (ids, bytes);
        let request = BlockedRequest::from_beginning(&beginning.ids, isl_tokens, block_size, seed);
        if (shared.router().known_prefix_blocks(&request) as usize) < request.local.len() {
            return done(request);
        }
        step *= 2;
        want = beginning.bytes + step;
    }
}

/// Prompts at least this long are tokenized off the async runtime.
const OFF_RUNTIME_BYTES: usize = 16 * 1024;

/// [`blocked`], on a blocking thread when the prompt is long: tokenizing 220 KB of text takes
/// ≈ 160 ms, which would hold a runtime worker — and every request queued behind it — for that
/// long. Short prompts (the common case) stay inline: a thread hop costs more than they do.
pub(crate) async fn blocked_off_runtime(
    shared: &Arc<Shared>,
    q: &RouteQuery,
    need: Need,
) -> Result<BlockedRequest, ApiError> {
    if text_bytes(q) < OFF_RUNTIME_BYTES {
        return blocked(shared, q, need);
    }
    let (shared, q) = (shared.clone(), q.clone());
    tokio::task::spawn_blocking(move || blocked(&shared, &q, need)).await.unwrap_or_else(|e| {
        Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("tokenizing the prompt failed: {e}")))
    })
}

/// Bytes of text the request would have tokenized (0 for token ids).
fn text_bytes(q: &RouteQuery) -> usize {
    if q.token_ids.is_some() {
        return 0;
    }
    match (&q.prompt, &q.messages) {
        (Some(Prompt::Text(text)), _) => text.len(),
        (Some(Prompt::Tokens(_)), _) => 0,
        (None, Some(messages)) => messages.iter().map(|m| m.content.text_len()).sum(),
        (None, None) => 0,
    }
}

pub(crate) fn config_override(q: &RouteQuery) -> Result<Option<RouterConfigOverride>, ApiError> {
    match &q.router_config_override {
        None | Some(Value::Null) => Ok(None),
        Some(v) => RouterConfigOverride::deserialize(v)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("invalid router_config_override: {e}"))),
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NoWorkers => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no worker is available"),
            RouteError::Config(c) => ApiError::bad_request(format!("invalid router_config_override: {c}")),
            RouteError::Load(LoadError::DuplicateRequest(id)) => {
                ApiError::new(StatusCode::CONFLICT, format!("request id {id:?} is already being tracked"))
            }
            RouteError::Load(e @ LoadError::UnknownRequest(_)) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
        }
    }
}

pub async fn best_worker(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let q: RouteQuery = match parse(&body, "best_worker request") {
        Ok(q) => q,
        Err(r) => return r.into_response(),
    };
    let need = if q.request_id.is_some() { Need::All } else { Need::CachedPrefix };
    let (request, o) = match (blocked_off_runtime(&shared, &q, need).await, config_override(&q)) {
        (Ok(r), Ok(o)) => (r, o),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let options = RouteOptions { request_id: q.request_id.as_deref(), config_override: o.as_ref(), forced: None };
    let routed = shared.router().best_worker(&request, options);
    match routed {
        Ok(r) => {
            shared.metrics.probes.inc();
            Json(r.answer()).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub async fn potential_loads(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let q: RouteQuery = match parse(&body, "potential_loads request") {
        Ok(q) => q,
        Err(r) => return r.into_response(),
    };
    match blocked_off_runtime(&shared, &q, Need::CachedPrefix).await {
        Ok(request) => Json(shared.router().potential_loads(&request)).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn mark_prefill_complete(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let b: RequestIdBody = match parse(&body, "request") {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let done = shared.router().mark_prefill_complete(&b.request_id);
    match done {
        Ok(()) => Json(json!({"request_id": b.request_id, "status": "prefill_complete"})).into_response(),
        Err(e) => error_response(StatusCode::NOT_FOUND, e.to_string()),
    }
}

pub async fn free(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let b: RequestIdBody = match parse(&body, "request") {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let done = shared.router().free(&b.request_id);
    match done {
        Ok(()) => Json(json!({"request_id": b.request_id, "status": "freed"})).into_response(),
        Err(e) => error_response(StatusCode::NOT_FOUND, e.to_string()),
    }
}

pub async fn dump_events(State(shared): State<Arc<Shared>>) -> Response {
    let events = shared.index().dump_events();
    Json(events).into_response()
}

/// `POST /events`: Dynamo-form events from custom engines. All or nothing: one event naming an
/// unconfigured worker rejects the whole body. Parsing and applying a large body take
/// milliseconds, so they run on the blocking pool, not on a thread that serves requests.
pub async fn events(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match tokio::task::spawn_blocking(move || apply_events(&shared, &body)).await {
        Ok(response) => response,
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, format!("applying events failed: {e}")),
    }
}

fn apply_events(shared: &Shared, body: &[u8]) -> Response {
    let events = match parse_router_events(body) {
        Ok(e) => e,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("invalid events: {e}")),
    };
    for (i, ev) in events.iter().enumerate() {
        let known = shared.worker(ev.worker_id).is_some_and(|w| ev.event.dp_rank < w.ranks);
        if !known {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("events[{i}]: unknown worker {} / dp rank {}", ev.worker_id, ev.event.dp_rank),
            );
        }
    }
    let mut rejected = Vec::new();
    {
        let mut index = shared.index();
        for (i, ev) in events.iter().enumerate() {
            if let Err(e) = index.apply_event(ev) {
                rejected.push(json!({"index": i, "error": e.to_string()}));
            }
        }
    }
    shared.metrics.events_applied.with_label_values(&["http"]).inc_by((events.len() - rejected.len()) as f64);
    Json(json!({"applied": events.len() - rejected.len(), "rejected": rejected})).into_response()
}

pub async fn workers(State(shared): State<Arc<Shared>>) -> Response {
    let router = shared.router();
    let index = shared.index();
    let list: Vec<Value> = shared
        .workers
        .iter()
        .map(|w| {
            let ranks: Vec<Value> = w
                .dp_workers()
                .map(|worker| {
                    json!({
                        "dp_rank": worker.dp_rank,
                        "cached_blocks": index.cached_blocks(worker),
                        "load": router.load(worker),
                        "events": index.stats(worker),
                    })
                })
                .collect();
            json!({
                "worker_id": w.worker_id,
                "url": w.spec.url,
                "healthy": w.healthy.load(Ordering::Relaxed),
                "kv_cache_blocks": router.worker_kv_blocks(w.worker_id),
                "kv_events": w.spec.kv_events,
                "ranks": ranks,
            })
        })
        .collect();
    Json(json!({"workers": list})).into_response()
}

pub async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let healthy = shared.workers.iter().filter(|w| w.healthy.load(Ordering::Relaxed)).count();
    let body = json!({"status": if healthy > 0 { "ok" } else { "no healthy worker" }, "workers": shared.workers.len(), "healthy_workers": healthy});
    let status = if healthy > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// The models of the healthy workers, merged by id.
pub async fn models(State(shared): State<Arc<Shared>>) -> Response {
    let healthy =
        shared.workers.iter().filter(|w| w.healthy.load(Ordering::Relaxed)).map(|w| w.spec.url.clone()).collect();
    Json(shared.http.merged_models(healthy).await).into_response()
}

pub async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = shared.metrics.render(&shared);
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}
