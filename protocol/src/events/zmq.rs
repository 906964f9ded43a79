//! The vLLM / SGLang ZMQ KV-event wire form: decoding and encoding.
//!
//! A message is three frames: `[topic, sequence (8-byte big-endian u64), msgpack payload]`. The
//! payload is `[timestamp, [event, ...], data_parallel_rank | nil]` and each event is a tagged
//! array (`["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id,
//! medium, lora_name, ...]`, `["BlockRemoved", block_hashes, medium]`, `["AllBlocksCleared"]`)
//! or, from some engines, a map with a `"type"` key. Unknown trailing fields are ignored;
//! hashes may be signed (reinterpreted as u64) or bytes (mapped to u64 with xxh3).
//!
//! Decoding never panics: bad input is a [`DecodeError`]. The encoder writes exactly what vLLM's
//! publisher writes, so the mocker's events are indistinguishable from a real engine's.

use rmpv::Value;
use thiserror::Error;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::{EngineBlockHash, KvCacheEventData, KvCacheRemoveData, KvCacheStoreData, StoredBlock};
use crate::hashing::{block_hashes, HashSeed};

/// One decoded ZMQ message.
#[derive(Clone, Debug, PartialEq)]
pub struct ZmqMessage {
    pub topic: Vec<u8>,
    /// Publisher sequence number; consecutive messages differ by one, a jump means a lost batch.
    pub seq: u64,
    pub batch: EventBatch,
}

/// The payload: events the engine emitted in one scheduler step.
#[derive(Clone, Debug, PartialEq)]
pub struct EventBatch {
    pub ts: f64,
    pub events: Vec<EngineEvent>,
    pub dp_rank: Option<u32>,
}

/// One engine event, with token ids as the engine sent them.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    BlockStored {
        block_hashes: Vec<EngineBlockHash>,
        parent_block_hash: Option<EngineBlockHash>,
        token_ids: Vec<u32>,
        block_size: u32,
        lora_id: Option<i64>,
        medium: Option<String>,
        lora_name: Option<String>,
    },
    BlockRemoved {
        block_hashes: Vec<EngineBlockHash>,
        medium: Option<String>,
    },
    AllBlocksCleared,
}

/// Why bytes could not be decoded as a vLLM KV-event message.
#[derive(Debug, Error, PartialEq)]
pub enum DecodeError {
    #[error("expected 3 frames (topic, sequence, payload), got {0}")]
    FrameCount(usize),
    #[error("sequence frame must be 8 bytes, got {0}")]
    SequenceLength(usize),
    #[error("payload is not valid msgpack: {0}")]
    Msgpack(String),
    #[error("payload has {0} trailing bytes after the msgpack value")]
    TrailingBytes(usize),
    #[error("unexpected payload shape: {0}")]
    Shape(String),
}

/// Why an engine event cannot be turned into an index event.
#[derive(Debug, Error, PartialEq)]
pub enum ConvertError {
    #[error("block size mismatch: engine sent blocks of {engine} tokens, router is configured for {router}; fix --block-size or the engine's block size, matching is broken until then")]
    BlockSizeMismatch { engine: usize, router: usize },
    #[error("BlockStored carries {hashes} block hashes but {tokens} token ids (block size {block_size})")]
    TokenCount { hashes: usize, tokens: usize, block_size: usize },
}

fn shape(msg: impl Into<String>) -> DecodeError {
    DecodeError::Shape(msg.into())
}

/// Decode a multipart message `[topic, seq, payload]`.
pub fn decode_multipart<F: AsRef<[u8]>>(frames: &[F]) -> Result<ZmqMessage, DecodeError> {
    let [topic, seq, payload] = frames else { return Err(DecodeError::FrameCount(frames.len())) };
    let seq_bytes: [u8; 8] = seq.as_ref().try_into().map_err(|_| DecodeError::SequenceLength(seq.as_ref().len()))?;
    Ok(ZmqMessage {
        topic: topic.as_ref().to_vec(),
        seq: u64::from_be_bytes(seq_bytes),
        batch: decode_payload(payload.as_ref())?,
    })
}

