"""Dynamic batching that never makes a lone request wait.

Requests for the same model queue in a lane; one batch per lane runs at a time,
and the next batch takes whatever queued meanwhile. A batch waits (at most
``max_wait_ms``) only while other requests have entered the replica but not yet
reached the queue, so a single client sees no added latency while concurrent
clients are grouped.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import SpanContext
from servekit.core._private import telemetry

RunBatch = Callable[[str, list[Any]], Awaitable[list[Any]]]


@dataclass
class _Arrival:
    counted: bool = True


_arrival: contextvars.ContextVar[_Arrival | None] = contextvars.ContextVar(
    "servekit_arrival", default=None
)


@dataclass
class _Lane:
    queue: collections.deque[tuple[Any, asyncio.Future[Any], SpanContext | None]] = field(
        default_factory=collections.deque
    )
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    running: bool = False
    task: asyncio.Future[None] | None = None  # held so the drain task is not collected


class Batcher:
    """Groups concurrent ``submit`` calls into batches for ``run_batch(model_id, items)``."""

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch_size: int,
        max_wait_ms: float,
        span_name: str = "servekit.batch",
    ) -> None:
        """``span_name`` names the span of each batch's ``run_batch`` call."""
        self._run_batch = run_batch
        self._span_name = span_name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._lanes: dict[str, _Lane] = {}
        self._arriving = 0
        self.batch_sizes: collections.Counter[int] = collections.Counter()

    def configure(self, max_batch_size: int, max_wait_ms: float) -> None:
        """Change the limits live; the next batch formed uses them."""
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000

    def arriving(self) -> _ArrivalScope:
        """Context for one request from the moment it enters the replica until it queues."""
        return _ArrivalScope(self)

    async def submit(self, model_id: str, item: Any) -> Any:
        """Queue ``item`` and return its own result, or raise the batch's exception."""
        arrival = _arrival.get()
        if arrival is not None and arrival.counted:
            arrival.counted = False
            self._arriving -= 1
        if self.max_batch_size == 1 and model_id not in self._lanes:
            # Batching off: no queue, no task; async models also run concurrently.
            self.batch_sizes[1] += 1
            # A batch of one is a child of its request: a link would say the same again.
            attributes = {"servekit.batch.size": 1, "servekit.model_id": model_id}
            with telemetry.span(self._span_name, attributes):
                (result,) = await self._run_batch(model_id, [item])
            if isinstance(result, BaseException):
                raise result
            return result
        lane = self._lanes.get(model_id)
        if lane is None:
            lane = self._lanes[model_id] = _Lane()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        lane.queue.append((item, future, telemetry.current_context()))
        lane.wakeup.set()
        if not lane.running:
            lane.running = True
            lane.task = asyncio.ensure_future(self._drain(model_id, lane))
        return await future

    async def _drain(self, model_id: str, lane: _Lane) -> None:
        try:
            while lane.queue:
                await self._fill(lane)
                size = min(len(lane.queue), self.max_batch_size)
                batch = [lane.queue.popleft() for _ in range(size)]
                self.batch_sizes[size] += 1
                await self._run(model_id, batch)
        finally:
            lane.running = False
            if not lane.queue:
                self._lanes.pop(model_id, None)

    async def _fill(self, lane: _Lane) -> None:
        if self.max_wait_s <= 0:
            return
        deadline = time.monotonic() + self.max_wait_s
        while len(lane.queue) < self.max_batch_size and self._arriving > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            lane.wakeup.clear()
            try:
                await asyncio.wait_for(lane.wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _run(
        self, model_id: str, batch: list[tuple[Any, asyncio.Future[Any], SpanContext | None]]
    ) -> None:
        items = [item for item, _, _ in batch]
        # One span per batch: a child of its first request (the way Ray Serve's own
        # @serve.batch traces), linked to every request whose input it computed.
        traced = [context for _, _, context in batch if context is not None]
        attributes = {"servekit.batch.size": len(items), "servekit.model_id": model_id}
        try:
            parent = traced[0] if traced else None
            with telemetry.span(self._span_name, attributes, parent=parent, links=traced):
                results = await self._run_batch(model_id, items)
            if len(results) != len(items):
                raise RuntimeError(
                    f"the model returned {len(results)} outputs for a batch of {len(items)} inputs"
                )
        except BaseException as exc:  # every caller gets the batch's failure
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future, _), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):  # this input alone failed
                future.set_exception(result)
            else:
                future.set_result(result)


class _ArrivalScope:
    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self._token: contextvars.Token[_Arrival | None] | None = None
        self._arrival = _Arrival()

    def __enter__(self) -> None:
        self._batcher._arriving += 1
        self._token = _arrival.set(self._arrival)

    def __exit__(self, *exc: object) -> None:
        if self._arrival.counted:
            self._arrival.counted = False
            self._batcher._arriving -= 1
        if self._token is not None:
            _arrival.reset(self._token)
