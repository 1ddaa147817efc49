"""RunnableServable: any LangChain Runnable behind LangServe's wire format.

Routes (under the service's prefix): ``POST /invoke``, ``/batch``, ``/stream``,
``/stream_events``; ``GET /input_schema``, ``/output_schema``, ``/config_schema``.
Bodies and answers are LangServe's, so ``langserve.RemoteRunnable`` works unchanged.
``/invoke`` goes through the replica's batcher: with ``batching.max_batch_size`` above
1, concurrent calls run as one ``abatch``.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from servekit.core import BadRequest, Servable, ServingContext, import_object, parse_options
from servekit.plugins.langchain._wire import dumps, error_event, parse_input, sse

logger = logging.getLogger("servekit.langchain")


_ALLOWED_CONFIG_KEYS = {"configurable", "tags", "metadata", "run_name", "max_concurrency"}


def _json_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """LangServe's request bodies, for /openapi.json (clients and fuzzers)."""
    schema = {"type": "object", "properties": properties, "required": required}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_CONFIG = {"config": {"type": "object"}, "kwargs": {"type": "object"}}
_INVOKE_BODY = _json_body({"input": {}, **_CONFIG}, ["input"])
_BATCH_BODY = _json_body({"inputs": {"type": "array"}, **_CONFIG}, ["inputs"])


class ChainOptions(BaseModel):
    """The spec's ``options`` for a ``langchain:`` source."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(
        default_factory=dict, description="RunnableConfig merged under every request's config"
    )
    config_keys: list[str] = Field(
        default_factory=lambda: ["configurable"],
        description="config keys a request may set (LangServe's config_keys)",
    )
    config_headers: dict[str, str] = Field(
        default_factory=dict,
        description="request header -> configurable key, e.g. {'x-user-id': 'user_id'}",
    )
    per_request_modifier: str | None = Field(
        default=None,
        description="'pkg.mod:fn', fn(config, request) -> config, sync or async",
    )

    @field_validator("config_keys")
    @classmethod
    def _requestable(cls, keys: list[str]) -> list[str]:
        unknown = sorted(set(keys) - _ALLOWED_CONFIG_KEYS)
        if unknown:
            raise ValueError(
                f"{unknown} cannot come from a request "
                f"(allowed: {', '.join(sorted(_ALLOWED_CONFIG_KEYS))})"
            )
        return keys

    @classmethod
    def parse(cls, options: dict[str, Any]) -> ChainOptions:
        """The options, checked; SpecError names a bad or unknown one."""
        return parse_options(cls, options, prefix="options.")


class RunnableServable(Servable):
    """Builds the Runnable named by the source inside the replica and serves it."""

    def __init__(self, target: str, options: dict[str, Any]) -> None:
        super().__init__(target, options)
        self.chain_options = ChainOptions.parse(options)
        modifier = self.chain_options.per_request_modifier
        self._modifier = import_object(modifier) if modifier else None

    def load(self, model_id: str) -> Any:
        from langchain_core.runnables import Runnable

        obj = import_object(self.target)
        if not isinstance(obj, Runnable) and _is_factory(obj):
            obj = obj()  # a zero-argument factory: chains often hold clients that cannot pickle
        if not isinstance(obj, Runnable):
            raise TypeError(
                f"{self.target} is {type(obj).__name__}, not a LangChain Runnable "
                "or a zero-argument function returning one"
            )
        logger.info("serving %s (%s)", self.target, obj.get_name())
        return obj

    async def predict(self, model: Any, batch: list[Any]) -> list[Any]:
        """One input per call (``/invoke`` or a handle): ``ainvoke`` alone, ``abatch`` together."""
        calls = [item if isinstance(item, _Call) else _Call(item, None) for item in batch]
        if len(calls) == 1:
            return [await model.ainvoke(calls[0].value, calls[0].config)]
        results: list[Any] = await model.abatch(
            [call.value for call in calls], [call.config for call in calls], return_exceptions=True
        )
        return results

    def routes(self, server: ServingContext) -> APIRouter:
        router = APIRouter()

        async def invoke(request: Request) -> Response:
            runnable = await server.model()
            body = await _json(request)
            value = parse_input(runnable, _field(body, "input"))
            config, run_id = await self._config(request, body.get("config"))
            output = await server.infer(_Call(value, config))
            return _json_response({"output": output, "metadata": _metadata(run_id)})

        async def batch(request: Request) -> Response:
            runnable = await server.model()
            body = await _json(request)
            inputs = _field(body, "inputs")
            if not isinstance(inputs, list):
                raise BadRequest("'inputs' must be a list", status_code=422, code="invalid_input")
            values = [parse_input(runnable, item) for item in inputs]
            raw = body.get("config")
            raw_configs = raw if isinstance(raw, list) else [raw] * len(values)
            if len(raw_configs) != len(values):
                raise BadRequest(
                    "'config' must be one config or one per input",
                    status_code=422,
                    code="invalid_input",
                )
            pairs = [await self._config(request, c) for c in raw_configs]
            outputs = await runnable.abatch(values, [config for config, _ in pairs])
            run_ids = [str(run_id) for _, run_id in pairs]
            return _json_response(
                {"output": outputs, "metadata": {"run_ids": run_ids, "responses": []}}
            )

        async def stream(request: Request) -> StreamingResponse:
            runnable = await server.model()
            body = await _json(request)
            value = parse_input(runnable, _field(body, "input"))
            config, run_id = await self._config(request, body.get("config"))

            async def events() -> AsyncIterator[str]:
                yield sse("metadata", {"run_id": str(run_id)})
                async for chunk in runnable.astream(value, config):
                    yield sse("data", chunk)

            return _event_stream(events())

        async def stream_events(request: Request) -> StreamingResponse:
            runnable = await server.model()
            body = await _json(request)
            value = parse_input(runnable, _field(body, "input"))
            config, _ = await self._config(request, body.get("config"))
            filters = {
                key: body[key]
                for key in (
                    "include_names",
                    "include_types",
                    "include_tags",
                    "exclude_names",
                    "exclude_types",
                    "exclude_tags",
                )
                if body.get(key) is not None
            }

            async def events() -> AsyncIterator[str]:
                async for event in runnable.astream_events(value, config, version="v2", **filters):
                    yield sse("data", event)

            return _event_stream(events())

        async def input_schema() -> Response:
            return _json_response((await server.model()).get_input_jsonschema())

        async def output_schema() -> Response:
            return _json_response((await server.model()).get_output_jsonschema())

        async def config_schema() -> Response:
            runnable = await server.model()
            schema = runnable.config_schema(include=self.chain_options.config_keys)
            return _json_response(schema.model_json_schema())

        for path, endpoint in (
            ("/invoke", invoke),
            ("/batch", batch),
            ("/stream", stream),
            ("/stream_events", stream_events),
        ):
            body = _BATCH_BODY if path == "/batch" else _INVOKE_BODY
            router.add_api_route(path, endpoint, methods=["POST"], openapi_extra=body)
        for path, endpoint in (
            ("/input_schema", input_schema),
            ("/output_schema", output_schema),
            ("/config_schema", config_schema),
        ):
            router.add_api_route(path, endpoint, methods=["GET"])
        return router

    async def _config(self, request: Request, raw: Any) -> tuple[dict[str, Any], uuid.UUID]:
        """The service's config, then the allowlisted keys of the request's (others are
        dropped), then headers and the modifier hook; a fresh ``run_id`` for the answer."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise BadRequest("'config' must be an object", status_code=422, code="invalid_input")
        # Keys outside the allowlist are dropped, as LangServe does: its client always sends
        # tags, metadata and recursion_limit.
        raw = {key: value for key, value in raw.items() if key in self.chain_options.config_keys}
        if not isinstance(raw.get("configurable", {}), dict):
            raise BadRequest(
                "'config.configurable' must be an object", status_code=422, code="invalid_config"
            )
        base = self.chain_options.config
        config: dict[str, Any] = {**base, **raw}
        configurable = {**base.get("configurable", {}), **raw.get("configurable", {})}
        for header, key in self.chain_options.config_headers.items():
            value = request.headers.get(header)
            if value is not None:
                configurable[key] = value
        if configurable:
            config["configurable"] = configurable
        if self._modifier is not None:
            modified = self._modifier(config, request)
            config = await modified if inspect.isawaitable(modified) else modified
        run_id = uuid.uuid4()
        config["run_id"] = run_id
        return config, run_id


