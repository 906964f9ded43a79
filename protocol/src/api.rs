//! The local KV router's probe API (`/best_worker`, `/potential_loads`), as pinned in the
//! team's decisions: what front doors send and what they get back.

use serde::{Deserialize, Serialize};

use crate::openai::{ChatMessage, Prompt};

/// A request to score: one of `token_ids`, `prompt` or `messages`. Unknown fields are ignored,
/// so a raw OpenAI request body is a valid probe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteQuery {
    #[serde(default)]
    pub token_ids: Option<Vec<u32>>,
    #[serde(default)]
    pub prompt: Option<Prompt>,
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub model: Option<String>,
    /// With an id, the routed request is tracked until `free`; without, the query changes nothing.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Per-request selection settings (`overlap_score_weight`, `router_temperature`, ...).
    #[serde(default)]
    pub router_config_override: Option<serde_json::Value>,
    #[serde(default)]
    pub lora_name: Option<String>,
    #[serde(default)]
    pub cache_salt: Option<String>,
}

/// Whether `body` starts like a JSON object (its first non-blank byte is `{`): a request body
/// the routers accept; parsing then says whether it is a valid one.
pub fn is_json_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// A JSON object body without `fields` (the routers' own, e.g. `router_config_override` and
/// `kvroute`, which an engine must not see); everything else is kept. `Err` if the body is not
/// a JSON object.
pub fn without_fields(body: &[u8], fields: &[&str]) -> Result<Vec<u8>, serde_json::Error> {
    let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)?;
    for field in fields {
        object.remove(*field);
    }
    serde_json::to_vec(&object)
}

/// `POST /best_worker` answer: the worker and every figure pool selection needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestWorkerResponse {
    pub worker_id: u64,
    pub dp_rank: u32,
    pub overlap_blocks: u32,
    pub request_blocks: u32,
    pub potential_prefill_tokens: u64,
    pub potential_decode_blocks: u64,
    pub cost: f64,
}

/// `POST /mark_prefill_complete` and `POST /free` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestIdBody {
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_fields_takes_out_only_those_fields() {
        let body = br#"{"model": "m", "prompt": [1, 2], "kvroute": {"priority": 3}, "router_config_override": {}, "max_tokens": 4}"#;
        let kept: serde_json::Value =
            serde_json::from_slice(&without_fields(body, &["kvroute", "router_config_override"]).unwrap()).unwrap();
        assert_eq!(kept, serde_json::json!({"model": "m", "prompt": [1, 2], "max_tokens": 4}));
        assert!(without_fields(b"[1, 2]", &["kvroute"]).is_err());
    }

    #[test]
    fn a_json_object_body_is_told_by_its_first_non_blank_byte() {
        assert!(is_json_object(b" \n {\"prompt\": 1}"));
        assert!(!is_json_object(b"[1, 2]") && !is_json_object(b"  ") && !is_json_object(b"null"));
    }

    #[test]
    fn a_raw_openai_body_is_a_valid_query() {
        let q: RouteQuery = serde_json::from_str(
            r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true, "temperature": 0.2}"#,
        )
        .unwrap();
        assert_eq!(q.messages.unwrap().len(), 1);
        let q: RouteQuery = serde_json::from_str(
            r#"{"token_ids": [1, 2], "request_id": "r", "router_config_override": {"router_temperature": 0.5}}"#,
        )
        .unwrap();
        assert_eq!(q.token_ids, Some(vec![1, 2]));
        assert_eq!(q.request_id.as_deref(), Some("r"));
        assert!(q.router_config_override.is_some());
    }
}
