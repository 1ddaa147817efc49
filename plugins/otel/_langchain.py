"""LangChain runs as OpenTelemetry spans: a chain, its steps, its models, tools and
retrievers, each a child of the run that started it (and the outermost a child of the
active span, so a chain served by servekit nests in its HTTP request's trace)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.tracers.context import register_configure_hook
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

_tracer = trace.get_tracer("servekit.langchain")
_installed = False


class LangChainTracer(BaseCallbackHandler):
    """Opens a span when a run starts and ends it when the run ends or fails."""

    run_inline = True  # called on the run's own thread/loop: the active span is right there

    def __init__(self) -> None:
        self._spans: dict[UUID, Span] = {}

    # -- the span of one run ---------------------------------------------------------
    def _start(
        self,
        kind: str,
        serialized: dict[str, Any] | None,
        run_id: UUID,
        parent_run_id: UUID | None,
        **kwargs: Any,
    ) -> None:
        name = kwargs.get("name") or _name_of(serialized) or kind
        parent = self._spans.get(parent_run_id) if parent_run_id else None
        context = trace.set_span_in_context(parent) if parent else otel_context.get_current()
        attributes: dict[str, Any] = {"langchain.run_type": kind, "langchain.run_id": str(run_id)}
        params = kwargs.get("invocation_params") or {}
        model = params.get("model") or params.get("model_name")
        if kind == "llm":
            attributes["gen_ai.operation.name"] = "chat"
            if model:
                attributes["gen_ai.request.model"] = str(model)
        span_name = f"chat {model}" if kind == "llm" and model else f"{kind} {name}"
        self._spans[run_id] = _tracer.start_span(span_name, context=context, attributes=attributes)

    def _end(self, run_id: UUID, error: BaseException | None = None) -> Span | None:
        span = self._spans.pop(run_id, None)
        if span is None:
            return None
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()
        return span

    # -- LangChain's callbacks ---------------------------------------------------------
    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        self._start("chain", serialized, **kwargs)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self._start("llm", serialized, **kwargs)

    def on_llm_start(self, serialized: Any, prompts: Any, **kwargs: Any) -> None:
        self._start("llm", serialized, **kwargs)

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._spans.get(run_id)
        if span is not None:
            usage = _usage(response)
            if usage:
                span.set_attributes(usage)
        self._end(run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)

    def on_tool_start(self, serialized: Any, input_str: Any, **kwargs: Any) -> None:
        self._start("tool", serialized, **kwargs)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)

    def on_retriever_start(self, serialized: Any, query: Any, **kwargs: Any) -> None:
        self._start("retriever", serialized, **kwargs)

    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)


def _name_of(serialized: dict[str, Any] | None) -> str | None:
    if not serialized:
        return None
    name = serialized.get("name")
    if name:
        return str(name)
    ids = serialized.get("id")
    return str(ids[-1]) if ids else None


def _usage(response: Any) -> dict[str, int]:
    """GenAI token counts from an LLMResult: the messages' usage_metadata, if any."""
    inputs = outputs = 0
    for generations in getattr(response, "generations", None) or []:
        for generation in generations:
            usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
            if usage:
                inputs += int(usage.get("input_tokens", 0))
                outputs += int(usage.get("output_tokens", 0))
    if not (inputs or outputs):
        return {}
    return {"gen_ai.usage.input_tokens": inputs, "gen_ai.usage.output_tokens": outputs}


def install() -> None:
    """Make every LangChain run in this process a span (once)."""
    global _installed
    if _installed:
        return
    # A default value: every context, every thread, sees the one tracer.
    var: ContextVar[LangChainTracer | None] = ContextVar(
        "servekit_otel_langchain",
        default=LangChainTracer(),  # noqa: B039 - shared on purpose
    )
    register_configure_hook(var, inheritable=True)
    _installed = True
