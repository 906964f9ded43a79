"""Fixtures: a real `kvroute mocker` process on loopback with ephemeral ports.

The binary comes from $KVROUTE_BIN (scripts/test sets it after building).
"""
import json
import os
import subprocess

import pytest


def _spawn(*args):
    binary = os.environ.get("KVROUTE_BIN")
    if not binary:
        pytest.fail("KVROUTE_BIN is not set: run the Python tests through ./scripts/test")
    proc = subprocess.Popen(
        [binary, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
        text=True,
    )
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"kvroute {args} exited before reporting ready")
    return proc, json.loads(line)


@pytest.fixture
def mocker():
    proc, ready = _spawn("mocker", "--port", "0", "--kv-events-port", "0", "--block-size", "16")
    try:
        yield ready["mocker"]
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def stack(tmp_path):
    """`kvroute up` with two pools of two mockers, routers on free ports."""
    spec = tmp_path / "stack.yaml"
    spec.write_text(
        "block_size: 16\n"
        "pools:\n"
        "  - {name: a, workers: 2, mocker: {speedup_ratio: 10}}\n"
        "  - {name: b, workers: 2, mocker: {speedup_ratio: 10}}\n"
        "global_router: {http_port: 0, policy: {type: kv_overlap, block_size: 16}}\n"
    )
    proc, ready = _spawn("up", str(spec))
    try:
        yield ready["up"]
    finally:
        proc.kill()
        proc.wait(timeout=10)
