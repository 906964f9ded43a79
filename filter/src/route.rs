//! The filter's pure steps: read a request body into pool-select's features, read a probe
//! answer, and turn the answers into a routing outcome.
//!
//! No host calls here, so every step is tested natively. The decision itself is pool-select's;
//! this module only maps group answers onto pools and decides when to fall back.

use kvroute_pool_select::{BestWorkerResponse, PoolState, RequestFeatures, Selector};
use rand::Rng;
use serde::Deserialize;

use crate::config::Plan;

/// The fields of an OpenAI request that matter here; everything else is ignored. The prompt
/// and the messages are only measured as they are read, never kept: a 220 KB prompt costs no
/// copy, and 8k token ids no 8k JSON values.
#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<TokenEstimate>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    kvroute: Option<BodyHints>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: TokenEstimate,
}

/// Estimated tokens of a prompt or a message's content, read without keeping it: a token id
/// counts one, text ~4 bytes per token, arrays add up, and an object (a content part) counts
/// its `text` field.
#[derive(Clone, Copy, Default)]
struct TokenEstimate(u64);

impl<'de> Deserialize<'de> for TokenEstimate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Measure;

        impl<'de> serde::de::Visitor<'de> for Measure {
            type Value = TokenEstimate;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a prompt: text, token ids, or content parts")
            }
            fn visit_u64<E>(self, _: u64) -> Result<TokenEstimate, E> {
                Ok(TokenEstimate(1))
            }
            fn visit_i64<E>(self, _: i64) -> Result<TokenEstimate, E> {
                Ok(TokenEstimate(1))
            }
            fn visit_f64<E>(self, _: f64) -> Result<TokenEstimate, E> {
                Ok(TokenEstimate(1))
            }
            fn visit_str<E>(self, text: &str) -> Result<TokenEstimate, E> {
                Ok(TokenEstimate((text.len() as u64).div_ceil(4)))
            }
            fn visit_unit<E>(self) -> Result<TokenEstimate, E> {
                Ok(TokenEstimate(0))
            }
            fn visit_bool<E>(self, _: bool) -> Result<TokenEstimate, E> {
                Ok(TokenEstimate(0))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<TokenEstimate, A::Error> {
                let mut total = 0u64;
                while let Some(TokenEstimate(n)) = items.next_element()? {
                    total += n;
                }
                Ok(TokenEstimate(total))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut fields: A) -> Result<TokenEstimate, A::Error> {
                let mut total = 0u64;
                while let Some(key) = fields.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "text" {
                        total += fields.next_value::<TokenEstimate>()?.0;
                    } else {
                        fields.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(TokenEstimate(total))
            }
        }

        deserializer.deserialize_any(Measure)
    }
}

#[derive(Default, Deserialize)]
struct BodyHints {
    priority: Option<i64>,
    ttft_target_ms: Option<f64>,
    itl_target_ms: Option<f64>,
}

/// `x-kvroute-*` request headers (they win over the body's `kvroute` object).
#[derive(Clone, Debug, Default)]
pub struct HeaderHints {
    pub priority: Option<String>,
    pub ttft_target_ms: Option<String>,
    pub itl_target_ms: Option<String>,
}

/// The request's features, or `None` when the body is not a completion request (not JSON,
/// or neither `prompt` nor `messages`): such requests pass through untouched.
pub fn features(body: &[u8], headers: &HeaderHints) -> Option<RequestFeatures> {
    let peek: Peek = serde_json::from_slice(body).ok()?;
    let isl_tokens = match (peek.prompt, &peek.messages) {
        (Some(p), _) => p.0,
        (None, Some(m)) => m.iter().map(|msg| msg.content.0).sum(),
        (None, None) => return None,
    };
    let hints = peek.kvroute.unwrap_or_default();
    let num = |h: &Option<String>| h.as_deref().and_then(|s| s.trim().parse::<f64>().ok()).filter(|x| x.is_finite());
    Some(RequestFeatures {
        model: peek.model,
        isl_tokens,
        ttft_target_ms: num(&headers.ttft_target_ms).or(hints.ttft_target_ms),
        itl_target_ms: num(&headers.itl_target_ms).or(hints.itl_target_ms),
        priority: headers.priority.as_deref().and_then(|s| s.trim().parse().ok()).or(hints.priority),
    })
}

