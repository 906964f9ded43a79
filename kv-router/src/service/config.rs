//! The kv-router service's configuration: workers, selection settings, limits.
//!
//! Every replica of a router group reads the same worker list, so a `worker_id` (configured, or
//! a hash of the worker's URL) means the same worker to all of them.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::select::KvRouterConfig;

/// One worker (engine) of the pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    /// Base URL of its OpenAI API, e.g. `http://127.0.0.1:8001`.
    pub url: String,
    /// Stable id; default: a hash of `url`.
    #[serde(default)]
    pub worker_id: Option<u64>,
    /// ZMQ KV-event endpoints, one per dp rank (`tcp://host:port`); empty: no events.
    #[serde(default)]
    pub kv_events: Vec<String>,
    /// Replay endpoints per dp rank; default: each events port + 1 (vLLM's convention).
    #[serde(default)]
    pub kv_replay: Vec<String>,
    /// Data-parallel ranks; default: one per `kv_events` endpoint (at least 1).
    #[serde(default)]
    pub data_parallel_size: Option<u32>,
}

impl WorkerSpec {
    pub fn new(url: impl Into<String>) -> Self {
        WorkerSpec {
            url: url.into(),
            worker_id: None,
            kv_events: Vec::new(),
            kv_replay: Vec::new(),
            data_parallel_size: None,
        }
    }

    pub fn id(&self) -> u64 {
        self.worker_id.unwrap_or_else(|| xxhash_rust::xxh3::xxh3_64(self.url.trim_end_matches('/').as_bytes()))
    }

    pub fn ranks(&self) -> u32 {
        self.data_parallel_size.unwrap_or(self.kv_events.len().max(1) as u32)
    }

    /// The replay endpoint of `rank`: configured, else the events port + 1.
    pub fn replay_endpoint(&self, rank: u32) -> Option<String> {
        replay_endpoint(&self.kv_events, &self.kv_replay, rank)
    }
}

/// The replay endpoint of `rank` among a worker's ZMQ endpoints: `kv_replay[rank]` if given,
/// else its events port + 1 (vLLM's convention).
pub fn replay_endpoint(kv_events: &[String], kv_replay: &[String], rank: u32) -> Option<String> {
    if let Some(e) = kv_replay.get(rank as usize) {
        return Some(e.clone());
    }
    let events = kv_events.get(rank as usize)?;
    let (host, port) = events.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    Some(format!("{host}:{}", port.checked_add(1)?))
}

/// Everything one kv-router process needs.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub router: KvRouterConfig,
    pub workers: Vec<WorkerSpec>,
    pub http_addr: SocketAddr,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// How often workers' `/health` is checked.
    pub health_interval: Duration,
    /// ZMQ subscription prefix (vLLM's topic); empty: every message.
    pub kv_events_topic: String,
    /// RNG seed for tie-breaking and sampling (None: from the clock).
    pub seed: Option<u64>,
    /// Share load with the group's other replicas (None: this replica counts only its own).
    pub replica_sync: Option<ReplicaSyncConfig>,
    /// A NATS server whose JetStream carries the KV events of the workers that have no ZMQ
    /// endpoint (`nats://host:port`; None: those workers send no events, or push them to
    /// `POST /events`).
    pub kv_events_nats: Option<String>,
}

/// Replica sync: the replicas of one router group publish what they route on a NATS subject
/// and count each other's requests (see `kvroute_kv_router::replicas`).
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaSyncConfig {
    /// NATS server, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// The router group's name: the subject is `kvroute.load.<group>`.
    pub group: String,
    /// This replica's id, unique within the group.
    pub replica_id: String,
    /// How often a replica says it is alive (an empty message when it routed nothing).
    pub heartbeat: Duration,
}

impl ReplicaSyncConfig {
    /// Heartbeat every second; a random replica id.
    pub fn new(nats_url: impl Into<String>, group: impl Into<String>) -> Self {
        ReplicaSyncConfig {
            nats_url: nats_url.into(),
            group: group.into(),
            replica_id: format!("{:016x}", rand::random::<u64>()),
            heartbeat: Duration::from_secs(1),
        }
    }

    pub fn subject(&self) -> String {
        format!("kvroute.load.{}", self.group)
    }

