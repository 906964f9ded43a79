// kvroute KvIndex vs dynamo-kv-router 1.6.1 (RadixTree, ConcurrentRadixTreeCompressed) on the
// workload of shared/tools/dynamo-indexers-bench, in one process, same machine state.
//
// Commands (from the repository root):
//   cd bench/compare-dynamo && cargo build --release && ./target/release/compare-dynamo
//   # sharing the machine with another cargo build? keep out of its target-dir lock:
//   cd bench/compare-dynamo && CARGO_TARGET_DIR=/var/tmp/kvroute-bench-target/compare cargo build --release \
//     && /var/tmp/kvroute-bench-target/compare/release/compare-dynamo
//   options: [--reps 11] [--read-ms 300] [--w 64] [--bpw 10240]
//   machine drift is large (others_cores in RESULT lines): run it 3 times, compare the ratios.
// Exit status 1 if the three indexes disagree on any query (or with the workload's known answers).
// Build ~2 min cold on 2 cores; run ~40 s. Its own [workspace]: the main workspace and CI never
// build it; Cargo.lock was seeded from the Dynamo harness' lock so Dynamo's dependency versions match.
//
//! Method (taken from the Dynamo harness, code our own):
//! - apply: the whole workload in events of E = 1, 16, 512 blocks on a fresh index, 1 + reps
//!   repetitions; the first (cold: heap growth, page faults) is reported apart, events/s is the
//!   median of the `reps` warm ones. Dynamo's indexes consume events, so each repetition gets a
//!   copy made before the timer; ours borrows them.
//! - find_matches: 5 passes × 200 queries per set on the E = 16 index, each call timed alone;
//!   p50 / p99 over all passes as the Dynamo harness reports them (the p99 is then the first,
//!   cold-cache pass), and again over passes 2-5. Repeated in 5 rounds, pooled (see below).
//! - Unlike the Dynamo harness (one indexer per process), the backends take turns: apply
//!   repetition by repetition, find_matches round by round (5 consecutive passes each, so an
//!   index is not evicted between its own passes), because this machine's clock drifts by up to
//!   ~1.6× within seconds and a ratio only means something if both sides saw the same drift.
//! - memory: one more build per backend and E with the counting allocator on: live heap held
//!   after applying every event (events consumed or borrowed, not counted), / W × bpw.
//! - reads/s: 1 and 2 reader threads for --read-ms (RadixTree is `!Sync`: 1/mean latency);
//!   then 2 readers while this thread writes a churn of 8 extra workers (store 20 × 512 blocks
//!   each in E = 16 events, then clear them): for ours this thread applies them to the index
//!   while the readers query it through its `IndexReader` (per-run locks), for Dynamo's
//!   through CRTC's own lane.
//! - correctness: every query of every set on every E's index, on all three indexes, compared as
//!   sorted (worker_id, dp_rank, blocks) lists, and against the answer the workload implies.

#[path = "../../../kv-router/benches/workload.rs"]
mod workload;

mod alloc;
mod backends;
mod measure;

use std::sync::Arc;
use std::time::Duration;

use backends::{Backend, Crtc, Events, Ours, Query, Radix, Reader, Score};
use dynamo_kv_router::protocols as dy;
use kvroute_kv_router::KvIndex;
use kvroute_protocol::events::{KvCacheEventData, RouterEvent};
use kvroute_protocol::{LocalBlockHash, Worker};
use measure::{Apply, Latency};
use workload::Shape;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

const EVENT_SIZES: [usize; 3] = [1, 16, 512];
const FIND_E: usize = 16;
const FIND_ROUNDS: usize = 5;
const CHURN_WORKERS: u64 = 8;

struct Args {
    reps: usize,
    read: Duration,
    shape: Shape,
}

fn args() -> Args {
    let raw: Vec<String> = std::env::args().collect();
    let opt = |k: &str, d: u64| -> u64 {
        match raw.iter().position(|a| a == k) {
            Some(i) => raw.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{k} needs a number")),
            None => d,
        }
    };
    let shape = Shape { workers: opt("--w", 64), blocks_per_worker: opt("--bpw", 10_240) };
    assert!(shape.sequences_per_worker() > 0, "--bpw must be at least {}", workload::SEQ_BLOCKS);
    Args { reps: opt("--reps", 11) as usize, read: Duration::from_millis(opt("--read-ms", 300)), shape }
}

