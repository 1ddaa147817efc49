"""Traces from real replicas, received over OTLP/HTTP: a client's traceparent followed
through the ingress, a DeploymentHandle hop, the batcher and the model, plus the spans
of multiplexed loads and LangChain steps."""

from __future__ import annotations

import concurrent.futures
import os
import secrets
from unittest import mock

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from servekit.core import ServiceSpec

from tests.conftest import SAMPLE_MODELS

MODULES = {"py_modules": [SAMPLE_MODELS]}
SMALL = {"num_cpus": 0.25}


@pytest.fixture(scope="module")
def traced(runtime, tracing_env):
    """Services deployed with tracing on: front -> (handle) -> back, a multiplexed one and
    a chain. Their URLs by short name."""
    specs = [
        ServiceSpec(
            name="tr-back",
            source="python:sample_models:Echo",
            options={"delay_s": 0.05},
            batching={"max_batch_size": 8, "max_wait_ms": 20},
            runtime_env=MODULES,
            resources=SMALL,
        ),
        ServiceSpec(
            name="tr-front",
            source="python:sample_models:Forwarder",
            options={"to": "tr-back"},
            runtime_env=MODULES,
            resources=SMALL,
        ),
        ServiceSpec(
            name="tr-multi",
            source="python:sample_models:Versioned",
            multiplexing={"max_models_per_replica": 2},
            runtime_env=MODULES,
            resources=SMALL,
        ),
    ]
    with mock.patch.dict(os.environ, tracing_env):
        for spec in specs:
            runtime.deploy(spec)
        runtime.route("tr-ep", {"tr-back": 100})
        if _has_langchain():
            from servekit.plugins.langchain import serve_runnable

            serve_runnable(
                "sample_models.chains:joke", name="tr-joke", runtime_env=MODULES, resources=SMALL
            )
    names = [spec.name for spec in specs] + (["tr-joke"] if _has_langchain() else [])
    yield {name.removeprefix("tr-"): runtime.url(name) for name in names}
    runtime.delete_endpoint("tr-ep")
    for name in names:
        runtime.delete(name, wait=False)


def _has_langchain() -> bool:
    try:
        import langchain_core  # noqa: F401
    except ImportError:
        return False
    return True


def traceparent() -> tuple[str, str, dict[str, str]]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01"}


def ancestry(spans, span) -> list[str]:
    """Span names from ``span`` up to the root of what the trace holds, then its parent id."""
    by_id = {s.span_id: s for s in spans}
    names = []
    while span is not None:
        names.append(f"{span.service}: {span.name}")
        parent = span.parent_id
        span = by_id.get(parent)
    return [*names, parent]


def test_client_traceparent_followed_through_ingress_handle_hop_batch_and_model(
    traced, otlp_receiver
):
    trace_id, client_span, headers = traceparent()
    reply = httpx.post(traced["front"], json={"n": 1}, headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["answer"]["echo"] == {"n": 1}

    def complete(spans) -> bool:
        return any(s.service == "tr-back" and s.name == "predict tr-back" for s in spans)

    spans = otlp_receiver.wait_for(complete, trace_id)
    model = next(s for s in spans if s.service == "tr-back" and s.name == "predict tr-back")
    # One unbroken chain of parents, from the model in the second service back to the
    # client's own span: nothing in between started a trace of its own.
    assert ancestry(spans, model) == [
        "tr-back: predict tr-back",  # the batch the model computed
        "tr-back: replica_handle_request ModelServer predict",
        "tr-front: route_to_replica ModelServer predict",
        "tr-front: predict tr-front",
        "tr-front: POST /tr-front/",
        client_span,
    ]
    http = next(s for s in spans if s.name == "POST /tr-front/")
    assert http.attributes["http.request.method"] == "POST"
    assert http.attributes["http.response.status_code"] == 200
    assert http.attributes["url.path"] == "/tr-front/"


def test_an_endpoint_passes_its_own_span_on_to_the_service(traced, runtime, otlp_receiver):
    trace_id, client_span, headers = traceparent()
    reply = httpx.post(runtime.http_url + "/tr-ep", json="via ep", headers=headers, timeout=30)
    assert reply.json()["echo"] == "via ep"
    spans = otlp_receiver.wait_for(
        lambda spans: any(s.name == "predict tr-back" for s in spans), trace_id
    )
    model = next(s for s in spans if s.name == "predict tr-back")
    chain = ancestry(spans, model)
    assert chain[:2] == ["tr-back: predict tr-back", "tr-back: POST /tr-back/"]
    assert chain[2].startswith("tr-ep: ")  # the Router's span, between client and service
    assert chain[-1] == client_span


def test_a_batch_span_links_every_request_it_computed(traced, otlp_receiver):
    sent = [traceparent() for _ in range(16)]

    def call(headers):
        return httpx.post(traced["back"], json="x", headers=headers, timeout=30).json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, [headers for _, _, headers in sent]))
    assert max(answer["batch_size"] for answer in answers) > 1  # batches did form

    trace_ids = {trace_id for trace_id, _, _ in sent}
    http_spans = {}  # the request span of each sent trace: what a batch must link to
    for trace_id, _, _ in sent:
        spans = otlp_receiver.wait_for(
            lambda spans: any(s.name == "POST /tr-back/" for s in spans), trace_id
        )
        http_spans[trace_id] = next(s.span_id for s in spans if s.name == "POST /tr-back/")
    batches = [
        s
        for trace_id in trace_ids
        for s in otlp_receiver.trace(trace_id)
        if s.name == "predict tr-back"
    ]
    linked = {link for batch in batches for link in batch.links}
    # Every request is linked from the batch that computed it, whichever trace holds it.
    assert linked == set(http_spans.items())
    big = max(batches, key=lambda s: len(s.links))
    assert big.attributes["servekit.batch.size"] == len(big.links) > 1
    assert (big.trace_id, big.parent_id) in linked  # a child of its first request


