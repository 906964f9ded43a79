//! Step time: Dynamo's polynomial fit of prefill and decode cost
//! ([`kvroute_protocol::step_time`]), as its mocker applies it: a scheduler pass takes
//! `prefill(t) + decode(p)` milliseconds, each divided by its speed-up ratio.

use serde::{Deserialize, Serialize};

pub use kvroute_protocol::step_time::{decode_ms, prefill_ms};

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
    fn a_mixed_pass_sums_prefill_and_decode_and_speedup_divides() {
        let m = TimingModel::default();
        let mixed = m.pass_ms(100, true, 1000, 1_000_000);
        assert!(close(mixed, prefill_ms(100) + decode_ms(0.001)));
        assert!(close(m.pass_ms(0, false, 0, 100), 0.0));
        let fast = TimingModel { speedup_ratio: 10.0, decode_speedup_ratio: 2.0 };
        assert!(close(fast.pass_ms(100, true, 1000, 1_000_000), prefill_ms(100) / 10.0 + decode_ms(0.001) / 20.0));
    }
}