/// Reads one probe answer. `status` is `None` when the callout had no headers (reset,
/// oversize); Envoy reports a timeout as 504 and a refused connection as 503.
pub fn read_answer(status: Option<&[u8]>, body: &[u8]) -> Result<BestWorkerResponse, &'static str> {
    match status {
        None => Err("reset"),
        Some(b"200") => serde_json::from_slice(body).map_err(|_| "garbage"),
        Some(b"504") => Err("timeout"),
        Some(b"503") => Err("unavailable"),
        Some(_) => Err("status"),
    }
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    /// The pool for the pool header; `None` = leave the request to Envoy's default route.
    pub pool: Option<usize>,
    pub pool_name: Option<String>,
    /// Header-safe reason (`x-kvroute-reason`).
    pub reason: String,
    /// The chosen pool's probe worker `(worker_id, dp_rank)`, for `forward_worker`.
    pub worker: Option<(u64, u32)>,
    pub fell_back: bool,
}

/// Decides with pool-select from the per-group answers (`answers[g]` for `groups[g]`). A pool's
/// probe is its first usable group answer; with no usable answer at all, or when pool-select
/// finds no eligible pool, the request falls back.
pub fn route<R: Rng>(
    plan: &Plan,
    selector: &mut Selector<R>,
    features: &RequestFeatures,
    answers: &[Option<BestWorkerResponse>],
    in_flight: &[u64],
) -> Routing {
    let n = plan.select.pools.len();
    let mut probes: Vec<Option<&BestWorkerResponse>> = vec![None; n];
    for (g, answer) in answers.iter().enumerate() {
        if let (Some(a), Some(&p)) = (answer, plan.group_pool.get(g)) {
            probes[p] = probes[p].or(Some(a));
        }
    }
    let states = states(n, in_flight);
    if selector.needs_probes_for(features, &states) && probes.iter().all(Option::is_none) {
        return fallback(plan, "no probe answered");
    }
    match selector.decide(features, &states, &probes) {
        Ok(d) => Routing {
            worker: probes[d.pool].map(|p| (p.worker_id, p.dp_rank)),
            pool: Some(d.pool),
            pool_name: Some(d.pool_name),
            reason: d.reason.summary,
            fell_back: false,
        },
        Err(_) => fallback(plan, "no eligible pool"),
    }
}

/// Whether to send the probes at all: not when their answers cannot change the decision (a
/// single pool can take the request, or the policy uses none).
pub fn should_probe<R: Rng>(
    plan: &Plan,
    selector: &Selector<R>,
    features: &RequestFeatures,
    in_flight: &[u64],
) -> bool {
    selector.needs_probes_for(features, &states(plan.select.pools.len(), in_flight))
}

/// The pools as the filter knows them: healthy (a failing group shows as a missing answer),
/// with the requests it sent there and has not seen finish.
fn states(n: usize, in_flight: &[u64]) -> Vec<PoolState> {
    (0..n).map(|i| PoolState { healthy: true, in_flight: in_flight.get(i).copied().unwrap_or(0) }).collect()
}

