//! OpenAI response bodies (completion and chat, whole or as SSE chunks) built from the engine's
//! token stream, and the guard that cancels a request whose client went away.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream};
use kvroute_protocol::openai::SamplingFields;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::rank::{RankEvent, RankHandle};
use super::{reject_response, AppState};
use crate::engine::{FinishReason, RequestId};
use crate::EngineRequest;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Endpoint {
    Completions,
    Chat,
}

/// Cancels the engine request when dropped before it finished (client disconnect), and keeps
/// the rank's outstanding count.
struct InFlight {
    state: Arc<AppState>,
    rank: usize,
    id: RequestId,
    finished: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.outstanding[self.rank].fetch_sub(1, Ordering::Relaxed);
        if !self.finished {
            self.state.ranks[self.rank].cancel(self.id);
        }
    }
}

/// Token-by-token progress of one request.
struct Progress {
    rx: UnboundedReceiver<RankEvent>,
    in_flight: InFlight,
    cached_tokens: usize,
    completion_tokens: usize,
}

impl Progress {
    /// The next token, or None when the engine dropped the request.
    async fn next_token(&mut self) -> Option<(u32, Option<FinishReason>)> {
        loop {
            match self.rx.recv().await? {
                RankEvent::Admitted { cached_tokens } => self.cached_tokens = self.cached_tokens.max(cached_tokens),
                RankEvent::Token(t) => {
                    self.completion_tokens += 1;
                    if t.finish.is_some() {
                        self.in_flight.finished = true;
                    }
                    return Some((t.token, t.finish));
                }
            }
        }
    }
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    endpoint: Endpoint,
    include_usage: bool,
}

impl Meta {
    fn usage(&self, p: &Progress) -> Value {
        // Cached tokens can exceed the prompt for a preempted request's recompute; cap them.
        let cached = p.cached_tokens.min(self.prompt_tokens);
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": p.completion_tokens,
            "total_tokens": self.prompt_tokens + p.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    fn chunk(&self, text: &str, first: bool, finish: Option<FinishReason>) -> Value {
        let choice = match self.endpoint {
            Endpoint::Completions => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
            Endpoint::Chat => {
                let delta =
                    if first { json!({"role": "assistant", "content": text}) } else { json!({"content": text}) };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice]})
    }
}

/// Queue the request on `rank` and answer it.
pub(super) async fn respond(
    state: Arc<AppState>,
    rank: usize,
    request: EngineRequest,
    sampling: SamplingFields,
    endpoint: Endpoint,
) -> Response {
    let id = request.id;
    let prompt_tokens = request.prompt.len();
    state.outstanding[rank].fetch_add(1, Ordering::Relaxed);
    let in_flight = InFlight { state: state.clone(), rank, id, finished: false };
    let handle: &RankHandle = &state.ranks[rank];
    let rx = match handle.submit(request).await {
        Ok(rx) => rx,
        Err(e) => {
            let mut in_flight = in_flight;
            in_flight.finished = true;
            return reject_response(e);
        }
    };
    let model = state.config.model_name.clone();
    state.metrics.prompt_tokens.with_label_values(&[&model]).inc_by(prompt_tokens as f64);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
    let meta = Meta {
        id: format!("{prefix}-{:016x}{id:016x}", state.response_tag),
        created,
        model,
        prompt_tokens,
        endpoint,
        include_usage: sampling.include_usage(),
    };
    let progress = Progress { rx, in_flight, cached_tokens: 0, completion_tokens: 0 };
    if sampling.stream {
        Sse::new(sse_stream(state, meta, progress)).into_response()
    } else {
        whole(state, meta, progress).await
    }
}

fn record_finish(state: &AppState, meta: &Meta, tokens: usize, finish: Option<FinishReason>) {
    state.metrics.generation_tokens.with_label_values(&[&meta.model]).inc_by(tokens as f64);
    let reason = match finish {
        Some(FinishReason::Stop) => "stop",
        Some(FinishReason::Length) => "length",
        None => "abort",
    };
    state.metrics.requests.with_label_values(&[&meta.model, reason]).inc();
}

async fn whole(state: Arc<AppState>, meta: Meta, mut progress: Progress) -> Response {
    let mut ids = Vec::new();
    let mut finish = None;
    while let Some((token, f)) = progress.next_token().await {
        ids.push(token);
        if f.is_some() {
            finish = f;
            break;
        }
    }
    record_finish(&state, &meta, ids.len(), finish);
    let text = state.tokenizer.decode(&ids);
    let choice = match meta.endpoint {
        Endpoint::Completions => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
        Endpoint::Chat => {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish})
        }
    };
    Json(json!({
        "id": meta.id,
        "object": meta.object(false),
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "usage": meta.usage(&progress),
    }))
    .into_response()
}

enum Phase {
    Tokens,
    Usage,
    Done,
    End,
}

fn sse_stream(
    state: Arc<AppState>,
    meta: Meta,
    progress: Progress,
) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    stream::unfold(
        (state, meta, progress, Phase::Tokens, true),
        |(state, meta, mut progress, phase, first)| async move {
            match phase {
                Phase::Tokens => match progress.next_token().await {
                    Some((token, finish)) => {
                        let text = state.tokenizer.decode(&[token]);
                        let event = Event::default().data(meta.chunk(&text, first, finish).to_string());
                        let next = if finish.is_some() {
                            record_finish(&state, &meta, progress.completion_tokens, finish);
                            if meta.include_usage {
                                Phase::Usage
                            } else {
                                Phase::Done
                            }
                        } else {
                            Phase::Tokens
                        };
                        Some((Ok(event), (state, meta, progress, next, false)))
                    }
                    None => {
                        record_finish(&state, &meta, progress.completion_tokens, None);
                        Some((Ok(Event::default().data("[DONE]")), (state, meta, progress, Phase::End, false)))
                    }
                },
                Phase::Usage => {
                    let body = json!({
                        "id": meta.id, "object": meta.object(true), "created": meta.created, "model": meta.model,
                        "choices": [], "usage": meta.usage(&progress),
                    });
                    Some((Ok(Event::default().data(body.to_string())), (state, meta, progress, Phase::Done, false)))
                }
                Phase::Done => Some((Ok(Event::default().data("[DONE]")), (state, meta, progress, Phase::End, false))),
                Phase::End => None,
            }
        },
    )
}