def _is_factory(obj: Any) -> bool:
    if not callable(obj) or isinstance(obj, type):
        return False
    try:
        inspect.signature(obj).bind()
    except (TypeError, ValueError):
        return False
    return True


class _Call:
    """One ``/invoke``: the validated input and its config."""

    __slots__ = ("config", "value")

    def __init__(self, value: Any, config: dict[str, Any] | None) -> None:
        self.value, self.config = value, config


async def _json(request: Request) -> dict[str, Any]:
    import json

    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", status_code=422, code="invalid_input")
    return body


def _field(body: dict[str, Any], key: str) -> Any:
    if key not in body:
        raise BadRequest(f"the body has no {key!r} field", status_code=422, code="invalid_input")
    return body[key]


def _metadata(run_id: uuid.UUID) -> dict[str, Any]:
    return {"run_id": str(run_id), "feedback_tokens": []}


def _json_response(content: Any) -> Response:
    return Response(dumps(content), media_type="application/json")


def _event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    """Server-sent events; a failure midway becomes an ``error`` event, then ``end``."""

    async def guarded() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except Exception:
            request_id = uuid.uuid4().hex[:12]
            logger.exception("stream %s failed", request_id)
            yield error_event(500, f"Internal Server Error (request {request_id})")
        yield sse("end", None)

    return StreamingResponse(guarded(), media_type="text/event-stream")
