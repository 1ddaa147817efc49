"""The one exception family servekit raises. Every message is a sentence a user can act on."""

from __future__ import annotations

from collections.abc import Iterable


class ServekitError(Exception):
    """Base class of every error servekit raises on purpose."""


class SpecError(ServekitError, ValueError):
    """A service spec is invalid: names the field and, where known, the allowed values."""

    def __init__(self, field: str, problem: str, allowed: Iterable[object] | None = None) -> None:
        self.field = field
        self.problem = problem
        self.allowed = list(allowed) if allowed is not None else None
        message = f"{field}: {problem}" if field else problem
        if self.allowed:
            message += f" (allowed: {', '.join(str(a) for a in self.allowed)})"
        super().__init__(message)


class DeployError(ServekitError):
    """A deploy failed; ``cause`` is the failing replica's own error, ``details`` its full text."""

    def __init__(self, service: str, cause: str, details: str = "") -> None:
        self.service = service
        self.cause = cause
        self.details = details
        super().__init__(f"service {service!r} failed to deploy: {cause}")


class NotFound(ServekitError, LookupError):
    """No service (or model, or cluster state) by that name."""


class Timeout(ServekitError, TimeoutError):
    """An operation did not finish in the time it was given."""


class ClusterUnavailable(ServekitError, ConnectionError):
    """No Ray cluster could be reached or started; the message says how to get one."""


class AccessDenied(ServekitError, PermissionError):
    """The cluster refused the caller's credentials or their permissions; says which."""


class BadRequest(ServekitError):
    """A client sent input the service cannot use; becomes an HTTP 4xx with a JSON body."""

    def __init__(self, message: str, *, status_code: int = 400, code: str = "bad_request") -> None:
        self.status_code = status_code
        self.code = code
        super().__init__(message)
