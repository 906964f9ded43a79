"""Fixtures: a real `kvroute mocker` process on loopback with ephemeral ports.

The binary comes from $KVROUTE_BIN (scripts/test sets it after building).
"""
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
WASM = TARGET_DIR / "wasm32-wasip1/release/kvroute_filter.wasm"
ENVOY = os.environ.get("ENVOY_BIN") or shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")


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


@contextlib.contextmanager
def running_up(tmp_path, stack_yaml):
    """`kvroute up` on `stack_yaml`; yields (process, its ready line's "up" object) and stops it
    with SIGTERM, so that it stops its own children (Envoy) before exiting."""
    spec = tmp_path / "stack.yaml"
    spec.write_text(stack_yaml)
    proc, ready = _spawn("up", str(spec))
    try:
        yield proc, ready["up"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


@pytest.fixture(scope="session")
def filter_wasm():
    """The proxy-wasm filter, built once per run (a no-op when it is up to date)."""
    subprocess.run(
        ["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1", "-p", "kvroute-filter"],
        cwd=REPO, check=True, timeout=1200,
    )
    assert WASM.exists(), WASM
    return WASM


@pytest.fixture
def stack(tmp_path):
    """`kvroute up` with two pools of two mockers, routers on free ports."""
    with running_up(
        tmp_path,
        "block_size: 16\n"
        "pools:\n"
        "  - {name: a, workers: 2, mocker: {speedup_ratio: 10}}\n"
        "  - {name: b, workers: 2, mocker: {speedup_ratio: 10}}\n"
        "global_router: {http_port: 0, policy: {type: kv_overlap, block_size: 16}}\n",
    ) as (_, up):
        yield up
