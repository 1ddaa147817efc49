"""MlflowServable: a pyfunc model behind MLflow's own scoring protocol.

Requests arrive as raw bodies and are parsed inside the replica with MLflow's
scoring-server functions, so every body that works against `mlflow models serve`
works here. Concurrent requests with plain DataFrame inputs are concatenated into
one `model.predict` call and the predictions split back; anything else (params,
tensors, a batch that fails as a whole) is predicted request by request, so one
bad request never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import itertools
import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from servekit.core import BadRequest, Servable, ServingContext
from servekit.plugins.mlflow._llm import MlflowLLM

logger = logging.getLogger("servekit.mlflow")

_JSON = "application/json"
_CSV = "text/csv"


# The body MLflow's scoring protocol takes, for /openapi.json (clients and fuzzers).
_INVOCATIONS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "minProperties": 1,
                    "properties": {
                        "dataframe_split": {
                            "type": "object",
                            "properties": {
                                "columns": {"type": "array", "items": {"type": "string"}},
                                "data": {"type": "array", "items": {"type": "array"}},
                            },
                        },
                        "dataframe_records": {"type": "array", "items": {"type": "object"}},
                        "instances": {"type": "array"},
                        "inputs": {},
                        "params": {"type": "object"},
                        "stream": {"type": "boolean"},
                    },
                }
            },
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


def model_uri_for(base: str, model_id: str) -> str:
    """``models:/iris`` + ``3`` -> ``models:/iris/3``;
    ``models:/iris`` + ``champion`` -> ``models:/iris@champion``."""
    if not model_id:
        return base
    return f"{base}/{model_id}" if model_id.isdigit() else f"{base}@{model_id}"


class MlflowServable(Servable):
    """Loads with ``mlflow.pyfunc.load_model``; speaks ``/invocations``, ``/ping``, ``/version``.
    With ``engine: vllm`` in its options, a transformers-flavor LLM runs in vLLM instead."""

    def __init__(self, target: str, options: dict[str, Any]) -> None:
        super().__init__(target, options)
        self._llm: MlflowLLM | None = None
        if options.get("engine") == "vllm":
            uri = model_uri_for(target, "")
            self._llm = MlflowLLM(uri, options.get("engine_args") or {})

    async def start(self) -> None:
        if self._llm is not None:
            await self._llm.start()

    def check_health(self) -> None:
        if self._llm is not None and self._llm.engine.dead:
            raise RuntimeError("the vLLM engine has died; Serve replaces this replica")

    def load(self, model_id: str) -> Any:
        if self._llm is not None:
            return self._llm
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException

        uri = model_uri_for(self.target, model_id)
        logger.info("loading MLflow model %s", uri)
        try:
            return mlflow.pyfunc.load_model(uri)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # e.g. a version that is not there
                raise BadRequest(exc.message, status_code=404, code=exc.error_code) from None
            raise

    async def predict(self, model: Any, batch: list[Any]) -> list[Any]:
        if isinstance(model, MlflowLLM):
            return list(await asyncio.gather(*(_llm_predict(model, i) for i in batch)))
        return await self.run_blocking(_predict_batch, model, batch)

    async def _stream(
        self, server: ServingContext, request: Request, document: dict[str, Any]
    ) -> StreamingResponse:
        """``"stream": true``: the model's ``predict_stream`` chunks as server-sent events
        (``data: <json>``, then ``data: [DONE]``), the way Databricks endpoints stream."""
        model = await server.model(server.model_id(request))
        if isinstance(model, MlflowLLM):
            return StreamingResponse(await model.stream(document), media_type="text/event-stream")
        data, params = _stream_input(document)
        # The stream opens and runs in one context: MLflow resets, in its last chunk, a
        # context variable it set when the stream opened.
        context = contextvars.copy_context()
        first, chunks = await self.run_blocking(_open_stream, model, data, params, context=context)

        async def events() -> Any:
            if first is _END:
                yield "data: [DONE]\n\n"
                return
            yield _event(first)
            try:
                async for chunk in self.iterate_blocking(chunks, context):
                    yield _event(chunk)
            except Exception as exc:  # mid-stream: the error is the last event
                failed = _model_failed(exc)
                yield _event(self.error_body(400, failed.code, str(failed)))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def error_body(self, status_code: int, code: str, message: str) -> dict[str, Any]:
        return {"error_code": code.upper(), "message": message}

    def routes(self, server: ServingContext) -> APIRouter:
        import mlflow

        router = APIRouter()

        async def invocations(request: Request) -> Response:
            content_type = request.headers.get("content-type", _JSON)
            mime, _, parameters = content_type.partition(";")
            mime = mime.strip().lower()
            if mime not in (_JSON, _CSV):
                raise BadRequest(
                    f"content type {mime!r} is not supported: send {_JSON} or {_CSV}",
                    status_code=415,
                    code="unsupported_media_type",
                )
            if "charset" in parameters and "utf-8" not in parameters.lower():
                raise BadRequest(
                    "only UTF-8 bodies are supported",
                    status_code=415,
                    code="unsupported_media_type",
                )
            body = await request.body()
            if mime == _JSON and b'"stream"' in body:
                document = _json_or_none(body)
                if isinstance(document, dict) and document.get("stream") is True:
                    return await self._stream(server, request, document)
            result = await server.infer({"format": mime, "body": body}, server.model_id(request))
            return Response(result, media_type=_JSON)

        async def ping() -> Response:
            return Response("\n", media_type=_JSON)

        async def version() -> Response:
            return Response(mlflow.__version__, media_type=_JSON)

        router.add_api_route(
            "/invocations", invocations, methods=["POST"], openapi_extra=_INVOCATIONS_BODY
        )
        router.add_api_route("/ping", ping, methods=["GET"])
        router.add_api_route("/health", ping, methods=["GET"])
        router.add_api_route("/version", version, methods=["GET"])
        return router


async def _llm_predict(model: MlflowLLM, item: dict[str, Any]) -> Any:
    if item["format"] != _JSON:
        return BadRequest("an LLM takes a JSON body", status_code=415, code="BAD_REQUEST")
    try:
        return await model.predict(item["body"])
    except BadRequest as exc:
        return exc


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _stream_input(document: dict[str, Any]) -> tuple[Any, Any]:
    """``{"inputs": x, "params": p, "stream": true}`` -> (x, p); without ``inputs`` the rest
    of the body is the input (``{"messages": [...], "stream": true}``)."""
    params = document.get("params")
    if "inputs" in document:
        return document["inputs"], params
    return {k: v for k, v in document.items() if k not in ("stream", "params")}, params


def _open_stream(model: Any, data: Any, params: Any) -> tuple[Any, Any]:
    """Start ``model.predict_stream`` and take its first chunk, so that a model that does
    not stream or rejects the input fails the request with a 4xx before any event."""
    from mlflow.exceptions import MlflowException

    try:
        chunks = iter(
            model.predict_stream(data, params=params) if params else model.predict_stream(data)
        )
        return next(chunks, _END), chunks
    except MlflowException as exc:
        error = _bad_request(exc)
        if error.status_code >= 500:  # e.g. "This model does not support predict_stream"
            error = BadRequest(exc.message, code="BAD_REQUEST")
        raise error from None
    except Exception as exc:
        raise _model_failed(exc) from None


def _event(chunk: Any) -> str:
    return f"data: {json.dumps(chunk, default=str)}\n\n"


_END = object()


def _predict_batch(model: Any, batch: list[Any]) -> list[Any]:
    """One JSON string (``{"predictions": ...}``) or one BadRequest per item.

    Plain DataFrame requests are predicted in one ``model.predict`` call: requests with
    the same columns are parsed as one document (MLflow's parsing costs more per request
    than a small model does), the rest are parsed alone and concatenated. Requests with
    ``params`` or tensor inputs are predicted alone."""
    outputs: list[Any] = [None] * len(batch)
    frames: list[_Frame] = []
    alone: list[int] = []
    for indexes, sizes, document in _merge_documents(batch):
        if len(indexes) == 1:
            alone.append(indexes[0])
            continue
        try:
            data, _ = _parse(model, document)
        except BadRequest:  # a bad request among them: parse them one by one
            alone.extend(indexes)
            continue
        frames.append(_Frame(indexes, sizes, data))
    for index in sorted(alone):
        try:
            data, params = _parse(model, batch[index])
        except BadRequest as exc:
            outputs[index] = exc
            continue
        if _is_frame(data) and not params:
            frames.append(_Frame([index], [len(data)], data))
        else:
            outputs[index] = _predict_one(model, data, params)
    _predict_frames(model, batch, frames, outputs)
    return outputs


class _Frame:
    """Parsed rows of one or more requests: ``sizes[i]`` rows belong to ``indexes[i]``."""

    def __init__(self, indexes: list[int], sizes: list[int], data: Any) -> None:
        self.indexes, self.sizes, self.data = indexes, sizes, data


def _predict_frames(model: Any, batch: list[Any], frames: list[_Frame], outputs: list[Any]) -> None:
    """Predict all frames in one call and split the predictions back; when that fails (one
    bad request spoils a combined batch), retry frame by frame, then request by request."""
    import pandas as pd

    if not frames:
        return
    if len(frames) == 1 and len(frames[0].indexes) == 1:
        outputs[frames[0].indexes[0]] = _predict_one(model, frames[0].data, None)
        return
    sizes = [size for frame in frames for size in frame.sizes]
    indexes = [index for frame in frames for index in frame.indexes]
    try:
        data = frames[0].data
        if len(frames) > 1:
            data = pd.concat([frame.data for frame in frames], ignore_index=True)
        parts = _split(model.predict(data), sizes)
    except Exception:
        parts = None
    if parts is not None:
        for index, part in zip(indexes, parts, strict=True):
            outputs[index] = _to_json(part)
    elif len(frames) > 1:
        for frame in frames:
            _predict_frames(model, batch, [frame], outputs)
    else:
        for index in indexes:
            try:
                data, params = _parse(model, batch[index])
            except BadRequest as exc:
                outputs[index] = exc
                continue
            outputs[index] = _predict_one(model, data, params)


def _merge_documents(batch: list[Any]) -> list[tuple[list[int], list[int], Any]]:
    """Group plain ``dataframe_split``/``dataframe_records`` bodies by their columns, each
    group as one document: (request indexes, rows per request, document). Every other
    item is a group of its own, with no document."""
    groups: dict[Any, tuple[list[int], list[int], list[Any]]] = {}
    single: list[tuple[list[int], list[int], Any]] = []
    for index, item in enumerate(batch):
        key, rows = _mergeable(item) if len(batch) > 1 else (None, [])
        if key is None:
            single.append(([index], [], None))
            continue
        indexes, sizes, merged = groups.setdefault(key, ([], [], []))
        indexes.append(index)
        sizes.append(len(rows))
        merged.extend(rows)
    documents = [
        (
            indexes,
            sizes,
            {"dataframe_split": {"columns": list(key[1]), "data": rows}}
            if key[0] == "split"
            else {"dataframe_records": rows},
        )
        for key, (indexes, sizes, rows) in groups.items()
    ]
    return documents + single


def _mergeable(item: Any) -> tuple[Any, list[Any]]:
    if not (isinstance(item, dict) and item.get("format") == _JSON):
        return None, []
    try:
        doc = json.loads(item["body"])
    except ValueError:
        return None, []
    if not isinstance(doc, dict) or len(doc) != 1:
        return None, []
    split, records = doc.get("dataframe_split"), doc.get("dataframe_records")
    if isinstance(split, dict) and set(split) == {"columns", "data"}:
        columns, data = split["columns"], split["data"]
        if isinstance(columns, list) and isinstance(data, list) and data:
            return ("split", tuple(map(str, columns))), data
    if isinstance(records, list) and records and all(isinstance(r, dict) for r in records):
        keys = tuple(records[0])
        if all(tuple(r) == keys for r in records):  # ragged records stay separate
            return ("records", keys), records
    return None, []


def _is_frame(data: Any) -> bool:
    import pandas as pd

    return isinstance(data, pd.DataFrame)


def _split(predictions: Any, sizes: list[int]) -> list[Any] | None:
    import numpy as np
    import pandas as pd

    if len(predictions) != sum(sizes):
        return None
    bounds = np.cumsum([0, *sizes])
    if isinstance(predictions, pd.DataFrame | pd.Series):
        return [predictions.iloc[a:b] for a, b in itertools.pairwise(bounds)]
    if isinstance(predictions, np.ndarray | list):
        return [predictions[a:b] for a, b in itertools.pairwise(bounds)]
    return None


def _parse(model: Any, item: Any) -> tuple[Any, Any]:
    """Parse one request the way `mlflow models serve` does."""
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    schema = model.metadata.get_input_schema()
    try:
        if isinstance(item, pd.DataFrame):  # from a handle, already a frame
            return item, None
        if isinstance(item, dict) and "format" in item and "body" in item:
            if item["format"] == _CSV:
                text = item["body"].decode("utf-8")
                return scoring_server.parse_csv_input(io.StringIO(text), schema=schema), None
            body = item["body"]
        else:  # a JSON document from a handle
            body = json.dumps(item)
        # MLflow's own request parsing (private in mlflow, but it is the protocol itself).
        parsed = scoring_server._parse_json_data(body, model.metadata, schema)
        return parsed.data, parsed.params
    except MlflowException as exc:
        raise _bad_request(exc) from None
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8: {exc}", code="bad_request") from None


def _predict_one(model: Any, data: Any, params: Any) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        predictions = model.predict(data, params=params) if params else model.predict(data)
        return _to_json(predictions)
    except MlflowException as exc:
        return _bad_request(exc)
    except Exception as exc:
        return _model_failed(exc)


def _model_failed(exc: Exception) -> BadRequest:
    logger.warning("prediction failed: %s", exc)
    return BadRequest(
        "the model failed on this input; check that it matches the model's signature "
        f"({type(exc).__name__}: {exc})",
        code="bad_request",
    )


def _to_json(predictions: Any) -> str:
    from mlflow.pyfunc import scoring_server

    out = io.StringIO()
    scoring_server.predictions_to_json(predictions, out)
    return out.getvalue()


def _bad_request(exc: Any) -> BadRequest:
    return BadRequest(exc.message, status_code=exc.get_http_status_code(), code=exc.error_code)
