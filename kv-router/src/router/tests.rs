//! KvRouter behaviour: routing follows the cache, tracking follows the lifecycle.

use super::*;
use crate::select::{CostModel, RouterMode};
use kvroute_protocol::events::{EngineBlockHash, KvCacheEventData, KvCacheStoreData, StoredBlock};
use rand::rngs::SmallRng;

const BS: u32 = 4;
const A: Worker = Worker::new(1, 0);
const B: Worker = Worker::new(2, 0);

fn router() -> KvRouter {
    let mut r = KvRouter::with_seed(KvRouterConfig { block_size: BS, ..KvRouterConfig::default() }, 42).unwrap();
    r.add_worker(A);
    r.add_worker(B);
    r
}

fn prompt(n: u32, salt: u32) -> Vec<u32> {
    (0..n).map(|i| i * 7 + salt).collect()
}

/// The event an engine emits after caching `tokens` (engine hashes = sequence hashes).
fn stored_event(worker: Worker, tokens: &[u32]) -> RouterEvent {
    let req = BlockedRequest::from_tokens(tokens, BS, HashSeed::default());
    let blocks = req
        .local
        .iter()
        .zip(&req.sequence)
        .map(|(l, s)| StoredBlock { block_hash: EngineBlockHash(s.0), tokens_hash: *l })
        .collect();
    RouterEvent::new(worker, 0, KvCacheEventData::Stored(KvCacheStoreData { parent_hash: None, blocks }))
}

fn cached(router: &mut KvRouter, worker: Worker, tokens: &[u32]) {
    router.apply_event(&stored_event(worker, tokens)).unwrap();
}

/// A router reading an index that events are applied to elsewhere (the service's layout)
/// decides exactly as one that owns its index, and sees what is applied after it was built.
#[test]
fn a_router_reading_an_index_applied_elsewhere_routes_like_one_that_owns_it() {
    let config = KvRouterConfig { block_size: BS, ..KvRouterConfig::default() };
    let mut index = KvIndex::new();
    let mut reading = KvRouter::reading(config.clone(), 42, index.reader()).unwrap();
    let mut owning = router();
    for w in [A, B] {
        reading.add_worker(w);
        index.add_worker(w);
    }
    let (long, short, other) = (prompt(64, 1), prompt(24, 2), prompt(48, 3)); // B holds 16 blocks, A 18
    for (worker, tokens) in [(B, &long), (A, &short), (A, &other)] {
        let ev = stored_event(worker, tokens);
        index.apply_event(&ev).unwrap();
        owning.apply_event(&ev).unwrap();
    }
    let both = |tokens: &[u32], reading: &mut KvRouter<SmallRng, IndexReader>, owning: &mut KvRouter| {
        let req = BlockedRequest::from_tokens(tokens, BS, HashSeed::default());
        let (r, o) = (
            reading.best_worker(&req, RouteOptions::default()).unwrap(),
            owning.best_worker(&req, RouteOptions::default()).unwrap(),
        );
        assert_eq!(
            (r.worker, r.overlap_blocks, r.cost),
            (o.worker, o.overlap_blocks, o.cost),
            "prompt of {} tokens",
            tokens.len()
        );
        assert_eq!(reading.candidates(&req), owning.candidates(&req), "the same figures, block counts included");
        r
    };
    assert_eq!(both(&long, &mut reading, &mut owning).worker, B);
    assert_eq!(both(&short, &mut reading, &mut owning).worker, A);
    // An unseen prompt ties on cost; both break it toward the worker holding fewer blocks.
    assert_eq!(both(&prompt(32, 9), &mut reading, &mut owning).worker, B);
    // Taken out: the index's owner forgets the worker, the router stops choosing it.
    index.remove_worker(B.worker_id);
    reading.remove_worker(B.worker_id);
    owning.remove_worker(B.worker_id);
    assert_eq!(both(&long, &mut reading, &mut owning).worker, A);
}

#[test]
fn a_cached_prompt_routes_to_the_worker_that_holds_it() {
    let mut r = router();
    let tokens = prompt(64, 1);
    cached(&mut r, B, &tokens);
    let req = BlockedRequest::from_tokens(&tokens, BS, HashSeed::default());
    let routed = r.best_worker(&req, RouteOptions::default()).unwrap();
    assert_eq!(routed.worker, B);
    assert_eq!(routed.overlap_blocks, 16);
    assert_eq!(routed.request_blocks, 16);
    assert_eq!(routed.potential_prefill_tokens, 0);
}