fn fallback(plan: &Plan, why: &str) -> Routing {
    let pool = plan.config.fallback_pool.as_ref().and_then(|f| plan.select.pools.iter().position(|p| &p.name == f));
    Routing {
        pool,
        pool_name: pool.map(|i| plan.select.pools[i].name.clone()),
        reason: format!("fallback {why}"),
        worker: None,
        fell_back: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    fn plan(json: &str) -> Plan {
        Plan::parse(json.as_bytes()).unwrap()
    }

    const THREE: &str = r#"{"groups": [{"pool": "a", "cluster": "ra"}, {"pool": "b", "cluster": "rb"},
        {"pool": "c", "cluster": "rc"}], "fallback_pool": "c"}"#;

    fn selector(plan: &Plan) -> Selector<SmallRng> {
        Selector::new(plan.select.clone(), SmallRng::seed_from_u64(1)).unwrap()
    }

    fn probe(overlap_blocks: u32, potential_prefill_tokens: u64) -> BestWorkerResponse {
        BestWorkerResponse {
            worker_id: 40 + u64::from(overlap_blocks),
            dp_rank: 0,
            overlap_blocks,
            request_blocks: 8,
            potential_prefill_tokens,
            potential_decode_blocks: 8,
            cost: 0.0,
        }
    }

    fn feats() -> RequestFeatures {
        RequestFeatures { isl_tokens: 128, ..RequestFeatures::default() }
    }

    #[test]
    fn the_pool_with_the_cached_prefix_wins() {
        let p = plan(THREE);
        let r = route(&p, &mut selector(&p), &feats(), &[Some(probe(0, 128)), Some(probe(6, 32)), None], &[0; 3]);
        assert_eq!(r.pool_name.as_deref(), Some("b"));
        assert_eq!(r.worker, Some((46, 0)));
        assert!(r.reason.starts_with("kv_overlap "), "{}", r.reason);
        assert!(!r.fell_back);
    }

    #[test]
    fn a_missing_answer_leaves_the_pool_out_of_scoring() {
        let p = plan(THREE);
        let r = route(&p, &mut selector(&p), &feats(), &[None, Some(probe(0, 128)), None], &[0; 3]);
        assert_eq!(r.pool_name.as_deref(), Some("b"));
    }

    #[test]
    fn no_answer_falls_back_to_the_fallback_pool() {
        let p = plan(THREE);
        let r = route(&p, &mut selector(&p), &feats(), &[None, None, None], &[0; 3]);
        assert_eq!((r.pool, r.fell_back), (Some(2), true));
        assert_eq!(r.reason, "fallback no probe answered");
    }

    #[test]
    fn no_answer_and_no_fallback_pool_leaves_the_default_route() {
        let p = plan(r#"{"groups": [{"pool": "a", "cluster": "ra"}, {"pool": "b", "cluster": "rb"}]}"#);
        let r = route(&p, &mut selector(&p), &feats(), &[None, None], &[0, 0]);
        assert_eq!((r.pool, r.pool_name, r.fell_back), (None, None, true));
    }

    #[test]
    fn the_first_usable_group_of_a_pool_is_its_probe() {
        let p = plan(
            r#"{"groups": [{"pool": "a", "cluster": "r1"}, {"pool": "a", "cluster": "r2"},
            {"pool": "b", "cluster": "r3"}]}"#,
        );
        let r = route(&p, &mut selector(&p), &feats(), &[None, Some(probe(7, 16)), Some(probe(0, 128))], &[0; 2]);
        assert_eq!((r.pool_name.as_deref(), r.worker), (Some("a"), Some((47, 0))));
    }

    #[test]
    fn a_single_pool_is_not_probed_and_still_chosen() {
        let p = plan(
            r#"{"groups": [{"pool": "a", "cluster": "ra"}, {"pool": "a", "cluster": "ra2"}],
            "policy": {"type": "kv_overlap", "block_size": 16}}"#,
        );
        let mut s = selector(&p);
        assert!(!should_probe(&p, &s, &feats(), &[0]));
        let r = route(&p, &mut s, &feats(), &[None, None], &[0]);
        assert_eq!((r.pool_name.as_deref(), r.fell_back), (Some("a"), false));
        let two = plan(
            r#"{"groups": [{"pool": "a", "cluster": "ra"}, {"pool": "b", "cluster": "rb"}],
            "policy": {"type": "kv_overlap", "block_size": 16}}"#,
        );
        assert!(should_probe(&two, &selector(&two), &feats(), &[0, 0]));
    }

    #[test]
    fn a_policy_without_probes_decides_without_answers() {
        let p = plan(
            r#"{"groups": [{"pool": "a", "cluster": "ra"}, {"pool": "b", "cluster": "rb"}],
            "policy": {"type": "round_robin"}}"#,
        );
        let mut s = selector(&p);
        let first = route(&p, &mut s, &feats(), &[None, None], &[0; 2]);
        let second = route(&p, &mut s, &feats(), &[None, None], &[0; 2]);
        assert_eq!((first.pool, second.pool), (Some(0), Some(1)));
    }

    #[test]
    fn probe_failures_are_classified() {
        assert_eq!(read_answer(None, b""), Err("reset"));
        assert_eq!(read_answer(Some(b"504"), b"upstream request timeout"), Err("timeout"));
        assert_eq!(read_answer(Some(b"503"), b""), Err("unavailable"));
        assert_eq!(read_answer(Some(b"500"), b"{}"), Err("status"));
        assert_eq!(read_answer(Some(b"200"), b"not json"), Err("garbage"));
        assert_eq!(read_answer(Some(b"200"), br#"{"worker_id": 1}"#), Err("garbage"));
        let ok = br#"{"worker_id":3,"dp_rank":1,"overlap_blocks":2,"request_blocks":4,
            "potential_prefill_tokens":32,"potential_decode_blocks":4,"cost":6.0}"#;
        assert_eq!(read_answer(Some(b"200"), ok).map(|a| (a.worker_id, a.dp_rank)), Ok((3, 1)));
    }

    #[test]
    fn completion_bodies_give_features() {
        let f = features(br#"{"model": "m", "prompt": [1, 2, 3], "max_tokens": 1}"#, &HeaderHints::default()).unwrap();
        assert_eq!((f.model.as_deref(), f.isl_tokens), (Some("m"), 3));
        let f = features(br#"{"prompt": "abcdefgh"}"#, &HeaderHints::default()).unwrap();
        assert_eq!(f.isl_tokens, 2);
        let chat = br#"{"messages": [{"role": "user", "content": "abcd"},
            {"role": "user", "content": [{"type": "text", "text": "efgh"}]}]}"#;
        assert_eq!(features(chat, &HeaderHints::default()).unwrap().isl_tokens, 2);
        // Long prompts are measured, not copied: 8k ids, 220 KB of text (with escapes).
        let ids: Vec<u32> = (0..8192).collect();
        let body = serde_json::to_vec(&serde_json::json!({"prompt": ids})).unwrap();
        assert_eq!(features(&body, &HeaderHints::default()).unwrap().isl_tokens, 8192);
        let text = "line\n".repeat(44_000);
        let body = serde_json::to_vec(&serde_json::json!({"prompt": text})).unwrap();
        assert_eq!(features(&body, &HeaderHints::default()).unwrap().isl_tokens, 55_000);
        // Parts that are not text count nothing; a null content counts nothing.
        let mixed =
            br#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "abcdefgh"}},
            {"type": "text", "text": "abcdefgh"}]}, {"role": "assistant", "content": null}]}"#;
        assert_eq!(features(mixed, &HeaderHints::default()).unwrap().isl_tokens, 2);
    }

    #[test]
    fn non_completion_bodies_pass_through() {
        assert_eq!(features(b"not json", &HeaderHints::default()), None);
        assert_eq!(features(br#"{"model": "m"}"#, &HeaderHints::default()), None);
        assert_eq!(features(br#"[1, 2]"#, &HeaderHints::default()), None);
    }

    #[test]
    fn headers_win_over_the_body_hints() {
        let body = br#"{"prompt": "x", "kvroute": {"priority": 1, "ttft_target_ms": 50, "itl_target_ms": 5}}"#;
        let headers =
            HeaderHints { priority: Some("7".into()), ttft_target_ms: Some("nope".into()), itl_target_ms: None };
        let f = features(body, &headers).unwrap();
        assert_eq!((f.priority, f.ttft_target_ms, f.itl_target_ms), (Some(7), Some(50.0), Some(5.0)));
    }
}