    /// A replica not heard from for this long is gone: three heartbeats missed.
    pub fn expiry(&self) -> Duration {
        self.heartbeat * 3
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.nats_url.starts_with("nats://") {
            return Err(format!("replica sync: the NATS URL must start with nats://, got {:?}", self.nats_url));
        }
        let token_ok = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !self.group.split('.').all(token_ok) {
            return Err(format!(
                "replica sync: the router group must be letters, digits, '-', '_' (dot-separated), got {:?}",
                self.group
            ));
        }
        if self.replica_id.is_empty() {
            return Err("replica sync: the replica id must not be empty".into());
        }
        if self.heartbeat.is_zero() {
            return Err("replica sync: the heartbeat interval must be > 0".into());
        }
        Ok(())
    }
}

impl ServiceConfig {
    pub fn new(http_addr: SocketAddr, workers: Vec<WorkerSpec>) -> Self {
        ServiceConfig {
            router: KvRouterConfig::default(),
            workers,
            http_addr,
            max_body_bytes: 64 << 20,
            health_interval: Duration::from_secs(2),
            kv_events_topic: String::new(),
            seed: None,
            replica_sync: None,
            kv_events_nats: None,
        }
    }

    /// Worker list problems, naming the entry (and replica sync settings).
    pub fn validate_workers(&self) -> Result<(), String> {
        if let Some(sync) = &self.replica_sync {
            sync.validate()?;
        }
        if let Some(url) = self.kv_events_nats.as_ref().filter(|u| !u.starts_with("nats://")) {
            return Err(format!("KV events over NATS: the URL must start with nats://, got {url:?}"));
        }
        let mut ids = std::collections::BTreeMap::new();
        for (i, w) in self.workers.iter().enumerate() {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(format!("workers[{i}].url must start with http:// or https://, got {:?}", w.url));
            }
            if let Some(n) = w.data_parallel_size {
                if n == 0 {
                    return Err(format!("workers[{i}].data_parallel_size must be > 0"));
                }
            }
            if let Some(e) = w.kv_events.iter().find(|e| !e.starts_with("tcp://")) {
                return Err(format!("workers[{i}].kv_events entries must be tcp:// endpoints, got {e:?}"));
            }
            if let Some(prev) = ids.insert(w.id(), i) {
                return Err(format!("workers[{i}] and workers[{prev}] have the same worker_id {}", w.id()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_default_to_a_hash_of_the_url() {
        let a = WorkerSpec::new("http://127.0.0.1:8001");
        let b = WorkerSpec::new("http://127.0.0.1:8001/");
        let c = WorkerSpec::new("http://127.0.0.1:8002");
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_eq!(WorkerSpec { worker_id: Some(7), ..a }.id(), 7);
    }

    #[test]
    fn replay_defaults_to_the_next_port_and_ranks_to_the_endpoints() {
        let w = WorkerSpec {
            kv_events: vec!["tcp://127.0.0.1:5557".into(), "tcp://127.0.0.1:5559".into()],
            ..WorkerSpec::new("http://x:1")
        };
        assert_eq!(w.ranks(), 2);
        assert_eq!(w.replay_endpoint(1).as_deref(), Some("tcp://127.0.0.1:5560"));
        assert_eq!(w.replay_endpoint(2), None);
    }

    #[test]
    fn replica_sync_settings_are_checked() {
        let good = ReplicaSyncConfig::new("nats://127.0.0.1:4222", "chat.eu-1");
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(good.subject(), "kvroute.load.chat.eu-1");
        assert_ne!(good.replica_id, ReplicaSyncConfig::new("nats://x:1", "g").replica_id, "ids are random");
        assert!(ReplicaSyncConfig::new("http://127.0.0.1:4222", "chat").validate().unwrap_err().contains("nats://"));
        for bad in ["", "a b", "a.*", "a..b", "x>"] {
            assert!(ReplicaSyncConfig::new("nats://x:1", bad).validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_worker_lists_name_the_entry() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bad = ServiceConfig::new(addr, vec![WorkerSpec::new("http://a:1"), WorkerSpec::new("a:2")]);
        assert!(bad.validate_workers().unwrap_err().contains("workers[1].url"));
        let dup = ServiceConfig::new(addr, vec![WorkerSpec::new("http://a:1"), WorkerSpec::new("http://a:1")]);
        assert!(dup.validate_workers().unwrap_err().contains("same worker_id"));
    }
}
