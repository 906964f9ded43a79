//! Tests of the ZMQ msgpack codec: round trips, the hash and payload forms vLLM and SGLang send,
//! conversion to local hashes, and malformed or truncated input (errors, never panics).

use super::*;
use crate::hashing::LocalBlockHash;
use proptest::prelude::*;

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

fn stored(hashes: &[u64], parent: Option<u64>, tokens: Vec<u32>, block_size: u32) -> EngineEvent {
    EngineEvent::BlockStored {
        block_hashes: hashes.iter().map(|&h| EngineBlockHash(h)).collect(),
        parent_block_hash: parent.map(EngineBlockHash),
        token_ids: tokens,
        block_size,
        lora_id: None,
        medium: Some("GPU".into()),
        lora_name: None,
    }
}

#[test]
fn encode_then_decode_round_trips_all_event_kinds() {
    let batch = EventBatch {
        ts: 1.5,
        events: vec![
            stored(&[u64::MAX, 5], Some(9), (0..8).collect(), 4),
            EngineEvent::BlockRemoved { block_hashes: vec![EngineBlockHash(5)], medium: None },
            EngineEvent::AllBlocksCleared,
        ],
        dp_rank: Some(3),
    };
    let frames = encode_multipart(b"kv-events", 41, &batch);
    assert_eq!(frames[1], 41u64.to_be_bytes());
    let msg = decode_multipart(&frames).unwrap();
    assert_eq!(msg.topic, b"kv-events");
    assert_eq!(msg.seq, 41);
    assert_eq!(msg.batch, batch);
}

#[test]
fn signed_hashes_are_reinterpreted_and_trailing_fields_ignored() {
    // Laid out by hand the way vLLM's msgspec encoder writes it, plus a future extra field.
    let payload = encode(&Value::Array(vec![
        Value::F64(0.25),
        Value::Array(vec![Value::Array(vec![
            Value::from("BlockStored"),
            Value::Array(vec![Value::from(-1i64)]),
            Value::from(-2i64),
            Value::Array((0..4u32).map(Value::from).collect()),
            Value::from(4u32),
            Value::Nil,
            Value::from("GPU"),
            Value::Nil,
            Value::from("some future field"),
        ])]),
        Value::Nil,
    ]));
    let batch = decode_payload(&payload).unwrap();
    assert_eq!(batch.dp_rank, None);
    let EngineEvent::BlockStored { block_hashes, parent_block_hash, .. } = &batch.events[0] else { panic!() };
    assert_eq!(block_hashes[0], EngineBlockHash(u64::MAX));
    assert_eq!(*parent_block_hash, Some(EngineBlockHash(u64::MAX - 1)));
}

#[test]
fn older_payloads_without_dp_rank_and_short_events_decode() {
    let payload = encode(&Value::Array(vec![
        Value::from(12i64),
        Value::Array(vec![Value::Array(vec![Value::from("BlockRemoved"), Value::Array(vec![Value::from(7u64)])])]),
    ]));
    let batch = decode_payload(&payload).unwrap();
    assert_eq!(batch.ts, 12.0);
    assert_eq!(batch.events, vec![EngineEvent::BlockRemoved { block_hashes: vec![EngineBlockHash(7)], medium: None }]);
}

#[test]
fn byte_hashes_map_to_xxh3_of_the_bytes() {
    let digest = vec![0xabu8; 32];
    let payload = encode(&Value::Array(vec![
        Value::F64(0.0),
        Value::Array(vec![Value::Array(vec![
            Value::from("BlockRemoved"),
            Value::Array(vec![Value::Binary(digest.clone())]),
        ])]),
        Value::from(0u32),
    ]));
    let batch = decode_payload(&payload).unwrap();
    assert_eq!(
        batch.events[0],
        EngineEvent::BlockRemoved { block_hashes: vec![EngineBlockHash(xxh3_64(&digest))], medium: None }
    );
}

