"""instrument() in the calling process: its exporters from OTEL_*, the entry point that
opentelemetry-instrument loads, what replicas are told, LangChain runs and rollout steps
as spans. No Ray here; the replica side is test_tracing.py."""

from __future__ import annotations

import importlib.metadata
import os
from unittest import mock

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from opentelemetry import trace
from servekit.core import Rollout, Thresholds
from servekit.core._private.telemetry import SPAN_PROCESSORS, replica_env
from servekit.plugins import otel


@pytest.fixture(scope="module")
def instrumented(memory_spans):
    """This process traced into memory; instrument() keeps the provider already set."""
    with mock.patch.dict(os.environ):
        otel.instrument()
        assert os.environ["RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH"] == SPAN_PROCESSORS
        yield memory_spans
        otel.uninstrument()
    assert "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH" not in os.environ


def test_the_entry_point_is_what_opentelemetry_instrument_loads():
    (entry,) = importlib.metadata.entry_points(group="opentelemetry_instrumentor", name="servekit")
    instrumentor = entry.load()()
    assert callable(instrumentor.instrument) and callable(instrumentor.uninstrument)
    assert instrumentor.instrumentation_dependencies() == []


def test_replicas_get_otel_settings_and_serve_tracing_only_when_asked():
    assert replica_env("iris", {"PATH": "/bin"}) == {}
    env = replica_env(
        "iris",
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "HOME": "/root",
        },
    )
    assert env == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH": SPAN_PROCESSORS,
        "RAY_SERVE_TRACING_SAMPLING_RATIO": "0.25",
        "OTEL_SERVICE_NAME": "iris",
    }
    # OpenTelemetry's default sampler samples every trace; the user's service name wins.
    env = replica_env("iris", {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "shop"})
    assert env["RAY_SERVE_TRACING_SAMPLING_RATIO"] == "1.0"
    assert env["OTEL_SERVICE_NAME"] == "shop"
    assert "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH" not in replica_env(
        "iris", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    )


@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({}, "opentelemetry.exporter.otlp.proto.http.trace_exporter.OTLPSpanExporter"),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "opentelemetry.exporter.otlp.proto.grpc.trace_exporter.OTLPSpanExporter",
        ),
        ({"OTEL_TRACES_EXPORTER": "console"}, "opentelemetry.sdk.trace.export.ConsoleSpanExporter"),
    ],
)
def test_span_processors_follow_otel_variables(env, exporter):
    with mock.patch.dict(os.environ, env):
        (processor,) = otel.span_processors()
    found = type(processor.span_exporter)
    assert f"{found.__module__}.{found.__name__}" == exporter


def test_an_unsupported_protocol_names_the_allowed_ones():
    with (
        mock.patch.dict(os.environ, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}),
        pytest.raises(ValueError, match=r"http/json.*allowed: http/protobuf, grpc"),
    ):
        otel.span_processors()


def test_langchain_runs_are_nested_spans(instrumented):
    from langchain_core.runnables import RunnableLambda

    pytest.importorskip("langchain_core")
    instrumented.clear()
    chain = RunnableLambda(lambda x: x + 1).with_config(run_name="add") | RunnableLambda(
        lambda x: x * 2
    ).with_config(run_name="double")
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        assert chain.invoke(1) == 4
    spans = {span.name: span for span in instrumented.get_finished_spans()}
    sequence = spans["chain RunnableSequence"]
    assert sequence.parent.span_id == caller.get_span_context().span_id
    assert spans["chain add"].parent.span_id == sequence.context.span_id
    assert spans["chain double"].parent.span_id == sequence.context.span_id


class Endpoint:
    """servekit's Runtime as a rollout sees it, for one endpoint whose candidate fails."""

    def __init__(self) -> None:
        self.weights: dict[str, float] = {}

    def route(self, endpoint: str, weights: dict[str, float]) -> None:
        self.weights = weights

    def traffic(self, endpoint: str) -> dict[str, float]:
        return self.weights

    def endpoint_stats(self, endpoint: str, window_s: float) -> dict:
        bad = {"requests": 50, "errors": 50, "error_rate": 1.0, "p99_ms": 5.0}
        good = {"requests": 50, "errors": 0, "error_rate": 0.0, "p99_ms": 5.0}
        return {"versions": {"v2": bad, "v1": good}}


def test_rollout_steps_are_spans(instrumented):
    instrumented.clear()
    rollout = Rollout(
        Endpoint(), "ep", stable="v1", candidate="v2", thresholds=Thresholds(), interval_s=0.01
    )
    assert rollout.canary([10, 50], pause_s=0.01).decision == "rolled_back"
    spans = instrumented.get_finished_spans()
    canary = next(s for s in spans if s.name == "rollout canary ep")
    assert canary.attributes["servekit.rollout.decision"] == "rolled_back"
    children = [s for s in spans if s.parent and s.parent.span_id == canary.context.span_id]
    assert [s.name for s in children] == [
        "rollout route ep",
        "rollout analyze ep",
        "rollout route ep",
    ]
    assert children[0].attributes["servekit.weight.v2"] == 10
    assert children[1].attributes["servekit.rollout.outcome"] == "failed"
    assert children[2].attributes["servekit.weight.v1"] == 100
