//! What a router reads from an engine's Prometheus exposition (`GET /metrics`): the KV cache's
//! size, from vLLM's `vllm:cache_config_info` gauge, whose labels carry the cache config
//! (`num_gpu_blocks="573"`, `block_size="16"`, …; value 1). The mocker exposes the same gauge.
//!
//! Text in, numbers out; nothing here fetches.

/// The name of vLLM's cache-config gauge.
pub const CACHE_CONFIG_INFO: &str = "vllm:cache_config_info";

/// KV cache blocks per engine (rank) that the exposition states in `vllm:cache_config_info`'s
/// `num_gpu_blocks` label: the smallest over its samples (one per data-parallel rank), or
/// `None` when no sample gives a positive whole number (no such gauge, `"None"` before the
/// engine has sized its cache, a malformed line).
pub fn kv_cache_blocks(exposition: &str) -> Option<u64> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix(CACHE_CONFIG_INFO)?.strip_prefix('{'))
        .filter_map(|labels| label_value(labels, "num_gpu_blocks")?.parse::<u64>().ok())
        .filter(|&blocks| blocks > 0)
        .min()
}

/// The value of label `name` in `labels` (the text after a sample's `{`), unescaped; `None`
/// when it is absent or the label set is malformed.
fn label_value(labels: &str, name: &str) -> Option<String> {
    let mut rest = labels;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if rest.starts_with('}') {
            return None;
        }
        let (label, after) = rest.split_once('=')?;
        let mut value = String::new();
        let mut chars = after.strip_prefix('"')?.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        if label.trim() == name {
            return Some(value);
        }
        rest = &after[end + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_num_gpu_blocks_from_vllm_cache_config_info() {
        let vllm = "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n\
            # TYPE vllm:cache_config_info gauge\n\
            vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",enable_prefix_caching=\"True\",\
            num_cpu_blocks=\"1024\",num_gpu_blocks=\"573\",num_gpu_blocks_override=\"None\",sliding_window=\"None\"} 1.0\n\
            vllm:num_requests_running{model_name=\"m\"} 0.0\n";
        assert_eq!(kv_cache_blocks(vllm), Some(573));
    }

    #[test]
    fn the_smallest_rank_wins_and_unusable_samples_are_skipped() {
        let text = "vllm:cache_config_info{engine=\"0\",num_gpu_blocks=\"900\"} 1\n\
            vllm:cache_config_info{engine=\"1\",num_gpu_blocks=\"800\"} 1\n\
            vllm:cache_config_info{engine=\"2\",num_gpu_blocks=\"None\"} 1\n\
            vllm:cache_config_info{engine=\"3\",num_gpu_blocks=\"0\"} 1\n";
        assert_eq!(kv_cache_blocks(text), Some(800));
    }

    #[test]
    fn escaped_values_before_the_label_do_not_confuse_it() {
        let text = r#"vllm:cache_config_info{note="a \"quoted\", comma=\\",num_gpu_blocks="42"} 1"#;
        assert_eq!(kv_cache_blocks(text), Some(42));
    }

    #[test]
    fn absent_or_malformed_gives_none() {
        assert_eq!(kv_cache_blocks(""), None);
        assert_eq!(kv_cache_blocks("vllm:num_requests_running 3\n"), None);
        assert_eq!(kv_cache_blocks("vllm:cache_config_info{block_size=\"16\"} 1\n"), None);
        assert_eq!(kv_cache_blocks("vllm:cache_config_info{num_gpu_blocks=\"57"), None);
        assert_eq!(kv_cache_blocks("vllm:cache_config_info{num_gpu_blocks=573} 1"), None);
        assert_eq!(kv_cache_blocks("vllm:cache_config_info_total{num_gpu_blocks=\"5\"} 1"), None);
        assert_eq!(kv_cache_blocks("vllm:cache_config_info{num_gpu_blocks=\"-5\"} 1"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_text_after_the_gauge_name_is_read_without_panicking(tail in ".{0,80}") {
            let _ = kv_cache_blocks(&format!("vllm:cache_config_info{{{tail}"));
        }
    }
}
