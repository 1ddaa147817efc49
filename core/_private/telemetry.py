"""Spans and metrics every servekit replica shares.

Tracing goes through the OpenTelemetry API only. When tracing is on, Ray Serve sets
each replica's tracer provider and opens a span per request (``traceparent`` honoured,
context carried across DeploymentHandle calls); servekit's spans nest inside it. Without
a provider every call here is OpenTelemetry's no-op. ``replica_env`` turns the deploying
process's ``OTEL_*`` settings into the variables that switch Serve's tracing on.

Metrics live in one prometheus-client registry per replica (``ReplicaMetrics``), which
the replica pushes to the cluster's MetricsHub (``metrics_hub.py``) for ``GET /-/metrics``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, Status, StatusCode

# The function Serve calls in each replica for its span processors (the otel plugin's
# OTLP/console exporters chosen from OTEL_*). A string: core never imports a plugin.
SPAN_PROCESSORS = "servekit.plugins.otel:span_processors"
_FORWARDED = ("OTEL_", "RAY_SERVE_TRACING_", "SERVEKIT_METRICS_")

logger = logging.getLogger("servekit.telemetry")
tracer = trace.get_tracer("servekit")


# -- tracing -------------------------------------------------------------------------
def sampling_ratio(env: dict[str, str]) -> float:
    """``OTEL_TRACES_SAMPLER`` (+ ``_ARG``) as the ratio Serve's parent-based sampler takes.
    Unset means OpenTelemetry's default, ``parentbased_always_on``: every trace."""
    sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler.endswith("always_off"):
        return 0.0
    if sampler.endswith("traceidratio"):
        try:
            return min(1.0, max(0.0, float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))))
        except ValueError:
            return 1.0
    return 1.0


