// Run:   cargo bench -p kvroute-kv-router --bench index
// One group:  cargo bench -p kvroute-kv-router --bench index -- find_matches
// Replay length:  KVROUTE_BENCH_MOONCAKE_N=4000 cargo bench -p kvroute-kv-router --bench index -- replay
// (trace path: KVROUTE_MOONCAKE_TRACE, default /work/shared/data/mooncake_conversation_trace.jsonl;
//  the replay group is skipped with a note when the file is absent)
//
//! Criterion benches of [`KvIndex`] on Dynamo's synthetic indexer workload (64 workers × 10,240
//! blocks, see `workload.rs`) and on a replay of the Mooncake conversation trace.
//!
//! - `apply_events/{1,16,512}`: the whole workload, in events of E blocks, applied to a fresh
//!   index per iteration; throughput counts events. `apply_event` borrows its event, so the
//!   shared event list is not cloned per iteration (Dynamo's harness clones it outside the timer
//!   because its indexes consume events).
//! - `find_matches/{full_hit,prefix_then_miss,miss}`: one call per iteration, cycling through
//!   the 200 queries of the set, against the full index built from E = 16 events.
//! - `replay_mooncake`: the first N trace requests (default 2000) replayed into a fresh index:
//!   match, then store on a round-robin worker among 8.
//!
//! Side-by-side figures with Dynamo's indexes come from `bench/compare-dynamo`, not from here.

mod workload;

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use kvroute_kv_router::KvIndex;
use kvroute_protocol::events::RouterEvent;
use workload::Shape;

fn build(events: &[RouterEvent]) -> KvIndex {
    let mut index = KvIndex::new();
    for event in events {
        index.apply_event(event).expect("workload events apply cleanly");
    }
    index
}

fn apply_events(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_events");
    group.sampling_mode(SamplingMode::Flat);
    for e in [1usize, 16, 512] {
        let events = workload::events(Shape::DYNAMO, e);
        group.throughput(Throughput::Elements(events.len() as u64));
        // The index is returned so it is dropped outside the timed region.
        group.bench_function(e.to_string(), |b| {
            b.iter_batched(
                KvIndex::new,
                |mut index| {
                    for event in &events {
                        let _ = black_box(index.apply_event(event));
                    }
                    index
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn find_matches(c: &mut Criterion) {
    let index = build(&workload::events(Shape::DYNAMO, 16));
    let queries = workload::queries(Shape::DYNAMO);
    let mut group = c.benchmark_group("find_matches");
    group.throughput(Throughput::Elements(1));
    for (name, set) in
        [("full_hit", &queries.full_hit), ("prefix_then_miss", &queries.prefix_then_miss), ("miss", &queries.miss)]
    {
        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                let query = &set[next % set.len()];
                next += 1;
                black_box(index.find_matches(black_box(query)))
            })
        });
    }
    group.finish();
}

fn replay_mooncake(c: &mut Criterion) {
    let n = std::env::var("KVROUTE_BENCH_MOONCAKE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000usize);
    let path = workload::mooncake_path();
    let requests = match workload::load_mooncake(Path::new(&path), n, 16) {
        Ok(requests) => requests,
        Err(e) => {
            eprintln!("replay_mooncake skipped: cannot read {path}: {e}");
            return;
        }
    };
    let mut group = c.benchmark_group("replay_mooncake");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(requests.len() as u64));
    group.bench_function(format!("{}_requests", requests.len()), |b| {
        b.iter_batched(
            KvIndex::new,
            |mut index| {
                black_box(workload::replay_mooncake(&mut index, &requests));
                index
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = apply_events, find_matches, replay_mooncake
}
criterion_main!(benches);
