//! Engine behaviour: batching, reuse, chunking, limits, preemption, events, determinism.

use super::*;
use crate::timing::{decode_ms, prefill_ms, TimingModel};
use std::collections::BTreeSet;

fn config(blocks: usize, bs: usize) -> EngineConfig {
    EngineConfig { num_gpu_blocks: blocks, block_size: bs, ..EngineConfig::default() }
}

fn request(id: RequestId, prompt: Vec<u32>, max_tokens: usize) -> EngineRequest {
    EngineRequest { id, prompt, max_tokens, seed: id, eos_token_id: None, output_ids: OutputIds::Below(1000) }
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32).map(|i| i.wrapping_mul(2654435761).wrapping_add(salt)).collect()
}

/// Run passes until the engine is idle; returns the passes.
fn drain(engine: &mut Engine) -> Vec<Pass> {
    let mut passes = Vec::new();
    while engine.has_work() {
        passes.push(engine.step());
        assert!(passes.len() < 10_000, "engine does not make progress");
    }
    passes
}

fn first_token_pass(passes: &[Pass], id: RequestId) -> usize {
    passes.iter().position(|p| p.tokens.iter().any(|t| t.request == id && t.first)).expect("first token")
}

#[test]
fn a_request_prefills_then_decodes_one_token_per_pass() {
    let mut e = Engine::new(config(100, 16));
    e.add(request(1, prompt(100, 0), 5)).unwrap();
    let passes = drain(&mut e);
    assert_eq!(passes.len(), 5);
    assert_eq!(passes[0].prefill_tokens, 100);
    assert!(passes[0].tokens[0].first);
    assert_eq!(passes[0].duration_ms, prefill_ms(100), "a prefill-only pass costs prefill time only");
    let len_at_second = 101.0;
    assert_eq!(passes[1].duration_ms, decode_ms(len_at_second / 1600.0));
    assert_eq!(passes[4].tokens[0].finish, Some(FinishReason::Length));
    let stats = e.stats();
    assert_eq!((stats.running, stats.kv_active_blocks), (0, 0));
    assert_eq!(stats.kv_cached_free_blocks, 6, "full prompt and output blocks stay cached");
}

#[test]
fn a_repeated_prompt_reuses_its_cached_blocks_and_prefills_faster() {
    let mut e = Engine::new(config(100, 16));
    let p = prompt(100, 1);
    e.add(request(1, p.clone(), 1)).unwrap();
    let cold = drain(&mut e);
    e.add(request(2, p.clone(), 1)).unwrap();
    let warm = drain(&mut e);
    assert_eq!(warm[0].admitted[0].cached_tokens, 96);
    assert_eq!(warm[0].prefill_tokens, 4);
    assert!(warm[0].duration_ms < cold[0].duration_ms);
    assert_eq!(e.cached_prefix_tokens(&p), 96);
    let stats = e.stats();
    assert_eq!((stats.prefix_queries_tokens, stats.prefix_hits_tokens), (200, 96));
}

#[test]
fn a_fully_cached_block_aligned_prompt_still_computes_its_last_block() {
    let mut e = Engine::new(config(100, 16));
    let p = prompt(64, 2);
    e.add(request(1, p.clone(), 1)).unwrap();
    drain(&mut e);
    e.add(request(2, p, 1)).unwrap();
    let warm = drain(&mut e);
    assert_eq!(warm[0].admitted[0].cached_tokens, 48);
    assert_eq!(warm[0].prefill_tokens, 16);
}

#[test]
fn long_prompts_are_prefilled_in_chunks_of_the_batch_budget() {
    let mut cfg = config(1000, 16);
    cfg.max_num_batched_tokens = 256;
    let mut e = Engine::new(cfg);
    e.add(request(1, prompt(600, 3), 1)).unwrap();
    let passes = drain(&mut e);
    let chunks: Vec<usize> = passes.iter().map(|p| p.prefill_tokens).collect();
    assert_eq!(chunks, vec![256, 256, 88]);
    assert_eq!(first_token_pass(&passes, 1), 2);
}

