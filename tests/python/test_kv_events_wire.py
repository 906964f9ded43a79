"""An independent decoder checks the mocker's KV events: pyzmq receives the frames and msgspec
decodes them with structs declared the way vLLM declares its own (tagged, array-like), so the
wire format is checked by the implementation real routers are written against."""
import json
import urllib.request
from typing import Optional, Union

import msgspec
import zmq

BLOCK_SIZE = 16


class BlockStored(msgspec.Struct, array_like=True, omit_defaults=True, tag=True):
    block_hashes: list[Union[int, bytes]]
    parent_block_hash: Optional[Union[int, bytes]]
    token_ids: list[int]
    block_size: int
    lora_id: Optional[int]
    medium: Optional[str]


class BlockRemoved(msgspec.Struct, array_like=True, omit_defaults=True, tag=True):
    block_hashes: list[Union[int, bytes]]
    medium: Optional[str]


class AllBlocksCleared(msgspec.Struct, array_like=True, omit_defaults=True, tag=True):
    pass


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True):
    ts: float
    events: list[Union[BlockStored, BlockRemoved, AllBlocksCleared]]
    data_parallel_rank: Optional[int] = None


DECODER = msgspec.msgpack.Decoder(type=KVEventBatch)


def complete(http, prompt, max_tokens=1):
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens}).encode()
    req = urllib.request.Request(f"{http}/v1/completions", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def receive(sock, timeout_ms):
    if not sock.poll(timeout_ms):
        return None
    topic, seq, payload = sock.recv_multipart()
    assert topic == b"kv-events"
    assert len(seq) == 8
    return int.from_bytes(seq, "big"), DECODER.decode(payload)


def test_frames_decode_with_vllms_struct_layout(mocker):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.connect(mocker["kv_events"][0]["events"])
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    # Slow joiner: publish (with distinct warm-up prompts) until the subscription is live.
    for attempt in range(50):
        complete(mocker["http"], [900_000 + attempt * 100 + i for i in range(BLOCK_SIZE)])
        first = receive(sock, 200)
        if first:
            break
    else:
        raise AssertionError("no KV event reached the subscriber")
    last_seq = first[0]

    prompt = list(range(1000, 1000 + 4 * BLOCK_SIZE + 5))  # 4 full blocks and a partial one
    complete(mocker["http"], prompt)
    stored = []
    for _ in range(50):
        got = receive(sock, 200)
        if got is None:
            break
        seq, batch = got
        assert seq == last_seq + 1, "sequence numbers are consecutive"
        last_seq = seq
        assert batch.data_parallel_rank == 0
        assert batch.ts > 1_600_000_000
        stored += [e for e in batch.events if isinstance(e, BlockStored)]
        if sum(len(e.block_hashes) for e in stored) >= 4:
            break

    hashes = [h for e in stored for h in e.block_hashes]
    tokens = [t for e in stored for t in e.token_ids]
    assert len(hashes) == 4, "the partial block is not stored"
    assert all(isinstance(h, int) for h in hashes)
    assert tokens == prompt[: 4 * BLOCK_SIZE], "token ids are the prompt's, in order"
    assert all(e.block_size == BLOCK_SIZE for e in stored)
    assert stored[0].parent_block_hash is None, "a prompt's first block chains from the root"
    # Later events in the same prompt chain to the block stored before them.
    previous = stored[0].block_hashes[-1]
    for e in stored[1:]:
        assert e.parent_block_hash == previous
        previous = e.block_hashes[-1]