#[test]
fn map_form_events_are_accepted() {
    let payload = encode(&Value::Array(vec![
        Value::F64(0.0),
        Value::Array(vec![Value::Map(vec![
            (Value::from("type"), Value::from("BlockStored")),
            (Value::from("block_hashes"), Value::Array(vec![Value::from(1u64)])),
            (Value::from("parent_block_hash"), Value::Nil),
            (Value::from("token_ids"), Value::Array((0..2u32).map(Value::from).collect())),
            (Value::from("block_size"), Value::from(2u32)),
        ])]),
        Value::Nil,
    ]));
    let batch = decode_payload(&payload).unwrap();
    assert_eq!(
        batch.events[0],
        EngineEvent::BlockStored {
            block_hashes: vec![EngineBlockHash(1)],
            parent_block_hash: None,
            token_ids: vec![0, 1],
            block_size: 2,
            lora_id: None,
            medium: None,
            lora_name: None,
        }
    );
}

#[test]
fn malformed_messages_are_errors() {
    assert_eq!(decode_multipart::<&[u8]>(&[b"t", b"x"]), Err(DecodeError::FrameCount(2)));
    assert_eq!(decode_multipart::<&[u8]>(&[b"t", b"1234", b"\x90"]), Err(DecodeError::SequenceLength(4)));
    assert!(matches!(decode_payload(b"\x92\xcb"), Err(DecodeError::Msgpack(_))));
    // A header claiming 4 billion elements must not make the decoder allocate them.
    assert!(decode_payload(b"\xdd\xff\xff\xff\xff").is_err());
    assert!(decode_payload(b"\x92\x00\xdd\xff\xff\xff\xff").is_err());
    assert!(matches!(decode_payload(&encode(&Value::from("hello"))), Err(DecodeError::Shape(_))));
    let unknown =
        encode(&Value::Array(vec![Value::F64(0.0), Value::Array(vec![Value::Array(vec![Value::from("Nope")])])]));
    assert!(matches!(decode_payload(&unknown), Err(DecodeError::Shape(m)) if m.contains("Nope")));
    let mut trailing = encode(&Value::Array(vec![Value::F64(0.0), Value::Array(vec![])]));
    trailing.push(0);
    assert_eq!(decode_payload(&trailing), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn stored_event_converts_to_local_hashes() {
    let ev = stored(&[10, 11], None, vec![1, 2, 3, 4, 5, 6, 7, 8], 4);
    let KvCacheEventData::Stored(s) = ev.to_kv_event(4, HashSeed::default()).unwrap() else { panic!() };
    assert_eq!(s.blocks[0].tokens_hash, LocalBlockHash(14643705804678351452));
    assert_eq!(s.blocks[1].block_hash, EngineBlockHash(11));
}

#[test]
fn block_size_mismatch_is_detected() {
    let ev = stored(&[10], None, vec![1, 2, 3, 4], 4);
    assert_eq!(ev.to_kv_event(16, HashSeed::default()), Err(ConvertError::BlockSizeMismatch { engine: 4, router: 16 }));
    let short = stored(&[10, 11], None, vec![1, 2, 3, 4], 4);
    assert!(matches!(short.to_kv_event(4, HashSeed::default()), Err(ConvertError::TokenCount { .. })));
}

#[test]
fn lora_name_shifts_the_seed() {
    let mut ev = stored(&[10], None, vec![1, 2, 3, 4], 4);
    let plain = ev.to_kv_event(4, HashSeed::default()).unwrap();
    if let EngineEvent::BlockStored { lora_name, .. } = &mut ev {
        *lora_name = Some("adapter".into());
    }
    let lora = ev.to_kv_event(4, HashSeed::default()).unwrap();
    assert_ne!(plain, lora);
    let KvCacheEventData::Stored(s) = lora else { panic!() };
    let expected = crate::hashing::block_hashes(&[1, 2, 3, 4], 4, HashSeed::for_request(Some("adapter"), None));
    assert_eq!(s.blocks[0].tokens_hash, expected[0]);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_payload(&bytes);
        let _ = decode_multipart(&[&b"t"[..], &0u64.to_be_bytes(), &bytes]);
    }

    #[test]
    fn every_truncation_of_a_valid_payload_is_an_error(cut in 0usize..200) {
        let batch = EventBatch { ts: 2.0, events: vec![stored(&[1, 2], Some(3), (0..8).collect(), 4)], dp_rank: Some(1) };
        let payload = encode_payload(&batch);
        let cut = cut % payload.len();
        prop_assert!(decode_payload(&payload[..cut]).is_err());
    }
}
