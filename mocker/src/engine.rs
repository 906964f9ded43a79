//! The engine core: continuous batching over the block pool, one scheduler pass at a time.
//!
//! The caller owns the clock. It calls [`Engine::step`] whenever the engine is idle and has
//! work; the pass is decided and applied at once and reports how long it takes
//! ([`Pass::duration_ms`]); its tokens and KV events become visible at `start + duration`.
//! A replay advances virtual time by that amount; the HTTP server sleeps it.
//!
//! One pass, as vLLM (and Dynamo's mocker) schedules it:
//! 1. running requests first, in admission order, each given `min(remaining, budget)` tokens
//!    (1 for a decode, the next chunk for an unfinished prefill); when the cache cannot hold
//!    the new tokens, the most recently admitted running request is preempted (its blocks are
//!    released and it goes back to the front of the queue, to recompute from scratch, reusing
//!    whatever of its blocks is still cached);
//! 2. then waiting requests, first come first served, while fewer than `max_num_seqs` run and
//!    nothing was preempted: a request is admitted if the blocks it lacks fit in the free plus
//!    evictable capacity, otherwise the queue waits (head-of-line); its cached prefix (capped so
//!    that at least one token is computed) is reused and the rest prefilled in chunks;
//! 3. every request whose tokens are all computed emits one token; a request finishing its
//!    prompt emits its first token in the same pass.
//!
//! Prompt blocks are registered (and become reusable) as soon as their chunk is scheduled;
//! a generated block once its last token is computed.

use std::collections::VecDeque;

use kvroute_protocol::hashing::{chain, local_block_hash};
use kvroute_protocol::{HashSeed, SequenceHash};
use serde::Serialize;
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::block_pool::{BlockPool, BlockRef, CacheEvent, PoolUsage};
use crate::config::EngineConfig;

/// Identifies a request inside one engine.
pub type RequestId = u64;

/// A request as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineRequest {
    pub id: RequestId,
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Output tokens are a pure function of this seed and their position.
    pub seed: u64,
    /// Stop early when the (seeded) output samples this token; `None` never stops early.
    pub eos_token_id: Option<u32>,
    /// The ids output is drawn from.
    pub output_ids: OutputIds,
}

/// The ids a request's output tokens are drawn from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputIds {
    /// Any id below the bound.
    Below(u32),
    /// One of these (e.g. the tokenizer's ids that decode to whole, printable text), in order.
    Among(std::sync::Arc<[u32]>),
}

/// Why a request was not accepted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RejectError {
    #[error("This model's maximum context length is {max} tokens. However, you requested {requested} tokens ({prompt} in the messages, {output} in the completion). Please reduce the length of the messages or completion.")]
    TooLong { max: usize, requested: usize, prompt: usize, output: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("request id {0} is already in the engine")]
    Duplicate(RequestId),
}

/// Why a request stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// The end-of-sequence token was sampled.
    Stop,
}

/// One output token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenOutput {
    pub request: RequestId,
    pub token: u32,
    /// The request's first output token (its prefill finished in this pass).
    pub first: bool,
    pub finish: Option<FinishReason>,
}

/// A request admitted into the running batch in this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    pub request: RequestId,
    /// Prompt tokens served from the cache at this admission.
    pub cached_tokens: usize,
    /// True when the request had been preempted and is recomputing.
    pub readmitted: bool,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pass {
    pub duration_ms: f64,
    /// New prompt tokens computed (the `t` of the timing model).
    pub prefill_tokens: usize,
    /// Requests that decoded (emitted a non-first token).
    pub decodes: usize,
    pub tokens: Vec<TokenOutput>,
    pub admitted: Vec<Admission>,
    pub preempted: Vec<RequestId>,
    pub events: Vec<CacheEvent>,
}

/// Counters and gauges for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_active_blocks: usize,
    pub kv_cached_free_blocks: usize,
    pub kv_capacity_blocks: usize,
    /// Prompt tokens looked up in the prefix cache at admission, and how many hit.
    pub prefix_queries_tokens: u64,
    pub prefix_hits_tokens: u64,
    pub preemptions: u64,
    pub passes: u64,
}

