"""OpenTelemetry for servekit: one trace per request, across every hop, in every replica.

``instrument()`` sets up tracing in this process from the standard ``OTEL_*`` variables
and makes every service deployed from it trace too::

    # OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 OTEL_SERVICE_NAME=shop
    from servekit.plugins.otel import instrument

    instrument()

Replicas need no call: servekit passes the deploying process's ``OTEL_*`` variables on
and switches Ray Serve's own per-replica tracing on, with ``span_processors`` (below) as
its exporter. Ray Serve opens each request's span (a client's ``traceparent`` honoured,
context carried across DeploymentHandle calls); servekit's batch, model load, predict
and LLM spans nest inside it, and LangChain runs become spans through
``LangChainTracer`` (``_langchain.py``).

``opentelemetry-instrument python app.py`` finds ``ServekitInstrumentor`` through the
``opentelemetry_instrumentor`` entry point and calls ``instrument()`` for you.
"""

from __future__ import annotations

import logging
import os
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "servekit's OpenTelemetry plugin needs the OpenTelemetry SDK: pip install 'servekit[otel]'"
    ) from exc

__all__ = ["ServekitInstrumentor", "instrument", "span_processors", "uninstrument"]

logger = logging.getLogger("servekit.otel")
_SPAN_PROCESSORS = "servekit.plugins.otel:span_processors"
_instrumented = False


def instrument(*, tracer_provider: Any = None) -> None:
    """Trace this process and every service it deploys, configured by ``OTEL_*``.

    Sets a global tracer provider (unless one is set already or ``tracer_provider`` is
    given) exporting to ``OTEL_TRACES_EXPORTER`` (``otlp`` by default, over
    ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``http/protobuf`` or ``grpc``; or ``console``),
    sampling by ``OTEL_TRACES_SAMPLER``; makes LangChain runs spans; and has
    ``Runtime.deploy`` switch tracing on in the replicas. Calling it again does nothing.
    """
    global _instrumented
    if _instrumented:
        return
    if tracer_provider is None and not isinstance(trace.get_tracer_provider(), TracerProvider):
        tracer_provider = TracerProvider(resource=Resource.create())
        for processor in span_processors():
            tracer_provider.add_span_processor(processor)
    if tracer_provider is not None:
        trace.set_tracer_provider(tracer_provider)
    # Replicas trace even when only this call (not an OTLP endpoint) asked for it.
    os.environ.setdefault("RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH", _SPAN_PROCESSORS)
    _trace_langchain()
    _instrumented = True
    logger.info("tracing on, in this process and in the replicas of services deployed from it")


def uninstrument() -> None:
    """Stop switching tracing on in replicas deployed from here (spans already made stay)."""
    global _instrumented
    if os.environ.get("RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH") == _SPAN_PROCESSORS:
        del os.environ["RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH"]
    _instrumented = False


def span_processors() -> list[SpanProcessor]:
    """The span processors for ``OTEL_TRACES_EXPORTER`` (comma-separated; default
    ``otlp``). Ray Serve calls this in every replica (``RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH``);
    it also makes that replica's LangChain runs spans."""
    _trace_langchain()
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")
    return [BatchSpanProcessor(_exporter(name.strip())) for name in names if name.strip() != "none"]


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r} is not supported (allowed: otlp, console)")
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol in ("http/protobuf", "http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    else:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported "
            "(allowed: http/protobuf, grpc)"
        )
    return OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*


def _trace_langchain() -> None:
    try:
        from servekit.plugins.otel._langchain import install
    except ImportError:  # langchain-core is not installed: nothing to trace there
        return
    install()


try:
    from opentelemetry.instrumentation.instrumentor import (  # type: ignore[import-not-found]
        BaseInstrumentor as _Base,
    )
except ImportError:
    _Base = object


class ServekitInstrumentor(_Base):  # type: ignore[misc,valid-type]
    """The ``opentelemetry_instrumentor`` entry point: ``opentelemetry-instrument`` calls
    ``ServekitInstrumentor().instrument()``, which calls :func:`instrument`."""

    def instrumentation_dependencies(self) -> list[str]:
        return []

    def _instrument(self, **kwargs: Any) -> None:
        instrument(tracer_provider=kwargs.get("tracer_provider"))

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstrument()

    if _Base is object:  # without opentelemetry-instrumentation, its two public methods

        def instrument(self, **kwargs: Any) -> None:
            self._instrument(**kwargs)

        def uninstrument(self, **kwargs: Any) -> None:
            self._uninstrument(**kwargs)
