//! The outputs of a decision: the chosen pool and why ([`Decision`], [`Reason`]), or why no
//! pool could be chosen ([`SelectError`], listing every [`Removal`]).
//!
//! This module also owns the one rule that keeps a reason header-safe ([`header_safe`] and the
//! length cap), so no policy can put a control character or a 10 kB string in a header.

use serde::Serialize;
use thiserror::Error;

/// Longest [`Reason::summary`]; longer summaries end in `...`.
pub const MAX_SUMMARY_LEN: usize = 200;

/// The pool chosen for one request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// Index into the configured pools: where to forward the request.
    pub pool: usize,
    pub pool_name: String,
    /// Set by a disaggregated grid; then `pool` is the decode pool.
    pub disaggregated: Option<DisaggChoice>,
    pub reason: Reason,
    /// What the policy computed per pool, for logs (meaning per policy: see the README).
    pub scores: Vec<(String, f64)>,
    /// Pools the filters removed, in filter order.
    pub removed: Vec<Removal>,
    /// Other pools to retry on, in order, when `pool` fails before its first byte.
    pub fallbacks: Vec<usize>,
}

/// A (prefill pool, decode pool) pair from a disaggregated grid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DisaggChoice {
    pub prefill_pool: usize,
    pub prefill_pool_name: String,
    pub decode_pool: usize,
    pub decode_pool_name: String,
}

/// Why a pool was chosen: the policy and a short, header-safe ASCII summary such as
/// `kv_overlap a=12.5* b=30.0 skip=c:unhealthy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub policy: &'static str,
    /// Starts with the policy name; at most [`MAX_SUMMARY_LEN`] bytes of printable ASCII.
    pub summary: String,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

/// One pool taken out of consideration, and by what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Removal {
    pub pool: usize,
    pub name: String,
    /// The filter: `model`, `health`, `saturation`, or `grid` (not in the grid's mapping).
    pub filter: &'static str,
    pub why: &'static str,
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} removed by {} ({})", self.name, self.filter, self.why)
    }
}

/// Why no pool was chosen.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum SelectError {
    /// Every pool was removed; `removed` says which filter removed which pool.
    #[error("no eligible pool: {}", list(removed))]
    NoEligiblePool { removed: Vec<Removal> },
    /// The caller passed state or probe slices that do not match the configured pools.
    #[error("expected one state and one probe slot per pool ({pools}), got {states} states and {probes} probes")]
    InputMismatch { pools: usize, states: usize, probes: usize },
}

fn list(removed: &[Removal]) -> String {
    removed.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// `s` with every character outside `[A-Za-z0-9._-]` replaced by `_`. Config validation
/// already restricts pool names to that set; this keeps the header rule in one place anyway.
pub fn header_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
}

/// The policy's summary plus the pools skipped for health or saturation, capped in length.
/// Model removals are left out: in a multi-model deployment they are noise on every request.
pub(crate) fn summary(policy_summary: String, removed: &[Removal]) -> String {
    let mut s = policy_summary;
    let skipped: Vec<String> = removed
        .iter()
        .filter_map(|r| {
            let tag = match r.filter {
                "health" => "unhealthy",
                "context" => "too_long",
                "saturation" => "saturated",
                _ => return None,
            };
            Some(format!("{}:{tag}", header_safe(&r.name)))
        })
        .collect();
    if !skipped.is_empty() {
        s.push_str(" skip=");
        s.push_str(&skipped.join(","));
    }
    if s.len() > MAX_SUMMARY_LEN {
        // Printable ASCII only, so any byte index is a char boundary.
        s.truncate(MAX_SUMMARY_LEN - 3);
        s.push_str("...");
    }
    s
}

/// `name=value` with one decimal; `name=-` for a pool without a value; `*` marks the choice.
pub(crate) fn entry(name: &str, value: Option<f64>, chosen: bool) -> String {
    let star = if chosen { "*" } else { "" };
    match value {
        Some(v) => format!("{}={v:.1}{star}", header_safe(name)),
        None => format!("{}=-{star}", header_safe(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removal(name: &str, filter: &'static str) -> Removal {
        Removal { pool: 0, name: name.into(), filter, why: "x" }
    }

    #[test]
    fn summary_lists_unhealthy_and_saturated_pools_but_not_model_mismatches() {
        let removed = [removal("a", "model"), removal("b", "health"), removal("c", "saturation")];
        assert_eq!(summary("p x".into(), &removed), "p x skip=b:unhealthy,c:saturated");
    }

    #[test]
    fn long_summaries_are_capped() {
        let s = summary("p ".to_string() + &"x".repeat(500), &[]);
        assert_eq!(s.len(), MAX_SUMMARY_LEN);
        assert!(s.ends_with("..."));
    }

    #[test]
    fn header_safe_replaces_anything_outside_the_name_alphabet() {
        assert_eq!(header_safe("a b\r\n=é*"), "a_b_____");
    }

    #[test]
    fn no_eligible_pool_error_names_each_filter() {
        let e = SelectError::NoEligiblePool { removed: vec![removal("a", "health")] };
        assert_eq!(e.to_string(), "no eligible pool: a removed by health (x)");
    }
}
