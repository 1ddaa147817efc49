"""Endpoints: one route in front of several services, split by weight, changed live."""

from __future__ import annotations

import collections
import threading

import httpx
import pytest
from servekit.core import NotFound, SpecError

ENDPOINT = "rt"
V1, V2 = "rt-v1", "rt-v2"


@pytest.fixture(scope="module")
def endpoint(runtime, sample_spec):
    for name in (V1, V2):
        spec = sample_spec(name, "Echo", options={"greeting": name}, resources={"num_cpus": 0.25})
        runtime.deploy(spec)
    runtime.route(ENDPOINT, {V1: 100})
    yield f"{runtime.http_url}/{ENDPOINT}"
    runtime.delete_endpoint(ENDPOINT)
    for name in (V1, V2):
        runtime.delete(name)


def greetings(url: str, count: int, **headers: str) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    with httpx.Client(timeout=30) as client:
        for i in range(count):
            reply = client.post(url, json=i, headers=headers)
            assert reply.status_code == 200, reply.text
            seen[reply.json()["greeting"]] += 1
    return seen


def test_weights_split_the_traffic_and_change_live_without_losing_a_request(runtime, endpoint):
    assert greetings(endpoint, 20) == {V1: 20}
    failures: list[str] = []
    sent = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal sent
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                reply = client.post(endpoint, json="x")
                sent += 1
                if reply.status_code != 200:
                    failures.append(reply.text)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        for split in ({V1: 90, V2: 10}, {V1: 50, V2: 50}, {V1: 0, V2: 1}, {V1: 1, V2: 1}):
            assert runtime.route(ENDPOINT, split) == {
                name: 100.0 * w / sum(split.values()) for name, w in split.items()
            }
    finally:
        stop.set()
        worker.join()
    assert sent > 20 and failures == []
    seen = greetings(endpoint, 200)
    assert 60 <= seen[V1] <= 140 and seen[V1] + seen[V2] == 200


def test_a_sticky_header_keeps_a_user_on_one_version(runtime, endpoint):
    runtime.route(ENDPOINT, {V1: 50, V2: 50}, sticky_header="x-user")
    users = {f"user-{i}": greetings(endpoint, 5, **{"x-user": f"user-{i}"}) for i in range(12)}
    assert all(len(seen) == 1 for seen in users.values())  # each user saw one version
    assert {next(iter(seen)) for seen in users.values()} == {V1, V2}  # users spread over both


def test_a_shadow_gets_copies_and_the_client_only_the_live_answer(runtime, endpoint):
    runtime.route(ENDPOINT, {V1: 100}, shadow=V2)
    before = runtime.endpoint_stats(ENDPOINT, 600)["versions"].get(V2, {}).get("requests", 0)
    assert greetings(endpoint, 10) == {V1: 10}
    stats = runtime.endpoint_stats(ENDPOINT, 600)
    assert stats["shadow"] == V2
    assert stats["versions"][V2]["requests"] >= before + 9  # copies may still be in flight
    runtime.route(ENDPOINT, {V1: 100})


def test_errors_pass_through_and_are_counted_per_version(runtime, endpoint):
    runtime.route(ENDPOINT, {V1: 100})
    before = runtime.endpoint_stats(ENDPOINT, 600)["versions"][V1]["errors"]
    reply = httpx.post(endpoint, json="explode", timeout=30)
    assert reply.status_code == 500 and "request" in reply.json()["error"]["message"]
    stats = runtime.endpoint_stats(ENDPOINT, 600)["versions"][V1]
    assert stats["errors"] == before + 1 and 0 < stats["error_rate"] < 1
    assert stats["p99_ms"] >= stats["p50_ms"] > 0


def test_metrics_are_prometheus_text_per_version(runtime, endpoint):
    from prometheus_client.parser import text_string_to_metric_families

    runtime.route(ENDPOINT, {V1: 100})
    greetings(endpoint, 3)
    text = httpx.get(f"{endpoint}/-/metrics", timeout=30).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    requests = {
        s.labels["version"]: s.value for s in families["servekit_endpoint_requests"].samples
    }
    stats = runtime.endpoint_stats(ENDPOINT, 900)["versions"]
    assert requests[V1] >= stats[V1]["requests"] >= 3
    histogram = families["servekit_endpoint_request_seconds"]
    counts = [s for s in histogram.samples if s.name.endswith("_count")]
    assert {s.labels["version"] for s in counts} >= {V1}


def test_bad_routes_are_refused_before_anything_changes(runtime, endpoint):
    with pytest.raises(NotFound, match="nope"):
        runtime.route(ENDPOINT, {V1: 50, "nope": 50})
    with pytest.raises(SpecError, match="negative"):
        runtime.route(ENDPOINT, {V1: -1, V2: 2})
    with pytest.raises(SpecError, match="service"):
        runtime.route(V1, {V2: 100})
    with pytest.raises(NotFound):
        runtime.traffic("no-such-endpoint")
    assert runtime.traffic(ENDPOINT) == {V1: 100.0}
