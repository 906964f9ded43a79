//! The root context: parses the configuration once, defines the metrics, and hands every
//! request context the shared state (plan, selector, in-flight counts, metric ids).

use std::cell::RefCell;
use std::rc::Rc;

use kvroute_pool_select::Selector;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MetricType};
use rand::{rngs::SmallRng, SeedableRng};

use crate::config::Plan;
use crate::host;
use crate::http::Http;

/// Custom metric ids (`wasmcustom.kvroute.*` in Envoy's stats); `None` if the host refused one.
pub struct Metrics {
    pub decisions: Vec<Option<u32>>,
    pub probe_failures: Vec<Option<u32>>,
    pub fallbacks: Option<u32>,
    pub probe_latency_ms: Option<u32>,
}

/// What every request context of this VM shares.
pub struct Shared {
    pub plan: Plan,
    pub selector: RefCell<Selector<SmallRng>>,
    /// Requests routed by this VM and not yet finished, per pool.
    pub in_flight: RefCell<Vec<u64>>,
    pub metrics: Metrics,
}

#[derive(Default)]
pub struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = host::plugin_configuration().unwrap_or_default();
        let plan = match Plan::parse(&raw) {
            Ok(plan) => plan,
            Err(e) => {
                host::log(LogLevel::Error, &format!("kvroute-filter: rejected configuration: {e}"));
                return false;
            }
        };
        let selector = match Selector::new(plan.select.clone(), SmallRng::seed_from_u64(host::now_ns())) {
            Ok(s) => s,
            Err(e) => {
                host::log(LogLevel::Error, &format!("kvroute-filter: rejected configuration: {e}"));
                return false;
            }
        };
        let metric = |kind, name: String| host::define_metric(kind, &name).ok();
        let metrics = Metrics {
            decisions: plan
                .select
                .pools
                .iter()
                .map(|p| metric(MetricType::Counter, format!("kvroute.decisions.{}", p.name)))
                .collect(),
            probe_failures: plan
                .config
                .groups
                .iter()
                .map(|g| metric(MetricType::Counter, format!("kvroute.probe_failures.{}", g.cluster)))
                .collect(),
            fallbacks: metric(MetricType::Counter, "kvroute.fallbacks".into()),
            probe_latency_ms: metric(MetricType::Histogram, "kvroute.probe_latency_ms".into()),
        };
        let pools = plan.select.pools.len();
        host::log(
            LogLevel::Info,
            &format!("kvroute-filter: {} router groups, {pools} pools", plan.config.groups.len()),
        );
        self.shared = Some(Rc::new(Shared {
            plan,
            selector: RefCell::new(selector),
            in_flight: RefCell::new(vec![0; pools]),
            metrics,
        }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK panics on None. Unconfigured = pass everything through.
        Some(Box::new(Http::new(self.shared.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
