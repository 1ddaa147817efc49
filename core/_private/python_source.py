"""The ``python:pkg.mod:Factory`` source: any Python model, served without a plugin.

``Factory`` is called once per model (with ``model_id=`` when it takes that
argument, plus the spec's ``options`` as keyword arguments) and returns the
model. The model's ``predict`` method, or the model itself if it has none, is
called with a list of inputs, one per request, and returns one output each;
it may be sync (run in a worker thread) or async. A model may define
``check_health()``, which Serve calls every health-check period: raising there
makes Serve replace the replica.

Wire protocol: ``POST <prefix>/`` or ``POST <prefix>/predict`` with any JSON
body; the reply is the model's output as JSON. ``GET <prefix>/healthz``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import weakref
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from servekit.core._private.errors import BadRequest
from servekit.core._private.servable import Servable
from servekit.core._private.server import ServingContext
from servekit.core._private.sources import import_object


class PythonServable(Servable):
    """Serves the object a user's factory returns."""

    def __init__(self, target: str, options: dict[str, Any]) -> None:
        super().__init__(target, options)
        # Loaded models, for health checks; evicted ones drop out by themselves.
        self._loaded: weakref.WeakSet[Any] = weakref.WeakSet()

    def load(self, model_id: str) -> Any:
        factory = import_object(self.target)
        kwargs = dict(self.options)
        if _accepts(factory, "model_id"):
            kwargs["model_id"] = model_id
        model = factory(**kwargs)
        if not callable(getattr(model, "predict", None)) and not callable(model):
            raise TypeError(
                f"{self.target} returned {type(model).__name__}, which has no predict() "
                "and is not callable"
            )
        with contextlib.suppress(TypeError):  # objects that cannot be weakly referenced
            self._loaded.add(model)
        return model

    def check_health(self) -> None:
        """Ask every loaded model that defines ``check_health()``; it raises if unwell."""
        for model in list(self._loaded):
            check = getattr(model, "check_health", None)
            if callable(check):
                check()

    async def predict(self, model: Any, batch: list[Any]) -> list[Any]:
        fn = getattr(model, "predict", None) or model
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            type(fn).__call__  # an object with an async __call__
        ):
            result = await fn(batch)
        else:
            result = await self.run_blocking(fn, batch)
        return list(result)

    def routes(self, server: ServingContext) -> APIRouter:
        router = APIRouter()

        async def predict(request: Request) -> Response:
            item = await _json_body(request)
            result = await server.infer(item, server.model_id(request))
            return JSONResponse(result)

        router.add_api_route("/", predict, methods=["POST"])
        router.add_api_route("/predict", predict, methods=["POST"])

        async def healthz() -> dict[str, str]:
            return {"status": "ok", "service": server.spec.name}

        router.add_api_route("/healthz", healthz, methods=["GET"])
        return router


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise BadRequest("the request body is empty; send a JSON document", code="empty_body")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(
            f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from None


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params
