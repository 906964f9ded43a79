//! Prometheus metrics with vLLM's names, labelled by `model_name` and `engine` (the dp rank).
//! Gauges are read from the ranks' latest stats at scrape time; counters count requests.
//! `vllm:cache_config_info` states the cache's shape in its labels (`block_size`,
//! `num_gpu_blocks`), as vLLM does: routers read the cache size from it.

use prometheus::{CounterVec, Encoder, GaugeVec, Opts, Registry, TextEncoder};

use super::rank::RankHandle;

pub struct Metrics {
    registry: Registry,
    running: GaugeVec,
    waiting: GaugeVec,
    kv_usage: GaugeVec,
    prefix_hit_rate: GaugeVec,
    prefix_queries: GaugeVec,
    prefix_hits: GaugeVec,
    cache_config: GaugeVec,
    block_size: usize,
    pub requests: CounterVec,
    pub prompt_tokens: CounterVec,
    pub generation_tokens: CounterVec,
    model: String,
}

/// A per-rank gauge (labels `model_name`, `engine`).
fn gauge(registry: &Registry, name: &str, help: &str) -> GaugeVec {
    labelled_gauge(registry, name, help, &["model_name", "engine"])
}

fn labelled_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry.register(Box::new(g.clone())).expect("metric registered once");
    g
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    let c = CounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

impl Metrics {
    pub fn new(model: &str, block_size: usize) -> Self {
        let registry = Registry::new();
        Metrics {
            cache_config: labelled_gauge(
                &registry,
                "vllm:cache_config_info",
                "The KV cache's configuration, in the labels (value 1).",
                &["model_name", "engine", "block_size", "num_gpu_blocks", "enable_prefix_caching"],
            ),
            block_size,
            running: gauge(&registry, "vllm:num_requests_running", "Requests in the running batch."),
            waiting: gauge(&registry, "vllm:num_requests_waiting", "Requests waiting to be admitted."),
            kv_usage: gauge(&registry, "vllm:kv_cache_usage_perc", "Fraction of KV blocks in use (1 = full)."),
            prefix_hit_rate: gauge(
                &registry,
                "vllm:gpu_prefix_cache_hit_rate",
                "Prompt tokens served from the prefix cache / prompt tokens.",
            ),
            // Monotonic totals kept by the engine; exported as gauges of the running totals.
            prefix_queries: gauge(
                &registry,
                "vllm:prefix_cache_queries",
                "Prompt tokens looked up in the prefix cache (running total).",
            ),
            prefix_hits: gauge(
                &registry,
                "vllm:prefix_cache_hits",
                "Prompt tokens found in the prefix cache (running total).",
            ),
            requests: counter(
                &registry,
                "vllm:request_success_total",
                "Finished requests.",
                &["model_name", "finished_reason"],
            ),
            prompt_tokens: counter(
                &registry,
                "vllm:prompt_tokens_total",
                "Prompt tokens of accepted requests.",
                &["model_name"],
            ),
            generation_tokens: counter(&registry, "vllm:generation_tokens_total", "Tokens generated.", &["model_name"]),
            registry,
            model: model.to_owned(),
        }
    }

    /// The text exposition, with gauges refreshed from the ranks.
    pub fn render(&self, ranks: &[RankHandle]) -> String {
        for rank in ranks {
            let s = rank.stats();
            let labels = [self.model.as_str(), &rank.rank.to_string()];
            self.running.with_label_values(&labels).set(s.running as f64);
            self.waiting.with_label_values(&labels).set(s.waiting as f64);
            self.kv_usage
                .with_label_values(&labels)
                .set(s.kv_active_blocks as f64 / s.kv_capacity_blocks.max(1) as f64);
            let rate = if s.prefix_queries_tokens == 0 {
                0.0
            } else {
                s.prefix_hits_tokens as f64 / s.prefix_queries_tokens as f64
            };
            self.prefix_hit_rate.with_label_values(&labels).set(rate);
            self.prefix_queries.with_label_values(&labels).set(s.prefix_queries_tokens as f64);
            self.prefix_hits.with_label_values(&labels).set(s.prefix_hits_tokens as f64);
            let (block_size, blocks) = (self.block_size.to_string(), s.kv_capacity_blocks.to_string());
            self.cache_config.with_label_values(&[labels[0], labels[1], &block_size, &blocks, "True"]).set(1.0);
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
