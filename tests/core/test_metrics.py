"""servekit's Prometheus endpoint (GET /-/metrics on the ingress), parsed with
prometheus-client's own parser and checked against the requests this test sent."""

from __future__ import annotations

import os
import time
from unittest import mock

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servekit.core import ServiceSpec

from tests.conftest import SAMPLE_MODELS

NAME = "metered"


@pytest.fixture(scope="module")
def metered(runtime):
    spec = ServiceSpec(
        name=NAME,
        source="python:sample_models:Echo",
        batching={"max_batch_size": 4, "max_wait_ms": 20},
        runtime_env={"py_modules": [SAMPLE_MODELS]},
        resources={"num_cpus": 0.25},
    )
    with mock.patch.dict(os.environ, {"SERVEKIT_METRICS_PUSH_S": "1"}):
        status = runtime.deploy(spec)
    yield status.url
    runtime.delete(NAME, wait=False)


def samples(runtime, name: str, **labels: str) -> dict[tuple, float]:
    """Samples of ``name`` for this service: their labels (beyond service) -> value."""
    text = httpx.get(runtime.metrics_url, timeout=10).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != name or sample.labels.get("service") != NAME:
                continue
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            rest = {k: v for k, v in sample.labels.items() if k not in ("service", "replica")}
            found[tuple(sorted(rest.items()))] = sample.value
    return found


def wait_for(runtime, ready, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, httpx.get(runtime.metrics_url).text[-3000:]
        time.sleep(0.5)


def test_requests_errors_latency_and_batches_are_counted(runtime, metered):
    for i in range(7):
        assert httpx.post(metered, json=i).status_code == 200
    for _ in range(2):
        assert httpx.post(metered, json="explode").status_code == 500
    assert httpx.post(metered, content=b"{not json").status_code == 400
    assert runtime.predict(NAME, "by handle")["echo"] == "by handle"

    def total(name: str, **labels: str) -> float:
        return sum(samples(runtime, name, **labels).values())

    wait_for(runtime, lambda: total("servekit_requests_total") == 11)
    route = f"/{NAME}/"
    assert total("servekit_requests_total", route=route, code="200") == 7
    assert total("servekit_requests_total", route=route, code="500") == 2
    assert total("servekit_requests_total", route=route, code="400") == 1
    assert total("servekit_requests_total", route="handle:predict", code="200") == 1
    # Server-side failures only: the client's bad JSON is not the service's error.
    assert total("servekit_request_errors_total", route=route) == 2
    assert total("servekit_request_duration_seconds_count", route=route) == 10
    assert total("servekit_request_duration_seconds_sum", route=route) > 0
    # Every input the model saw went through one batch: 7 good + 2 explode + 1 handle.
    assert total("servekit_batch_size_sum") == 10
    assert total("servekit_models_loaded") == 1
    version = {dict(labels)["version"] for labels in samples(runtime, "servekit_models_loaded")}
    assert len(version) == 1 and len(version.pop()) == 16


def test_the_endpoint_is_prometheus_text_with_every_servekit_family(runtime, metered):
    text = httpx.get(runtime.metrics_url, timeout=10)
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    families = {family.name for family in text_string_to_metric_families(text.text)}
    assert {
        "servekit_requests",
        "servekit_request_errors",
        "servekit_request_duration_seconds",
        "servekit_batch_size",
        "servekit_models_loaded",
        "servekit_llm_tokens",
    } <= families


def test_every_servekit_metric_the_grafana_dashboard_queries_is_served(runtime, metered):
    import json
    import re
    from pathlib import Path

    runtime.route("metered-ep", {NAME: 100})  # the endpoint row needs a Router's series
    try:
        assert httpx.post(runtime.http_url + "/metered-ep", json=1).status_code == 200
        dashboard = Path(__file__).parents[2] / "docs" / "grafana" / "servekit.json"
        queries = [
            target["expr"]
            for panel in json.loads(dashboard.read_text())["panels"]
            for target in panel.get("targets", [])
        ]
        wanted = {name for expr in queries for name in re.findall(r"servekit_\w+", expr)}
        assert len(wanted) >= 10

        def missing() -> set[str]:
            text = httpx.get(runtime.metrics_url, timeout=10).text
            families = list(text_string_to_metric_families(text))
            served = {f.name for f in families} | {s.name for f in families for s in f.samples}
            base = re.compile(r"_(total|bucket|sum|count)$")
            return {n for n in wanted if n not in served and base.sub("", n) not in served}

        wait_for(runtime, lambda: not missing())
    finally:
        runtime.delete_endpoint("metered-ep")