#[test]
fn a_request_known_only_by_its_beginning_counts_the_rest_as_cached_nowhere() {
    let mut r = router();
    let tokens = prompt(64, 1);
    cached(&mut r, B, &tokens[..24]); // 6 blocks on B
                                      // The first 40 tokens known (10 blocks), 100 in all (25 blocks).
    let beginning = BlockedRequest::from_beginning(&tokens[..40], 100, BS, HashSeed::default());
    assert_eq!((beginning.local.len(), beginning.unhashed_blocks, beginning.blocks()), (10, 15, 25));
    assert_eq!(r.known_prefix_blocks(&beginning), 6);
    let routed = r.best_worker(&beginning, RouteOptions::default()).unwrap();
    assert_eq!((routed.worker, routed.overlap_blocks, routed.request_blocks), (B, 6, 25));
    assert_eq!(routed.potential_prefill_tokens, 100 - 24);
    assert_eq!(routed.potential_decode_blocks, 25);
    // Known in full, the same prompt length gives the same figures.
    let whole = BlockedRequest::from_tokens(&prompt(100, 1), BS, HashSeed::default());
    let exact = r.best_worker(&whole, RouteOptions::default()).unwrap();
    assert_eq!((exact.overlap_blocks, exact.request_blocks, exact.potential_prefill_tokens), (6, 25, 76));
    assert_eq!(exact.potential_decode_blocks, 25);
    // All of the beginning cached: the caller needs more of the prompt to know the overlap.
    cached(&mut r, A, &tokens[..40]);
    assert_eq!(r.known_prefix_blocks(&beginning), 10);
}

#[test]
fn query_only_changes_no_load_tracked_changes_it_until_free() {
    let mut r = router();
    let req = BlockedRequest::from_tokens(&prompt(40, 2), BS, HashSeed::default());
    let routed = r.best_worker(&req, RouteOptions::default()).unwrap();
    assert_eq!(r.load(routed.worker), WorkerLoad::default());

    let tracked = r.best_worker(&req, RouteOptions { request_id: Some("r1"), ..Default::default() }).unwrap();
    let load = r.load(tracked.worker);
    assert_eq!(load.active_prefill_tokens, 40);
    assert_eq!(load.active_blocks, 10);
    r.mark_prefill_complete("r1").unwrap();
    assert_eq!(r.load(tracked.worker).active_prefill_tokens, 0);
    r.free("r1").unwrap();
    assert_eq!(r.load(tracked.worker), WorkerLoad::default());
    assert_eq!(r.free("r1"), Err(LoadError::UnknownRequest("r1".into())));
}

#[test]
fn load_spreads_identical_requests() {
    let mut r = router();
    let req = BlockedRequest::from_tokens(&prompt(40, 3), BS, HashSeed::default());
    let first = r.best_worker(&req, RouteOptions { request_id: Some("a"), ..Default::default() }).unwrap();
    // Same prompt, nothing cached yet. Its blocks are already active on the first worker (so
    // they add no decode load there), but its 40 queued prefill tokens tip the balance:
    // first worker (40 + 40) / 4 + 10 = 30, other worker 40 / 4 + 10 = 20.
    let second = r.best_worker(&req, RouteOptions { request_id: Some("b"), ..Default::default() }).unwrap();
    assert_ne!(first.worker, second.worker);
}

#[test]
fn forced_worker_is_honoured_and_tracked_unknown_is_ignored() {
    let mut r = router();
    let tokens = prompt(64, 4);
    cached(&mut r, B, &tokens);
    let req = BlockedRequest::from_tokens(&tokens, BS, HashSeed::default());
    let forced = ForcedWorker { worker_id: 1, dp_rank: None };
    let routed = r
        .best_worker(&req, RouteOptions { request_id: Some("f"), forced: Some(forced), ..Default::default() })
        .unwrap();
    assert_eq!((routed.worker, routed.forced), (A, Some(Forced::Honoured)));
    assert_eq!(r.load(A).active_requests, 1);

    let unknown = ForcedWorker { worker_id: 99, dp_rank: None };
    let routed = r.best_worker(&req, RouteOptions { forced: Some(unknown), ..Default::default() }).unwrap();
    assert_eq!((routed.worker, routed.forced), (B, Some(Forced::Ignored)));
}

#[test]
fn override_changes_the_trade_off() {
    let mut r = router();
    let dynamo = RouterConfigOverride { cost_model: Some(CostModel::Blocks), ..Default::default() };
    let tokens = prompt(64, 5);
    cached(&mut r, B, &tokens);
    // B is busy decoding a lot; A is idle.
    let busy = BlockedRequest::from_tokens(&prompt(400, 9), BS, HashSeed::default());
    r.best_worker(
        &busy,
        RouteOptions {
            request_id: Some("busy"),
            forced: Some(ForcedWorker { worker_id: 2, dp_rank: Some(0) }),
            ..Default::default()
        },
    )
    .unwrap();
    r.mark_prefill_complete("busy").unwrap();
    let req = BlockedRequest::from_tokens(&tokens, BS, HashSeed::default());
    let as_dynamo = RouteOptions { config_override: Some(&dynamo), ..Default::default() };
    assert_eq!(r.best_worker(&req, as_dynamo).unwrap().worker, A, "100 decode blocks outweigh a 16-block hit");
    let heavy_prefill = RouterConfigOverride { overlap_score_weight: Some(10.0), ..dynamo.clone() };
    let routed =
        r.best_worker(&req, RouteOptions { config_override: Some(&heavy_prefill), ..Default::default() }).unwrap();
    assert_eq!(routed.worker, B);
    let bad = RouterConfigOverride { router_temperature: Some(-1.0), ..Default::default() };
    assert!(matches!(
        r.best_worker(&req, RouteOptions { config_override: Some(&bad), ..Default::default() }),
        Err(RouteError::Config(_))
    ));
}

#[test]
fn no_workers_and_duplicate_ids_are_errors_without_change() {
    let mut empty = KvRouter::with_seed(KvRouterConfig::default(), 0).unwrap();
    let req = BlockedRequest::from_tokens(&prompt(32, 0), 16, HashSeed::default());
    assert_eq!(empty.best_worker(&req, RouteOptions::default()), Err(RouteError::NoWorkers));

    let mut r = router();
    r.best_worker(&req, RouteOptions { request_id: Some("x"), ..Default::default() }).unwrap();
    let before = (r.load(A), r.load(B));
    let again = r.best_worker(&req, RouteOptions { request_id: Some("x"), ..Default::default() });
    assert_eq!(again, Err(RouteError::Load(LoadError::DuplicateRequest("x".into()))));
    assert_eq!((r.load(A), r.load(B)), before);
}

#[test]
fn dump_replayed_into_a_fresh_router_gives_the_same_answers() {
    let mut r = router();
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| prompt(32 + 8 * i, i)).collect();
    for (i, p) in prompts.iter().enumerate() {
        cached(&mut r, if i % 2 == 0 { A } else { B }, p);
    }
    let mut fresh = router();
    for ev in r.dump_events() {
        fresh.apply_event(&ev).unwrap();
    }
    for p in &prompts {
        let req = BlockedRequest::from_tokens(p, BS, HashSeed::default());
        let a = r.best_worker(&req, RouteOptions::default()).unwrap();
        let b = fresh.best_worker(&req, RouteOptions::default()).unwrap();
        assert_eq!((a.worker, a.overlap_blocks), (b.worker, b.overlap_blocks));
    }
}