/// Decode the msgpack payload `[ts, [events], dp_rank]` (a map with the same keys is accepted).
pub fn decode_payload(mut bytes: &[u8]) -> Result<EventBatch, DecodeError> {
    let value = rmpv::decode::read_value(&mut bytes).map_err(|e| DecodeError::Msgpack(e.to_string()))?;
    if !bytes.is_empty() {
        return Err(DecodeError::TrailingBytes(bytes.len()));
    }
    let (ts, events, dp_rank) = match &value {
        Value::Array(items) if items.len() >= 2 => (&items[0], &items[1], items.get(2)),
        Value::Map(_) => (
            map_get(&value, "ts").ok_or_else(|| shape("batch map without \"ts\""))?,
            map_get(&value, "events").ok_or_else(|| shape("batch map without \"events\""))?,
            map_get(&value, "data_parallel_rank"),
        ),
        _ => return Err(shape("batch must be an array [ts, events, dp_rank]")),
    };
    let ts = ts.as_f64().or_else(|| ts.as_i64().map(|v| v as f64)).ok_or_else(|| shape("timestamp is not a number"))?;
    let Value::Array(events) = events else { return Err(shape("events is not an array")) };
    let dp_rank = match dp_rank {
        None | Some(Value::Nil) => None,
        Some(v) => Some(v.as_u64().and_then(|r| u32::try_from(r).ok()).ok_or_else(|| shape("dp rank is not a u32"))?),
    };
    let events = events.iter().map(decode_event).collect::<Result<_, _>>()?;
    Ok(EventBatch { ts, events, dp_rank })
}

fn map_get<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    let Value::Map(entries) = map else { return None };
    entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

/// Field accessor over both the tagged-array form (by position) and the map form (by name).
struct Fields<'a> {
    value: &'a Value,
}

impl<'a> Fields<'a> {
    fn get(&self, position: usize, name: &str) -> Option<&'a Value> {
        match self.value {
            Value::Array(items) => items.get(position),
            Value::Map(_) => map_get(self.value, name),
            _ => None,
        }
    }
}

fn decode_event(value: &Value) -> Result<EngineEvent, DecodeError> {
    let tag = match value {
        Value::Array(items) => items.first().and_then(Value::as_str),
        Value::Map(_) => map_get(value, "type").and_then(Value::as_str),
        _ => None,
    }
    .ok_or_else(|| shape("event is not a tagged array or a map with \"type\""))?;
    let f = Fields { value };
    match tag {
        "BlockStored" => Ok(EngineEvent::BlockStored {
            block_hashes: hash_list(f.get(1, "block_hashes"))?,
            parent_block_hash: opt_hash(f.get(2, "parent_block_hash"))?,
            token_ids: token_list(f.get(3, "token_ids"))?,
            block_size: f
                .get(4, "block_size")
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| shape("BlockStored.block_size is not a u32"))?,
            lora_id: opt(f.get(5, "lora_id"), |v| v.as_i64())
                .map_err(|_| shape("BlockStored.lora_id is not an integer"))?,
            medium: opt_str(f.get(6, "medium"))?,
            lora_name: opt_str(f.get(7, "lora_name"))?,
        }),
        "BlockRemoved" => Ok(EngineEvent::BlockRemoved {
            block_hashes: hash_list(f.get(1, "block_hashes"))?,
            medium: opt_str(f.get(2, "medium"))?,
        }),
        "AllBlocksCleared" => Ok(EngineEvent::AllBlocksCleared),
        other => Err(shape(format!("unknown event type {other:?}"))),
    }
}

fn opt<T>(v: Option<&Value>, f: impl Fn(&Value) -> Option<T>) -> Result<Option<T>, ()> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => f(v).map(Some).ok_or(()),
    }
}

fn opt_str(v: Option<&Value>) -> Result<Option<String>, DecodeError> {
    opt(v, |v| v.as_str().map(str::to_owned)).map_err(|_| shape("expected a string or nil"))
}

/// A block hash: unsigned, signed (bits reinterpreted) or bytes (xxh3 of the bytes).
fn hash_value(v: &Value) -> Option<EngineBlockHash> {
    match v {
        Value::Integer(i) => i.as_u64().or_else(|| i.as_i64().map(|s| s as u64)).map(EngineBlockHash),
        Value::Binary(b) => Some(EngineBlockHash(xxh3_64(b))),
        _ => None,
    }
}

fn opt_hash(v: Option<&Value>) -> Result<Option<EngineBlockHash>, DecodeError> {
    opt(v, hash_value).map_err(|_| shape("parent_block_hash is not an integer, bytes or nil"))
}