#[test]
fn without_chunked_prefill_a_prompt_over_the_budget_waits() {
    let mut cfg = config(1000, 16);
    cfg.max_num_batched_tokens = 256;
    cfg.enable_chunked_prefill = false;
    let mut e = Engine::new(cfg);
    e.add(request(1, prompt(600, 3), 1)).unwrap();
    let pass = e.step();
    assert!(pass.admitted.is_empty() && pass.tokens.is_empty());
    assert_eq!(e.stats().waiting, 1);
}

#[test]
fn decodes_and_new_prefills_share_a_pass_and_its_time_adds_up() {
    let mut e = Engine::new(config(1000, 16));
    e.add(request(1, prompt(32, 4), 10)).unwrap();
    e.step();
    e.add(request(2, prompt(48, 5), 10)).unwrap();
    let pass = e.step();
    assert_eq!(pass.decodes, 1);
    assert_eq!(pass.prefill_tokens, 48);
    assert_eq!(pass.tokens.len(), 2);
    let expected = prefill_ms(48) + decode_ms(33.0 / 16000.0);
    assert!((pass.duration_ms - expected).abs() < 1e-9);
}

#[test]
fn at_most_max_num_seqs_run_at_once() {
    let mut cfg = config(1000, 16);
    cfg.max_num_seqs = 2;
    let mut e = Engine::new(cfg);
    for id in 0..4 {
        e.add(request(id, prompt(20, id as u32), 3)).unwrap();
    }
    let pass = e.step();
    assert_eq!(pass.admitted.len(), 2);
    assert_eq!(e.stats().waiting, 2);
    let passes = drain(&mut e);
    assert!(passes.iter().all(|p| p.admitted.len() <= 2));
}

#[test]
fn the_queue_waits_at_its_head_when_the_cache_cannot_hold_it() {
    let mut e = Engine::new(config(10, 16));
    e.add(request(1, prompt(120, 6), 30)).unwrap(); // 8 blocks, growing
    e.add(request(2, prompt(40, 7), 1)).unwrap(); // 3 blocks: does not fit next to the first
    e.add(request(3, prompt(10, 8), 1)).unwrap(); // would fit, but waits behind 2
    let pass = e.step();
    assert_eq!(pass.admitted.iter().map(|a| a.request).collect::<Vec<_>>(), vec![1]);
    assert_eq!(e.stats().waiting, 2);
}

#[test]
fn a_full_cache_preempts_the_newest_request_which_recomputes_later() {
    // 6 blocks of 4 tokens. Two requests of 8-token prompts (2 blocks each) decoding 8 tokens
    // each need 4 blocks apiece: they cannot both finish without preemption.
    let mut cfg = config(6, 4);
    cfg.timing = TimingModel::default();
    let mut e = Engine::new(cfg);
    e.add(request(1, prompt(8, 9), 8)).unwrap();
    e.add(request(2, prompt(8, 10), 8)).unwrap();
    let passes = drain(&mut e);
    let preempted: Vec<RequestId> = passes.iter().flat_map(|p| p.preempted.clone()).collect();
    assert_eq!(preempted.first(), Some(&2), "the most recently admitted request is the victim");
    let readmission = passes.iter().flat_map(|p| p.admitted.clone()).find(|a| a.readmitted).expect("readmitted");
    assert_eq!(readmission.request, 2);
    for id in [1, 2] {
        let n = passes.iter().flat_map(|p| p.tokens.iter()).filter(|t| t.request == id).count();
        assert_eq!(n, 8, "request {id} still gets all its tokens");
        let firsts = passes.iter().flat_map(|p| p.tokens.iter()).filter(|t| t.request == id && t.first).count();
        assert_eq!(firsts, 1, "a recompute emits no second first token");
    }
    assert_eq!(e.stats().kv_active_blocks, 0);
}