struct Sequence {
    request: EngineRequest,
    /// Prompt plus generated tokens (the last generated one is not computed yet).
    tokens: Vec<u32>,
    generated: usize,
    computed: usize,
    blocks: Vec<BlockRef>,
    /// Leading blocks already registered or taken from the cache.
    registered: usize,
    /// Sequence hashes of full blocks of `tokens`, computed as far as needed.
    hashes: Vec<SequenceHash>,
    first_emitted: bool,
    admitted_once: bool,
}

impl Sequence {
    fn ensure_hashes(&mut self, full_blocks: usize, block_size: usize) {
        while self.hashes.len() < full_blocks {
            let b = self.hashes.len();
            let local = local_block_hash(&self.tokens[b * block_size..(b + 1) * block_size], HashSeed::default()).0;
            let h = match self.hashes.last() {
                None => local,
                Some(parent) => chain(parent.0, local),
            };
            self.hashes.push(SequenceHash(h));
        }
    }

    fn next_token(&self) -> u32 {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.request.seed.to_le_bytes());
        bytes[8..].copy_from_slice(&(self.generated as u64).to_le_bytes());
        let draw = xxh3_64_with_seed(&bytes, 0x5eed);
        match &self.request.output_ids {
            OutputIds::Below(bound) => (draw % u64::from((*bound).max(1))) as u32,
            OutputIds::Among(ids) if !ids.is_empty() => ids[(draw % ids.len() as u64) as usize],
            OutputIds::Among(_) => 0,
        }
    }
}

/// One simulated engine (one dp rank).
pub struct Engine {
    config: EngineConfig,
    pool: BlockPool,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    stats: EngineStats,
}

