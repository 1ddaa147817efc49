"""``-C engine=vllm``: a model logged with MLflow's transformers flavor, served by vLLM.

The replica downloads the model's artifacts, starts a VllmEngine on the weights and
tokenizer the flavor saved, and answers ``/invocations`` the way MLflow's scoring server
answers for that model's task:

- ``llm/v1/chat``: ``{"messages": [...], "max_tokens": 8, ...}`` -> ``[chat.completion]``;
- ``llm/v1/completions``: ``{"prompt": "...", ...}`` -> ``[text_completion]``;
- ``text-generation``: ``{"inputs": ["..."], "params": {...}}`` -> ``{"predictions": [str]}``
  (each the prompt followed by what was generated, as the transformers pipeline returns).

``"stream": true`` streams the engine's OpenAI chunks as ``data:`` events (MLflow's own
flavor has no ``predict_stream``; these are the chunks of its ChatCompletionChunk type).
Token counts and ``finish_reason`` are vLLM's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from servekit.core import BadRequest

logger = logging.getLogger("servekit.mlflow")

CHAT, COMPLETIONS, TEXT = "llm/v1/chat", "llm/v1/completions", "text-generation"
# Generation settings a request may carry, in OpenAI's names (MLflow's max_new_tokens too).
_SETTINGS = {"max_tokens", "temperature", "top_p", "top_k", "stop", "seed"}
_SETTINGS |= {"presence_penalty", "frequency_penalty", "ignore_eos"}


class MlflowLLM:
    """One transformers-flavor model version in a vLLM engine, spoken to in MLflow's format."""

    def __init__(self, model_uri: str, engine_args: dict[str, Any]) -> None:
        self.model_uri = model_uri
        self.engine_args = dict(engine_args)
        self.task = TEXT
        self.engine: Any = None
        self._defaults: dict[str, Any] = {}

    async def start(self) -> None:
        import mlflow.artifacts
        from servekit.plugins.llm import VllmEngine

        logger.info("downloading %s", self.model_uri)
        local = await asyncio.to_thread(mlflow.artifacts.download_artifacts, self.model_uri)
        weights, tokenizer, self.task, self._defaults = _transformers_layout(Path(local))
        args = {"tokenizer": str(tokenizer), **self.engine_args}
        name = _model_name(self.model_uri)
        self.engine = VllmEngine(str(weights), name, args)
        await self.engine.start()

    # -- /invocations ------------------------------------------------------------------
    async def predict(self, body: bytes) -> str:
        """One request body -> the JSON text MLflow's scoring server would answer."""
        document = _document(body)
        rows, unwrapped = self._rows(document)
        answers = await asyncio.gather(*(self._answer(row) for row in rows))
        return json.dumps(answers if unwrapped else {"predictions": answers})

    async def stream(self, document: dict[str, Any]) -> AsyncIterator[str]:
        """The events of a ``"stream": true`` request; a 4xx before the first one."""
        rows, _ = self._rows({k: v for k, v in document.items() if k != "stream"})
        if len(rows) != 1:
            raise BadRequest("a stream answers one input", code="INVALID_PARAMETER_VALUE")
        body = {**self._request(rows[0]), "stream": True}
        answer = await (self.engine.chat(body) if self.task == CHAT else self.engine.complete(body))
        if answer.stream is None:
            raise _failed(answer)
        return _mlflow_events(answer.stream)

    def _rows(self, document: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The inputs of a body, each a dict with ``messages`` or ``prompt`` plus settings,
        and whether the answer is unwrapped (a top-level LLM input) or ``predictions``."""
        key = "messages" if self.task == CHAT else "prompt"
        params = document.get("params") or {}
        if key in document:
            return [{**params, **document}], True
        if self.task == TEXT and "inputs" in document:
            inputs = document["inputs"]
            prompts = [inputs] if isinstance(inputs, str) else inputs
            if isinstance(prompts, list) and all(isinstance(p, str) for p in prompts):
                return [{**params, "prompt": p} for p in prompts], False
        records = document.get("dataframe_records", document.get("inputs"))
        if "dataframe_split" in document:
            split = document["dataframe_split"]
            columns = split.get("columns", [])
            records = [dict(zip(columns, row, strict=False)) for row in split.get("data", [])]
        if isinstance(records, dict):
            records = [records]
        if isinstance(records, list) and records and all(isinstance(r, dict) for r in records):
            if self.task == TEXT:  # a DataFrame of prompts: its first column
                records = [{"prompt": next(iter(r.values()))} for r in records]
            if all(key in r for r in records):
                return [{**params, **r} for r in records], False
        expected = "a list of strings in 'inputs'" if self.task == TEXT else f"'{key}'"
        raise BadRequest(f"this {self.task} model takes {expected}", code="INVALID_PARAMETER_VALUE")

    def _request(self, row: dict[str, Any]) -> dict[str, Any]:
        settings = {**self._defaults, **row}
        if "max_new_tokens" in settings:
            settings.setdefault("max_tokens", settings.pop("max_new_tokens"))
        body = {k: v for k, v in settings.items() if k in _SETTINGS}
        body["model"] = self.engine.name
        if self.task == CHAT:
            body["messages"] = row["messages"]
        else:
            body["prompt"] = row["prompt"]
        return body

    async def _answer(self, row: dict[str, Any]) -> Any:
        body = self._request(row)
        answer = await (self.engine.chat(body) if self.task == CHAT else self.engine.complete(body))
        if answer.status != 200 or answer.body is None:
            raise _failed(answer)
        reply = answer.body
        choice = reply["choices"][0]
        if self.task == TEXT:
            return (row["prompt"] + choice["text"]).strip()
        shaped = {"index": 0, "finish_reason": choice["finish_reason"]}
        if self.task == CHAT:
            message = choice["message"]
            shaped["message"] = {"role": message["role"], "content": message["content"]}
        else:
            shaped["text"] = choice["text"]
        usage = reply["usage"]
        return {
            "id": str(uuid.uuid4()),
            "object": reply["object"],
            "created": int(time.time()),
            "model": reply["model"],
            "usage": {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
            "choices": [shaped],
        }


def _transformers_layout(local: Path) -> tuple[Path, Path, str, dict[str, Any]]:
    """The weights folder, tokenizer folder, task and generation defaults of a
    transformers-flavor model, read from its MLmodel file."""
    from mlflow.models import Model

    meta = Model.load(str(local / "MLmodel"))
    flavor = meta.flavors.get("transformers")
    if flavor is None:
        raise ValueError(
            f"-C engine=vllm serves MLflow transformers models; this one has {sorted(meta.flavors)}"
        )
    if flavor.get("peft_adaptor"):
        raise ValueError("-C engine=vllm does not serve PEFT models: merge the adapter first")
    if not flavor.get("model_binary"):
        raise ValueError(
            "the model was logged without its weights (save_pretrained=False): "
            "log it again with them saved"
        )
    weights = local / flavor["model_binary"]
    tokenizer = local / "components" / "tokenizer"  # MLflow's fixed folder name
    if not tokenizer.is_dir():
        tokenizer = weights
    task = flavor.get("inference_task") or flavor.get("task") or TEXT
    if task not in (CHAT, COMPLETIONS, TEXT):
        raise ValueError(f"-C engine=vllm serves {CHAT}, {COMPLETIONS} or {TEXT}, not {task}")
    defaults = meta.flavors.get("python_function", {}).get("config") or {}
    return weights, tokenizer, task, dict(defaults)


def _model_name(model_uri: str) -> str:
    """``models:/tiny-chat/1`` -> ``tiny-chat``; other URIs -> their last path part."""
    path = model_uri.split(":/", 1)[-1].strip("/")
    name = path.split("/")[0].split("@")[0] if model_uri.startswith("models:/") else path
    return name.rsplit("/", 1)[-1] or "model"


def _document(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        raise BadRequest("the body is not valid JSON", code="MALFORMED_REQUEST") from None
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object", code="MALFORMED_REQUEST")
    return document


def _failed(answer: Any) -> BadRequest:
    error = (answer.body or {}).get("error", {})
    status = answer.status if 400 <= answer.status < 500 else 400
    return BadRequest(str(error.get("message")), status_code=status, code="BAD_REQUEST")


async def _mlflow_events(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """vLLM's SSE lines with its error chunks turned into MLflow's error body."""
    async for line in lines:
        if line.startswith("data: {") and '"error"' in line:
            error = json.loads(line[6:]).get("error")
            if isinstance(error, dict):
                message = {"error_code": "INTERNAL_ERROR", "message": error.get("message")}
                yield f"data: {json.dumps(message)}\n\n"
                continue
        yield line
