"""Request limits every replica enforces before any model code runs: a body larger than
the service's limit gets 413, a body that does not arrive in time gets 408. Ray Serve has
neither: it streams any body to the replica, and a client that stalls mid-body would hold
one of the replica's ``max_ongoing_requests`` slots for as long as HAProxy's client
timeout (an hour by default, reset by every byte a trickling client sends).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]


class BodyRejected(Exception):
    """The request body broke a limit; ``status`` (408 or 413) and a sentence why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


async def read_body(
    scope: dict[str, Any], receive: Receive, max_bytes: int, timeout_s: float
) -> bytes | None:
    """The whole request body, or None if the client went away. Raises BodyRejected as
    soon as a limit is broken, before reading the rest."""
    length = _content_length(scope)
    if length is not None and length > max_bytes:
        raise _too_large(max_bytes)
    deadline = asyncio.get_running_loop().time() + timeout_s
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            message = await asyncio.wait_for(receive(), timeout=max(remaining, 0.0))
        except TimeoutError:
            raise BodyRejected(
                408,
                "request_timeout",
                f"the request body did not arrive within {timeout_s:g}s",
            ) from None
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app ``body`` first, then waits on the client (so an
    app can still notice a disconnect while it streams its answer)."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def refuse(send: Any, status: int, body: dict[str, Any], *extra: tuple[bytes, bytes]) -> None:
    """Answer with a JSON error and close the connection (the unread rest of a body would
    otherwise be read and thrown away on a kept-alive connection)."""
    headers = [(b"content-type", b"application/json"), (b"connection", b"close"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def _too_large(max_bytes: int) -> BodyRejected:
    return BodyRejected(
        413, "request_too_large", f"the request body is larger than the limit of {max_bytes} bytes"
    )


def _content_length(scope: dict[str, Any]) -> int | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