impl Engine {
    /// An engine with `config` (validate it first: see [`EngineConfig::validate`]).
    pub fn new(config: EngineConfig) -> Self {
        let pool = BlockPool::new(config.num_gpu_blocks);
        let stats = EngineStats { kv_capacity_blocks: config.num_gpu_blocks, ..EngineStats::default() };
        Engine { config, pool, waiting: VecDeque::new(), running: Vec::new(), stats }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Queue a request. Rejected when it can never fit.
    pub fn add(&mut self, request: EngineRequest) -> Result<(), RejectError> {
        if request.prompt.is_empty() {
            return Err(RejectError::EmptyPrompt);
        }
        let requested = request.prompt.len() + request.max_tokens;
        if requested > self.config.max_len() {
            return Err(RejectError::TooLong {
                max: self.config.max_len(),
                requested,
                prompt: request.prompt.len(),
                output: request.max_tokens,
            });
        }
        if self.contains(request.id) {
            return Err(RejectError::Duplicate(request.id));
        }
        self.waiting.push_back(Sequence {
            tokens: request.prompt.clone(),
            request,
            generated: 0,
            computed: 0,
            blocks: Vec::new(),
            registered: 0,
            hashes: Vec::new(),
            first_emitted: false,
            admitted_once: false,
        });
        Ok(())
    }

    /// Drop a request (its client went away). False if unknown.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if let Some(i) = self.waiting.iter().position(|s| s.request.id == id) {
            let s = self.waiting.remove(i).expect("index from position");
            self.release(s.blocks);
            return true;
        }
        if let Some(i) = self.running.iter().position(|s| s.request.id == id) {
            let s = self.running.remove(i);
            self.release(s.blocks);
            return true;
        }
        false
    }

    fn contains(&self, id: RequestId) -> bool {
        self.waiting.iter().chain(self.running.iter()).any(|s| s.request.id == id)
    }

    /// Whether a pass would do anything.
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Forget every cached block no request uses (like vLLM's reset_prefix_cache).
    pub fn reset_prefix_cache(&mut self) -> Vec<CacheEvent> {
        self.pool.clear_cached();
        self.pool.take_events()
    }

    pub fn stats(&self) -> EngineStats {
        let PoolUsage { active, cached_free, .. } = self.pool.usage();
        EngineStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_active_blocks: active,
            kv_cached_free_blocks: cached_free,
            ..self.stats
        }
    }

    /// Sequence hashes of every block in the cache (what its KV events must add up to).
    pub fn cached_blocks(&self) -> Vec<SequenceHash> {
        self.pool.cached_hashes()
    }

    /// Leading prompt tokens of `prompt` this engine holds in its cache right now.
    pub fn cached_prefix_tokens(&self, prompt: &[u32]) -> usize {
        let bs = self.config.block_size;
        let mut parent: Option<u64> = None;
        let mut n = 0;
        for block in prompt.chunks_exact(bs) {
            let local = local_block_hash(block, HashSeed::default()).0;
            let h = parent.map_or(local, |p| chain(p, local));
            if !self.pool.contains(SequenceHash(h)) {
                break;
            }
            parent = Some(h);
            n += bs;
        }
        n
    }

    /// Run one scheduler pass.
    pub fn step(&mut self) -> Pass {
        let bs = self.config.block_size;
        let mut pass = Pass::default();
        let mut budget = self.config.max_num_batched_tokens;
        // (running index, prompt tokens computed before this pass, prompt tokens in the chunk)
        let mut prompt_chunks: Vec<(usize, usize)> = Vec::new();
        let mut preempted_any = false;

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let want = (self.running[i].tokens.len() - self.running[i].computed).min(budget);
            if want == 0 {
                i += 1;
                continue;
            }
            let target = self.running[i].computed + want;
            if !self.allocate_with_preemption(i, target, &mut pass) {
                preempted_any = true;
                continue; // running[i] itself was preempted; running[i] is now the next one
            }
            preempted_any |= !pass.preempted.is_empty();
            prompt_chunks.extend(self.schedule(i, want));
            budget -= want;
            i += 1;
        }

        while !preempted_any && budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(front) = self.waiting.front_mut() else { break };
            let len = front.tokens.len();
            let full = len / bs;
            front.ensure_hashes(full, bs);
            let (cached_blocks, active_cached) = if self.config.enable_prefix_caching {
                // Always compute at least one token: a fully cached prompt recomputes its last block.
                let cap = (len - 1) / bs;
                let cached = self.pool.cached_prefix(&front.hashes[..cap.min(full)]);
                (cached, self.pool.active_prefix(&front.hashes[..cached]))
            } else {
                (0, 0)
            };
            let needed = len.div_ceil(bs) - active_cached;
            if needed > self.pool.available() {
                break;
            }
            let remaining = len - cached_blocks * bs;
            if !self.config.enable_chunked_prefill && remaining > budget {
                break;
            }
            let mut s = self.waiting.pop_front().expect("front exists");
            for b in 0..cached_blocks {
                let hit = self.pool.acquire(s.hashes[b]);
                debug_assert!(hit, "cached prefix block vanished");
                s.blocks.push(BlockRef::Shared(s.hashes[b]));
            }
            s.registered = cached_blocks;
            s.computed = cached_blocks * bs;
            let prompt_len = s.request.prompt.len();
            self.stats.prefix_queries_tokens += prompt_len as u64;
            self.stats.prefix_hits_tokens += (cached_blocks * bs).min(prompt_len) as u64;
            pass.admitted.push(Admission {
                request: s.request.id,
                cached_tokens: cached_blocks * bs,
                readmitted: s.admitted_once,
            });
            s.admitted_once = true;
            self.running.push(s);
            let idx = self.running.len() - 1;
            let want = remaining.min(budget);
            let target = self.running[idx].computed + want;
            if !self.allocate_with_preemption(idx, target, &mut pass) {
                break; // cannot happen after the capacity check; stay safe
            }
            prompt_chunks.extend(self.schedule(idx, want));
            budget -= want;
        }

        pass.prefill_tokens = prefill_token_count(&prompt_chunks);
        self.emit(&mut pass);
        pass.events = self.pool.take_events();
        self.stats.passes += 1;
        pass
    }

    /// Make room for `running[i]` to hold `target` tokens, preempting the most recently
    /// admitted requests as needed. False if `running[i]` itself had to be preempted.
    fn allocate_with_preemption(&mut self, i: usize, target: usize, pass: &mut Pass) -> bool {
        let bs = self.config.block_size;
        while self.running[i].blocks.len() < target.div_ceil(bs) {
            match self.pool.allocate() {
                Ok(block) => self.running[i].blocks.push(block),
                Err(_) => {
                    let victim = self.running.len() - 1;
                    self.preempt(victim, pass);
                    if victim == i {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn preempt(&mut self, index: usize, pass: &mut Pass) {
        let mut s = self.running.remove(index);
        let blocks = std::mem::take(&mut s.blocks);
        self.release(blocks);
        s.computed = 0;
        s.registered = 0;
        pass.preempted.push(s.request.id);
        self.stats.preemptions += 1;
        self.waiting.push_front(s);
    }

    /// Release a request's blocks, leaf first.
    fn release(&mut self, blocks: Vec<BlockRef>) {
        for b in blocks.into_iter().rev() {
            self.pool.release(b);
        }
    }

    /// Mark `want` more tokens of `running[i]` computed and register blocks that became full.
    /// Returns the prompt part of the chunk, for the timing model.
    fn schedule(&mut self, i: usize, want: usize) -> Option<(usize, usize)> {
        let bs = self.config.block_size;
        let caching = self.config.enable_prefix_caching;
        let s = &mut self.running[i];
        let prompt_len = s.request.prompt.len();
        let before = s.computed;
        s.computed += want;
        let prompt_part = (prompt_len.min(s.computed)).saturating_sub(before);
        if caching {
            let full = s.computed / bs;
            s.ensure_hashes(full, bs);
            for b in s.registered..full {
                if let BlockRef::Private = s.blocks[b] {
                    let parent = b.checked_sub(1).map(|p| s.hashes[p]);
                    s.blocks[b] = self.pool.register(s.hashes[b], parent, &s.tokens[b * bs..(b + 1) * bs]);
                }
            }
            s.registered = s.registered.max(full);
        }
        (prompt_part > 0).then_some((before.min(prompt_len), prompt_part))
    }

    /// Emit a token for every request whose tokens are all computed; time the pass.
    fn emit(&mut self, pass: &mut Pass) {
        let mut decode_tokens = 0usize;
        let mut finished: Vec<usize> = Vec::new();
        for (i, s) in self.running.iter_mut().enumerate() {
            if s.computed < s.tokens.len() {
                continue;
            }
            let first = !s.first_emitted;
            if !first {
                pass.decodes += 1;
                decode_tokens += s.tokens.len();
            }
            let token = s.next_token();
            s.tokens.push(token);
            s.generated += 1;
            s.first_emitted = true;
            let finish = if s.request.eos_token_id == Some(token) {
                Some(FinishReason::Stop)
            } else if s.generated >= s.request.max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            if finish.is_some() {
                finished.push(i);
            }
            pass.tokens.push(TokenOutput { request: s.request.id, token, first, finish });
        }
        for i in finished.into_iter().rev() {
            let s = self.running.remove(i);
            self.release(s.blocks);
        }
        pass.duration_ms = self.config.timing.pass_ms(
            pass.prefill_tokens as u64,
            pass.decodes > 0,
            decode_tokens as u64,
            self.config.capacity_tokens() as u64,
        );
    }
}

/// New prompt tokens in a pass as Dynamo's mocker counts them: through integer means over the
/// requests with a prompt chunk, `n * (floor(sum(end) / n) - floor(sum(before) / n))`.
fn prefill_token_count(chunks: &[(usize, usize)]) -> usize {
    let n = chunks.len();
    if n == 0 {
        return 0;
    }
    let before: usize = chunks.iter().map(|c| c.0).sum();
    let end: usize = chunks.iter().map(|c| c.0 + c.1).sum();
    n * (end / n - before / n)
}

#[cfg(test)]
mod tests;
