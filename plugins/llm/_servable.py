"""LLMServable: a vLLM engine behind OpenAI-compatible routes, with LoRA adapters multiplexed.

Routes (under the service's prefix): ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``"stream": true`` answers server-sent events ending in
``data: [DONE]``). A request names its model in the body: the base model's name, or
``<base>:<adapter>`` for a LoRA adapter, which the replica loads on first use and evicts
least-recently-used through servekit's multiplexing.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from servekit.core import BadRequest, Servable, ServingContext, SpecError, parse_options
from servekit.plugins.llm._engine import Answer, VllmEngine, default_name

logger = logging.getLogger("servekit.llm")

_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_KINDS = {400: "BadRequestError", 404: "NotFoundError", 413: "RequestTooLarge"}


class LLMOptions(BaseModel):
    """The spec's ``options`` for an ``llm:`` source. Every key not listed here is a vLLM
    engine argument passed through unchanged (``max_model_len``, ``dtype``,
    ``gpu_memory_utilization``, ``tensor_parallel_size``, ``enforce_eager``, ...)."""

    model_config = ConfigDict(extra="allow")

    served_model_name: str | None = Field(
        default=None, description="the model name clients send; default: the folder's name"
    )
    adapters: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapter name -> local folder"
    )
    adapter_dir: str | None = Field(
        default=None, description="a folder whose subfolders are LoRA adapters, by name"
    )
    frontend: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM OpenAI server options, e.g. chat_template, tool_call_parser",
    )

    @classmethod
    def parse(cls, options: dict[str, Any]) -> LLMOptions:
        return parse_options(cls, options, prefix="options.")

    def engine_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class LLMServable(Servable):
    """Starts one vLLM engine per replica and serves the base model and its adapters."""

    def __init__(self, target: str, options: dict[str, Any]) -> None:
        super().__init__(target, options)
        self.llm_options = LLMOptions.parse(options)
        for name in self.llm_options.adapters:
            if not _ADAPTER_NAME.fullmatch(name):
                problem = "not a valid adapter name (letters, digits, '.', '_', '-')"
                raise SpecError(f"options.adapters.{name}", problem)
        self.name = self.llm_options.served_model_name or default_name(target)
        engine_options = self.llm_options.engine_options()
        if self.llm_options.adapters or self.llm_options.adapter_dir:
            engine_options.setdefault("enable_lora", True)
        self.engine = VllmEngine(target, self.name, engine_options, self.llm_options.frontend)
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.engine.start()

    async def load(self, model_id: str) -> str:
        """``""`` (no multiplexing): the base, with every configured adapter registered.
        Otherwise ``model_id`` is the base's name or ``<base>:<adapter>``."""
        if model_id == "":
            for adapter, path in self._known_adapters().items():
                await self.engine.add_adapter(self._model_id(adapter), path)
            return self.name
        if model_id == self.name:
            return model_id
        adapter = self._adapter_of(model_id)
        if adapter is None:
            raise ValueError(f"{model_id!r} is not {self.name!r} or one of its adapters")
        await self.engine.add_adapter(model_id, self._adapter_path(adapter))
        return model_id

    def unload(self, model: Any) -> None:
        if model != self.name and self._loop is not None:
            removal = self.engine.remove_adapter(model)
            asyncio.run_coroutine_threadsafe(removal, self._loop).result(timeout=60)

    def describe(self) -> dict[str, Any]:
        return {"adapters_loaded": self.engine.loaded_adapters()}

    def check_health(self) -> None:
        if self.engine.dead:
            raise RuntimeError("the vLLM engine has died; Serve replaces this replica")

    # -- model names ---------------------------------------------------------------
    def _model_id(self, adapter: str) -> str:
        return f"{self.name}:{adapter}"

    def _adapter_of(self, model_id: str) -> str | None:
        """The adapter a model id names, if this service has it."""
        base, sep, adapter = model_id.partition(":")
        if base != self.name or not sep or not _ADAPTER_NAME.fullmatch(adapter):
            return None
        if adapter in self.llm_options.adapters:
            return adapter
        folder = self.llm_options.adapter_dir
        if folder and (Path(folder) / adapter / "adapter_config.json").is_file():
            return adapter
        return None

    def _adapter_path(self, adapter: str) -> str:
        if adapter in self.llm_options.adapters:
            return self.llm_options.adapters[adapter]
        return str(Path(self.llm_options.adapter_dir or ".") / adapter)

    def _known_adapters(self) -> dict[str, str]:
        known = {}
        folder = self.llm_options.adapter_dir
        if folder and Path(folder).is_dir():
            for child in sorted(Path(folder).iterdir()):
                if self._adapter_of(self._model_id(child.name)) is not None:
                    known[child.name] = str(child)
        known.update(self.llm_options.adapters)
        return known

    async def _select(self, server: ServingContext, body: dict[str, Any]) -> None:
        """Load the adapter a request names (LRU through multiplexing). Unknown names are
        left to vLLM, which answers OpenAI's 404."""
        model = body.get("model")
        if server.spec.multiplexing is None or not isinstance(model, str):
            return
        if model != self.name and self._adapter_of(model) is not None:
            await server.model(model)

    # -- handle calls --------------------------------------------------------------
    async def predict(self, model: Any, batch: list[Any]) -> list[Any]:
        """Handle calls: a chat (``messages``) or completion (``prompt``) body per item,
        answered non-streaming with the OpenAI response as a dict."""
        return list(await asyncio.gather(*(self._predict_one(model, item) for item in batch)))

    async def _predict_one(self, model: str, item: Any) -> Any:
        if not isinstance(item, dict):
            return BadRequest("an LLM request is a dict with 'messages' or 'prompt'")
        body = {"model": model, **item, "stream": False}
        call = self.engine.chat if "messages" in body else self.engine.complete
        answer = await call(body)
        if answer.status != 200:
            error = (answer.body or {}).get("error", {})
            return BadRequest(str(error.get("message")), status_code=answer.status)
        return answer.body

    # -- routes --------------------------------------------------------------------
    def routes(self, server: ServingContext) -> APIRouter:
        router = APIRouter()

        @router.get("/v1/models")
        async def models() -> Response:
            listing = await self.engine.models()
            cards = listing["data"]
            listed = {card["id"] for card in cards}
            base = next(card for card in cards if card["id"] == self.name)
            for adapter, path in self._known_adapters().items():
                if self._model_id(adapter) not in listed:
                    card = {"id": self._model_id(adapter), "root": path, "parent": self.name}
                    cards.append({**base, **card})
            return JSONResponse(listing)

        @router.post("/v1/chat/completions", openapi_extra=_CHAT_BODY)
        async def chat(request: Request) -> Response:
            body = await _body(request)
            await self._select(server, body)
            return _respond(await self.engine.chat(body, request))

        @router.post("/v1/completions", openapi_extra=_COMPLETION_BODY)
        async def completions(request: Request) -> Response:
            body = await _body(request)
            await self._select(server, body)
            return _respond(await self.engine.complete(body, request))

        return router

    def error_body(self, status_code: int, code: str, message: str) -> dict[str, Any]:
        kind = _KINDS.get(status_code, "InternalServerError")
        return {"error": {"message": message, "type": kind, "param": None, "code": status_code}}


def _openai_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """The core of OpenAI's request bodies, for /openapi.json (clients and fuzzers); vLLM
    takes more fields than these and validates them itself."""
    common = {
        "model": {"type": "string"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "stream": {"type": "boolean"},
    }
    schema = {"type": "object", "properties": {**common, **properties}, "required": required}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_MESSAGE = {
    "type": "object",
    "properties": {
        "role": {"enum": ["system", "user", "assistant"]},
        "content": {"type": "string"},
    },
    "required": ["role", "content"],
}
_CHAT_BODY = _openai_body(
    {"messages": {"type": "array", "items": _MESSAGE, "minItems": 1}}, ["model", "messages"]
)
_COMPLETION_BODY = _openai_body({"prompt": {"type": "string"}}, ["model", "prompt"])


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    return body


def _respond(answer: Answer) -> Response:
    if answer.stream is not None:
        return StreamingResponse(answer.stream, media_type="text/event-stream")
    return JSONResponse(answer.body, status_code=answer.status)
