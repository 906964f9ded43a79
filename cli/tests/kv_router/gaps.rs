//! Lost KV-event messages: the router fills the gap from the worker's replay socket, and when
//! the missing range is gone it clears the worker's entries instead of keeping a wrong index.
//! In-process: a real ZMQ publisher with fault injection, a real router service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kvroute_kv_router::service::{self, ServiceConfig, WorkerSpec};
use kvroute_mocker::block_pool::CacheEvent;
use kvroute_mocker::server::publisher::Publisher;
use kvroute_mocker::server::{self as mocker, ServerConfig};
use kvroute_mocker::EngineConfig;
use kvroute_protocol::SequenceHash;
use kvroute_tokenizer::Tokenizer;
use serde_json::Value;

use crate::support;

const BS: u32 = 4;

fn stored(parent: Option<u64>, hash: u64) -> Vec<CacheEvent> {
    vec![CacheEvent::Stored {
        parent: parent.map(SequenceHash),
        blocks: vec![(SequenceHash(hash), vec![hash as u32; BS as usize])],
    }]
}

struct Fixture {
    publisher: Publisher,
    router: String,
    client: reqwest::Client,
}

impl Fixture {
    /// A publisher keeping `ring` messages for replay, and a router subscribed to it. The
    /// worker's HTTP side is a mocker (for health checks); its events come from `publisher`.
    async fn new(ring: usize) -> Fixture {
        let tokenizer = Arc::new(Tokenizer::builtin());
        let (publisher, endpoints) =
            Publisher::bind("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", "kv-events", 0, ring).await.unwrap();
        let config = ServerConfig {
            engine: EngineConfig { block_size: BS as usize, ..EngineConfig::default() },
            model_name: "m".into(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            data_parallel_size: 1,
            kv_events: None,
            default_max_tokens: 1,
            max_body_bytes: 1 << 20,
            kv_events_http: None,
            kv_events_nats: None,
        };
        let worker = mocker::start(config, tokenizer.clone()).await.unwrap();
        let spec = WorkerSpec {
            worker_id: Some(5),
            kv_events: vec![endpoints.events],
            kv_replay: vec![endpoints.replay],
            ..WorkerSpec::new(format!("http://{}", worker.http_addr))
        };
        let mut config = ServiceConfig::new("127.0.0.1:0".parse::<SocketAddr>().unwrap(), vec![spec]);
        config.router.block_size = BS;
        let router = format!("http://{}", service::start(config, tokenizer).await.unwrap().http_addr);
        Fixture { publisher, router, client: reqwest::Client::new() }
    }

    async fn cached_blocks(&self) -> u64 {
        let v: Value = self.client.get(format!("{}/workers", self.router)).send().await.unwrap().json().await.unwrap();
        v["workers"][0]["ranks"][0]["cached_blocks"].as_u64().unwrap()
    }

    async fn metric(&self, name: &str) -> f64 {
        support::metric(&self.client, &self.router, name).await
    }

    /// Publish warm-up blocks until the router has seen one (the subscription is live).
    async fn warm_up(&mut self) {
        for k in 0..100u64 {
            self.publisher.publish(&stored(None, 1_000 + k), BS).await;
            let seen = support::eventually(Duration::from_millis(100), || async {
                (self.cached_blocks().await > 0).then_some(())
            })
            .await;
            if seen.is_some() {
                return;
            }
        }
        panic!("the router never received a KV event");
    }

    async fn wait_for(&self, blocks: u64) -> bool {
        support::eventually(Duration::from_secs(5), || async { (self.cached_blocks().await == blocks).then_some(()) })
            .await
            .is_some()
    }
}

#[tokio::test]
async fn a_lost_message_is_fetched_from_the_replay_socket() {
    let mut f = Fixture::new(100).await;
    f.warm_up().await;
    let before = f.cached_blocks().await;
    f.publisher.publish_lost(&stored(None, 1), BS);
    f.publisher.publish(&stored(Some(1), 2), BS).await; // chains to the lost block
    assert!(f.wait_for(before + 2).await, "both blocks indexed: {}", f.cached_blocks().await);
    assert_eq!(f.metric("kvroute_router_kv_event_gaps_total").await, 1.0);
    assert_eq!(f.metric("kvroute_router_kv_event_resyncs_total").await, 0.0);
}

#[tokio::test]
async fn a_gap_that_replay_cannot_fill_clears_the_worker() {
    let mut f = Fixture::new(1).await;
    f.warm_up().await;
    f.publisher.publish_lost(&stored(None, 1), BS);
    f.publisher.publish_lost(&stored(Some(1), 2), BS); // the ring now holds only this one
    f.publisher.publish(&stored(None, 3), BS).await;
    let resynced = support::eventually(Duration::from_secs(5), || async {
        (f.metric("kvroute_router_kv_event_resyncs_total").await == 1.0).then_some(())
    })
    .await;
    assert!(resynced.is_some(), "the unfillable gap was counted");
    // The warm-up blocks are gone with the clear; only the block after the gap remains.
    assert!(f.wait_for(1).await, "cleared, then the new block: {}", f.cached_blocks().await);
    let v = support::post_json(
        &f.client,
        &format!("{}/best_worker", f.router),
        &serde_json::json!({"token_ids": [3, 3, 3, 3]}),
    )
    .await;
    assert_eq!(v["overlap_blocks"], 1, "{v}");
}
