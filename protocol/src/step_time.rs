//! Dynamo's polynomial fit of an engine's step time — what its mocker (and kvroute's) runs on,
//! and what the routers predict with. One scheduler pass that computes `t` new prompt tokens
//! (summed over every request prefilling in it) and decodes sequences filling a fraction `p` of
//! the KV capacity takes `prefill(t) + decode(p)` milliseconds:
//! - `prefill(t) = 4.209989e-7 t² + 1.518344e-2 t + 16.50142` (0 when `t = 0`);
//! - `decode(p) = max(1, -25.74 p² + 54.01 p + 5.74)` (0 when nothing decodes).

/// `prefill(t)`'s coefficient of `t²`, ms per token².
pub const PREFILL_QUADRATIC_MS: f64 = 4.209989e-7;
/// `prefill(t)`'s coefficient of `t`, ms per token: the marginal cost of one more prompt token.
pub const PREFILL_PER_TOKEN_MS: f64 = 1.518344e-2;
/// `prefill(t)`'s constant, ms: what a pass with any prefill costs before its tokens.
pub const PREFILL_PASS_MS: f64 = 16.50142;

/// Milliseconds to prefill `tokens` new (uncached) prompt tokens in one pass, at real speed.
pub fn prefill_ms(tokens: u64) -> f64 {
    if tokens == 0 {
        return 0.0;
    }
    let t = tokens as f64;
    PREFILL_QUADRATIC_MS * t * t + PREFILL_PER_TOKEN_MS * t + PREFILL_PASS_MS
}

/// Milliseconds of one decode step when decoding sequences fill `fraction` of the KV capacity.
pub fn decode_ms(fraction: f64) -> f64 {
    let p = fraction.clamp(0.0, 1.0);
    (-25.74 * p * p + 54.01 * p + 5.74).max(1.0)
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
}
