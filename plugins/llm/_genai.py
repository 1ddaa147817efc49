"""GenAI telemetry for LLM requests: an OpenTelemetry span per request with the GenAI
semantic conventions, and the replica's token and time-to-first-token metrics."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from servekit.core import replica_metrics
from servekit.plugins.llm._engine import Answer

_tracer = trace.get_tracer("servekit.llm")
_REQUEST_ATTRIBUTES = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
}


async def observed(
    operation: str, body: dict[str, Any], call: Callable[[dict[str, Any]], Awaitable[Answer]]
) -> Answer:
    """``call(body)`` inside a ``{operation} {model}`` span; token usage (and, for streams,
    the time to the first chunk) recorded on the span and in the replica's metrics.

    A stream is asked for its usage chunk (``stream_options.include_usage``) so its tokens
    can be counted; a client that did not ask for that chunk does not get it.
    """
    model = str(body.get("model") or "")
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "vllm",
        "gen_ai.request.model": model,
    }
    for key, name in _REQUEST_ATTRIBUTES.items():
        if isinstance(body.get(key), int | float):
            attributes[name] = body[key]
    streaming = body.get("stream") is True
    wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    if streaming and not wants_usage:
        options = {**(body.get("stream_options") or {}), "include_usage": True}
        body = {**body, "stream_options": options}
    started = time.perf_counter()
    span = _tracer.start_span(f"{operation} {model}", attributes=attributes)
    try:
        with trace.use_span(span, end_on_exit=False):
            answer = await call(body)
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()
        raise
    if answer.stream is not None:
        answer.stream = _watched(answer.stream, span, model, started, keep_usage=wants_usage)
        return answer
    if answer.status >= 400:
        error = (answer.body or {}).get("error") or {}
        span.set_attribute("error.type", str(error.get("type") or answer.status))
        span.set_status(Status(StatusCode.ERROR, str(error.get("message", ""))[:200]))
    else:
        _finish(span, model, answer.body or {}, None)
    span.end()
    return answer


async def _watched(
    stream: AsyncIterator[str], span: Span, model: str, started: float, *, keep_usage: bool
) -> AsyncIterator[str]:
    first: float | None = None
    final: dict[str, Any] = {}
    try:
        async for event in stream:
            if first is None:
                first = time.perf_counter() - started
            if '"usage"' in event and event.startswith("data: {"):
                chunk = json.loads(event[len("data: ") :])
                if chunk.get("usage"):
                    final = {**chunk, "choices": final.get("choices", [])}
                    if not keep_usage and not chunk.get("choices"):
                        continue  # the usage chunk this client did not ask for
            elif event.startswith("data: {") and '"finish_reason":"' in event:
                final["choices"] = json.loads(event[len("data: ") :]).get("choices", [])
            yield event
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        _finish(span, model, final, first)
        span.end()


def _finish(span: Span, model: str, body: dict[str, Any], first_chunk_s: float | None) -> None:
    usage = body.get("usage") or {}
    inputs, outputs = usage.get("prompt_tokens"), usage.get("completion_tokens")
    attributes: dict[str, Any] = {}
    if body.get("id"):
        attributes["gen_ai.response.id"] = str(body["id"])
    if body.get("model"):
        attributes["gen_ai.response.model"] = str(body["model"])
    reasons = [c.get("finish_reason") for c in body.get("choices") or [] if c.get("finish_reason")]
    if reasons:
        attributes["gen_ai.response.finish_reasons"] = reasons
    if inputs is not None:
        attributes["gen_ai.usage.input_tokens"] = int(inputs)
    if outputs is not None:
        attributes["gen_ai.usage.output_tokens"] = int(outputs)
    if first_chunk_s is not None:
        attributes["gen_ai.response.time_to_first_chunk"] = first_chunk_s
    span.set_attributes(attributes)
    replica_metrics().llm_usage(model, inputs, outputs, first_chunk_s)
