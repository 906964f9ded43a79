//! The plugin configuration (JSON), parsed and validated once by the root context.
//!
//! Owns the field names, defaults and the messages that name a bad field; it does not decide
//! anything (that is `pool-select`, whose `pools` / `policy` shapes are embedded unchanged).

use kvroute_pool_select::{Policy, PoolFacts, SelectConfig};
use serde::Deserialize;

/// One router group: a kv-router service Envoy knows as `cluster`, serving pool `pool`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterGroup {
    pub pool: String,
    pub cluster: String,
    /// Probe path; the query-only router endpoint.
    #[serde(default = "default_probe_path")]
    pub path: String,
    /// `:authority` of the probe; default: the cluster name.
    #[serde(default)]
    pub authority: Option<String>,
}

/// The plugin configuration as written by the operator.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub groups: Vec<RouterGroup>,
    /// Pool facts for pool-select; default: one plain pool per distinct `groups[].pool`.
    #[serde(default)]
    pub pools: Option<Vec<PoolFacts>>,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default = "default_timeout_ms")]
    pub probe_timeout_ms: u64,
    #[serde(default = "default_pool_header")]
    pub pool_header: String,
    /// Also set `x-worker-instance-id` / `x-dp-rank` from the chosen pool's probe.
    #[serde(default)]
    pub forward_worker: bool,
    /// Request paths (query excluded) the filter acts on; POST only.
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
    /// Larger bodies are passed through unprobed.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Where a request goes when no group answered; none = Envoy's default route.
    #[serde(default)]
    pub fallback_pool: Option<String>,
}

fn default_probe_path() -> String {
    "/best_worker".into()
}
fn default_timeout_ms() -> u64 {
    100
}
fn default_pool_header() -> String {
    "x-kvroute-pool".into()
}
fn default_paths() -> Vec<String> {
    vec!["/v1/completions".into(), "/v1/chat/completions".into()]
}
fn default_max_body_bytes() -> usize {
    8 << 20
}

/// A validated configuration: the filter's settings plus pool-select's input.
#[derive(Clone, Debug)]
pub struct Plan {
    pub config: FilterConfig,
    pub select: SelectConfig,
    /// `group_pool[g]` = index into `select.pools` of `config.groups[g]`.
    pub group_pool: Vec<usize>,
}

impl Plan {
    /// Parses and validates; the error names the offending field.
    pub fn parse(json: &[u8]) -> Result<Plan, String> {
        let config: FilterConfig = serde_json::from_slice(json).map_err(|e| format!("invalid configuration: {e}"))?;
        let pools = config.pools.clone().unwrap_or_else(|| {
            let mut names: Vec<&str> = Vec::new();
            for g in &config.groups {
                if !names.contains(&g.pool.as_str()) {
                    names.push(&g.pool);
                }
            }
            names.into_iter().map(PoolFacts::new).collect()
        });
        let select = SelectConfig { pools, policy: config.policy.clone() };
        validate(&config, &select)?;
        let group_pool =
            config.groups.iter().map(|g| select.pools.iter().position(|p| p.name == g.pool).unwrap_or(0)).collect();
        Ok(Plan { config, select, group_pool })
    }

    /// Whether a request with this method and path (query allowed) is probed.
    pub fn acts_on(&self, method: &str, path: &str) -> bool {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        method == "POST" && self.config.paths.iter().any(|p| p == path)
    }

    pub fn authority(&self, group: usize) -> &str {
        let g = &self.config.groups[group];
        g.authority.as_deref().unwrap_or(&g.cluster)
    }
}

