"""MlflowServable: a pyfunc model behind MLflow's own scoring protocol.

Requests arrive as raw bodies and are parsed inside the replica with MLflow's
scoring-server functions, so every body that works against `mlflow models serve`
works here. Concurrent requests with plain DataFrame inputs are concatenated into
one `model.predict` call and the predictions split back; anything else (params,
tensors, a batch that fails as a whole) is predicted request by request, so one
bad request never fails its neighbours.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from servekit.core import BadRequest, Servable, ServingContext

logger = logging.getLogger("servekit.mlflow")

_JSON = "application/json"
_CSV = "text/csv"


def model_uri_for(base: str, model_id: str) -> str:
    """``models:/iris`` + ``3`` -> ``models:/iris/3``;
    ``models:/iris`` + ``champion`` -> ``models:/iris@champion``."""
    if not model_id:
        return base
    return f"{base}/{model_id}" if model_id.isdigit() else f"{base}@{model_id}"


class MlflowServable(Servable):
    """Loads with ``mlflow.pyfunc.load_model``; speaks ``/invocations``, ``/ping``, ``/version``."""

    def load(self, model_id: str) -> Any:
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
        return await self.run_blocking(_predict_batch, model, batch)

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
            result = await server.infer({"format": mime, "body": body}, server.model_id(request))
            return Response(result, media_type=_JSON)

        async def ping() -> Response:
            return Response("\n", media_type=_JSON)

        async def version() -> Response:
            return Response(mlflow.__version__, media_type=_JSON)

        router.add_api_route("/invocations", invocations, methods=["POST"])
        router.add_api_route("/ping", ping, methods=["GET"])
        router.add_api_route("/health", ping, methods=["GET"])
        router.add_api_route("/version", version, methods=["GET"])
        return router


def _predict_batch(model: Any, batch: list[Any]) -> list[Any]:
    """One JSON string (``{"predictions": ...}``) or one BadRequest per item."""
    import pandas as pd

    outputs: list[Any] = [None] * len(batch)
    rest = _predict_merged(model, batch, outputs) if len(batch) > 1 else range(len(batch))
    frames: list[tuple[int, Any]] = []
    for index in rest:
        item = batch[index]
        try:
            data, params = _parse(model, item)
        except BadRequest as exc:
            outputs[index] = exc
            continue
        if isinstance(data, pd.DataFrame) and not params:
            frames.append((index, data))
        else:
            outputs[index] = _predict_one(model, data, params)
    if len(frames) == 1:
        index, data = frames[0]
        outputs[index] = _predict_one(model, data, None)
    elif frames:
        for index, output in _predict_concatenated(model, frames):
            outputs[index] = output
    return outputs


def _predict_merged(model: Any, batch: list[Any], outputs: list[Any]) -> list[int]:
    """Parse requests that are plain ``dataframe_split``/``dataframe_records`` bodies with
    the same columns as one document: MLflow's parsing costs more per request than the
    model does. Fills ``outputs`` for what it predicted; returns the indexes left over."""
    groups: dict[Any, list[tuple[int, Any]]] = {}
    rest = []
    for index, item in enumerate(batch):
        key, rows = _mergeable(item)
        if key is None:
            rest.append(index)
        else:
            groups.setdefault(key, []).append((index, rows))
    for key, members in groups.items():
        if len(members) == 1:
            rest.append(members[0][0])
            continue
        rows = [row for _, part in members for row in part]
        merged = (
            {"dataframe_split": {"columns": list(key[1]), "data": rows}}
            if key[0] == "split"
            else {"dataframe_records": rows}
        )
        parts = None
        try:
            data, _ = _parse(model, merged)
            parts = _split(model.predict(data), [len(part) for _, part in members])
        except Exception:  # a bad request among them: parse and predict one by one
            parts = None
        if parts is None:
            rest.extend(index for index, _ in members)
            continue
        for (index, _), part in zip(members, parts, strict=True):
            outputs[index] = _to_json(part)
    return sorted(rest)


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


def _predict_concatenated(model: Any, frames: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    import pandas as pd

    sizes = [len(df) for _, df in frames]
    try:
        combined = pd.concat([df for _, df in frames], ignore_index=True)
        predictions = model.predict(combined)
        parts = _split(predictions, sizes)
    except Exception:  # one bad request spoils a combined batch: retry them one by one
        parts = None
    if parts is None:
        return [(index, _predict_one(model, df, None)) for index, df in frames]
    return [(index, _to_json(part)) for (index, _), part in zip(frames, parts, strict=True)]


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
