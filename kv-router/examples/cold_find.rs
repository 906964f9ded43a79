//! Where `find_matches` spends its cold-cache time, on Dynamo's synthetic workload (E = 16 index).
//!
//!     cargo run --release -p kvroute-kv-router --example cold_find [-- ROUNDS]
//!
//! Each round evicts the caches (reads a 96 MB buffer, as the other backends' passes do in
//! `bench/compare-dynamo`), then times 5 passes over a query set. Prints the first (cold) pass,
//! the pooled figure the comparison reports (whose p99 comes from the cold passes), and the cold
//! latency by position in the pass: the first queries after an eviction pay for warming what
//! every query shares (code, branch history, the shared run), and set the pooled p99.

#![allow(clippy::disallowed_methods)] // a timing tool reads the clock

#[path = "../benches/workload.rs"]
mod workload;

use std::hint::black_box;
use std::time::Instant;

use kvroute_kv_router::KvIndex;
use kvroute_protocol::LocalBlockHash;

const PASSES: usize = 5;
/// Leading queries of a cold pass shown one by one.
const LEADING: usize = 12;

fn percentile(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() * p / 100]
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(40);
    let shape = workload::Shape::DYNAMO;
    let mut index = KvIndex::new();
    for event in workload::events(shape, 16) {
        index.apply_event(&event).expect("workload events apply cleanly");
    }
    let queries = workload::queries(shape);
    let evict: Vec<u64> = (0..96u64 << 17).collect();
    for (name, set) in [("full_hit", &queries.full_hit), ("prefix_then_miss", &queries.prefix_then_miss)] {
        let (mut cold, mut pooled) = (Vec::new(), Vec::new());
        let mut by_position = vec![0f64; set.len()];
        for round in 0..rounds {
            black_box(evict.iter().fold(round as u64, |a, x| a ^ x));
            for pass in 0..PASSES {
                for (position, query) in set.iter().enumerate() {
                    let us = time_us(&index, query);
                    pooled.push(us);
                    if pass == 0 {
                        cold.push(us);
                        by_position[position] += us / rounds as f64;
                    }
                }
            }
        }
        println!(
            "{name}: cold pass p50 {:.2} p90 {:.2} p99 {:.2} | pooled p50 {:.2} p99 {:.2} µs",
            percentile(&mut cold, 50),
            percentile(&mut cold, 90),
            percentile(&mut cold, 99),
            percentile(&mut pooled, 50),
            percentile(&mut pooled, 99)
        );
        let leading: Vec<String> = by_position[..LEADING].iter().map(|us| format!("{us:.1}")).collect();
        let rest = &by_position[LEADING..];
        println!(
            "  cold mean by position in the pass: {} ... then {:.2}",
            leading.join(" "),
            rest.iter().sum::<f64>() / rest.len() as f64
        );
    }
}

fn time_us(index: &KvIndex, query: &[LocalBlockHash]) -> f64 {
    let t = Instant::now();
    black_box(index.find_matches(query));
    t.elapsed().as_secs_f64() * 1e6
}
