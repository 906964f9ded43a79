"""The Envoy Gateway manifests in envoy/gateway/ against the Envoy Gateway v1.9.0 and Gateway API
v1 CRD schemas (envoy/gateway/schemas), plus the fields the design depends on, which a
structural schema cannot check (the CEL rules are not evaluated)."""
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "envoy" / "gateway"
SCHEMAS = REPO / "envoy" / "gateway" / "schemas"



def documents():
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind):
    return [d for _, d in documents() if d["kind"] == kind]


def strict(schema):
    """The API server drops (or, with strict field validation, rejects) unknown fields; a schema
    validator accepts them. Reject them here, so a misspelt field fails the test."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [strict(s) for s in schema]
    return schema


def schema_for(doc):
    group, version = doc["apiVersion"].split("/")
    file = SCHEMAS / f"{doc['kind'].lower()}_{group.split('.')[0]}_{version}.json"
    assert file.exists(), f"no schema for {doc['apiVersion']} {doc['kind']}"
    return strict(json.loads(file.read_text())["openAPIV3Schema"])


@pytest.mark.parametrize("name,doc", documents(), ids=lambda x: x if isinstance(x, str) else x["metadata"]["name"])
def test_every_manifest_matches_its_crd_schema(name, doc):
    jsonschema.Draft7Validator(schema_for(doc)).validate(doc)


def test_every_kind_the_design_needs_is_there():
    kinds = {d["kind"] for _, d in documents()}
    assert {"Gateway", "HTTPRoute", "EnvoyExtensionPolicy", "EnvoyPatchPolicy", "ClientTrafficPolicy"} <= kinds


def route_clusters():
    """pool name -> the Envoy cluster Envoy Gateway makes of the route's rule matching it."""
    clusters = {}
    for route in by_kind("HTTPRoute"):
        meta = route["metadata"]
        for i, rule in enumerate(route["spec"]["rules"]):
            for match in rule.get("matches", []):
                for h in match.get("headers", []):
                    if h["name"] == "x-kvroute-pool":
                        clusters[h["value"]] = f"httproute/{meta['namespace']}/{meta['name']}/rule/{i}"
    return clusters


def test_each_probed_group_is_a_cluster_of_its_pools_route():
    (policy,) = by_kind("EnvoyExtensionPolicy")
    config = policy["spec"]["wasm"][0]["config"]
    clusters = route_clusters()
    assert {g["pool"]: g["cluster"] for g in config["groups"]} == clusters
    assert config["fallback_pool"] in clusters
    assert config.get("pool_header", "x-kvroute-pool") == "x-kvroute-pool"


def test_the_filter_runs_on_every_route_and_fails_open():
    (policy,) = by_kind("EnvoyExtensionPolicy")
    routes = {r["metadata"]["name"] for r in by_kind("HTTPRoute")}
    assert {t["name"] for t in policy["spec"]["targetRefs"] if t["kind"] == "HTTPRoute"} == routes
    wasm = policy["spec"]["wasm"][0]
    assert wasm["failOpen"] is True
    assert wasm["code"]["type"] == "HTTP"
    assert re.fullmatch(r"[a-f0-9]{64}", wasm["code"]["http"]["sha256"])


def test_a_route_without_the_pool_header_exists():
    defaults = [r for r in by_kind("HTTPRoute") for rule in r["spec"]["rules"]
                if all(not m.get("headers") for m in rule.get("matches", [{}]))]
    assert defaults, "requests the filter does not route need a default route"


def test_the_patch_allows_pausing_on_headers_on_the_filters_listener():
    (patch,) = by_kind("EnvoyPatchPolicy")
    (gateway,) = by_kind("Gateway")
    (policy,) = by_kind("EnvoyExtensionPolicy")
    (p,) = patch["spec"]["jsonPatches"]
    listener = f"{gateway['metadata']['namespace']}/{gateway['metadata']['name']}/{gateway['spec']['listeners'][0]['name']}"
    assert p["name"] == listener
    assert p["operation"]["path"] == "/typed_config/config/allow_on_headers_stop_iteration"
    assert p["operation"]["value"] is True
    wasm_filter = f"envoy.filters.http.wasm/envoyextensionpolicy/{policy['metadata']['namespace']}/{policy['metadata']['name']}/wasm/0"
    assert wasm_filter in p["operation"]["jsonPath"]


def test_the_body_limit_is_raised_past_the_default():
    (ctp,) = by_kind("ClientTrafficPolicy")
    limit = ctp["spec"]["connection"]["bufferLimit"]
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(limit)).groups()
    assert int(number) * units.get(unit, 1) >= 4 << 20


def test_a_misspelt_field_is_caught():
    (policy,) = by_kind("EnvoyExtensionPolicy")
    policy["spec"]["wasm"][0]["failopen"] = True
    with pytest.raises(jsonschema.ValidationError, match="failopen"):
        jsonschema.Draft7Validator(schema_for(policy)).validate(policy)
