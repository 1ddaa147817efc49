"""Per-service authentication: a bearer token or an API key, on every route of a replica.

Secrets never travel through a spec, Serve's config or a log: the spec names an
environment variable and/or a file, which the replica reads itself (on Kubernetes a
Secret as environment or a mounted file; locally a file, or a variable set where the
cluster was started). The replica keeps only SHA-256 digests and compares them in
constant time. A file is re-read when it changes, so tokens rotate without a redeploy.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from servekit.core._private.errors import SpecError

if TYPE_CHECKING:
    from servekit.core._private.spec import Auth

_SPLIT = re.compile(r"[\s,]+")
_RECHECK_S = 5.0  # how often a request may look at the tokens file's mtime


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Credentials:
    """The tokens a service accepts, read from the replica's environment and files."""

    def __init__(self, auth: Auth) -> None:
        self.auth = auth
        self.header = "authorization" if auth.type == "bearer" else auth.header.lower()
        self._digests: list[bytes] = []
        self._mtime: float | None = None
        self._checked = 0.0
        self._load()

    def _load(self) -> None:
        tokens: list[str] = []
        if self.auth.tokens_env:
            tokens += _SPLIT.split(os.environ.get(self.auth.tokens_env, ""))
        if self.auth.tokens_file:
            path = Path(self.auth.tokens_file).expanduser()
            try:
                self._mtime = path.stat().st_mtime
                lines = path.read_text().splitlines()
            except OSError as exc:
                raise SpecError(
                    "auth.tokens_file", f"cannot read {path} in the replica: {exc.strerror}"
                ) from None
            for line in lines:
                if not line.lstrip().startswith("#"):
                    tokens += _SPLIT.split(line)
        self._digests = [_digest(t) for t in tokens if t]
        if not self._digests:
            where = " or ".join(
                f"{kind} {name!r}"
                for kind, name in (
                    ("environment variable", self.auth.tokens_env),
                    ("file", self.auth.tokens_file),
                )
                if name
            )
            raise SpecError(
                "auth",
                f"no token found in {where} where the replica runs; set it on the cluster "
                "(the environment `servekit up` ran in, or a Kubernetes Secret) or use a file",
            )

    def _maybe_reload(self) -> None:
        if not self.auth.tokens_file or time.monotonic() - self._checked < _RECHECK_S:
            return
        self._checked = time.monotonic()
        try:
            changed = Path(self.auth.tokens_file).expanduser().stat().st_mtime != self._mtime
            if changed:
                self._load()
        except (OSError, SpecError):
            pass  # keep the tokens we have rather than lock everyone out mid-rotation

    def allows(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether an ASGI request's headers carry one of the accepted tokens."""
        self._maybe_reload()
        wanted = self.header.encode()
        value = next((v for k, v in headers if k.lower() == wanted), None)
        if value is None:
            return False
        token = value.decode("latin-1").strip()
        if self.auth.type == "bearer":
            scheme, _, token = token.partition(" ")
            if scheme.lower() != "bearer":
                return False
            token = token.strip()
        given = _digest(token)
        # Compare with every digest, so the time taken says nothing about which matched.
        matches = [hmac.compare_digest(given, known) for known in self._digests]
        return any(matches)

    def challenge(self) -> str:
        """What a 401 tells the client to send."""
        if self.auth.type == "bearer":
            return "send 'Authorization: Bearer <token>'"
        return f"send the API key in the '{self.auth.header}' header"


def client_headers() -> dict[str, str]:
    """The headers servekit's own HTTP clients send (the MLflow deployment client, the
    Prefect smoke test, ServekitChatModel): the caller's trace context, and the token in
    ``SERVEKIT_TOKEN`` as ``Authorization: Bearer``. Example::

        httpx.post(url, json=data, headers=client_headers())
    """
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers)  # the caller's span continues in the service's trace
    token = os.environ.get("SERVEKIT_TOKEN")
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers
