//! Index behaviour, one rule per test, plus property tests against the reference index.

use super::reference::ReferenceIndex;
use super::*;
use kvroute_protocol::events::{KvCacheRemoveData, KvCacheStoreData};
use proptest::prelude::*;

const A: Worker = Worker::new(1, 0);
const B: Worker = Worker::new(2, 0);

fn stored(worker: Worker, parent: Option<u64>, blocks: &[(u64, u64)]) -> RouterEvent {
    RouterEvent::new(
        worker,
        0,
        KvCacheEventData::Stored(KvCacheStoreData {
            parent_hash: parent.map(EngineBlockHash),
            blocks: blocks
                .iter()
                .map(|&(name, local)| StoredBlock {
                    block_hash: EngineBlockHash(name),
                    tokens_hash: LocalBlockHash(local),
                })
                .collect(),
        }),
    )
}

fn removed(worker: Worker, names: &[u64]) -> RouterEvent {
    RouterEvent::new(
        worker,
        0,
        KvCacheEventData::Removed(KvCacheRemoveData {
            block_hashes: names.iter().map(|&n| EngineBlockHash(n)).collect(),
        }),
    )
}

fn q(locals: &[u64]) -> Vec<LocalBlockHash> {
    locals.iter().map(|&l| LocalBlockHash(l)).collect()
}

fn sorted(mut v: Vec<Overlap>) -> Vec<Overlap> {
    v.sort_by_key(|o| o.worker);
    v
}

fn overlap(index: &KvIndex, query: &[u64], worker: Worker) -> u32 {
    index.find_matches(&q(query)).iter().find(|o| o.worker == worker).map_or(0, |o| o.blocks)
}

#[test]
fn stored_chain_matches_its_prefix_only() {
    let mut index = KvIndex::new();
    index.apply_event(&stored(A, None, &[(10, 1), (11, 2), (12, 3)])).unwrap();
    assert_eq!(overlap(&index, &[1, 2, 3, 4], A), 3);
    assert_eq!(overlap(&index, &[1, 2, 9], A), 2);
    assert_eq!(overlap(&index, &[2, 3], A), 0, "blocks match by position in the chain, not by content alone");
    assert!(index.find_matches(&[]).is_empty());
}

#[test]
fn events_chain_by_parent_name() {
    let mut index = KvIndex::new();
    index.apply_event(&stored(A, None, &[(10, 1)])).unwrap();
    index.apply_event(&stored(A, Some(10), &[(11, 2)])).unwrap();
    assert_eq!(overlap(&index, &[1, 2], A), 2);
}

#[test]
fn removed_middle_block_cuts_the_overlap() {
    let mut index = KvIndex::new();
    index.apply_event(&stored(A, None, &[(10, 1), (11, 2), (12, 3)])).unwrap();
    index.apply_event(&removed(A, &[11])).unwrap();
    assert_eq!(overlap(&index, &[1, 2, 3], A), 1);
    assert_eq!(index.cached_blocks(A), 2);
    // The orphaned block still chains: a later event can extend it.
    index.apply_event(&stored(A, Some(12), &[(13, 4)])).unwrap();
    assert_eq!(index.cached_blocks(A), 3);
}

#[test]
fn removed_block_no_longer_matches_and_is_freed() {
    let mut index = KvIndex::new();
    index.apply_event(&stored(A, None, &[(10, 1), (11, 2)])).unwrap();
    index.apply_event(&removed(A, &[11, 10])).unwrap();
    assert!(index.find_matches(&q(&[1, 2])).is_empty());
    assert_eq!(index.distinct_blocks(), 0);
}

#[test]
fn shared_prefix_is_stored_once_and_matched_per_worker() {
    let mut index = KvIndex::new();
    index.apply_event(&stored(A, None, &[(10, 1), (11, 2), (12, 3)])).unwrap();
    index.apply_event(&stored(B, None, &[(90, 1), (91, 2), (92, 7)])).unwrap();
    assert_eq!(index.distinct_blocks(), 4);
    let m = sorted(index.find_matches(&q(&[1, 2, 3])));
    assert_eq!(m, vec![Overlap { worker: A, blocks: 3 }, Overlap { worker: B, blocks: 2 }]);
}

#[test]
fn engine_hashes_are_opaque_per_worker() {
    // Both workers name different content with the same engine hashes.
    let mut index = KvIndex::new();
    index.apply_event(&stored(A, None, &[(10, 1), (11, 2)])).unwrap();
    index.apply_event(&stored(B, None, &[(10, 5), (11, 6)])).unwrap();
    index.apply_event(&removed(B, &[11])).unwrap();
    assert_eq!(overlap(&index, &[1, 2], A), 2);
    assert_eq!(overlap(&index, &[5, 6], B), 1);
}

#[test]
fn unknown_parent_is_counted_and_not_applied() {
    let mut index = KvIndex::new();
    let err = index.apply_event(&stored(A, Some(99), &[(10, 1)])).unwrap_err();
    assert_eq!(err, IndexError::UnknownParent { worker: A, parent: 99 });
    assert_eq!(index.cached_blocks(A), 0);
    assert_eq!(index.stats(A).unwrap().unknown_parent, 1);
}

#[test]
fn the_last_stored_block_chains_the_next_event_only_while_it_has_that_name() {
    let mut index = KvIndex::new();
    index.apply_event(&stored(A, None, &[(10, 1), (11, 2)])).unwrap();
    // The usual case: the next event continues from the last block stored.
    index.apply_event(&stored(A, Some(11), &[(12, 3)])).unwrap();
    assert_eq!(overlap(&index, &[1, 2, 3], A), 3);
    // Removed, the name chains nothing, even though it was the last one stored.
    index.apply_event(&removed(A, &[12])).unwrap();
    let err = index.apply_event(&stored(A, Some(12), &[(13, 4)])).unwrap_err();
    assert_eq!(err, IndexError::UnknownParent { worker: A, parent: 12 });
    // Reused for other content (here a first block), the name chains to its new block.
    index.apply_event(&stored(A, None, &[(11, 7)])).unwrap();
    index.apply_event(&stored(A, Some(11), &[(14, 8)])).unwrap();
    assert_eq!(overlap(&index, &[7, 8], A), 2);
    // Cleared, nothing chains.
    index.apply_event(&stored(A, Some(14), &[(15, 9)])).unwrap();
    index.apply_event(&RouterEvent::new(A, 0, KvCacheEventData::Cleared)).unwrap();
    assert!(index.apply_event(&stored(A, Some(15), &[(16, 10)])).is_err());
}

#[test]
fn unknown_removed_block_is_counted_and_the_rest_applies() {
    let mut index = KvIndex::new();
    index.apply_event(&stored(A, None, &[(10, 1), (11, 2)])).unwrap();
    let err = index.apply_event(&removed(A, &[77, 11])).unwrap_err();
    assert_eq!(err, IndexError::UnknownBlocks { worker: A, count: 1 });
    assert_eq!(overlap(&index, &[1, 2], A), 1);
    assert_eq!(index.stats(A).unwrap().unknown_block, 1);
}

#[test]
fn cleared_worker_holds_nothing_but_stays_registered() {
    let mut index = KvIndex::new();
    index.apply_event(&stored(A, None, &[(10, 1), (11, 2)])).unwrap();
    index.apply_event(&stored(B, None, &[(10, 1)])).unwrap();
    index.apply_event(&RouterEvent::new(A, 0, KvCacheEventData::Cleared)).unwrap();
    assert_eq!(sorted(index.find_matches(&q(&[1, 2]))), vec![Overlap { worker: B, blocks: 1 }]);
    assert!(index.workers().any(|w| w == A));
    assert_eq!(index.distinct_blocks(), 1);
}

#[test]
fn remove_worker_drops_every_dp_rank() {
    let mut index = KvIndex::new();
    let a1 = Worker::new(1, 1);
    index.apply_event(&stored(A, None, &[(10, 1)])).unwrap();
    index.apply_event(&stored(a1, None, &[(10, 1)])).unwrap();
    index.apply_event(&stored(B, None, &[(10, 1)])).unwrap();
    index.remove_worker(1);
    assert_eq!(sorted(index.find_matches(&q(&[1]))), vec![Overlap { worker: B, blocks: 1 }]);
    assert_eq!(index.workers().count(), 1);
}

#[test]
fn dp_ranks_are_separate_workers() {
    let mut index = KvIndex::new();
    let a1 = Worker::new(1, 1);
    index.apply_event(&stored(a1, None, &[(10, 1), (11, 2)])).unwrap();
    assert_eq!(overlap(&index, &[1, 2], a1), 2);
    assert_eq!(overlap(&index, &[1, 2], A), 0);
}

#[test]
fn sequences_longer_than_a_run_match_fully() {
    let mut index = KvIndex::new();
    let locals: Vec<u64> = (1..=1000).collect();
    // Stored one block per event, the shape vLLM produces during decode.
    index.apply_event(&stored(A, None, &[(1_000_000, locals[0])])).unwrap();
    for (i, &local) in locals.iter().enumerate().skip(1) {
        let name = 1_000_000 + i as u64;
        index.apply_event(&stored(A, Some(name - 1), &[(name, local)])).unwrap();
    }
    assert_eq!(overlap(&index, &locals, A), 1000);
    assert_eq!(overlap(&index, &locals[..700], A), 700);
    let mut diverging = locals.clone();
    diverging[600] = 0;
    assert_eq!(overlap(&index, &diverging, A), 600);
}

#[test]
fn a_run_followed_whole_is_matched_exactly_after_it_changes() {
    // A long run is matched by its fingerprint once a query has followed it to its end (see
    // `fingerprint`); every change to the run must forget it.
    let mut index = KvIndex::new();
    let locals: Vec<u64> = (1..=200).collect();
    let blocks: Vec<(u64, u64)> = locals.iter().map(|&l| (1000 + l, l)).collect();
    index.apply_event(&stored(A, None, &blocks)).unwrap();
    assert_eq!(overlap(&index, &locals, A), 200);
    assert_eq!(overlap(&index, &locals, A), 200);
    let mut diverging = locals.clone();
    diverging[150] = 0;
    assert_eq!(overlap(&index, &diverging, A), 150);
    // The last block replaced by another: the run has its old length and other content.
    index.apply_event(&removed(A, &[1200])).unwrap();
    index.apply_event(&stored(A, Some(1199), &[(5000, 999)])).unwrap();
    assert_eq!(overlap(&index, &locals, A), 199);
    let mut replaced = locals.clone();
    replaced[199] = 999;
    assert_eq!(overlap(&index, &replaced, A), 200);
    assert_eq!(overlap(&index, &replaced, A), 200);
}

#[test]
fn duplicate_store_is_idempotent() {
    let mut index = KvIndex::new();
    for _ in 0..3 {
        index.apply_event(&stored(A, None, &[(10, 1), (11, 2)])).unwrap();
    }
    assert_eq!(index.cached_blocks(A), 2);
    index.apply_event(&removed(A, &[11])).unwrap();
    assert_eq!(overlap(&index, &[1, 2], A), 1);
}

#[test]
fn dump_rebuilds_an_identical_index() {
    let mut index = KvIndex::new();
    index.apply_event(&stored(A, None, &[(10, 1), (11, 2), (12, 3)])).unwrap();
    index.apply_event(&stored(B, None, &[(20, 1), (21, 5)])).unwrap();
    index.apply_event(&removed(A, &[11])).unwrap(); // leaves A holding 3 without 2
    let mut rebuilt = KvIndex::new();
    for ev in index.dump_events() {
        rebuilt.apply_event(&ev).unwrap();
    }
    for query in [&[1u64, 2, 3][..], &[1, 5], &[1]] {
        assert_eq!(sorted(rebuilt.find_matches(&q(query))), sorted(index.find_matches(&q(query))));
    }
    assert_eq!(rebuilt.cached_blocks(A), 2);
    assert_eq!(rebuilt.cached_blocks(B), 2);
    // A still holds the orphaned block under its own name: extending it works after the rebuild.
    rebuilt.apply_event(&stored(A, Some(12), &[(13, 4)])).unwrap();
}

// ---------------------------------------------------------------- properties

#[derive(Clone, Debug)]
enum Op {
    Store {
        worker: usize,
        parent: Option<u64>,
        blocks: Vec<(u64, u64)>,
    },
    StoreLong {
        worker: usize,
        first_name: u64,
        len: usize,
        branch: u64,
    },
    /// Many one-block branches at one position (the root, or after block 10), more than a
    /// run scans before it keeps a map of its branches.
    Fan {
        worker: usize,
        width: u64,
        from_root: bool,
    },
    Remove {
        worker: usize,
        names: Vec<u64>,
    },
    Clear {
        worker: usize,
    },
    RemoveWorker {
        worker_id: u64,
    },
}

const WORKERS: [Worker; 4] = [Worker::new(1, 0), Worker::new(1, 1), Worker::new(2, 0), Worker::new(3, 0)];

fn op() -> impl Strategy<Value = Op> {
    let name = 0u64..24;
    let local = 0u64..3;
    prop_oneof![
        6 => (0..4usize, prop::option::weighted(0.7, name.clone()), prop::collection::vec((name.clone(), local), 1..6))
            .prop_map(|(worker, parent, blocks)| Op::Store { worker, parent, blocks }),
        1 => (0..4usize, 0u64..2, 200usize..600, 0u64..3)
            .prop_map(|(worker, k, len, branch)| Op::StoreLong { worker, first_name: 1000 + k * 1000, len, branch }),
        1 => (0..4usize, 6u64..20, any::<bool>()).prop_map(|(worker, width, from_root)| Op::Fan { worker, width, from_root }),
        3 => (0..4usize, prop::collection::vec(prop_oneof![name, 1000u64..1700, 5000u64..5020], 1..5)).prop_map(|(worker, names)| Op::Remove { worker, names }),
        1 => (0..4usize).prop_map(|worker| Op::Clear { worker }),
        1 => (1u64..4).prop_map(|worker_id| Op::RemoveWorker { worker_id }),
    ]
}

fn events_of(op: &Op) -> Vec<RouterEvent> {
    match op {
        Op::Store { worker, parent, blocks } => vec![stored(WORKERS[*worker], *parent, blocks)],
        Op::StoreLong { worker, first_name, len, branch } => {
            // A long chain, stored in events of up to 100 blocks, branching from a shared path.
            let blocks: Vec<(u64, u64)> =
                (0..*len as u64).map(|i| (first_name + i, if i == 300 { 50 + branch } else { 10 + i % 7 })).collect();
            let mut out = Vec::new();
            let mut parent = None;
            for chunk in blocks.chunks(100) {
                out.push(stored(WORKERS[*worker], parent, chunk));
                parent = Some(chunk.last().unwrap().0);
            }
            out
        }
        Op::Fan { worker, width, from_root } => {
            let parent = (!from_root).then(|| stored(WORKERS[*worker], None, &[(4000, 10)]));
            let leaves =
                (0..*width).map(|i| stored(WORKERS[*worker], (!from_root).then_some(4000), &[(5000 + i, 20 + i)]));
            parent.into_iter().chain(leaves).collect()
        }
        Op::Remove { worker, names } => vec![removed(WORKERS[*worker], names)],
        Op::Clear { worker } => vec![RouterEvent::new(WORKERS[*worker], 0, KvCacheEventData::Cleared)],
        Op::RemoveWorker { .. } => vec![],
    }
}

fn queries() -> impl Strategy<Value = Vec<Vec<u64>>> {
    prop::collection::vec(prop::collection::vec(0u64..3, 0..8), 1..12)
}

fn long_queries() -> Vec<Vec<u64>> {
    let long = (0..3u64).map(|branch| (0..600u64).map(|i| if i == 300 { 50 + branch } else { 10 + i % 7 }).collect());
    let fans = (20..40u64).flat_map(|leaf| [vec![leaf], vec![10, leaf]]);
    long.chain(fans).collect()
}

fn check_same(index: &KvIndex, reference: &ReferenceIndex, queries: &[Vec<u64>]) -> Result<(), TestCaseError> {
    for query in queries.iter().chain(long_queries().iter()) {
        prop_assert_eq!(sorted(index.find_matches(&q(query))), reference.find_matches(&q(query)), "query {:?}", query);
    }
    for w in WORKERS {
        prop_assert_eq!(index.cached_blocks(w), reference.cached_blocks(w), "worker {}", w);
    }
    Ok(())
}

/// Apply `ops` to the index and to the reference; every event must get the same result.
fn apply_both(ops: &[Op]) -> Result<(KvIndex, ReferenceIndex), TestCaseError> {
    apply_both_checking(ops, |_, _| Ok(()))
}

/// [`apply_both`], calling `after_each` on both after every event.
fn apply_both_checking(
    ops: &[Op],
    mut after_each: impl FnMut(&KvIndex, &ReferenceIndex) -> Result<(), TestCaseError>,
) -> Result<(KvIndex, ReferenceIndex), TestCaseError> {
    let mut index = KvIndex::new();
    let mut reference = ReferenceIndex::new();
    for op in ops {
        if let Op::RemoveWorker { worker_id } = op {
            index.remove_worker(*worker_id);
            reference.remove_worker(*worker_id);
        }
        for ev in events_of(op) {
            let got = index.apply_event(&ev);
            let want = reference.apply_event(&ev);
            prop_assert_eq!(got, want, "event {:?}", ev);
            after_each(&index, &reference)?;
        }
    }
    Ok((index, reference))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn index_answers_like_the_reference(ops in prop::collection::vec(op(), 1..40), queries in queries()) {
        let (index, reference) = apply_both(&ops)?;
        check_same(&index, &reference, &queries)?;
    }

    #[test]
    fn answers_stay_exact_while_events_change_runs_queries_have_followed(ops in prop::collection::vec(op(), 1..25)) {
        // Queried after every event, so fingerprints recorded by one query meet the changes
        // of the next events.
        apply_both_checking(&ops, |index, reference| check_same(index, reference, &[]))?;
    }

    #[test]
    fn dump_replayed_into_an_empty_index_answers_the_same(ops in prop::collection::vec(op(), 1..40), queries in queries()) {
        let (index, reference) = apply_both(&ops)?;
        let mut rebuilt = KvIndex::new();
        for ev in index.dump_events() {
            prop_assert_eq!(rebuilt.apply_event(&ev), Ok(()), "dump event {:?}", ev);
        }
        check_same(&rebuilt, &reference, &queries)?;
        prop_assert_eq!(rebuilt.distinct_blocks(), index.distinct_blocks());
    }
}

// ---------------------------------------------------------------- concurrency

/// Readers on other threads, while the writer grows and frees runs around a sequence another
/// worker holds throughout (branches off it, runs freed and their slots reused, worker slots
/// freed and renamed): that worker's overlap is exact in every answer, and nobody else's
/// exceeds what it could hold.
#[test]
fn readers_answer_exactly_for_untouched_blocks_while_events_apply() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let locals: Vec<u64> = (0..600).map(|i| 100 + i).collect();
    let chain = |worker: Worker, first_name: u64, locals: &[u64], parent: Option<u64>| -> Vec<RouterEvent> {
        let blocks: Vec<(u64, u64)> = locals.iter().enumerate().map(|(i, &l)| (first_name + i as u64, l)).collect();
        let mut parent = parent;
        let mut out = Vec::new();
        for chunk in blocks.chunks(64) {
            out.push(stored(worker, parent, chunk));
            parent = Some(chunk.last().unwrap().0);
        }
        out
    };
    let mut index = KvIndex::new();
    for ev in chain(A, 0, &locals, None) {
        index.apply_event(&ev).unwrap();
    }
    let queries: Vec<Vec<LocalBlockHash>> =
        vec![q(&locals), q(&locals[..250]), q(&[&locals[..130], &[7, 8, 9]].concat())];
    let expected_a = [600, 250, 130];
    let reader = index.reader();
    let done = AtomicBool::new(false);
    // The churn starts once both readers are answering.
    let started = std::sync::Barrier::new(3);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (reader, queries, done, started) = (reader.clone(), &queries, &done, &started);
                s.spawn(move || {
                    let mut answered = 0usize;
                    loop {
                        for (query, &want) in queries.iter().zip(&expected_a) {
                            let answer = reader.find_matches(query);
                            let a = answer.iter().filter(|o| o.worker == A).map(|o| o.blocks).collect::<Vec<_>>();
                            assert_eq!(a, vec![want], "A's overlap while events apply");
                            for o in answer.iter().filter(|o| o.worker != A) {
                                assert!(o.blocks <= 250, "{} cannot hold more than 250 blocks of the query", o.worker);
                                assert!(
                                    o.worker == B || o.worker.worker_id >= 100,
                                    "unknown worker {} in an answer",
                                    o.worker
                                );
                            }
                            answered += 1;
                        }
                        if answered == queries.len() {
                            started.wait();
                            continue; // at least one more round, during the churn
                        }
                        if done.load(Ordering::Acquire) {
                            return answered;
                        }
                    }
                })
            })
            .collect();
        started.wait();
        for round in 0..150u64 {
            // B shares A's first 250 blocks and branches off; a fresh worker (reusing the slot
            // the previous one freed) shares 130 and branches off with a fan of its own.
            let b_names = 10_000 + round * 1_000;
            for ev in chain(B, b_names, &[&locals[..250], &[1, 2, 3, round]].concat(), None) {
                index.apply_event(&ev).unwrap();
            }
            let c = Worker::new(100 + round, 0);
            for ev in chain(c, 0, &[&locals[..130], &[5, 6]].concat(), None) {
                index.apply_event(&ev).unwrap();
            }
            for leaf in 0..12 {
                index.apply_event(&stored(c, Some(129), &[(1_000 + leaf, 200 + leaf)])).unwrap();
            }
            index.apply_event(&removed(B, &(b_names..b_names + 254).collect::<Vec<_>>())).unwrap();
            index.remove_worker(c.worker_id);
        }
        done.store(true, Ordering::Release);
        for r in readers {
            r.join().expect("reader thread");
        }
    });
    let answer = sorted(index.find_matches(&queries[0]));
    assert_eq!(answer, vec![Overlap { worker: A, blocks: 600 }]);
    assert_eq!(index.distinct_blocks(), 600, "every block of the churn was collected");
}

/// Readers query a long run (matched by fingerprint once followed whole) while the writer keeps
/// replacing its last block with other content. Every answer given while no event was being
/// applied (checked with a sequence count around the query) is exact for the state the run was
/// in, so no fingerprint recorded for one content outlives it. The writer waits until each
/// state has been checked before it applies the next event; readers keep querying while
/// events apply.
#[test]
fn readers_never_match_a_run_by_the_fingerprint_of_its_previous_content() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const LEN: usize = 200;
    const ROUNDS: u64 = 400;
    let locals: Vec<u64> = (1..=LEN as u64).collect();
    let ending = |last: u64| [&locals[..LEN - 1], &[last]].concat();
    // The last block's content after round r (rounds count from 1; before them, LEN).
    let content = |round: u64| 900 + round % 3;
    let endings = [LEN as u64, 900, 901, 902];
    let mut index = KvIndex::new();
    let blocks: Vec<(u64, u64)> = locals.iter().map(|&l| (l, l)).collect();
    index.apply_event(&stored(A, None, &blocks)).unwrap();
    let queries: Vec<Vec<LocalBlockHash>> = endings.iter().map(|&last| q(&ending(last))).collect();
    // Twice the number of events applied; odd while one is being applied.
    let sequence = AtomicU64::new(0);
    // The latest sequence value a reader checked answers at.
    let checked_at = AtomicU64::new(u64::MAX);
    let done = AtomicBool::new(false);
    let reader = index.reader();
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (reader, queries, sequence, checked_at, done) =
                    (reader.clone(), &queries, &sequence, &checked_at, &done);
                s.spawn(move || {
                    let mut checked = 0u64;
                    while !done.load(Ordering::Acquire) {
                        let before = sequence.load(Ordering::Acquire);
                        let answers: Vec<u32> = queries
                            .iter()
                            .map(|query| {
                                reader.find_matches(query).iter().find(|o| o.worker == A).map_or(0, |o| o.blocks)
                            })
                            .collect();
                        if before % 2 == 1 || sequence.load(Ordering::Acquire) != before {
                            continue;
                        }
                        // Events applied: a removal then a store per round.
                        let events = before / 2;
                        let last = match events {
                            0 => Some(LEN as u64),
                            n if n % 2 == 1 => None,
                            n => Some(content(n / 2)),
                        };
                        for (query, got) in endings.iter().zip(answers) {
                            let want = if last == Some(*query) { LEN } else { LEN - 1 };
                            assert_eq!(got as usize, want, "query ending {query} after {events} events");
                        }
                        checked += 1;
                        checked_at.store(before, Ordering::Release);
                    }
                    checked
                })
            })
            .collect();
        let mut last_name = LEN as u64;
        for round in 1..=ROUNDS {
            for event in
                [removed(A, &[last_name]), stored(A, Some(LEN as u64 - 1), &[(10_000 + round, content(round))])]
            {
                let stable = sequence.load(Ordering::Acquire);
                while checked_at.load(Ordering::Acquire) != stable {
                    // A reader that stopped has failed: stop waiting, its panic is reported below.
                    if readers.iter().any(|r| r.is_finished()) {
                        break;
                    }
                    std::thread::yield_now();
                }
                sequence.fetch_add(1, Ordering::AcqRel);
                index.apply_event(&event).unwrap();
                sequence.fetch_add(1, Ordering::AcqRel);
            }
            last_name = 10_000 + round;
        }
        done.store(true, Ordering::Release);
        let checked: u64 = readers.into_iter().map(|r| r.join().expect("reader thread")).sum();
        assert!(checked >= 2 * ROUNDS, "every state is checked at least once");
    });
}

#[test]
fn engine_name_tables_grow_fourfold_while_small_then_double() {
    // The capacity each time a table must grow, named one at a time as single-block events do.
    let mut names: HashMap<EngineKey, Slot, FxBuildHasher> = HashMap::default();
    let mut capacities = Vec::new();
    for n in 0..50_000u64 {
        reserve_names(&mut names, 1);
        if capacities.last() != Some(&names.capacity()) {
            capacities.push(names.capacity());
        }
        names.insert(EngineKey::new(EngineBlockHash(n)), n as Slot);
    }
    // hashbrown holds 7/8 of its buckets: 1,024 buckets, ×4 up to 16,384, then ×2.
    assert_eq!(capacities, vec![896, 3_584, 14_336, 28_672, 57_344]);
    // A large event reserves for all its blocks at once.
    let mut names: HashMap<EngineKey, Slot, FxBuildHasher> = HashMap::default();
    reserve_names(&mut names, 20_000);
    assert!(names.capacity() >= 20_000);
}