fn validate(c: &FilterConfig, select: &SelectConfig) -> Result<(), String> {
    if c.groups.is_empty() {
        return Err("groups must list at least one router group".into());
    }
    for (i, g) in c.groups.iter().enumerate() {
        if g.cluster.is_empty() {
            return Err(format!("groups[{i}].cluster must not be empty"));
        }
        if let Some(j) = c.groups[..i].iter().position(|h| h.cluster == g.cluster) {
            return Err(format!("groups[{i}].cluster {:?} is already used by groups[{j}]", g.cluster));
        }
        if !g.path.starts_with('/') {
            return Err(format!("groups[{i}].path must start with '/', got {:?}", g.path));
        }
        if g.authority.as_deref() == Some("") {
            return Err(format!("groups[{i}].authority must not be empty (omit it to use the cluster)"));
        }
        if !select.pools.iter().any(|p| p.name == g.pool) {
            return Err(format!("groups[{i}].pool names unknown pool {:?}", g.pool));
        }
    }
    if !(1..=60_000).contains(&c.probe_timeout_ms) {
        return Err(format!("probe_timeout_ms must be in 1..=60000, got {}", c.probe_timeout_ms));
    }
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !token(&c.pool_header) {
        return Err(format!("pool_header must be a lowercase header name, got {:?}", c.pool_header));
    }
    if c.paths.is_empty() {
        return Err("paths must list at least one path".into());
    }
    if let Some(i) = c.paths.iter().position(|p| !p.starts_with('/')) {
        return Err(format!("paths[{i}] must start with '/', got {:?}", c.paths[i]));
    }
    if c.max_body_bytes == 0 {
        return Err("max_body_bytes must be > 0".into());
    }
    if let Some(f) = &c.fallback_pool {
        if !select.pools.iter().any(|p| &p.name == f) {
            return Err(format!("fallback_pool names unknown pool {f:?}"));
        }
    }
    select.validate().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        Plan::parse(json.as_bytes()).unwrap_err()
    }

    const TWO: &str = r#"{"groups": [{"pool": "a", "cluster": "ra"}, {"pool": "b", "cluster": "rb"}]}"#;

    #[test]
    fn a_minimal_config_gets_defaults_and_one_pool_per_group() {
        let plan = Plan::parse(TWO.as_bytes()).unwrap();
        let names: Vec<_> = plan.select.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(plan.group_pool, [0, 1]);
        assert_eq!(plan.config.probe_timeout_ms, 100);
        assert_eq!(plan.config.pool_header, "x-kvroute-pool");
        assert_eq!(plan.config.groups[0].path, "/best_worker");
        assert_eq!(plan.authority(1), "rb");
        assert!(!plan.config.forward_worker);
        assert_eq!(plan.select.policy.name(), "kv_overlap");
    }

    #[test]
    fn two_groups_may_serve_one_pool() {
        let plan =
            Plan::parse(br#"{"groups": [{"pool": "a", "cluster": "r1"}, {"pool": "a", "cluster": "r2"}]}"#).unwrap();
        assert_eq!(plan.select.pools.len(), 1);
        assert_eq!(plan.group_pool, [0, 0]);
    }

    #[test]
    fn only_posts_to_configured_paths_are_acted_on() {
        let plan = Plan::parse(TWO.as_bytes()).unwrap();
        assert!(plan.acts_on("POST", "/v1/completions"));
        assert!(plan.acts_on("POST", "/v1/chat/completions?x=1"));
        assert!(!plan.acts_on("GET", "/v1/completions"));
        assert!(!plan.acts_on("POST", "/v1/models"));
        assert!(!plan.acts_on("POST", "/v1/completions/x"));
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err(r#"{"groups": []}"#), "groups must list at least one router group");
        assert_eq!(
            err(r#"{"groups": [{"pool": "a", "cluster": "r"}], "fallback_pool": "z"}"#),
            r#"fallback_pool names unknown pool "z""#
        );
        assert_eq!(
            err(r#"{"groups": [{"pool": "a", "cluster": "r"}], "probe_timeout_ms": 0}"#),
            "probe_timeout_ms must be in 1..=60000, got 0"
        );
        assert_eq!(
            err(r#"{"groups": [{"pool": "a", "cluster": "r"}, {"pool": "b", "cluster": "r"}]}"#),
            r#"groups[1].cluster "r" is already used by groups[0]"#
        );
        assert_eq!(
            err(r#"{"groups": [{"pool": "a", "cluster": "r", "path": "best_worker"}]}"#),
            r#"groups[0].path must start with '/', got "best_worker""#
        );
        assert!(
            err(r#"{"groups": [{"pool": "a", "cluster": "r"}], "pool_header": "X Pool"}"#).starts_with("pool_header")
        );
    }

    #[test]
    fn explicit_pools_are_checked_by_pool_select() {
        assert_eq!(
            err(r#"{"groups": [{"pool": "a", "cluster": "r"}], "pools": [{"name": "a", "weight": 0}]}"#),
            "pools[0].weight must be > 0, got 0"
        );
        assert_eq!(
            err(r#"{"groups": [{"pool": "b", "cluster": "r"}], "pools": [{"name": "a"}]}"#),
            r#"groups[0].pool names unknown pool "b""#
        );
    }

    #[test]
    fn unknown_fields_and_policies_are_rejected() {
        assert!(err(r#"{"groups": [{"pool": "a", "cluster": "r"}], "timeout": 5}"#).contains("unknown field `timeout`"));
        assert!(err(r#"{"groups": [{"pool": "a", "cluster": "r"}], "policy": {"type": "magic"}}"#).contains("magic"));
    }
}
