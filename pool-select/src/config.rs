//! The selector's configuration ([`SelectConfig`]: the pools and the policy) and its
//! validation, whose errors name the offending field by path (`pools[1].weight must be > 0`).
//!
//! Policy-specific checks live with each policy (`score/*.rs`) and are reached through
//! `Policy::compile`; this module owns the pool list rules and the error type.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::pool::PoolFacts;
use crate::score::Policy;

/// The pools, in config order (indices in a [`crate::Decision`] refer to it), and the policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectConfig {
    pub pools: Vec<PoolFacts>,
    #[serde(default)]
    pub policy: Policy,
}

/// A configuration value out of its rules: `path` names the field (`pools[1].weight`,
/// `policy.agg.agg_pool_mapping[0][1]`), `message` says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{path} {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { path: path.into(), message: message.into() }
    }

    /// The same error with `prefix.` in front of its path, for configs that embed this one.
    pub fn under(self, prefix: &str) -> Self {
        ConfigError { path: format!("{prefix}.{}", self.path), message: self.message }
    }
}

impl SelectConfig {
    /// Checks the pools and the policy (including that every pool the policy names exists).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_pools(&self.pools)?;
        self.policy.compile(&self.pools).map(drop)
    }
}

/// At least one pool; names unique and header-safe; models non-empty; weights finite and > 0;
/// context limits > 0.
pub(crate) fn validate_pools(pools: &[PoolFacts]) -> Result<(), ConfigError> {
    if pools.is_empty() {
        return Err(ConfigError::new("pools", "must list at least one pool"));
    }
    for (i, pool) in pools.iter().enumerate() {
        let at = |field: &str| format!("pools[{i}].{field}");
        let name_ok = !pool.name.is_empty()
            && pool.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(ConfigError::new(at("name"), format!("must match [A-Za-z0-9._-]+, got {:?}", pool.name)));
        }
        if let Some(j) = pools[..i].iter().position(|p| p.name == pool.name) {
            return Err(ConfigError::new(at("name"), format!("{:?} is already used by pools[{j}]", pool.name)));
        }
        if pool.model.as_deref() == Some("") {
            return Err(ConfigError::new(at("model"), "must not be empty (omit it to serve any model)"));
        }
        if !(pool.weight.is_finite() && pool.weight > 0.0) {
            return Err(ConfigError::new(at("weight"), format!("must be > 0, got {}", pool.weight)));
        }
        if pool.max_input_tokens == Some(0) {
            return Err(ConfigError::new(at("max_input_tokens"), "must be > 0 (omit it for no limit)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> SelectConfig {
        serde_json::from_str(json).unwrap()
    }

    fn error(json: &str) -> String {
        config(json).validate().unwrap_err().to_string()
    }

    #[test]
    fn a_minimal_config_uses_kv_overlap_and_pool_defaults() {
        let c = config(r#"{"pools": [{"name": "a"}]}"#);
        assert_eq!(c.pools[0], PoolFacts::new("a"));
        assert_eq!(c.policy.name(), "kv_overlap");
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn weight_error_names_the_pool_index() {
        let e = error(r#"{"pools": [{"name": "a"}, {"name": "b", "weight": 0}]}"#);
        assert_eq!(e, "pools[1].weight must be > 0, got 0");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let e = error(r#"{"pools": [{"name": "a"}, {"name": "a"}]}"#);
        assert_eq!(e, r#"pools[1].name "a" is already used by pools[0]"#);
    }

    #[test]
    fn names_must_be_header_safe() {
        assert!(error(r#"{"pools": [{"name": "a b"}]}"#).starts_with("pools[0].name must match"));
        assert!(error(r#"{"pools": [{"name": ""}]}"#).starts_with("pools[0].name must match"));
    }

    #[test]
    fn empty_pool_list_and_empty_model_are_rejected() {
        assert_eq!(error(r#"{"pools": []}"#), "pools must list at least one pool");
        assert!(error(r#"{"pools": [{"name": "a", "model": ""}]}"#).starts_with("pools[0].model must not be empty"));
    }

    #[test]
    fn unknown_pool_fields_are_rejected() {
        let r = serde_json::from_str::<SelectConfig>(r#"{"pools": [{"name": "a", "wieght": 2}]}"#);
        assert!(r.unwrap_err().to_string().contains("unknown field `wieght`"));
    }

    #[test]
    fn errors_can_be_placed_under_an_embedding_config() {
        let e = ConfigError::new("pools[0].weight", "must be > 0").under("selection");
        assert_eq!(e.to_string(), "selection.pools[0].weight must be > 0");
    }
}
