//! Step time: Dynamo's polynomial fit of prefill and decode cost, as its mocker applies it.
//!
//! A scheduler pass that computes `t` new prompt tokens (summed over every request prefilling in
//! the pass) and decodes requests holding `p` of the KV capacity (in tokens) takes
//! `prefill(t) + decode(p)` milliseconds, each divided by its speed-up ratio:
//! - `prefill(t) = 4.209989e-7 t² + 1.518344e-2 t + 16.50142` (0 when `t = 0`);
//! - `decode(p) = max(1, -25.74 p² + 54.01 p + 5.74)` (0 when nothing decodes).

use serde::{Deserialize, Serialize};

/// Timing settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimingModel {
    /// Divides every step time (run faster than real time).
    pub speedup_ratio: f64,
    /// Further divides decode time.
    pub decode_speedup_ratio: f64,
}

impl Default for TimingModel {
    fn default() -> Self {
        TimingModel { speedup_ratio: 1.0, decode_speedup_ratio: 1.0 }
    }
}

/// Milliseconds to prefill `tokens` new (uncached) prompt tokens in one pass, at real speed.
pub fn prefill_ms(tokens: u64) -> f64 {
    if tokens == 0 {
        return 0.0;
    }
    let t = tokens as f64;
    4.209989e-7 * t * t + 1.518344e-2 * t + 16.50142
}

/// Milliseconds of one decode step when decoding sequences fill `fraction` of the KV capacity.
pub fn decode_ms(fraction: f64) -> f64 {
    let p = fraction.clamp(0.0, 1.0);
    (-25.74 * p * p + 54.01 * p + 5.74).max(1.0)
}

impl TimingModel {
    /// Duration of a pass in milliseconds. `decode_tokens` is the total length (prompt plus
    /// generated) of the sequences decoding in the pass; `capacity_tokens` the cache size.
    pub fn pass_ms(&self, prefill_tokens: u64, decoding: bool, decode_tokens: u64, capacity_tokens: u64) -> f64 {
        let prefill = prefill_ms(prefill_tokens) / self.speedup_ratio;
        let decode = if decoding {
            let fraction = if capacity_tokens == 0 { 1.0 } else { decode_tokens as f64 / capacity_tokens as f64 };
            decode_ms(fraction) / (self.speedup_ratio * self.decode_speedup_ratio)
        } else {
            0.0
        };
        prefill + decode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn prefill_follows_the_polynomial_and_costs_nothing_without_tokens() {
        assert_eq!(prefill_ms(0), 0.0);
        assert!(close(prefill_ms(1), 4.209989e-7 + 1.518344e-2 + 16.50142));
        // 8,192 tokens (a full batch): about 169 ms.
        assert!(close(prefill_ms(8192), 4.209989e-7 * 8192.0 * 8192.0 + 1.518344e-2 * 8192.0 + 16.50142));
        assert!((prefill_ms(8192) - 169.1).abs() < 0.5);
    }

    #[test]
    fn decode_has_a_one_ms_floor_and_grows_with_cache_use() {
        assert!(close(decode_ms(0.0), 5.74));
        assert!(close(decode_ms(0.5), -25.74 * 0.25 + 54.01 * 0.5 + 5.74));
        assert!(decode_ms(0.5) > decode_ms(0.1));
        assert!(decode_ms(2.0) == decode_ms(1.0), "fraction is capped at 1");
        assert!(decode_ms(-1.0) >= 1.0);
    }

    #[test]
    fn a_mixed_pass_sums_prefill_and_decode_and_speedup_divides() {
        let m = TimingModel::default();
        let mixed = m.pass_ms(100, true, 1000, 1_000_000);
        assert!(close(mixed, prefill_ms(100) + decode_ms(0.001)));
        assert!(close(m.pass_ms(0, false, 0, 100), 0.0));
        let fast = TimingModel { speedup_ratio: 10.0, decode_speedup_ratio: 2.0 };
        assert!(close(fast.pass_ms(100, true, 1000, 1_000_000), prefill_ms(100) / 10.0 + decode_ms(0.001) / 20.0));
    }
}
