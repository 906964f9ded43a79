//! The replay as a specification: hand-computable timings, reuse accounting, determinism and
//! trace errors. Timings come from Dynamo's model: `prefill_ms(t)` for a pass computing `t` new
//! prompt tokens, plus `decode_ms(Σ len of decoders / capacity)` when something decodes.

use kvroute_kv_router::select::{CostModel, RouterMode};
use kvroute_kv_router::KvRouterConfig;
use kvroute_mocker::timing::{decode_ms, prefill_ms};
use kvroute_protocol::{block_hashes, HashSeed};
use kvroute_replay::trace::{expand, parse_records};
use kvroute_replay::{
    run, LateWorkers, PoolSplit, ReplayConfig, ReplayOutcome, Summary, TraceError, TraceOptions, TraceRecord,
};

const CAPACITY_TOKENS: f64 = (16384 * 64) as f64;

fn rec(timestamp: u64, input_length: usize, output_length: usize, hash_ids: &[u64]) -> TraceRecord {
    TraceRecord { timestamp, input_length, output_length, hash_ids: hash_ids.to_vec() }
}

fn replay(workers: usize, mode: RouterMode, records: &[TraceRecord]) -> ReplayOutcome {
    let requests = expand(records, &TraceOptions::default()).unwrap();
    run(&ReplayConfig::dynamo_defaults(workers, mode), &requests).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn a_lone_request_waits_exactly_its_prefill() {
    let out = replay(1, RouterMode::Kv, &[rec(0, 1000, 1, &[0, 1])]);
    let r = &out.records[0];
    assert!(close(r.ttft_ms().unwrap(), prefill_ms(1000)));
    assert!(close(r.e2e_ms().unwrap(), prefill_ms(1000)), "one output token: done with the first");
}

#[test]
fn each_further_token_costs_one_decode_pass_over_the_sequence_length() {
    let out = replay(1, RouterMode::Kv, &[rec(0, 1000, 3, &[0, 1])]);
    let r = &out.records[0];
    // Decode passes compute token 1001 then 1002 of the sequence.
    let expected = prefill_ms(1000) + decode_ms(1001.0 / CAPACITY_TOKENS) + decode_ms(1002.0 / CAPACITY_TOKENS);
    assert!(close(r.e2e_ms().unwrap(), expected), "{} vs {expected}", r.e2e_ms().unwrap());
}

#[test]
fn simultaneous_arrivals_share_one_prefill_pass() {
    let out = replay(1, RouterMode::Kv, &[rec(0, 1000, 1, &[0, 1]), rec(0, 600, 1, &[2, 3])]);
    for r in &out.records {
        assert!(close(r.ttft_ms().unwrap(), prefill_ms(1600)));
    }
}

#[test]
fn an_arrival_during_a_pass_waits_for_the_next_one() {
    let out = replay(1, RouterMode::Kv, &[rec(0, 1000, 1, &[0, 1]), rec(5, 600, 1, &[2, 3])]);
    let b = &out.records[1];
    assert!(close(b.ttft_ms().unwrap(), prefill_ms(1000) - 5.0 + prefill_ms(600)));
}

#[test]
fn a_shared_prefix_is_counted_as_reuse_and_skips_its_prefill() {
    // B arrives long after A finished; its first 512-token block equals A's.
    let out = replay(1, RouterMode::Kv, &[rec(0, 1024, 1, &[0, 1]), rec(10_000, 1024, 1, &[0, 2])]);
    assert_eq!(out.records[0].cached_tokens, 0);
    assert_eq!(out.records[1].cached_tokens, 512);
    assert_eq!(out.records[1].router_overlap_blocks, 8, "the router saw A's KV events");
    assert!(close(out.records[1].ttft_ms().unwrap(), prefill_ms(512)));
    let s = Summary::of(&out.records);
    assert!(close(s.prefix_reuse_ratio, 512.0 / 2048.0));
}

#[test]
fn a_fully_cached_prompt_still_computes_its_last_block() {
    // The engine caps reuse at floor((len - 1) / 64) * 64 so at least one token is computed.
    let out = replay(1, RouterMode::Kv, &[rec(0, 1024, 1, &[0, 1]), rec(10_000, 1024, 1, &[0, 1])]);
    assert_eq!(out.records[1].cached_tokens, 960);
    assert!(close(out.records[1].ttft_ms().unwrap(), prefill_ms(64)));
}

#[test]
fn the_kv_router_sends_a_shared_prefix_where_it_is_cached() {
    let records: Vec<TraceRecord> = (0..6).map(|i| rec(i * 10_000, 2048, 2, &[42, 43, 100 + i, 200 + i])).collect();
    let kv = replay(4, RouterMode::Kv, &records);
    assert!(kv.records.iter().all(|r| r.worker == kv.records[0].worker));
    assert!(kv.records[1..].iter().all(|r| r.cached_tokens == 1024));
    let rr = replay(4, RouterMode::RoundRobin, &records);
    let workers: Vec<usize> = rr.records.iter().map(|r| r.worker).collect();
    assert_eq!(workers, [0, 1, 2, 3, 0, 1]);
    assert!(Summary::of(&kv.records).prefix_reuse_ratio > Summary::of(&rr.records).prefix_reuse_ratio);
}

/// A busy synthetic trace: shared system prompts, overlapping requests, ties for the router.
fn synthetic(n: u64) -> Vec<TraceRecord> {
    let mut next_id = 1000;
    (0..n)
        .map(|i| {
            let shared = i % 5;
            let own = 1 + (i * 7) % 6;
            let mut ids = vec![shared, 10 + (i % 3)];
            for _ in 0..own {
                ids.push(next_id);
                next_id += 1;
            }
            let len = ids.len() * 512 - (i as usize * 37) % 500;
            rec(i * 40, len, 20 + (i as usize * 13) % 100, &ids)
        })
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_records() {
    let requests = expand(&synthetic(200), &TraceOptions::default()).unwrap();
    for mode in [RouterMode::Kv, RouterMode::Random, RouterMode::LeastLoaded] {
        let config = ReplayConfig { seed: 7, ..ReplayConfig::dynamo_defaults(4, mode) };
        let a = run(&config, &requests).unwrap();
        let b = run(&config, &requests).unwrap();
        assert_eq!(a, b);
        assert_eq!(Summary::of(&a.records), Summary::of(&b.records));
        assert_eq!(Summary::of(&a.records).completed, 200);
    }
}

#[test]
fn percentiles_use_the_rounded_rank() {
    let ttfts = [10.0, 20.0, 30.0, 40.0];
    let latency = kvroute_replay::Latency::of(ttfts.to_vec());
    assert_eq!(latency.mean, 25.0);
    assert_eq!(latency.p50, 30.0, "round(3 * 0.5) = 2");
    assert_eq!(latency.p90, 40.0);
    assert_eq!(latency.max, 40.0);
}

#[test]
fn a_bad_line_is_reported_by_number() {
    let text = "{\"timestamp\":0,\"input_length\":10,\"output_length\":1,\"hash_ids\":[0]}\n\
                {\"timestamp\":1,\"input_length\":10,\"output_length\":1}\n";
    let err = parse_records(text.as_bytes(), None).unwrap_err();
    assert!(matches!(err, TraceError::Json { line: 2, .. }));
    assert!(err.to_string().starts_with("trace line 2:"), "{err}");

    let too_long = "{\"timestamp\":0,\"input_length\":600,\"output_length\":1,\"hash_ids\":[0]}\n";
    let err = parse_records(too_long.as_bytes(), None).unwrap_err();
    assert!(err.to_string().contains("trace line 1: input_length 600 exceeds"), "{err}");
}

#[test]
fn max_requests_stops_reading_early() {
    let text = "{\"timestamp\":0,\"input_length\":10,\"output_length\":1,\"hash_ids\":[0]}\nnot json\n";
    assert_eq!(parse_records(text.as_bytes(), Some(1)).unwrap().len(), 1);
}

#[test]
fn expansion_repeats_each_interned_id_512_times_and_cuts_the_last_block() {
    let records = [rec(0, 1100, 1, &[7, 3, 7]), rec(0, 512, 1, &[3])];
    let requests = expand(&records, &TraceOptions::default()).unwrap();
    let p = &requests[0].prompt;
    assert_eq!(p.len(), 1100);
    assert!(p[..512].iter().all(|&t| t == 0), "first id seen is interned as 0");
    assert!(p[512..1024].iter().all(|&t| t == 1));
    assert!(p[1024..].iter().all(|&t| t == 0));
    assert_eq!(requests[1].prompt, vec![1; 512]);
}

#[test]
fn equal_hash_ids_give_equal_block_hashes_at_16_64_and_512() {
    let records = [rec(0, 1536, 1, &[5, 6, 9]), rec(0, 1536, 1, &[5, 6, 8])];
    let requests = expand(&records, &TraceOptions::default()).unwrap();
    for bs in [16, 64, 512] {
        let a = block_hashes(&requests[0].prompt, bs, HashSeed::default());
        let b = block_hashes(&requests[1].prompt, bs, HashSeed::default());
        let shared = 1024 / bs;
        assert_eq!(a[..shared], b[..shared], "block size {bs}");
        assert_ne!(a[shared..], b[shared..], "block size {bs}");
    }
}

#[test]
fn time_scale_compresses_arrivals_from_the_first_one() {
    let records = [rec(1000, 10, 1, &[0]), rec(3000, 10, 1, &[1])];
    let options = TraceOptions { time_scale: 4.0, ..TraceOptions::default() };
    let requests = expand(&records, &options).unwrap();
    assert_eq!(requests[0].arrival_ms, 0.0);
    assert_eq!(requests[1].arrival_ms, 500.0);
}

/// The first 500 requests of the Mooncake trace, when the shared data is present.
#[test]
fn the_first_500_trace_requests_replay() {
    let path = std::path::Path::new("/work/shared/data/mooncake_conversation_trace.jsonl");
    if !path.exists() {
        eprintln!("skipped: {} not found", path.display());
        return;
    }
    let options = TraceOptions { max_requests: Some(500), ..TraceOptions::default() };
    let requests = kvroute_replay::trace::load(path, &options).unwrap();
    let out = run(&ReplayConfig::dynamo_defaults(8, RouterMode::Kv), &requests).unwrap();
    let s = Summary::of(&out.records);
    assert_eq!(s.completed, 500);
    assert!(s.prefix_reuse_ratio > 0.05 && s.ttft_ms.mean > 100.0, "{s}");
}

fn pooled(policy: &str, records: &[TraceRecord]) -> ReplayOutcome {
    let requests = expand(records, &TraceOptions::default()).unwrap();
    let config = ReplayConfig {
        router: KvRouterConfig { block_size: 64, ..KvRouterConfig::default() },
        pools: Some(PoolSplit { sizes: vec![2, 2], policy: serde_json::from_str(policy).unwrap() }),
        ..ReplayConfig::dynamo_defaults(4, RouterMode::Kv)
    };
    run(&config, &requests).unwrap()
}

#[test]
fn pools_chosen_by_overlap_follow_a_prefix_to_its_pool() {
    // Two conversations; each turn extends the previous one's prompt.
    let records: Vec<TraceRecord> = (0..8u64)
        .map(|i| {
            let conversation = i % 2;
            let turn = i / 2;
            let ids: Vec<u64> = (0..=turn + 1).map(|k| conversation * 100 + k).collect();
            rec(i * 5_000, ids.len() * 512, 2, &ids)
        })
        .collect();
    let out = pooled(r#"{"type": "kv_overlap", "block_size": 64, "cost": "router_ms"}"#, &records);
    for later in 2..8 {
        let earlier = &out.records[later - 2];
        assert_eq!(out.records[later].pool, earlier.pool, "turn {later} follows its conversation");
        assert_eq!(out.records[later].cached_tokens, earlier.input_length, "and finds it cached");
    }
    // Workers are numbered across pools: pool 0 holds workers 0 and 1, pool 1 workers 2 and 3.
    assert!(out.records.iter().all(|r| r.worker / 2 == r.pool));
}

#[test]
fn a_grid_pool_choice_splits_by_prompt_length() {
    let grid = r#"{"type": "grid",
        "prefill": {"isl_min": 0, "isl_max": 4096, "isl_resolution": 2, "ttft_min_ms": 0, "ttft_max_ms": 1000,
                    "ttft_resolution": 1, "prefill_pool_mapping": [["pool-0"], ["pool-1"]]},
        "decode": {"context_length_min": 0, "context_length_max": 4096, "context_length_resolution": 2,
                   "itl_min_ms": 0, "itl_max_ms": 100, "itl_resolution": 1, "decode_pool_mapping": [["pool-0"], ["pool-1"]]}}"#;
    let records = [rec(0, 1000, 2, &[1, 2]), rec(100, 3000, 2, &[3, 4, 5, 6, 7, 8]), rec(200, 1500, 2, &[9, 10, 11])];
    let pools: Vec<usize> = pooled(grid, &records).records.iter().map(|r| r.pool).collect();
    assert_eq!(pools, [0, 1, 0]);
}

#[test]
fn pool_sizes_must_cover_the_workers() {
    let requests = expand(&[rec(0, 10, 1, &[0])], &TraceOptions::default()).unwrap();
    let config = ReplayConfig {
        pools: Some(PoolSplit { sizes: vec![2, 1], policy: kvroute_pool_select::Policy::default() }),
        ..ReplayConfig::dynamo_defaults(4, RouterMode::Kv)
    };
    let err = run(&config, &requests).unwrap_err();
    assert!(err.to_string().contains("sum to the 4 workers"), "{err}");
}

#[test]
fn late_workers_take_requests_only_once_they_join() {
    // Four simultaneous new conversations before the join, four after; two workers, one late.
    let records: Vec<TraceRecord> = (0..8u64)
        .map(|c| rec(if c < 4 { 0 } else { 10_000 }, 2048, 2, &[c * 10, c * 10 + 1, c * 10 + 2, c * 10 + 3]))
        .collect();
    let requests = expand(&records, &TraceOptions::default()).unwrap();
    let config = ReplayConfig {
        router: KvRouterConfig { block_size: 64, cost_model: CostModel::PredictedTtft, ..KvRouterConfig::default() },
        late_workers: Some(LateWorkers { count: 1, at_ms: 5_000.0 }),
        ..ReplayConfig::dynamo_defaults(2, RouterMode::Kv)
    };
    let workers: Vec<usize> = run(&config, &requests).unwrap().records.iter().map(|r| r.worker).collect();
    assert_eq!(workers[..4], [0; 4], "before the join only worker 0 exists");
    assert!(workers[4..].contains(&1), "after it the idle newcomer takes a share: {workers:?}");
    let all_late = ReplayConfig { late_workers: Some(LateWorkers { count: 2, at_ms: 0.0 }), ..config };
    let err = run(&all_late, &requests).unwrap_err();
    assert!(err.to_string().contains("must keep one from the start"), "{err}");
}

#[test]
fn the_predicted_ttft_router_spreads_a_burst_and_keeps_conversations_together() {
    // Eight simultaneous new conversations on four workers, then their second turns.
    let mut records: Vec<TraceRecord> =
        (0..8u64).map(|c| rec(0, 2048, 2, &[c * 10, c * 10 + 1, c * 10 + 2, c * 10 + 3])).collect();
    records.extend(
        (0..8u64).map(|c| rec(20_000, 3072, 2, &[c * 10, c * 10 + 1, c * 10 + 2, c * 10 + 3, c * 10 + 4, c * 10 + 5])),
    );
    let requests = expand(&records, &TraceOptions::default()).unwrap();
    let config = ReplayConfig {
        router: KvRouterConfig { block_size: 64, ..KvRouterConfig::default() },
        ..ReplayConfig::dynamo_defaults(4, RouterMode::Kv)
    };
    let out = run(&config, &requests).unwrap();
    let mut per_worker = [0; 4];
    for r in &out.records[..8] {
        per_worker[r.worker] += 1;
    }
    assert_eq!(per_worker, [2; 4], "the burst is spread evenly");
    for c in 0..8 {
        assert_eq!(out.records[8 + c].worker, out.records[c].worker, "turn 2 of conversation {c}");
        assert_eq!(out.records[8 + c].cached_tokens, 2048);
    }
}

#[test]
fn requests_arriving_while_their_prefix_is_computed_join_it() {
    // The same 5,120-token prefix three times, 20 ms apart: the first is still in prefill (no
    // event yet) when the others arrive.
    let records: Vec<TraceRecord> =
        (0..3u64).map(|i| rec(i * 20, 5632, 2, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100 + i])).collect();
    let requests = expand(&records, &TraceOptions::default()).unwrap();
    let config = ReplayConfig {
        router: KvRouterConfig { block_size: 64, ..KvRouterConfig::default() },
        ..ReplayConfig::dynamo_defaults(4, RouterMode::Kv)
    };
    let out = run(&config, &requests).unwrap();
    assert!(out.records.iter().all(|r| r.worker == out.records[0].worker), "{:?}", out.records);
    assert!(out.records[1..].iter().all(|r| r.cached_tokens == 5120), "the later ones reuse it");
    assert!(out.records[1..].iter().all(|r| r.router_overlap_blocks == 0), "before the index knew");
}

#[test]
fn router_replicas_that_share_load_route_like_one_and_blind_ones_pile_up() {
    // A burst: 60 requests in 1.2 s, 4 workers, kvroute's default cost.
    let records: Vec<TraceRecord> =
        synthetic(60).into_iter().enumerate().map(|(i, r)| TraceRecord { timestamp: i as u64 * 20, ..r }).collect();
    let requests = expand(&records, &TraceOptions::default()).unwrap();
    let ttft = |replicas: usize, sync: bool| {
        let config = ReplayConfig {
            router: KvRouterConfig { block_size: 64, ..KvRouterConfig::default() },
            router_replicas: replicas,
            replica_sync: sync,
            ..ReplayConfig::dynamo_defaults(4, RouterMode::Kv)
        };
        let outcome = run(&config, &requests).unwrap();
        assert_eq!(Summary::of(&outcome.records).completed, 60);
        Summary::of(&outcome.records).ttft_ms.mean
    };
    let (one, shared, blind) = (ttft(1, true), ttft(3, true), ttft(3, false));
    assert!(blind > one * 1.1, "three replicas blind to each other's load: {blind:.1} ms vs one router {one:.1} ms");
    assert!(shared < blind, "sharing load: {shared:.1} ms vs blind {blind:.1} ms");
    assert!((shared - one).abs() < one * 0.08, "sharing replicas route like one router: {shared:.1} vs {one:.1} ms");
    let none = ReplayConfig { router_replicas: 0, ..ReplayConfig::dynamo_defaults(4, RouterMode::Kv) };
    assert!(matches!(run(&none, &requests), Err(kvroute_replay::ReplayError::NoReplicas)));
}