/// The three query sets, named, in both type systems.
struct Sets {
    sets: Vec<(&'static str, Vec<Query>)>,
}

impl Sets {
    fn new(shape: Shape) -> Self {
        let q = workload::queries(shape);
        let conv = |v: Vec<Vec<LocalBlockHash>>| v.into_iter().map(Query::new).collect();
        Sets {
            sets: vec![
                ("full_hit", conv(q.full_hit)),
                ("prefix_then_miss", conv(q.prefix_then_miss)),
                ("miss", conv(q.miss)),
            ],
        }
    }
}

/// The answer the workload implies: every worker holds the shared 64-block prefix; a full-hit
/// query's owner (worker w in `((w * 1000 + s) << 20) + i`) holds all 512 blocks.
fn expected(shape: Shape, set: &str, q: &Query) -> Vec<Score> {
    let prefix = workload::SHARED_PREFIX as u32;
    match set {
        "full_hit" => {
            let owner = (q.ours[workload::SHARED_PREFIX].0 >> 20) / 1000;
            (0..shape.workers).map(|w| (w, 0, if w == owner { q.ours.len() as u32 } else { prefix })).collect()
        }
        "prefix_then_miss" => (0..shape.workers).map(|w| (w, 0, prefix)).collect(),
        _ => Vec::new(),
    }
}

/// Compare every backend's answer to every query with the others and the expected one; print
/// the first few differences, return how many queries differed.
fn check(label: &str, shape: Shape, sets: &Sets, backends: &[(&str, &dyn Backend)]) -> usize {
    let mut bad = 0;
    for (set, queries) in &sets.sets {
        let answers: Vec<Vec<Vec<Score>>> = backends.iter().map(|(_, b)| measure::answers(*b, queries)).collect();
        for (i, q) in queries.iter().enumerate() {
            let want = expected(shape, set, q);
            let ok = answers.iter().all(|a| a[i] == want);
            if !ok {
                bad += 1;
                if bad <= 5 {
                    println!("MISMATCH {label} {set}[{i}]: expected {} workers", want.len());
                    for ((name, _), a) in backends.iter().zip(&answers) {
                        println!("  {name}: {:?}", &a[i][..a[i].len().min(8)]);
                    }
                }
            }
        }
    }
    bad
}

/// Live heap bytes the backend holds after applying every event.
fn heap_after_apply<B: Backend>(make: impl Fn() -> B, events: &Events) -> f64 {
    alloc::counting(true);
    let before = alloc::live_bytes();
    let mut b = None;
    measure::apply_once(make, events, &mut b);
    let held = alloc::live_bytes() - before;
    drop(b);
    alloc::counting(false);
    held as f64
}

struct PerE {
    e: usize,
    events: usize,
    apply: [Apply; 3],
    bytes: [f64; 3],
    others_cores: f64,
}

struct Reads {
    full_1t: [f64; 3],
    full_2t: [f64; 3],
    mixed_1t: [f64; 3],
    mixed_2t: [f64; 3],
    /// (reads/s with 2 readers, writer events/s) while the churn writes; ours and CRTC.
    with_writer: [(f64, f64); 2],
}

const NAMES: [&str; 3] = ["ours", "RadixTree", "CRTC(1 lane)"];

fn main() {
    let a = args();
    let shape = a.shape;
    let total_load = alloc::OtherLoad::start();
    let pairs = shape.total_blocks() as f64;

    // Our hashing is Dynamo's: the same chained sequence hashes for the same local hashes.
    let locals = workload::sequence_locals(3, 7);
    let ours_seq: Vec<u64> = kvroute_protocol::sequence_hashes(&locals).iter().map(|h| h.0).collect();
    let dy_locals: Vec<dy::LocalBlockHash> = locals.iter().map(|h| dy::LocalBlockHash(h.0)).collect();
    let hash_ok = ours_seq == dy::compute_seq_hash_for_block(&dy_locals);
    println!("sequence hashes equal to Dynamo's compute_seq_hash_for_block: {hash_ok}");

    let sets = Sets::new(shape);
    let mut mismatches = usize::from(!hash_ok);
    let mut per_e = Vec::new();
    let mut lat: Vec<[Latency; 3]> = Vec::new();
    let mut reads = None;
    for e in EVENT_SIZES {
        let load = alloc::OtherLoad::start();
        let events = Events::new(workload::events(shape, e));
        // Repetitions take turns across the backends, so drift in machine state hits them alike.
        let (mut ours, mut radix, mut crtc) = (None, None, None);
        let mut times: [Vec<f64>; 3] = Default::default();
        for _ in 0..=a.reps {
            times[0].push(measure::apply_once(Ours::new, &events, &mut ours));
            times[1].push(measure::apply_once(Radix::new, &events, &mut radix));
            times[2].push(measure::apply_once(Crtc::new, &events, &mut crtc));
        }
        let [a_ours, a_radix, a_crtc] = times.map(|t| Apply::from_times(&t));
        let (ours, radix, crtc) = (ours.expect("built"), radix.expect("built"), crtc.expect("built"));
        let backends: [(&str, &dyn Backend); 3] = [(NAMES[0], &ours), (NAMES[1], &radix), (NAMES[2], &crtc)];
        mismatches += check(&format!("E={e}"), shape, &sets, &backends);
        if e == FIND_E {
            let all = backends.map(|(_, b)| b);
            lat = sets
                .sets
                .iter()
                .map(|(_, qs)| {
                    measure::spin(Duration::from_millis(200));
                    measure::find_latency(&all, qs, FIND_ROUNDS, 5).try_into().ok().expect("three backends")
                })
                .collect();
            drop(radix);
            let mean_radix: Vec<f64> = lat.iter().map(|l| l[1].mean_us).collect();
            let (r, bad) = read_figures(&sets, ours, crtc, &mean_radix, a.read, shape);
            reads = Some(r);
            mismatches += bad;
        } else {
            drop((ours, radix, crtc));
        }
        let others_cores = load.cores();
        let bytes = [
            heap_after_apply(Ours::new, &events),
            heap_after_apply(Radix::new, &events),
            heap_after_apply(Crtc::new, &events),
        ];
        let row = PerE { e, events: events.ours.len(), apply: [a_ours, a_radix, a_crtc], bytes, others_cores };
        print_row(&row, pairs);
        per_e.push(row);
    }
    let reads = reads.expect("E = 16 is measured");
    print_tables(&a, &per_e, &sets, &lat, &reads, mismatches, total_load.cores());
    if mismatches > 0 {
        std::process::exit(1);
    }
}

/// Events of the churn: 8 more workers' full sequences (E = 16), then a clear per worker.
fn churn_events(shape: Shape) -> Vec<RouterEvent> {
    let more = Shape { workers: shape.workers + CHURN_WORKERS, ..shape };
    let mut events: Vec<RouterEvent> =
        workload::events(more, FIND_E).into_iter().filter(|e| e.worker_id >= shape.workers).collect();
    for w in shape.workers..shape.workers + CHURN_WORKERS {
        events.push(RouterEvent::new(Worker::new(w, 0), 0, KvCacheEventData::Cleared));
    }
    events
}

/// Read throughput of ours and CRTC, idle and under the churn writer; then re-check that both
/// are back to the same answers.
fn read_figures(
    sets: &Sets,
    ours: Ours,
    mut crtc: Crtc,
    mean_radix: &[f64],
    window: Duration,
    shape: Shape,
) -> (Reads, usize) {
    let full = &sets.sets[0].1;
    let mixed: Vec<Query> =
        (0..full.len()).flat_map(|i| sets.sets.iter().map(move |(_, qs)| Query::new(qs[i].ours.clone()))).collect();
    let readers: [Reader; 2] = [ours.reader().expect("ours is Sync"), crtc.reader().expect("CRTC is Sync")];
    let tput = |r: &Reader, qs: &[Query], threads| measure::read_throughput(r, qs, threads, window, None).0;
    let radix_full = 1e6 / mean_radix[0];
    let radix_mixed = 3e6 / mean_radix.iter().sum::<f64>();
    let full_1t = [tput(&readers[0], full, 1), radix_full, tput(&readers[1], full, 1)];
    let full_2t = [tput(&readers[0], full, 2), f64::NAN, tput(&readers[1], full, 2)];
    let mixed_1t = [tput(&readers[0], &mixed, 1), radix_mixed, tput(&readers[1], &mixed, 1)];
    let mixed_2t = [tput(&readers[0], &mixed, 2), f64::NAN, tput(&readers[1], &mixed, 2)];
    drop(readers);

    let churn = churn_events(shape);
    let churn_dynamo: Vec<dy::RouterEvent> = churn.iter().map(backends::to_dynamo).collect();

    // Ours: this thread applies events to the index; readers query it through its reader.
    let mut index: KvIndex = ours.index;
    let reader = {
        let reader = index.reader();
        Arc::new(move |q: &Query| reader.find_matches(&q.ours).len()) as Reader
    };
    let mut write_ours = || {
        for ev in &churn {
            index.apply_event(ev).expect("churn applies");
        }
        churn.len()
    };
    let ours_w = measure::read_throughput(&reader, full, 2, window, Some(&mut write_ours));
    drop(reader);

    // CRTC: this thread produces, its lane applies; each unit waits for the lane's flush ack.
    // Copies for the units are made up front so the producer does no copying while timed.
    let reader = crtc.reader().expect("CRTC is Sync");
    let mut units: Vec<Vec<dy::RouterEvent>> = Vec::new();
    let unit_s = {
        let t = std::time::Instant::now();
        crtc.apply_and_wait(churn_dynamo.clone());
        t.elapsed().as_secs_f64()
    };
    let needed = (window.as_secs_f64() / unit_s * 3.0).ceil() as usize + 2; // readers slow it down
    units.resize_with(needed, || churn_dynamo.clone());
    let mut write_crtc = || match units.pop() {
        Some(unit) => {
            let n = unit.len();
            crtc.apply_and_wait(unit);
            n
        }
        None => 0,
    };
    let crtc_w = measure::read_throughput(&reader, full, 2, window, Some(&mut write_crtc));
    drop(reader);
    if units.is_empty() {
        println!("note: CRTC churn ran out of pre-built units before the read window ended");
    }

    // After whole churn cycles both indexes hold the base workload again.
    let ours_after = Ours::from_index(index);
    let bad = check("after churn", shape, sets, &[(NAMES[0], &ours_after), (NAMES[2], &crtc)]);
    (Reads { full_1t, full_2t, mixed_1t, mixed_2t, with_writer: [ours_w, crtc_w] }, bad)
}

fn print_row(r: &PerE, pairs: f64) {
    for (i, name) in NAMES.iter().enumerate() {
        let a = &r.apply[i];
        println!(
            "RESULT idx={name} E={} events={} cold_s={:.4} warm_median_s={:.4} ev_s={:.0} blk_s={:.0} bytes_per_pair={:.1} others_cores={:.2}",
            r.e,
            r.events,
            a.cold_s,
            a.warm_s,
            r.events as f64 / a.warm_s,
            pairs / a.warm_s,
            r.bytes[i] / pairs,
            r.others_cores
        );
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "goal met"
    } else {
        "GOAL MISSED"
    }
}

fn print_tables(
    a: &Args,
    per_e: &[PerE],
    sets: &Sets,
    lat: &[[Latency; 3]],
    reads: &Reads,
    mismatches: usize,
    others: f64,
) {
    let s = a.shape;
    println!();
    println!(
        "workload: {} workers x {} blocks = {} (block, worker) pairs; warm reps {}; other processes used {:.2} cores on average",
        s.workers,
        s.blocks_per_worker,
        s.total_blocks(),
        a.reps,
        others
    );
    println!();
    println!(
        "apply: events/s (warm median; cold first rep in parentheses); ratios: of the medians, and paired (median of the"
    );
    println!("per-repetition ratios, each from one machine state: the figure the goal is judged on)");
    println!(
        "{:>4} {:>8} {:>24} {:>24} {:>24} {:>10} {:>10} {:>10}",
        "E", "events", NAMES[0], NAMES[1], NAMES[2], "ours/Radix", "paired", "ours/CRTC"
    );
    for r in per_e {
        let ev = |i: usize| r.events as f64 / r.apply[i].warm_s;
        let cell = |i: usize| format!("{:.0} ({:.0})", ev(i), r.events as f64 / r.apply[i].cold_s);
        let paired = r.apply[0].paired_speedup_over(&r.apply[1]);
        println!(
            "{:>4} {:>8} {:>24} {:>24} {:>24} {:>9.2}x {:>9.2}x {:>9.2}x  {}",
            r.e,
            r.events,
            cell(0),
            cell(1),
            cell(2),
            ev(0) / ev(1),
            paired,
            ev(0) / ev(2),
            verdict(paired >= 2.0)
        );
    }
    println!();
    println!(
        "find_matches on the E={FIND_E} index: microseconds per call, p50 / p99 (mean), {FIND_ROUNDS} rounds x 5 passes x 200 queries"
    );
    println!(
        "{:>17} {:>22} {:>22} {:>22} {:>14} {:>14}",
        "set", NAMES[0], NAMES[1], NAMES[2], "ours/CRTC p50", "ours/CRTC p99"
    );
    // One row: the three backends' cells, ours / CRTC at p50 and p99, then `tail`.
    let row = |name: &str, cell: &dyn Fn(&Latency) -> String, l: &[Latency; 3], r50: f64, r99: f64, tail: &str| {
        println!(
            "{:>17} {:>22} {:>22} {:>22} {:>13.3}x {:>13.3}x{tail}",
            name,
            cell(&l[0]),
            cell(&l[1]),
            cell(&l[2]),
            r50,
            r99
        );
    };
    for ((name, _), l) in sets.sets.iter().zip(lat) {
        let cell = |x: &Latency| format!("{:.2} / {:.2} ({:.2})", x.p50_us, x.p99_us, x.mean_us);
        let (r50, r99) = (l[0].p50_us / l[2].p50_us, l[0].p99_us / l[2].p99_us);
        let goal = if *name == "full_hit" { format!("  {}", verdict(r50 <= 0.5 && r99 <= 0.5)) } else { "  ".into() };
        row(name, &cell, l, r50, r99, &goal);
    }
    println!("  the same without each round's first (cold-cache) pass: p50 / p99");
    for ((name, _), l) in sets.sets.iter().zip(lat) {
        let cell = |x: &Latency| format!("{:.2} / {:.2}", x.warm_p50_us, x.warm_p99_us);
        let (r50, r99) = (l[0].warm_p50_us / l[2].warm_p50_us, l[0].warm_p99_us / l[2].warm_p99_us);
        row(name, &cell, l, r50, r99, "");
    }
    println!();
    println!("memory: live heap bytes per stored (block, worker) after applying everything");
    println!("{:>4} {:>10} {:>10} {:>14} {:>11} {:>10}", "E", NAMES[0], NAMES[1], NAMES[2], "ours/Radix", "ours/CRTC");
    let pairs = s.total_blocks() as f64;
    for r in per_e {
        let b = r.bytes.map(|x| x / pairs);
        let ok = b[0] <= 0.5 * b[1] && b[0] <= 0.5 * b[2];
        println!(
            "{:>4} {:>10.1} {:>10.1} {:>14.1} {:>10.3}x {:>9.3}x  {}",
            r.e,
            b[0],
            b[1],
            b[2],
            b[0] / b[1],
            b[0] / b[2],
            verdict(ok)
        );
    }
    println!();
    println!("reads/s (RadixTree is !Sync: its 1-thread figure is 1 / mean latency)");
    let row = |label: &str, v: &[f64; 3]| println!("{:>34} {:>12.0} {:>12.0} {:>14.0}", label, v[0], v[1], v[2]);
    println!("{:>34} {:>12} {:>12} {:>14}", "", NAMES[0], NAMES[1], NAMES[2]);
    row("full_hit, 1 thread", &reads.full_1t);
    row("full_hit, 2 threads", &reads.full_2t);
    row("mixed (full+prefix+miss), 1 thread", &reads.mixed_1t);
    row("mixed, 2 threads", &reads.mixed_2t);
    let [(ro, wo), (rc, wc)] = reads.with_writer;
    println!("{:>34} {:>12.0} {:>12} {:>14.0}", "full_hit, 2 threads + writer", ro, "-", rc);
    println!("{:>34} {:>12.0} {:>12} {:>14.0}", "  writer events/s meanwhile", wo, "-", wc);
    println!("  (ours: this thread applies events while readers query through per-run locks; CRTC: its lane");
    println!(
        "   applies while readers traverse concurrently. 3+ busy threads on {} cores.)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    if mismatches == 0 {
        println!("correctness: all three indexes return identical overlaps for every query (and the expected ones)");
    } else {
        println!("correctness: {mismatches} queries DIFFER (see MISMATCH lines); exiting 1");
    }
}
