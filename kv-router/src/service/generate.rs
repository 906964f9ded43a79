//! `generate`: route an OpenAI request, forward it to the chosen worker, stream the answer back
//! unchanged, and track its lifecycle — tracked on routing, prefill complete at the first
//! response bytes, freed when the response ends, fails, or the client goes away (a guard frees
//! on drop, so no path can leak load).
//!
//! A worker that cannot be reached is taken out of selection and the request is routed again
//! (nothing was sent to the client yet, so nothing is duplicated).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use kvroute_protocol::api::{is_json_object, without_fields, RouteQuery};
use kvroute_protocol::openai::{ChatMessage, Prompt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::api::{blocked_off_runtime, config_override, Need};
use super::{error_response, ApiError, Shared};
use crate::router::{Forced, ForcedWorker, RouteOptions};

/// Releases a tracked request's load however its response ends.
struct Lifecycle {
    shared: Arc<Shared>,
    request_id: String,
    prefill_done: bool,
}

impl Lifecycle {
    fn first_bytes(&mut self) {
        if !self.prefill_done {
            self.prefill_done = true;
            let _ = self.shared.router().mark_prefill_complete(&self.request_id);
        }
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        // Unknown ids are fine: the worker may have been removed (and its load with it).
        let _ = self.shared.router().free(&self.request_id);
        self.shared.metrics.in_flight.dec();
    }
}

pub async fn completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(shared, headers, body, "/v1/completions").await
}

pub async fn chat_completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(shared, headers, body, "/v1/chat/completions").await
}

fn forced_worker(headers: &HeaderMap) -> Result<Option<ForcedWorker>, ApiError> {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("").trim().to_owned());
    let Some(id) = header("x-worker-instance-id") else { return Ok(None) };
    let worker_id = id
        .parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("x-worker-instance-id must be a u64, got {id:?}")))?;
    let dp_rank = match header("x-dp-rank") {
        None => None,
        Some(r) => {
            Some(r.parse::<u32>().map_err(|_| ApiError::bad_request(format!("x-dp-rank must be a u32, got {r:?}")))?)
        }
    };
    Ok(Some(ForcedWorker { worker_id, dp_rank }))
}

/// The fields of a generate request the router reads, straight from the body (no JSON value of
/// the whole body); everything else goes to the worker as received.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(default)]
    prompt: Option<Prompt>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    lora_name: Option<String>,
    #[serde(default)]
    cache_salt: Option<String>,
    /// The router's own fields, taken out before forwarding (even when `null`).
    #[serde(default, borrow, deserialize_with = "present")]
    router_config_override: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    kvroute: Option<&'a RawValue>,
}

/// A field that is there, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The router's own fields of a request body: the worker never sees them.
const ROUTER_FIELDS: [&str; 2] = ["router_config_override", "kvroute"];

async fn generate(shared: Arc<Shared>, headers: HeaderMap, body: Bytes, path: &'static str) -> Response {
    if !is_json_object(&body) {
        return error_response(StatusCode::BAD_REQUEST, "the request body must be a JSON object");
    }
    let peek: Peek = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("invalid request: {e}")),
    };
    let (needed, present) = match path {
        "/v1/completions" => ("prompt", peek.prompt.is_some()),
        _ => ("messages", peek.messages.is_some()),
    };
    if !present {
        return error_response(StatusCode::BAD_REQUEST, format!("{needed} is required"));
    }
    let stripped = peek.router_config_override.is_some() || peek.kvroute.is_some();
    let router_config_override = match peek.router_config_override.map(|raw| serde_json::from_str::<Value>(raw.get())) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => return error_response(StatusCode::BAD_REQUEST, format!("invalid router_config_override: {e}")),
    };
    // generate scores what the worker will see: the prompt or the messages.
    let query = RouteQuery {
        prompt: peek.prompt,
        messages: peek.messages,
        model: peek.model,
        lora_name: peek.lora_name,
        cache_salt: peek.cache_salt,
        router_config_override,
        ..RouteQuery::default()
    };
    let (request, o, forced) =
        match (blocked_off_runtime(&shared, &query, Need::All).await, config_override(&query), forced_worker(&headers))
        {
            (Ok(r), Ok(o), Ok(f)) => (r, o, f),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e.into_response(),
        };
    // Re-encode only when a field is to be taken out; otherwise forward the bytes as received.
    let forwarded = match stripped {
        false => body,
        true => match without_fields(&body, &ROUTER_FIELDS) {
            Ok(b) => Bytes::from(b),
            Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("invalid request: {e}")),
        },
    };

    let attempts = shared.workers.len().clamp(1, 3);
    for attempt in 1..=attempts {
        let request_id = shared.request_id();
        let options = RouteOptions { request_id: Some(&request_id), config_override: o.as_ref(), forced };
        let routed = shared.router().best_worker(&request, options);
        let routed = match routed {
            Ok(r) => r,
            Err(e) => return ApiError::from(e).into_response(),
        };
        shared.metrics.in_flight.inc();
        let lifecycle = Lifecycle { shared: shared.clone(), request_id, prefill_done: false };
        let Some(worker) = shared.worker(routed.worker.worker_id) else {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "the chosen worker is not configured");
        };
        shared.metrics.record_decision(&routed);
        tracing::debug!(worker = %routed.worker, overlap = routed.overlap_blocks, blocks = routed.request_blocks, cost = routed.cost, "routed");
        let url = format!("{}{}", worker.spec.url.trim_end_matches('/'), path);
        let rank = [(HeaderName::from_static("x-data-parallel-rank"), HeaderValue::from(routed.worker.dp_rank))];
        let sent = shared.http.post(&url, &rank, forwarded.clone()).await;
        let upstream = match sent {
            Ok(u) => u,
            Err(e) => {
                drop(lifecycle);
                shared.mark_unhealthy(worker, &format!("request failed: {e}"));
                if attempt == attempts {
                    return error_response(StatusCode::BAD_GATEWAY, format!("worker {} failed: {e}", worker.worker_id));
                }
                continue;
            }
        };
        let (head, body) = upstream.into_parts();
        let content_type = head.headers.get("content-type").cloned();
        // The body owns the lifecycle: prefill complete at its first bytes, freed when it is
        // dropped (ended, failed, or the client went away).
        let mut lifecycle = lifecycle;
        let body = body
            .map_frame(move |frame| {
                if frame.is_data() {
                    lifecycle.first_bytes();
                }
                frame
            })
            .map_err(|e| {
                tracing::warn!(error = %e, "upstream stream failed");
                e
            });
        let mut response = Response::new(Body::new(body));
        *response.status_mut() = head.status;
        let h = response.headers_mut();
        if let Some(ct) = content_type {
            h.insert("content-type", ct);
        }
        h.insert("x-kvroute-worker", HeaderValue::from_str(&routed.worker.to_string()).expect("ascii"));
        h.insert("x-kvroute-overlap-blocks", HeaderValue::from(routed.overlap_blocks));
        h.insert("x-kvroute-request-blocks", HeaderValue::from(routed.request_blocks));
        if routed.forced == Some(Forced::Ignored) {
            h.insert("x-kvroute-forced-worker", HeaderValue::from_static("ignored"));
        }
        return response;
    }
    error_response(StatusCode::SERVICE_UNAVAILABLE, "no worker is available")
}
