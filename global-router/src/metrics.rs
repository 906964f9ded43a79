//! The global router's Prometheus metrics: decisions per pool and policy, probe latency and
//! failures per pool, retries before the first byte.

use prometheus::{CounterVec, Encoder, Histogram, HistogramOpts, Opts, Registry, TextEncoder};

pub(crate) struct Metrics {
    registry: Registry,
    pub decisions: CounterVec,
    pub probe_latency: Histogram,
    pub probe_failures: CounterVec,
    pub retries: CounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = CounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let decisions =
            counter("kvroute_global_decisions_total", "Requests sent to each pool, by policy.", &["pool", "policy"]);
        let probe_failures = counter(
            "kvroute_global_probe_failures_total",
            "Probes that timed out, failed or answered garbage.",
            &["pool"],
        );
        let retries = counter(
            "kvroute_global_retries_total",
            "Requests retried on this pool after another failed before its first byte.",
            &["pool"],
        );
        let probe_latency = Histogram::with_opts(
            HistogramOpts::new("kvroute_global_probe_seconds", "Latency of one /best_worker probe.")
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25]),
        )
        .expect("valid metric");
        registry.register(Box::new(probe_latency.clone())).expect("metric registered once");
        Metrics { registry, decisions, probe_latency, probe_failures, retries }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
