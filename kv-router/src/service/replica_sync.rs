//! Replica sync over NATS: publish what this replica routes, count what the others route.
//!
//! One task per router. Every batch of this replica's load updates (the changes made under
//! one hold of the router lock) becomes one numbered [`ReplicaMessage`] (or several, cut to
//! the server's payload limit) on
//! `kvroute.load.<group>`; a heartbeat (an empty message) goes out every interval. Messages
//! from the other replicas are applied through [`Peers`], which drops what it held for a
//! replica when its numbering jumps, and releases the requests of a replica silent for three
//! heartbeats. Core NATS, no JetStream: nothing here outlives the requests it describes.
//!
//! A replica asks the others to resend their requests in flight with its first message, and
//! again after it had to drop a sender's view; a replica asked announces all of its own.
//!
//! If the server cannot be reached, the router routes on its own view and keeps trying; the
//! updates it makes meanwhile are dropped but still numbered, so the other replicas see the
//! gap and start its view over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;

use super::Shared;
use crate::replicas::{pack, Continuity, LoadUpdate, Peers, ReplicaMessage};

/// Run replica sync for the router's lifetime.
pub async fn run(shared: Arc<Shared>, mut outgoing: mpsc::UnboundedReceiver<Vec<LoadUpdate>>) {
    let sync = shared.config.replica_sync.clone().expect("replica sync is configured");
    let subject = sync.subject();
    let server = without_credentials(&sync.nats_url);
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut seq = 0u64;
    let mut backoff = Duration::from_millis(100);
    let client = loop {
        match async_nats::ConnectOptions::new()
            .name(format!("kvroute kv-router {}", sync.replica_id))
            .connect(&sync.nats_url)
            .await
        {
            Ok(client) => break client,
            Err(e) => {
                tracing::warn!(%server, error = %e, "replica sync: NATS not reachable; routing on this replica's own load meanwhile");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // Updates made meanwhile are lost to the others: number them, so they notice.
                while outgoing.try_recv().is_ok() {
                    seq += 1;
                }
            }
        }
    };
    let mut incoming = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%subject, error = %e, "replica sync: cannot subscribe; this replica will not see the others' load");
            return;
        }
    };
    tracing::info!(%server, %subject, replica = %sync.replica_id, "replica sync: sharing load with the group's other replicas");
    let mut peers = Peers::new();
    // Just started: what the others have in flight is unknown here.
    let mut ask_resend = true;
    let mut heartbeat = tokio::time::interval(sync.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let updates = tokio::select! {
            batch = outgoing.recv() => match batch {
                Some(batch) => batch,
                None => return, // the router is gone
            },
            message = incoming.next() => {
                match message {
                    Some(m) => ask_resend |= receive(&shared, &sync.replica_id, &mut peers, &m.payload, now_ms()),
                    None => {
                        tracing::error!(%subject, "replica sync: subscription closed; this replica no longer sees the others' load");
                        return;
                    }
                }
                continue;
            }
            _ = heartbeat.tick() => {
                let gone = peers.expire(&mut *shared.router(), now_ms(), sync.expiry().as_millis() as u64);
                for (replica, released) in gone {
                    tracing::warn!(%replica, released, "replica sync: replica silent for three heartbeats; its requests no longer count");
                }
                update_gauges(&shared, &peers);
                Vec::new()
            }
        };
        // The limit the server announced (0 until it has: then NATS's default).
        let max_payload = match client.server_info().max_payload {
            0 => 1 << 20,
            n => n,
        };
        for payload in pack(&sync.replica_id, seq, updates, std::mem::take(&mut ask_resend), max_payload) {
            seq += 1;
            if let Err(e) = client.publish(subject.clone(), payload.into()).await {
                tracing::warn!(error = %e, "replica sync: publishing failed; the other replicas will start this replica's view over");
            }
        }
    }
}

/// Apply one message from the bus (our own come back too: skipped). True when this replica
/// lost track of the sender's requests and should ask for a resend.
fn receive(shared: &Shared, own_id: &str, peers: &mut Peers, payload: &[u8], now_ms: u64) -> bool {
    let message: ReplicaMessage = match serde_json::from_slice(payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "replica sync: ignoring a message that is not a kvroute load update");
            return false;
        }
    };
    if message.replica == own_id {
        return false;
    }
    let continuity = {
        let mut router = shared.router();
        let continuity = peers.receive(&mut *router, &message, now_ms);
        if message.resend {
            // Leaves for the bus as the lock is released.
            router.announce_tracked();
        }
        continuity
    };
    match continuity {
        Continuity::NewReplica => {
            tracing::info!(replica = %message.replica, "replica sync: another replica of the group joined")
        }
        Continuity::Resynced { dropped_requests } => {
            shared.metrics.replica_resyncs.inc();
            tracing::warn!(replica = %message.replica, dropped_requests, "replica sync: messages from a replica were lost (or it restarted); its view starts over")
        }
        Continuity::InOrder => {}
    }
    update_gauges(shared, peers);
    matches!(continuity, Continuity::Resynced { .. })
}

fn update_gauges(shared: &Shared, peers: &Peers) {
    shared.metrics.replica_peers.set(peers.len() as f64);
    shared.metrics.replica_requests.set(shared.router().replica_request_count() as f64);
}

/// The server's URL for the logs: `nats://user:secret@host:port` → `nats://host:port`.
fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_stay_out_of_the_logs() {
        assert_eq!(super::without_credentials("nats://user:s3cret@10.0.0.1:4222"), "nats://10.0.0.1:4222");
        assert_eq!(super::without_credentials("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
