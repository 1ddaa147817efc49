"""One real Prefect test server for every Prefect test."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    pytest.importorskip("prefect", reason="the prefect extra is not installed")
    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # no telemetry from a sandbox
    with prefect_test_harness(server_startup_timeout=120):
        yield