fn hash_list(v: Option<&Value>) -> Result<Vec<EngineBlockHash>, DecodeError> {
    let Some(Value::Array(items)) = v else { return Err(shape("block_hashes is not an array")) };
    items.iter().map(|h| hash_value(h).ok_or_else(|| shape("block hash is not an integer or bytes"))).collect()
}

fn token_list(v: Option<&Value>) -> Result<Vec<u32>, DecodeError> {
    let Some(Value::Array(items)) = v else { return Err(shape("token_ids is not an array")) };
    items
        .iter()
        .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(|| shape("token id is not a u32")))
        .collect()
}

impl EngineEvent {
    /// The index form of this event: token ids become local block hashes with the router's
    /// block size and seed (the event's LoRA name, when present, shifts the seed).
    pub fn to_kv_event(&self, router_block_size: usize, seed: HashSeed) -> Result<KvCacheEventData, ConvertError> {
        match self {
            EngineEvent::BlockStored {
                block_hashes: hashes,
                parent_block_hash,
                token_ids,
                block_size,
                lora_name,
                ..
            } => {
                let engine = *block_size as usize;
                if engine != router_block_size {
                    return Err(ConvertError::BlockSizeMismatch { engine, router: router_block_size });
                }
                if token_ids.len() != hashes.len() * engine {
                    return Err(ConvertError::TokenCount {
                        hashes: hashes.len(),
                        tokens: token_ids.len(),
                        block_size: engine,
                    });
                }
                let seed = match lora_name.as_deref() {
                    Some(name) if !name.is_empty() => {
                        HashSeed(seed.0.wrapping_add(xxh3_64_with_seed(name.as_bytes(), 0)))
                    }
                    _ => seed,
                };
                let locals = block_hashes(token_ids, engine, seed);
                let blocks = hashes
                    .iter()
                    .zip(locals)
                    .map(|(&block_hash, tokens_hash)| StoredBlock { block_hash, tokens_hash })
                    .collect();
                Ok(KvCacheEventData::Stored(KvCacheStoreData { parent_hash: *parent_block_hash, blocks }))
            }
            EngineEvent::BlockRemoved { block_hashes, .. } => {
                Ok(KvCacheEventData::Removed(KvCacheRemoveData { block_hashes: block_hashes.clone() }))
            }
            EngineEvent::AllBlocksCleared => Ok(KvCacheEventData::Cleared),
        }
    }
}

fn opt_value<T>(v: &Option<T>, f: impl Fn(&T) -> Value) -> Value {
    v.as_ref().map(f).unwrap_or(Value::Nil)
}

fn hashes_value(hashes: &[EngineBlockHash]) -> Value {
    Value::Array(hashes.iter().map(|h| Value::from(h.0)).collect())
}

fn event_value(event: &EngineEvent) -> Value {
    match event {
        EngineEvent::BlockStored {
            block_hashes,
            parent_block_hash,
            token_ids,
            block_size,
            lora_id,
            medium,
            lora_name,
        } => Value::Array(vec![
            Value::from("BlockStored"),
            hashes_value(block_hashes),
            opt_value(parent_block_hash, |h| Value::from(h.0)),
            Value::Array(token_ids.iter().map(|&t| Value::from(t)).collect()),
            Value::from(*block_size),
            opt_value(lora_id, |&l| Value::from(l)),
            opt_value(medium, |m| Value::from(m.as_str())),
            opt_value(lora_name, |n| Value::from(n.as_str())),
        ]),
        EngineEvent::BlockRemoved { block_hashes, medium } => Value::Array(vec![
            Value::from("BlockRemoved"),
            hashes_value(block_hashes),
            opt_value(medium, |m| Value::from(m.as_str())),
        ]),
        EngineEvent::AllBlocksCleared => Value::Array(vec![Value::from("AllBlocksCleared")]),
    }
}

/// Encode a batch as vLLM's publisher does (array-like msgpack).
pub fn encode_payload(batch: &EventBatch) -> Vec<u8> {
    let value = Value::Array(vec![
        Value::F64(batch.ts),
        Value::Array(batch.events.iter().map(event_value).collect()),
        opt_value(&batch.dp_rank, |&r| Value::from(r)),
    ]);
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &value);
    out
}

/// Encode the three frames of one message.
pub fn encode_multipart(topic: &[u8], seq: u64, batch: &EventBatch) -> [Vec<u8>; 3] {
    [topic.to_vec(), seq.to_be_bytes().to_vec(), encode_payload(batch)]
}

#[cfg(test)]
mod tests;
