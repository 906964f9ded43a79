//! The global router's configuration: the pools (pool-select's facts plus each pool's router
//! group URLs), the policy, and timeouts. Read from YAML; bad values are rejected at start with
//! a message naming the field.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use kvroute_pool_select::{ConfigError, Policy, PoolFacts, PoolLimits, SelectConfig};
use serde::{Deserialize, Serialize};

/// One pool: its selection facts and its router group (one or more kv-router replicas).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolEntry {
    pub name: String,
    /// Base URLs of the pool's kv-router replicas.
    pub routers: Vec<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub priority: u32,
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default)]
    pub limits: Option<PoolLimits>,
    /// The longest prompt the pool's engines accept, in tokens (see pool-select's `PoolFacts`).
    #[serde(default)]
    pub max_input_tokens: Option<u64>,
}

fn one() -> f64 {
    1.0
}
fn default_host() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
fn default_port() -> u16 {
    8080
}
fn default_probe_timeout_ms() -> u64 {
    100
}
fn default_health_interval_ms() -> u64 {
    1000
}
fn default_max_body() -> usize {
    64 << 20
}

/// Everything a global router process needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalRouterConfig {
    #[serde(default = "default_host")]
    pub host: IpAddr,
    #[serde(default = "default_port")]
    pub http_port: u16,
    pub pools: Vec<PoolEntry>,
    #[serde(default)]
    pub policy: Policy,
    /// How long to wait for a router group's `/best_worker` answer.
    #[serde(default = "default_probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    /// How often each router replica's `/health` is checked.
    #[serde(default = "default_health_interval_ms")]
    pub health_interval_ms: u64,
    /// Forward the probed worker to the pool's router (`x-worker-instance-id`, `x-dp-rank`).
    /// Off by default: the pool's router decides with its current load.
    #[serde(default)]
    pub forward_worker: bool,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// RNG seed for policies that draw (default: from the clock).
    #[serde(default)]
    pub seed: Option<u64>,
}

impl GlobalRouterConfig {
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.http_port)
    }

    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms.max(10))
    }

    /// What pool-select needs: the pools' facts and the policy.
    pub fn select_config(&self) -> SelectConfig {
        SelectConfig {
            pools: self
                .pools
                .iter()
                .map(|p| PoolFacts {
                    name: p.name.clone(),
                    model: p.model.clone(),
                    priority: p.priority,
                    weight: p.weight,
                    limits: p.limits.clone(),
                    max_input_tokens: p.max_input_tokens,
                })
                .collect(),
            policy: self.policy.clone(),
        }
    }

    /// Every rule, with the failing field's path in the message.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.select_config().validate()?;
        for (i, p) in self.pools.iter().enumerate() {
            if p.routers.is_empty() {
                return Err(ConfigError {
                    path: format!("pools[{i}].routers"),
                    message: "must list at least one router URL".into(),
                });
            }
            if let Some((j, u)) =
                p.routers.iter().enumerate().find(|(_, u)| !(u.starts_with("http://") || u.starts_with("https://")))
            {
                return Err(ConfigError {
                    path: format!("pools[{i}].routers[{j}]"),
                    message: format!("must start with http://, got {u:?}"),
                });
            }
        }
        if self.probe_timeout_ms == 0 {
            return Err(ConfigError { path: "probe_timeout_ms".into(), message: "must be > 0".into() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "pools:\n  - {name: a, routers: ['http://127.0.0.1:9001']}\n  - {name: b, routers: ['http://127.0.0.1:9002'], priority: 1}\npolicy: {type: kv_overlap, block_size: 16}\n";

    #[test]
    fn a_good_config_validates() {
        let c: GlobalRouterConfig = serde_yaml::from_str(GOOD).unwrap();
        c.validate().unwrap();
        assert_eq!(c.http_port, 8080);
        assert_eq!(c.select_config().pools[1].priority, 1);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let bad_url = GOOD.replace("'http://127.0.0.1:9002'", "'127.0.0.1:9002'");
        let c: GlobalRouterConfig = serde_yaml::from_str(&bad_url).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("pools[1].routers[0]"));
        let bad_weight = GOOD.replace("priority: 1", "priority: 1, weight: 0");
        let c: GlobalRouterConfig = serde_yaml::from_str(&bad_weight).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("pools[1].weight"));
        assert!(serde_yaml::from_str::<GlobalRouterConfig>(&GOOD.replace("policy:", "polcy:")).is_err());
    }
}
