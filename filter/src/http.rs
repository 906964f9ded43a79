//! The request state machine: headers → (matching POST) buffer body → probe every group in
//! parallel → decide → set headers, clear the route cache, resume. Every other path, and every
//! failure, continues the request untouched (fail open).
//!
//! The probe timeout is the callout timeout: Envoy answers a late callout with 504 at the
//! deadline, so "all answers in" is always reached by then without a timer.

use std::rc::Rc;

use kvroute_pool_select::{BestWorkerResponse, RequestFeatures};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::host;
use crate::root::Shared;
use crate::route::{self, HeaderHints, Routing};

enum Phase {
    /// Not ours (or finished): everything continues.
    Pass,
    /// Headers held; buffering the body.
    Body(HeaderHints),
    /// Probes out: `(token, group)` of the pending ones.
    Probing { features: RequestFeatures, pending: Vec<(u32, usize)>, started_ns: u64 },
}

pub struct Http {
    shared: Option<Rc<Shared>>,
    phase: Phase,
    answers: Vec<Option<BestWorkerResponse>>,
    routed: Option<Routing>,
}

impl Http {
    pub fn new(shared: Option<Rc<Shared>>) -> Self {
        Http { shared, phase: Phase::Pass, answers: Vec::new(), routed: None }
    }

    /// Body complete: probe every group. `Pause` while probes are out.
    fn probe(&mut self, shared: &Shared, hints: &HeaderHints, size: usize) -> Action {
        let config = &shared.plan.config;
        if size > config.max_body_bytes {
            return Action::Continue;
        }
        let Ok(body) = host::request_body(size) else {
            return Action::Continue;
        };
        let Some(features) = route::features(&body, hints) else {
            return Action::Continue;
        };
        self.answers = vec![None; config.groups.len()];
        let wanted = {
            let in_flight = shared.in_flight.borrow();
            shared.selector.try_borrow().map_or(true, |s| route::should_probe(&shared.plan, &s, &features, &in_flight))
        };
        if !wanted {
            // One candidate pool (or a policy without probes): decide now, nothing to wait for.
            self.apply(shared, &features);
            return Action::Continue;
        }
        let mut pending = Vec::new();
        for (g, group) in config.groups.iter().enumerate() {
            match host::dispatch(&group.cluster, &group.path, shared.plan.authority(g), &body, config.probe_timeout_ms)
            {
                Ok(token) => pending.push((token, g)),
                Err(s) => {
                    host::increment(shared.metrics.probe_failures[g]);
                    host::log(
                        LogLevel::Warn,
                        &format!("kvroute-filter: probe to {} not sent (status {s})", group.cluster),
                    );
                }
            }
        }
        if pending.is_empty() {
            self.apply(shared, &features);
            return Action::Continue;
        }
        self.phase = Phase::Probing { features, pending, started_ns: host::now_ns() };
        Action::Pause
    }

    /// Decides and writes the pool header; the caller resumes.
    fn apply(&mut self, shared: &Shared, features: &RequestFeatures) {
        let routing = {
            let Ok(mut selector) = shared.selector.try_borrow_mut() else {
                return;
            };
            let in_flight = shared.in_flight.borrow().clone();
            route::route(&shared.plan, &mut selector, features, &self.answers, &in_flight)
        };
        let config = &shared.plan.config;
        if routing.fell_back {
            host::increment(shared.metrics.fallbacks);
        }
        if let (Some(pool), Some(name)) = (routing.pool, routing.pool_name.as_deref()) {
            if host::set_request_header(&config.pool_header, name).is_err() {
                return;
            }
            if config.forward_worker {
                if let Some((worker, rank)) = routing.worker {
                    let _ = host::set_request_header("x-worker-instance-id", &worker.to_string());
                    let _ = host::set_request_header("x-dp-rank", &rank.to_string());
                }
            }
            let _ = host::clear_route_cache();
            host::increment(shared.metrics.decisions[pool]);
            if let Some(n) = shared.in_flight.borrow_mut().get_mut(pool) {
                *n += 1;
            }
        }
        self.routed = Some(routing);
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Phase::Probing { pending, started_ns, .. } = &mut self.phase else {
            return;
        };
        let Some(at) = pending.iter().position(|&(t, _)| t == token) else {
            return;
        };
        let (_, g) = pending.swap_remove(at);
        let status = if num_headers == 0 { None } else { host::call_status() };
        let body = if body_size == 0 { Vec::new() } else { host::call_body(body_size).unwrap_or_default() };
        match route::read_answer(status.as_deref(), &body) {
            Ok(answer) => self.answers[g] = Some(answer),
            Err(why) => {
                host::increment(shared.metrics.probe_failures[g]);
                let cluster = &shared.plan.config.groups[g].cluster;
                host::log(LogLevel::Debug, &format!("kvroute-filter: probe to {cluster} failed: {why}"));
            }
        }
        if !pending.is_empty() {
            return;
        }
        let elapsed_ms = host::now_ns().saturating_sub(*started_ns) / 1_000_000;
        host::record(shared.metrics.probe_latency_ms, elapsed_ms);
        let Phase::Probing { features, .. } = std::mem::replace(&mut self.phase, Phase::Pass) else {
            return;
        };
        self.apply(&shared, &features);
        if let Err(s) = host::resume_request() {
            host::log(LogLevel::Warn, &format!("kvroute-filter: resume failed (status {s})"));
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = &self.shared else {
            return Action::Continue;
        };
        let method = host::request_header(":method").unwrap_or_default();
        let path = host::request_header(":path").unwrap_or_default();
        if end_of_stream || !shared.plan.acts_on(&method, &path) {
            return Action::Continue;
        }
        self.phase = Phase::Body(HeaderHints {
            priority: host::request_header("x-kvroute-priority"),
            ttft_target_ms: host::request_header("x-kvroute-ttft-target-ms"),
            itl_target_ms: host::request_header("x-kvroute-itl-target-ms"),
        });
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        match std::mem::replace(&mut self.phase, Phase::Pass) {
            Phase::Body(hints) if end_of_stream => self.probe(&shared, &hints, body_size),
            Phase::Body(hints) if body_size <= shared.plan.config.max_body_bytes => {
                self.phase = Phase::Body(hints);
                Action::Pause
            }
            Phase::Probing { features, pending, started_ns } => {
                self.phase = Phase::Probing { features, pending, started_ns };
                Action::Pause
            }
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some(shared), Some(r)) = (&self.shared, &self.routed) {
            if let Some(name) = &r.pool_name {
                let _ = host::set_response_header(&shared.plan.config.pool_header, name);
            }
            let _ = host::set_response_header("x-kvroute-reason", &r.reason);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let (Some(shared), Some(Routing { pool: Some(pool), .. })) = (&self.shared, &self.routed) {
            if let Some(n) = shared.in_flight.borrow_mut().get_mut(*pool) {
                *n = n.saturating_sub(1);
            }
        }
    }
}
