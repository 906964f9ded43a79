//! One dp rank's engine running in real (scaled) time: a tokio task that owns an [`Engine`],
//! runs a pass whenever there is work, sleeps the pass's duration, then delivers the pass's
//! tokens to the waiting requests and its KV events to the publisher.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvroute_protocol::events::KvCacheEventData;
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

use super::publisher::Publisher;
use crate::block_pool::CacheEvent;
use crate::engine::{EngineStats, RejectError, RequestId, TokenOutput};
use crate::{Engine, EngineRequest};

/// What a request's handler hears from the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankEvent {
    /// Admitted into the running batch; prompt tokens served from the cache.
    Admitted {
        cached_tokens: usize,
    },
    Token(TokenOutput),
}

enum Command {
    Submit {
        request: EngineRequest,
        events: mpsc::UnboundedSender<RankEvent>,
        accepted: tokio::sync::oneshot::Sender<Result<(), RejectError>>,
    },
    Cancel(RequestId),
    CachedBlocks(tokio::sync::oneshot::Sender<Vec<u64>>),
    ResetPrefixCache,
}

/// The handle the HTTP handlers use to reach one rank.
#[derive(Clone)]
pub struct RankHandle {
    pub rank: u32,
    commands: mpsc::UnboundedSender<Command>,
    stats: Arc<Mutex<EngineStats>>,
}

impl RankHandle {
    /// Queue a request; its tokens arrive on the returned channel.
    pub async fn submit(&self, request: EngineRequest) -> Result<mpsc::UnboundedReceiver<RankEvent>, SubmitError> {
        let (events, rx) = mpsc::unbounded_channel();
        let (accepted, verdict) = tokio::sync::oneshot::channel();
        self.commands.send(Command::Submit { request, events, accepted }).map_err(|_| SubmitError::Stopped)?;
        match verdict.await {
            Ok(Ok(())) => Ok(rx),
            Ok(Err(e)) => Err(SubmitError::Rejected(e)),
            Err(_) => Err(SubmitError::Stopped),
        }
    }

    /// Drop a request (its client left). Unknown ids are ignored.
    pub fn cancel(&self, id: RequestId) {
        let _ = self.commands.send(Command::Cancel(id));
    }

    /// Sequence hashes of the blocks this rank's cache holds, sorted.
    pub async fn cached_blocks(&self) -> Result<Vec<u64>, SubmitError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(Command::CachedBlocks(tx)).map_err(|_| SubmitError::Stopped)?;
        rx.await.map_err(|_| SubmitError::Stopped)
    }

    /// Drop every cached block no request uses (vLLM's `/reset_prefix_cache`).
    pub fn reset_prefix_cache(&self) {
        let _ = self.commands.send(Command::ResetPrefixCache);
    }

    pub fn stats(&self) -> EngineStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Rejected(RejectError),
    #[error("the engine has stopped")]
    Stopped,
}

/// How far behind model time a rank may run and still lay its next pass right after the last
/// one (beyond it, e.g. after idling, the next pass starts now).
const CATCH_UP: Duration = Duration::from_millis(5);

/// Start the rank's task.
pub fn spawn(
    rank: u32,
    engine: Engine,
    publisher: Option<Publisher>,
    json_pushers: Vec<mpsc::UnboundedSender<Vec<KvCacheEventData>>>,
) -> RankHandle {
    let (commands, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(Mutex::new(engine.stats()));
    tokio::spawn(run(engine, rx, publisher, json_pushers, stats.clone()));
    RankHandle { rank, commands, stats }
}

async fn run(
    mut engine: Engine,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut publisher: Option<Publisher>,
    json_pushers: Vec<mpsc::UnboundedSender<Vec<KvCacheEventData>>>,
    stats: Arc<Mutex<EngineStats>>,
) {
    let block_size = engine.config().block_size as u32;
    let mut listeners: FxHashMap<RequestId, mpsc::UnboundedSender<RankEvent>> = FxHashMap::default();
    // When the last pass ended in model time. Passes are laid end to end from it, so the timer's
    // millisecond granularity delays single passes but never accumulates into the schedule.
    let mut pass_end: Option<tokio::time::Instant> = None;
    let mut pending_events: Vec<CacheEvent> = Vec::new();
    let apply = |command: Command,
                 engine: &mut Engine,
                 listeners: &mut FxHashMap<RequestId, mpsc::UnboundedSender<RankEvent>>,
                 pending_events: &mut Vec<CacheEvent>| match command {
        Command::Submit { request, events, accepted } => {
            let id = request.id;
            let verdict = engine.add(request);
            if verdict.is_ok() {
                listeners.insert(id, events);
            }
            let _ = accepted.send(verdict);
        }
        Command::Cancel(id) => {
            if listeners.remove(&id).is_some() {
                engine.cancel(id);
            }
        }
        Command::CachedBlocks(reply) => {
            let mut blocks: Vec<u64> = engine.cached_blocks().iter().map(|h| h.0).collect();
            blocks.sort_unstable();
            let _ = reply.send(blocks);
        }
        Command::ResetPrefixCache => pending_events.extend(engine.reset_prefix_cache()),
    };
    loop {
        if !engine.has_work() {
            *stats.lock().unwrap_or_else(|e| e.into_inner()) = engine.stats();
            match commands.recv().await {
                Some(command) => apply(command, &mut engine, &mut listeners, &mut pending_events),
                None => return,
            }
        }
        while let Ok(command) = commands.try_recv() {
            apply(command, &mut engine, &mut listeners, &mut pending_events);
        }
        if !pending_events.is_empty() {
            let events = std::mem::take(&mut pending_events);
            if let Some(p) = publisher.as_mut() {
                p.publish(&events, block_size).await;
            }
            push_json(&json_pushers, &events);
        }
        if !engine.has_work() {
            continue;
        }
        let pass = engine.step();
        let now = tokio::time::Instant::now();
        let start = pass_end.filter(|end| *end + CATCH_UP >= now).unwrap_or(now);
        let end = start + Duration::from_secs_f64(pass.duration_ms / 1000.0);
        tokio::time::sleep_until(end).await;
        pass_end = Some(end);
        if let Some(p) = publisher.as_mut() {
            p.publish(&pass.events, block_size).await;
        }
        push_json(&json_pushers, &pass.events);
        for admission in &pass.admitted {
            if let Some(l) = listeners.get(&admission.request) {
                let _ = l.send(RankEvent::Admitted { cached_tokens: admission.cached_tokens });
            }
        }
        for token in &pass.tokens {
            let gone = match listeners.get(&token.request) {
                Some(l) => l.send(RankEvent::Token(*token)).is_err(),
                None => false,
            };
            if token.finish.is_some() || gone {
                listeners.remove(&token.request);
                if gone && token.finish.is_none() {
                    engine.cancel(token.request);
                }
            }
        }
        *stats.lock().unwrap_or_else(|e| e.into_inner()) = engine.stats();
    }
}

/// A pass's events, in Dynamo's JSON form, to every JSON pusher (HTTP, NATS).
fn push_json(pushers: &[mpsc::UnboundedSender<Vec<KvCacheEventData>>], events: &[CacheEvent]) {
    if pushers.is_empty() || events.is_empty() {
        return;
    }
    let data = super::http_push::to_event_data(events);
    for push in pushers {
        let _ = push.send(data.clone());
    }
}