def tracing_configured(env: dict[str, str]) -> bool:
    """True when the environment asks for traces: an exporter or an OTLP endpoint."""
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def replica_env(service: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables a replica of ``service`` needs for the deploying
    process's telemetry settings: ``OTEL_*`` passed on, and Serve's own tracing switched
    on (every replica then exports its spans itself) when traces are asked for."""
    env = dict(os.environ if env is None else env)
    out = {name: value for name, value in env.items() if name.startswith(_FORWARDED)}
    if tracing_configured(env) and "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH" not in env:
        if importlib.util.find_spec("opentelemetry.sdk") is None:
            logger.warning(
                "OTEL_* asks for traces but the OpenTelemetry SDK is not installed, so "
                "%r will not trace: pip install 'servekit[otel]'",
                service,
            )
        else:
            out["RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH"] = SPAN_PROCESSORS
    if out.get("RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH"):
        out.setdefault("RAY_SERVE_TRACING_SAMPLING_RATIO", str(sampling_ratio(env)))
        out.setdefault("OTEL_SERVICE_NAME", service)
    return out


def current_context() -> SpanContext | None:
    """The active span's context when it is being recorded, for links and propagation."""
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid and context.trace_flags.sampled else None


@contextmanager
def span(
    name: str,
    attributes: dict[str, Any] | None = None,
    *,
    parent: SpanContext | None = None,
    links: list[SpanContext] | None = None,
) -> Iterator[Span]:
    """A span around a block, a child of the active span (or of ``parent``); an exception
    marks it failed and is re-raised."""
    if parent is None:
        active = trace.get_current_span()
        if active.get_span_context().is_valid and not active.is_recording():
            # A trace the sampler left out: its children are left out too (parent-based
            # sampling), so skip the SDK's work for them.
            yield active
            return
    context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
    with tracer.start_as_current_span(
        name,
        context=context,
        attributes=attributes,
        links=[Link(link) for link in links or ()],
        record_exception=True,
        set_status_on_exception=True,
    ) as current:
        yield current


def annotate_http(span_: Span, method: str, path: str, route: str, status: int) -> None:
    """Give Serve's request span the stable HTTP semantic conventions and the usual
    ``{method} {route}`` name."""
    if not span_.is_recording():
        return
    span_.update_name(f"{method} {route}")
    span_.set_attributes(
        {
            "http.request.method": method,
            "url.path": path,
            "http.route": route,
            "http.response.status_code": status,
        }
    )
    if status >= 500:
        span_.set_status(Status(StatusCode.ERROR))


# -- metrics -------------------------------------------------------------------------
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TTFT = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LABELS = ("service", "version", "replica")


class ReplicaMetrics:
    """One replica's servekit metrics, labelled ``service``, ``version`` and ``replica``.

    ``version`` is the deployment's code version: it changes whenever the model source,
    its options or resources do. ``registry`` is pushed to ``GET /-/metrics`` with the
    rest, so a model or plugin can add its own series::

        from prometheus_client import Counter
        from servekit.core import replica_metrics

        metrics = replica_metrics()
        cache_hits = Counter(
            "mymodel_cache_hits", "Cache hits", list(metrics.labels), registry=metrics.registry
        ).labels(**metrics.labels)
    """

    def __init__(self, service: str, version: str, replica: str) -> None:
        # Here, not at the top: importing servekit.core stays cheap.
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.labels = {"service": service, "version": version, "replica": replica}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "servekit_requests",
            "Requests a replica answered, by route and HTTP status code",
            [*LABELS, "route", "code"],
            registry=r,
        )
        self.errors = Counter(
            "servekit_request_errors",
            "Requests that failed on the server side (5xx, or an exception in a handle call)",
            [*LABELS, "route"],
            registry=r,
        )
        self.latency = Histogram(
            "servekit_request_duration_seconds",
            "Time from a request's arrival at the replica to the end of its answer",
            [*LABELS, "route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_size = Histogram(
            "servekit_batch_size",
            "Inputs per batch the model computed",
            LABELS,
            buckets=_BATCH,
            registry=r,
        )
        self.batch_duration = Histogram(
            "servekit_batch_duration_seconds",
            "Time the model took for one batch",
            LABELS,
            buckets=_LATENCY,
            registry=r,
        )
        self.models_loaded = Gauge(
            "servekit_models_loaded", "Models loaded in the replica", LABELS, registry=r
        )
        self.model_loads = Counter(
            "servekit_model_loads",
            "Models loaded (multiplexing loads on demand)",
            LABELS,
            registry=r,
        )
        self.model_evictions = Counter(
            "servekit_model_evictions",
            "Models evicted from the multiplexing LRU",
            LABELS,
            registry=r,
        )
        self.tokens = Counter(
            "servekit_llm_tokens",
            "LLM tokens processed, kind=input (prompt) or output (generated)",
            [*LABELS, "model", "kind"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "servekit_llm_time_to_first_token_seconds",
            "Time from an LLM stream's start to its first generated token",
            [*LABELS, "model"],
            buckets=_TTFT,
            registry=r,
        )
        self._children: dict[tuple[str, int], tuple[Any, Any, Any]] = {}
        self._batch_size = self.batch_size.labels(**self.labels)
        self._batch_duration = self.batch_duration.labels(**self.labels)

    def request(self, route: str, code: int, seconds: float) -> None:
        # The labelled children, looked up once per (route, code): this runs per request.
        children = self._children.get((route, code))
        if children is None:
            children = self._children[(route, code)] = (
                self.requests.labels(**self.labels, route=route, code=str(code)),
                self.errors.labels(**self.labels, route=route) if code >= 500 else None,
                self.latency.labels(**self.labels, route=route),
            )
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        self._batch_size.observe(size)
        self._batch_duration.observe(seconds)

    def model_loaded(self) -> None:
        self.model_loads.labels(**self.labels).inc()
        self.models_loaded.labels(**self.labels).inc()

    def model_evicted(self) -> None:
        self.model_evictions.labels(**self.labels).inc()
        self.models_loaded.labels(**self.labels).dec()

    def llm_usage(
        self,
        model: str,
        input_tokens: int | None,
        output_tokens: int | None,
        time_to_first_token_s: float | None = None,
    ) -> None:
        if input_tokens:
            self.tokens.labels(**self.labels, model=model, kind="input").inc(input_tokens)
        if output_tokens:
            self.tokens.labels(**self.labels, model=model, kind="output").inc(output_tokens)
        if time_to_first_token_s is not None:
            self.time_to_first_token.labels(**self.labels, model=model).observe(
                time_to_first_token_s
            )

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


_current: ReplicaMetrics | None = None


def replica_metrics() -> ReplicaMetrics:
    """This replica's metrics (a standalone set outside a replica, never pushed).
    Example: ``replica_metrics().llm_usage("tiny", input_tokens=12, output_tokens=30)``."""
    global _current
    if _current is None:
        _current = ReplicaMetrics("", "", f"pid-{os.getpid()}")
    return _current


def set_replica_metrics(metrics: ReplicaMetrics) -> None:
    global _current
    _current = metrics