def test_a_multiplexed_model_load_is_a_span_of_the_request_that_caused_it(traced, otlp_receiver):
    trace_id, _, headers = traceparent()
    headers["serve_multiplexed_model_id"] = "v7"
    reply = httpx.post(traced["multi"], json=1, headers=headers, timeout=30)
    assert reply.json()["model"] == "v7"
    spans = otlp_receiver.wait_for(
        lambda spans: any(s.name.startswith("load ") for s in spans), trace_id
    )
    load = next(s for s in spans if s.name.startswith("load "))
    assert load.name == "load sample_models:Versioned"
    assert load.attributes["servekit.model_id"] == "v7"
    assert ancestry(spans, load)[1] == "tr-multi: POST /tr-multi/"
    # Loaded now: the next request for it makes no load span.
    trace_id, _, headers = traceparent()
    headers["serve_multiplexed_model_id"] = "v7"
    httpx.post(traced["multi"], json=2, headers=headers, timeout=30)
    spans = otlp_receiver.wait_for(
        lambda spans: any(s.name == "predict tr-multi" for s in spans), trace_id
    )
    assert not [s for s in spans if s.name.startswith("load ")]


def test_a_chain_and_its_steps_are_child_spans_of_the_request(traced, otlp_receiver):
    if "joke" not in traced:
        pytest.skip("the langchain extra is not installed")
    trace_id, _, headers = traceparent()
    reply = httpx.post(
        traced["joke"] + "/invoke", json={"input": {"topic": "owls"}}, headers=headers, timeout=30
    )
    assert reply.json()["output"] == "echo: Tell me about owls"
    spans = otlp_receiver.wait_for(
        lambda spans: any(s.name == "chain StrOutputParser" for s in spans), trace_id
    )
    sequence = next(s for s in spans if s.name == "chain RunnableSequence")
    steps = {s.name for s in spans if s.parent_id == sequence.span_id}
    assert steps == {"chain ChatPromptTemplate", "llm EchoChatModel", "chain StrOutputParser"}
    assert ancestry(spans, sequence)[1:3] == [
        "tr-joke: predict tr-joke",
        "tr-joke: POST /tr-joke/invoke",
    ]


def test_replicas_export_over_otlp_grpc_too(runtime):
    from tests.plugins.otel.receiver import GrpcReceiver

    receiver = GrpcReceiver()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "shop",
    }
    spec = ServiceSpec(
        name="tr-grpc", source="python:sample_models:Echo", runtime_env=MODULES, resources=SMALL
    )
    try:
        with mock.patch.dict(os.environ, env):
            url = runtime.deploy(spec).url
        trace_id, _, headers = traceparent()
        assert httpx.post(url, json=1, headers=headers, timeout=30).status_code == 200
        spans = receiver.wait_for(
            lambda spans: any(s.name == "predict tr-grpc" for s in spans), trace_id
        )
        assert {s.service for s in spans} == {"shop"}  # OTEL_SERVICE_NAME, passed on
        assert "POST /tr-grpc/" in {s.name for s in spans}
    finally:
        runtime.delete("tr-grpc", wait=False)
        receiver.close()
