//! The summary of a replay: latency percentiles, throughput and prefix reuse, computed as
//! Dynamo's replay report computes them, and printed as a table.
//!
//! - Percentiles use Dynamo's rounded rank: `sorted[round((n - 1) * p / 100)]`.
//! - Prefix reuse = Σ engine-cached prompt tokens at admission / Σ input length, over
//!   completed requests (Dynamo's `prefix_cache_reused_ratio`); it is the engines' figure,
//!   not the router's overlap estimate.
//! - Throughput is over the span from the first arrival to the last finish.

use std::fmt;

use serde::Serialize;

use crate::sim::RequestRecord;

/// Distribution of one latency, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// The distribution of `values` (empty: all zero).
    pub fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Latency::default();
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| values[((values.len() - 1) as f64 * p / 100.0).round() as usize];
        Latency {
            mean: values.iter().sum::<f64>() / values.len() as f64,
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: values[values.len() - 1],
        }
    }
}

/// What a replay measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub requests: usize,
    pub completed: usize,
    pub rejected: usize,
    pub ttft_ms: Latency,
    pub e2e_ms: Latency,
    /// First arrival to last finish, virtual milliseconds.
    pub span_ms: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    /// Σ cached prompt tokens at admission (max over re-admissions) / Σ input length.
    pub prefix_reuse_ratio: f64,
    /// The same with the first admission's cached tokens.
    pub first_admission_reuse_ratio: f64,
    pub preempted_requests: usize,
}

impl Summary {
    pub fn of(records: &[RequestRecord]) -> Self {
        let done: Vec<&RequestRecord> = records.iter().filter(|r| r.finish_ms.is_some()).collect();
        let input: usize = done.iter().map(|r| r.input_length).sum();
        let cached: usize = done.iter().map(|r| r.cached_tokens).sum();
        let first_cached: usize = done.iter().map(|r| r.first_admission_cached_tokens.unwrap_or(0)).sum();
        let output: usize = done.iter().map(|r| r.output_length).sum();
        let start = records.iter().map(|r| r.arrival_ms).fold(f64::INFINITY, f64::min);
        let end = done.iter().filter_map(|r| r.finish_ms).fold(f64::NEG_INFINITY, f64::max);
        let span_ms = if done.is_empty() { 0.0 } else { end - start };
        let per_s = |n: usize| {
            if span_ms > 0.0 {
                n as f64 * 1000.0 / span_ms
            } else {
                0.0
            }
        };
        let ratio = |a: usize| {
            if input > 0 {
                a as f64 / input as f64
            } else {
                0.0
            }
        };
        Summary {
            requests: records.len(),
            completed: done.len(),
            rejected: records.iter().filter(|r| r.rejected.is_some()).count(),
            ttft_ms: Latency::of(done.iter().filter_map(|r| r.ttft_ms()).collect()),
            e2e_ms: Latency::of(done.iter().filter_map(|r| r.e2e_ms()).collect()),
            span_ms,
            requests_per_s: per_s(done.len()),
            output_tokens_per_s: per_s(output),
            prefix_reuse_ratio: ratio(cached),
            first_admission_reuse_ratio: ratio(first_cached),
            preempted_requests: records.iter().filter(|r| r.preemptions > 0).count(),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "requests        {:>10}  (completed {}, rejected {}, preempted {})",
            self.requests, self.completed, self.rejected, self.preempted_requests
        )?;
        writeln!(f, "                {:>10} {:>10} {:>10} {:>10} {:>10}", "mean", "p50", "p90", "p99", "max")?;
        for (name, l) in [("TTFT ms", &self.ttft_ms), ("latency ms", &self.e2e_ms)] {
            writeln!(f, "{name:<16}{:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}", l.mean, l.p50, l.p90, l.p99, l.max)?;
        }
        writeln!(f, "span            {:>10.1} s", self.span_ms / 1000.0)?;
        writeln!(
            f,
            "throughput      {:>10.2} req/s  {:.1} output tok/s",
            self.requests_per_s, self.output_tokens_per_s
        )?;
        write!(
            f,
            "prefix reuse    {:>10.4}  (first admission {:.4})",
            self.prefix_reuse_ratio, self.first_admission_reuse_ratio
        )
    }
}