#[test]
fn outputs_are_a_pure_function_of_the_seed() {
    let run = |seed| {
        let mut e = Engine::new(config(100, 16));
        e.add(EngineRequest { seed, ..request(1, prompt(30, 0), 20) }).unwrap();
        drain(&mut e).iter().flat_map(|p| p.tokens.iter().map(|t| t.token)).collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn sampling_the_eos_token_stops_the_request() {
    let mut e = Engine::new(config(100, 16));
    // vocab 1 makes every sampled token 0: with eos 0 the first token stops it.
    e.add(EngineRequest { eos_token_id: Some(0), output_ids: OutputIds::Below(1), ..request(1, prompt(30, 0), 20) })
        .unwrap();
    let passes = drain(&mut e);
    assert_eq!(passes.len(), 1);
    assert_eq!(passes[0].tokens[0].finish, Some(FinishReason::Stop));
}

#[test]
fn impossible_requests_are_rejected_up_front() {
    let mut cfg = config(10, 16);
    cfg.max_model_len = Some(100);
    let mut e = Engine::new(cfg);
    assert!(matches!(e.add(request(1, prompt(90, 0), 20)), Err(RejectError::TooLong { max: 100, requested: 110, .. })));
    assert_eq!(e.add(request(2, vec![], 5)), Err(RejectError::EmptyPrompt));
    e.add(request(3, prompt(10, 0), 5)).unwrap();
    assert_eq!(e.add(request(3, prompt(10, 0), 5)), Err(RejectError::Duplicate(3)));
    let too_long = RejectError::TooLong { max: 100, requested: 110, prompt: 90, output: 20 };
    assert!(too_long.to_string().contains("maximum context length is 100 tokens"));
}

#[test]
fn cancelling_a_request_releases_its_blocks() {
    let mut e = Engine::new(config(100, 16));
    e.add(request(1, prompt(100, 0), 50)).unwrap();
    e.step();
    assert!(e.stats().kv_active_blocks > 0);
    assert!(e.cancel(1));
    assert!(!e.cancel(1));
    assert_eq!(e.stats().kv_active_blocks, 0);
    assert!(!e.has_work());
}

#[test]
fn kv_events_mirror_exactly_the_blocks_the_engine_holds() {
    let mut e = Engine::new(config(12, 4));
    let mut mirror: BTreeSet<u64> = BTreeSet::new();
    let apply = |pass: &Pass, mirror: &mut BTreeSet<u64>| {
        for ev in &pass.events {
            match ev {
                CacheEvent::Stored { blocks, .. } => blocks.iter().for_each(|(h, t)| {
                    assert_eq!(t.len(), 4);
                    assert!(mirror.insert(h.0), "stored twice");
                }),
                CacheEvent::Removed { hashes } => {
                    hashes.iter().for_each(|h| assert!(mirror.remove(&h.0), "removed unknown"))
                }
                CacheEvent::Cleared => mirror.clear(),
            }
        }
    };
    for round in 0..6u32 {
        for id in 0..3u64 {
            let shared = prompt(8, 100); // shared 2-block prefix
            let mut p = shared.clone();
            p.extend(prompt(6, round * 10 + id as u32));
            e.add(request(u64::from(round) * 10 + id, p, 3)).unwrap();
        }
        while e.has_work() {
            let pass = e.step();
            apply(&pass, &mut mirror);
        }
        for h in &mirror {
            assert!(e.pool.contains(SequenceHash(*h)));
        }
        let usage = e.pool.usage();
        assert_eq!(mirror.len(), usage.cached_free, "idle engine: every cached block is in the mirror");
    }
}

#[test]
fn prefill_tokens_follow_dynamos_integer_means() {
    assert_eq!(prefill_token_count(&[]), 0);
    assert_eq!(prefill_token_count(&[(0, 100)]), 100);
    // before 0 and 3, chunks 5 and 6: n=2, floor(14/2)=7, floor(3/2)=1 → 2*(7-1) = 12 (not 11).
    assert_eq!(prefill_token_count(&[(0, 5), (3, 6)]), 12);
}
