"""A service whose model cannot load fails its deploy fast, with the model's own error."""

from __future__ import annotations

import time

import pytest
from servekit.core import DeployError, NotFound


def test_factory_error_fails_deploy_with_its_message_and_leaves_nothing(runtime, sample_spec):
    started = time.monotonic()
    with pytest.raises(DeployError) as info:
        runtime.deploy(sample_spec("broken", "Broken"), timeout_s=240)
    assert time.monotonic() - started < 60
    assert "ValueError: weights file /models/missing.bin not found" in info.value.cause
    assert info.value.service == "broken"
    with pytest.raises(NotFound):
        runtime.status("broken")
    assert "broken" not in [s.name for s in runtime.list()]


def test_missing_module_fails_deploy_naming_the_module(runtime):
    from servekit.core import ServiceSpec

    spec = ServiceSpec(
        name="no-module", source="python:does_not_exist.models:M", resources={"num_cpus": 0.25}
    )
    with pytest.raises(DeployError, match="does_not_exist"):
        runtime.deploy(spec, timeout_s=240)
    with pytest.raises(NotFound):
        runtime.status("no-module")


def test_failed_update_restores_the_running_version(runtime, sample_spec):
    good = sample_spec("keeps-serving", "Echo", options={"greeting": "v1"})
    runtime.deploy(good, timeout_s=180)
    try:
        bad = good.model_copy(update={"source": "python:sample_models:Broken", "options": {}})
        with pytest.raises(DeployError, match=r"missing\.bin"):
            runtime.update(bad, timeout_s=240)
        assert runtime.status("keeps-serving").status == "RUNNING"
        assert runtime.predict("keeps-serving", 1)["greeting"] == "v1"
        assert runtime.spec("keeps-serving") == good
    finally:
        runtime.delete("keeps-serving")


def test_unknown_services_are_not_found(runtime):
    with pytest.raises(NotFound, match="no service named 'ghost'"):
        runtime.predict("ghost", 1)
    with pytest.raises(NotFound):
        runtime.delete("ghost")
    with pytest.raises(NotFound):
        runtime.update(
            __import__("servekit.core", fromlist=["ServiceSpec"]).ServiceSpec(
                name="ghost", source="python:m:M"
            )
        )
