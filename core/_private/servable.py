"""Servable: what an adapter implements so that ModelServer can host it."""

from __future__ import annotations

import abc
import asyncio
import contextvars
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from fastapi import APIRouter
    from servekit.core._private.server import ServingContext

T = TypeVar("T")


class Servable(abc.ABC):
    """One kind of model, served. A plugin is one subclass of this.

    ModelServer supplies batching, multiplexing, health checks and live
    reconfiguration; a Servable supplies loading, batch prediction and the wire
    protocol. Example::

        class EchoServable(Servable):
            def load(self, model_id):
                return None
            async def predict(self, model, batch):
                return batch
            def routes(self, server):
                router = APIRouter()
                @router.post("/echo")
                async def echo(request: Request):
                    body = await request.json()
                    return await server.infer(body, server.model_id(request))
                return router
    """

    def __init__(self, target: str, options: dict[str, Any]) -> None:
        self.target = target
        self.options = options
        self._model_thread: ThreadPoolExecutor | None = None

    async def run_blocking(
        self, fn: Callable[..., T], *args: Any, context: contextvars.Context | None = None
    ) -> T:
        """Run blocking model code off the event loop, one call at a time, so the
        replica keeps accepting (and batching) requests while a batch computes. It runs
        in a copy of the caller's context (or in ``context``), so spans the model makes
        nest in the request's."""
        if self._model_thread is None:
            self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="servekit-model")
        context = context or contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._model_thread, context.run, fn, *args
        )

    async def iterate_blocking(
        self, iterator: Iterator[T], context: contextvars.Context | None = None
    ) -> AsyncIterator[T]:
        """Drive a blocking iterator (a model's stream of chunks) on the model thread, one
        item at a time, so batches keep running between the chunks of a stream. Every
        item runs in one context (``context``, else a copy of the caller's): a model that
        sets a context variable in one chunk and resets it in a later one (MLflow's
        ``predict_stream`` does) needs the same; pass the context the stream was opened in."""
        end = object()
        context = context or contextvars.copy_context()
        try:
            while (
                item := await self.run_blocking(next, iterator, end, context=context)
            ) is not end:
                yield item
        finally:
            close = getattr(iterator, "close", None)
            if close is not None and self._model_thread is not None:
                # Not awaited: a cancelled stream (the client went away) cannot wait. The
                # model thread runs it after any chunk it is computing.
                self._model_thread.submit(close)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Runs once in the replica, on its event loop, before the first ``load``: start
        what every model shares here (an LLM engine). An exception fails the deploy."""

    @abc.abstractmethod
    def load(self, model_id: str) -> Any:
        """Load one model (or version); ``model_id`` is ``""`` when multiplexing is off.

        Runs inside the replica: at start-up without multiplexing (an exception fails
        the deploy), else on a model's first request. A plain ``def`` runs in a worker
        thread; an ``async def`` runs on the replica's event loop.
        """

    def unload(self, model: Any) -> None:  # noqa: B027 - optional hook
        """Free ``model`` when multiplexing evicts it from the replica's LRU (worker thread)."""

    @abc.abstractmethod
    async def predict(self, model: Any, batch: list[Any]) -> list[Any]:
        """Predict a batch of request inputs; return one output per input, in order.

        An exception instance in place of an output fails that input alone (for
        example a ``BadRequest`` for one malformed request in a batch).
        """

    @abc.abstractmethod
    def routes(self, server: ServingContext) -> APIRouter:
        """The HTTP routes of the wire protocol, mounted under the service's route prefix."""

    def check_health(self) -> None:  # noqa: B027 - optional hook
        """Raise if the replica should be restarted; called every health-check period."""

    def describe(self) -> dict[str, Any]:
        """What the replica holds, for status and tests (e.g. the adapters loaded)."""
        return {}

    def reconfigure(self, user_config: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Apply the spec's ``user_config`` live, without a restart."""

    def error_body(self, status_code: int, code: str, message: str) -> dict[str, Any]:
        """The JSON body of an error response; override to match a host's protocol."""
        return {"error": {"code": code, "message": message}}
