"""Several models behind one service: at most N per replica, LRU eviction, model affinity."""

from __future__ import annotations

import time

import httpx
import pytest
from servekit.core import MODEL_ID_HEADER, BadRequest

NAME = "versions"


@pytest.fixture(scope="module")
def versions(runtime, sample_spec):
    spec = sample_spec(
        NAME,
        "Versioned",
        replicas=2,
        multiplexing={"max_models_per_replica": 2},
        resources={"num_cpus": 0.25},
    )
    runtime.deploy(spec, timeout_s=240)
    yield spec
    runtime.delete(NAME)


def test_repeated_model_id_goes_back_to_the_replica_holding_it(runtime, versions):
    first = {model: runtime.predict(NAME, 0, model_id=model) for model in ("alpha", "omega")}
    # A replica reports the models it holds every 0.1 s, and Serve broadcasts that to
    # routers; no public API shows when a router has heard, so allow it a second.
    time.sleep(1.0)
    for i in range(8):
        for model, where in first.items():
            again = runtime.predict(NAME, i, model_id=model)
            assert again["model"] == model
            assert again["pid"] == where["pid"]
            assert again["loads"] == 1  # never loaded a second time


def test_least_recently_used_model_is_evicted(runtime, sample_spec):
    spec = sample_spec("lru", "Versioned", multiplexing={"max_models_per_replica": 2})
    runtime.deploy(spec, timeout_s=180)
    try:
        loads = lambda model: runtime.predict("lru", 0, model_id=model)["loads"]  # noqa: E731
        assert [loads("a"), loads("b"), loads("a")] == [1, 1, 1]  # both fit
        assert loads("c") == 1  # evicts "b", the least recently used
        assert loads("a") == 1  # "a" was used more recently than "b": still loaded
        assert loads("b") == 2  # "b" had been evicted: loaded again (evicting "c")
        assert loads("c") == 2
    finally:
        runtime.delete("lru")


def test_http_header_selects_the_model_and_missing_id_is_a_400(runtime, versions):
    url = runtime.url(NAME)
    reply = httpx.post(url, json=5, headers={MODEL_ID_HEADER: "beta"}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "beta"
    dashed = httpx.post(url, json=5, headers={"serve-multiplexed-model-id": "gamma"}, timeout=60)
    assert dashed.json()["model"] == "gamma"
    missing = httpx.post(url, json=5, timeout=60)
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "model_id_required"
    with pytest.raises(BadRequest, match="serve_multiplexed_model_id"):
        runtime.predict(NAME, 5)


def test_a_model_that_fails_to_load_is_a_500_and_others_keep_working(runtime, versions):
    url = runtime.url(NAME)
    reply = httpx.post(url, json=1, headers={MODEL_ID_HEADER: "bad-version"}, timeout=60)
    assert reply.status_code == 500
    assert "Traceback" not in reply.text
    assert "request" in reply.json()["error"]["message"]
    ok = httpx.post(url, json=1, headers={MODEL_ID_HEADER: "beta"}, timeout=60)
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "model_id", ["../../etc/passwd", "/abs/path", "mod:Class;import os", "a b"]
)
def test_a_model_id_shaped_like_a_path_or_code_is_refused(runtime, versions, model_id):
    url = runtime.url(NAME)
    reply = httpx.post(url, json=1, headers={MODEL_ID_HEADER: model_id}, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "invalid_model_id"
    assert httpx.post(url, json=1, headers={MODEL_ID_HEADER: "beta"}, timeout=60).status_code == 200
