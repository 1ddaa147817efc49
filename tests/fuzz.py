"""Fuzz a deployed service's HTTP API from its own OpenAPI description with schemathesis:
valid and invalid bodies (wrong types, missing fields, broken JSON, wrong content types),
a bounded number of examples per operation, derandomized so a failure reproduces.

What must hold for every example: no 5xx (a client's mistake is never the server's
error), every error response is a JSON body, and the service keeps answering.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import requests

_CHECKS_READY: list[Any] = []


def _checks() -> list[Any]:
    """schemathesis's own 'no server error' and ours: errors are JSON (registered once)."""
    if not _CHECKS_READY:
        import schemathesis
        from schemathesis.checks import not_a_server_error

        @schemathesis.check
        def errors_are_json(ctx: Any, response: Any, case: Any) -> None:
            if response.status_code < 400:
                return
            kind = (response.headers.get("content-type") or [""])[0]
            assert "json" in kind, f"{response.status_code} with content-type {kind!r}"
            try:
                json.loads(response.content)
            except ValueError as exc:
                raise AssertionError(f"{response.status_code} body is not JSON") from exc

        _CHECKS_READY.extend([not_a_server_error, errors_are_json])
    return _CHECKS_READY


def fuzz(
    service_url: str,
    *,
    paths: str,
    max_examples: int = 30,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Fuzz the operations of ``service_url``'s ``/openapi.json`` whose path matches the
    regex ``paths``; raises (schemathesis's failure, with a curl line to reproduce) on the
    first example that breaks a check. Returns how many examples ran and their statuses."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    raw = requests.get(f"{service_url}/openapi.json", headers=headers, timeout=30).json()
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=service_url)  # the service's route prefix, not FastAPI's
    schema = schema.include(path_regex=paths)
    session = requests.Session()
    checks = _checks()
    seen: dict[str, Any] = {"examples": 0, "statuses": {}}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, f"no operation of {service_url} matches {paths!r}"
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=max_examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate],
            print_blob=False,
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            response = case.call(session=session, headers=headers, timeout=timeout_s)
            seen["examples"] += 1
            seen["statuses"][response.status_code] = (
                seen["statuses"].get(response.status_code, 0) + 1
            )
            case.validate_response(response, checks=checks)

        run()
    # The replica survived all of it.
    assert httpx.get(f"{service_url}/openapi.json", headers=headers, timeout=30).status_code == 200
    return seen
