//! Timing procedures, the same for every backend: event application over repetitions,
//! per-call `find_matches` latency, and read throughput from several threads (optionally while
//! the caller's thread writes).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::backends::{Backend, Events, Query, Reader, Score};

/// Event application: the first (cold) repetition and the median of the warm ones, in seconds.
pub struct Apply {
    pub cold_s: f64,
    pub warm_s: f64,
    /// Every warm repetition, in the order they ran.
    pub warm: Vec<f64>,
}

impl Apply {
    pub fn from_times(times: &[f64]) -> Self {
        let cold_s = times[0];
        let warm = times[1..].to_vec();
        let warm_s = if warm.is_empty() { cold_s } else { median(&mut warm.clone()) };
        Apply { cold_s, warm_s, warm }
    }

    /// How many times faster than `other` this applied the events: the median, over the warm
    /// repetitions, of the two backends' times in the same repetition. The backends run one
    /// after the other within a repetition (tens of ms apart), so each ratio sees one machine
    /// state; the machine's speed drifts by up to ~1.6× between repetitions, which a ratio of
    /// the two medians can mix.
    pub fn paired_speedup_over(&self, other: &Apply) -> f64 {
        let mut ratios: Vec<f64> = self.warm.iter().zip(&other.warm).map(|(mine, theirs)| theirs / mine).collect();
        if ratios.is_empty() {
            return other.cold_s / self.cold_s;
        }
        median(&mut ratios)
    }
}

/// One repetition: drop the previous backend in `slot`, apply `events` to a fresh one (timed),
/// keep it in `slot`. Returns the seconds `run` took.
pub fn apply_once<B: Backend>(make: impl Fn() -> B, events: &Events, slot: &mut Option<B>) -> f64 {
    drop(slot.take()); // the previous index (and its lane thread) goes first
    let mut b = make();
    b.prepare(events);
    let t = Instant::now();
    b.run();
    let secs = t.elapsed().as_secs_f64();
    *slot = Some(b);
    secs
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Per-call latency over `passes` passes of a query set, in microseconds.
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    /// The same without each round's first pass, whose calls find the index and the queries out
    /// of cache (the figures above include it, as the Dynamo harness does; their p99 is that pass).
    pub warm_p50_us: f64,
    pub warm_p99_us: f64,
}

/// Per-call latency of each backend: `rounds` rounds in which every backend in turn runs
/// `passes` consecutive passes over the query set (the first pass of each round finds the index
/// out of cache); statistics are pooled over the rounds. Consecutive passes keep each index warm
/// for its own later passes; the rounds spread the machine's speed drift (its clock moves by up
/// to ~1.6× within seconds) over all backends alike.
pub fn find_latency(backends: &[&dyn Backend], queries: &[Query], rounds: usize, passes: usize) -> Vec<Latency> {
    let mut all: Vec<Vec<f64>> = vec![Vec::new(); backends.len()];
    let mut warm: Vec<Vec<f64>> = vec![Vec::new(); backends.len()];
    for _ in 0..rounds {
        for (i, b) in backends.iter().enumerate() {
            for pass in 0..passes {
                for q in queries {
                    let (d, answer) = b.find(q);
                    black_box(answer);
                    let us = d.as_secs_f64() * 1e6;
                    all[i].push(us);
                    if pass > 0 {
                        warm[i].push(us);
                    }
                }
            }
        }
    }
    all.into_iter()
        .zip(warm)
        .map(|(mut all, mut warm)| {
            let mean_us = all.iter().sum::<f64>() / all.len() as f64;
            let (warm_p50_us, warm_p99_us) = percentiles(&mut warm);
            let (p50_us, p99_us) = percentiles(&mut all);
            Latency { p50_us, p99_us, mean_us, warm_p50_us, warm_p99_us }
        })
        .collect()
}

/// Keep one core busy for `d`, so a measurement does not start on clocks lowered while idle.
pub fn spin(d: Duration) {
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed() < d {
        for i in 0..10_000u64 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    black_box(x);
}

fn percentiles(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

/// Every query's sorted answer, for the cross-check.
pub fn answers<B: Backend + ?Sized>(b: &B, queries: &[Query]) -> Vec<Vec<Score>> {
    queries.iter().map(|q| b.find(q).1).collect()
}

/// Queries per second from `threads` reader threads for `window`, while the calling thread
/// runs `write` repeatedly (each call one unit of writing, returning how many events it
/// applied) — or just sleeps when `write` is `None`. Returns (reads/s, writer events/s).
pub fn read_throughput(
    reader: &Reader,
    queries: &[Query],
    threads: usize,
    window: Duration,
    mut write: Option<&mut dyn FnMut() -> usize>,
) -> (f64, f64) {
    for q in queries {
        black_box(reader(q)); // warm-up
    }
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mut written = 0usize;
    let reads: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (reader, stop) = (reader.clone(), &stop);
                s.spawn(move || {
                    let mut n = 0usize;
                    // Threads start at different offsets so they do not walk the same path in
                    // lockstep.
                    let mut i = t * queries.len() / threads.max(1);
                    while !stop.load(Relaxed) {
                        for _ in 0..16 {
                            black_box(reader(&queries[i % queries.len()]));
                            i += 1;
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        match write.as_mut() {
            Some(write) => {
                while start.elapsed() < window {
                    written += write();
                }
            }
            None => std::thread::sleep(window),
        }
        stop.store(true, Relaxed);
        handles.into_iter().map(|h| h.join().expect("reader thread")).sum()
    });
    let secs = start.elapsed().as_secs_f64();
    (reads as f64 / secs, written as f64 / secs)
}