#[test]
fn seeded_routers_make_identical_choices() {
    let run = || {
        let mut r = router();
        (0..20)
            .map(|i| {
                let req = BlockedRequest::from_tokens(&prompt(16, i), BS, HashSeed::default());
                r.best_worker(&req, RouteOptions::default()).unwrap().worker
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn removed_worker_is_no_longer_chosen_and_its_load_is_gone() {
    let mut r = router();
    let req = BlockedRequest::from_tokens(&prompt(32, 1), BS, HashSeed::default());
    r.best_worker(
        &req,
        RouteOptions {
            request_id: Some("q"),
            forced: Some(ForcedWorker { worker_id: 2, dp_rank: None }),
            ..Default::default()
        },
    )
    .unwrap();
    r.remove_worker(2);
    assert_eq!(r.workers(), &[A]);
    assert!(r.free("q").is_err());
    for _ in 0..5 {
        assert_eq!(r.best_worker(&req, RouteOptions::default()).unwrap().worker, A);
    }
}

#[test]
fn baseline_modes_ignore_the_cache() {
    let tokens = prompt(64, 11);
    let req = BlockedRequest::from_tokens(&tokens, BS, HashSeed::default());
    let mut rr = KvRouter::with_seed(
        KvRouterConfig { block_size: BS, router_mode: RouterMode::RoundRobin, ..KvRouterConfig::default() },
        1,
    )
    .unwrap();
    rr.add_worker(A);
    rr.add_worker(B);
    cached(&mut rr, B, &tokens);
    let picks: Vec<Worker> = (0..4).map(|_| rr.best_worker(&req, RouteOptions::default()).unwrap().worker).collect();
    assert_eq!(picks, vec![A, B, A, B]);
    let routed = rr.best_worker(&req, RouteOptions::default()).unwrap();
    assert_eq!(routed.overlap_blocks, if routed.worker == B { 16 } else { 0 }, "overlap is still reported");

    let mut ll = KvRouter::with_seed(
        KvRouterConfig { block_size: BS, router_mode: RouterMode::LeastLoaded, ..KvRouterConfig::default() },
        1,
    )
    .unwrap();
    ll.add_worker(A);
    ll.add_worker(B);
    let first = ll.best_worker(&req, RouteOptions { request_id: Some("1"), ..Default::default() }).unwrap().worker;
    let second = ll.best_worker(&req, RouteOptions { request_id: Some("2"), ..Default::default() }).unwrap().worker;
    assert_ne!(first, second, "the busy worker is avoided");
    assert_eq!("least_loaded".parse::<RouterMode>(), Ok(RouterMode::LeastLoaded));
    assert!("fastest".parse::<RouterMode>().is_err());
}

/// Hand `from`'s recorded updates to `to` as the replica sync task would.
fn deliver(from: &mut KvRouter, to: &mut KvRouter, peers: &mut crate::replicas::Peers, seq: &mut u64, now_ms: u64) {
    let message = crate::replicas::ReplicaMessage {
        replica: "one".into(),
        seq: *seq,
        updates: from.take_load_updates(),
        resend: false,
    };
    *seq += 1;
    peers.receive(to, &message, now_ms);
}

#[test]
fn replicas_that_share_load_do_not_both_pick_the_idle_worker() {
    let (mut one, mut two) = (router(), router());
    one.share_load();
    let (mut peers, mut seq) = (crate::replicas::Peers::new(), 0);
    // Replica one routes a long request, tracked, to the idle pair: it lands on A or B.
    let long = BlockedRequest::from_tokens(&prompt(4000, 3), BS, HashSeed::default());
    let first =
        one.best_worker(&long, RouteOptions { request_id: Some("r1"), ..RouteOptions::default() }).unwrap().worker;
    deliver(&mut one, &mut two, &mut peers, &mut seq, 0);
    assert_eq!(two.load(first).active_prefill_tokens, 4000, "replica two counts replica one's request");
    assert_eq!(two.replica_request_count(), 1);
    // Replica two, asked about a new request, sends it to the other worker every time.
    let other = BlockedRequest::from_tokens(&prompt(400, 5), BS, HashSeed::default());
    for _ in 0..20 {
        assert_ne!(two.best_worker(&other, RouteOptions::default()).unwrap().worker, first);
    }
    // Replica two's own calls cannot free replica one's request ...
    assert!(two.free("r1").is_err());
    // ... replica one's lifecycle does, and the load is gone on both.
    one.mark_prefill_complete("r1").unwrap();
    one.free("r1").unwrap();
    deliver(&mut one, &mut two, &mut peers, &mut seq, 10);
    assert_eq!(two.load(first), WorkerLoad::default());
    assert_eq!(two.replica_request_count(), 0);
}

#[test]
fn load_updates_are_written_down_only_when_sharing_and_only_for_what_happened() {
    let mut r = router();
    let req = BlockedRequest::from_tokens(&prompt(16, 1), BS, HashSeed::default());
    let quiet =
        r.best_worker(&req, RouteOptions { request_id: Some("quiet"), ..RouteOptions::default() }).unwrap().worker;
    assert!(r.take_load_updates().is_empty(), "not sharing: nothing recorded");
    r.share_load();
    let w = r.best_worker(&req, RouteOptions { request_id: Some("r1"), ..RouteOptions::default() }).unwrap().worker;
    r.best_worker(&req, RouteOptions::default()).unwrap(); // a query changes nothing
    assert!(r.free("unknown").is_err());
    r.mark_prefill_complete("r1").unwrap();
    let updates = r.take_load_updates();
    assert_eq!(updates.len(), 2, "{updates:?}");
    assert!(matches!(&updates[0], LoadUpdate::Routed { request_id, worker_id, prefill_tokens: 16, blocks, .. }
        if request_id == "r1" && *worker_id == w.worker_id && blocks.len() == 4));
    assert_eq!(updates[1], LoadUpdate::PrefillComplete { request_id: "r1".into() });
    // A worker taken out drops its requests here: the other replicas are told they ended.
    r.remove_worker(w.worker_id);
    let mut ended: Vec<String> = r
        .take_load_updates()
        .into_iter()
        .map(|u| match u {
            LoadUpdate::Freed { request_id } => request_id,
            other => panic!("expected only `freed`, got {other:?}"),
        })
        .collect();
    ended.sort();
    let expected: Vec<&str> = if quiet == w { vec!["quiet", "r1"] } else { vec!["r1"] };
    assert_eq!(ended, expected);
}

#[test]
fn a_replica_that_joins_late_learns_the_requests_in_flight_from_a_resend() {
    let (mut one, mut late) = (router(), router());
    one.share_load();
    let long = BlockedRequest::from_tokens(&prompt(4000, 3), BS, HashSeed::default());
    let short = BlockedRequest::from_tokens(&prompt(400, 4), BS, HashSeed::default());
    let w1 = one
        .best_worker(&long, RouteOptions { request_id: Some("streaming"), ..RouteOptions::default() })
        .unwrap()
        .worker;
    one.mark_prefill_complete("streaming").unwrap();
    let w2 = one
        .best_worker(&short, RouteOptions { request_id: Some("waiting"), ..RouteOptions::default() })
        .unwrap()
        .worker;
    one.take_load_updates(); // published before `late` was listening
    let (mut peers, mut seq) = (crate::replicas::Peers::new(), 0);
    deliver(&mut one, &mut late, &mut peers, &mut seq, 0);
    assert_eq!(late.replica_request_count(), 0, "nothing learnt yet");
    // `late` asked for a resend: `one` announces both, in their current state.
    one.announce_tracked();
    deliver(&mut one, &mut late, &mut peers, &mut seq, 1);
    let total = |r: &KvRouter| {
        let (a, b) = (r.load(A), r.load(B));
        (
            a.active_requests + b.active_requests,
            a.prefilling_requests + b.prefilling_requests,
            a.active_prefill_tokens + b.active_prefill_tokens,
        )
    };
    assert_eq!(late.replica_request_count(), 2);
    assert_eq!(total(&late), (2, 1, 400), "both counted; only `waiting` still in prefill");
    assert_eq!((late.load(w1).active_requests > 0, late.load(w2).active_requests > 0), (true, true));
    // Announced twice, counted once.
    one.announce_tracked();
    deliver(&mut one, &mut late, &mut peers, &mut seq, 2);
    assert_eq!(late.replica_request_count(), 2);
    assert_eq!(total(&late), (2, 1, 400));
    // Not sharing: nothing to announce.
    let mut quiet = router();
    quiet.best_worker(&short, RouteOptions { request_id: Some("x"), ..RouteOptions::default() }).unwrap();
    quiet.announce_tracked();
    assert!(quiet.take_load_updates().is_empty());
}

/// A worker's stated cache size reaches selection; a configured size wins over it.
#[test]
fn stated_cache_sizes_reach_the_candidates_unless_one_is_configured() {
    let mut r = router();
    let req = BlockedRequest::from_tokens(&prompt(16, 1), BS, HashSeed::default());
    let sizes = |r: &KvRouter| r.candidates(&req).iter().map(|c| c.kv_capacity_blocks).collect::<Vec<_>>();
    assert_eq!(sizes(&r), vec![None, None]);
    r.set_worker_kv_blocks(B.worker_id, 500);
    r.set_worker_kv_blocks(A.worker_id, 0); // ignored
    assert_eq!(sizes(&r), vec![None, Some(500)]);
    assert_eq!(r.worker_kv_blocks(B.worker_id), Some(500));
    r.remove_worker(B.worker_id);
    assert_eq!(r.worker_kv_blocks(B.worker_id), None, "a worker that left is asked again when it returns");
    r.add_worker(B);
    r.set_worker_kv_blocks(B.worker_id, 500);
    let mut configured = KvRouter::with_seed(
        KvRouterConfig { block_size: BS, worker_kv_blocks: Some(64), ..KvRouterConfig::default() },
        42,
    )
    .unwrap();
    configured.add_worker(A);
    configured.add_worker(B);
    configured.set_worker_kv_blocks(B.worker_id, 500);
    assert_eq!(sizes(&configured), vec![Some(64), Some(64)]);
}
