//! The router's Prometheus metrics: decisions, overlap, in-flight requests, KV events applied,
//! rejected and lost, index size, worker health, how text prompts were tokenized, replica sync.

use kvroute_tokenizer::Tokenization;
use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, Opts, Registry, TextEncoder,
};

use super::Shared;
use crate::router::Routed;

pub struct Metrics {
    registry: Registry,
    pub decisions: CounterVec,
    pub overlap_ratio: Histogram,
    pub probes: IntCounter,
    pub in_flight: Gauge,
    pub events_applied: CounterVec,
    pub events_rejected: CounterVec,
    pub event_gaps: CounterVec,
    pub event_resyncs: CounterVec,
    pub worker_healthy: GaugeVec,
    pub replica_peers: Gauge,
    pub replica_requests: Gauge,
    pub replica_resyncs: IntCounter,
    index_blocks: Gauge,
    tokenizations: CounterVec,
    prompt_tokens: CounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry.register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(&r, CounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        Metrics {
            decisions: counter("kvroute_router_decisions_total", "Requests routed by generate, per worker.", &["worker"]),
            overlap_ratio: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("kvroute_router_overlap_ratio", "Cached fraction of routed requests' blocks on the chosen worker.")
                        .buckets(vec![0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]),
                )
                .expect("valid metric"),
            ),
            probes: register(&r, IntCounter::new("kvroute_router_best_worker_total", "best_worker calls answered.").expect("valid metric")),
            in_flight: register(&r, Gauge::new("kvroute_router_requests_in_flight", "generate requests being served.").expect("valid metric")),
            events_applied: counter("kvroute_router_kv_events_applied_total", "KV events applied to the index.", &["worker"]),
            events_rejected: counter("kvroute_router_kv_events_rejected_total", "KV events not applied, by reason.", &["worker", "reason"]),
            event_gaps: counter("kvroute_router_kv_event_gaps_total", "Sequence gaps seen on KV event streams.", &["worker"]),
            event_resyncs: counter("kvroute_router_kv_event_resyncs_total", "Gaps replay could not fill: the worker's entries were cleared.", &["worker"]),
            worker_healthy: register(&r, GaugeVec::new(Opts::new("kvroute_router_worker_healthy", "1 if the worker is in selection."), &["worker"]).expect("valid metric")),
            replica_peers: register(&r, Gauge::new("kvroute_router_replica_peers", "Other replicas of the router group heard from (replica sync).").expect("valid metric")),
            replica_requests: register(&r, Gauge::new("kvroute_router_replica_requests", "Requests other replicas routed that count in this replica's loads.").expect("valid metric")),
            replica_resyncs: register(&r, IntCounter::new("kvroute_router_replica_resyncs_total", "Times another replica's messages were lost and its view started over.").expect("valid metric")),
            tokenizations: counter(
                "kvroute_router_prompt_tokenizations_total",
                "Text prompts turned into ids, by how: cached (the same text recently), resumed (a recent text's beginning reused), whole, beginning (a query's: only as far as a worker holds it).",
                &["how"],
            ),
            prompt_tokens: counter("kvroute_router_prompt_tokens_total", "Ids of text prompts, by whether they were tokenized or reused.", &["source"]),
            index_blocks: register(&r, Gauge::new("kvroute_router_index_blocks", "Distinct blocks in the index.").expect("valid metric")),
            registry: r,
        }
    }

    pub fn record_decision(&self, routed: &Routed) {
        self.decisions.with_label_values(&[&routed.worker.to_string()]).inc();
        if routed.request_blocks > 0 {
            self.overlap_ratio.observe(f64::from(routed.overlap_blocks) / f64::from(routed.request_blocks));
        }
    }

    /// A text turned into `ids` ids, `how`.
    pub fn record_tokenization(&self, how: Tokenization, ids: usize) {
        let reused = how.reused(ids);
        self.count_tokenization(how, reused, ids - reused);
    }

    /// A text turned into ids `how` (the last step, when it took several), `reused` of them
    /// from earlier texts and `tokenized` tokenized.
    pub fn count_tokenization(&self, how: Tokenization, reused: usize, tokenized: usize) {
        let label = match how {
            Tokenization::Cached => "cached",
            Tokenization::Resumed { .. } => "resumed",
            Tokenization::Whole => "whole",
            Tokenization::Beginning { .. } => "beginning",
        };
        self.tokenizations.with_label_values(&[label]).inc();
        self.prompt_tokens.with_label_values(&["reused"]).inc_by(reused as f64);
        self.prompt_tokens.with_label_values(&["tokenized"]).inc_by(tokenized as f64);
    }

    pub fn render(&self, shared: &Shared) -> String {
        self.index_blocks.set(shared.index().distinct_blocks() as f64);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
