"""Autoscaling follows load, and a model's failing health check gets its replica replaced."""

from __future__ import annotations

import concurrent.futures
import time

import httpx


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_autoscaling_adds_a_replica_under_load(runtime, sample_spec):
    spec = sample_spec(
        "scaling",
        "Echo",
        options={"delay_s": 0.2},
        resources={"num_cpus": 0.25},
        autoscaling={
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 0,
        },
    )
    runtime.deploy(spec, timeout_s=180)
    try:
        assert runtime.status("scaling").replicas == {"RUNNING": 1}
        url = runtime.url("scaling")
        stop = time.monotonic() + 60

        def load() -> None:
            with httpx.Client(timeout=30) as client:
                while time.monotonic() < stop and runtime_replicas() < 2:
                    client.post(url, json=1)

        def runtime_replicas() -> int:
            return runtime.status("scaling").replicas.get("RUNNING", 0)

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            workers = [pool.submit(load) for _ in range(6)]
            wait_for(lambda: runtime_replicas() >= 2, 60, "a second replica")
            for worker in workers:
                worker.result()
    finally:
        runtime.delete("scaling")


def test_failing_health_check_replaces_the_replica(runtime, sample_spec):
    spec = sample_spec(
        "fragile",
        "Fragile",
        resources={"num_cpus": 0.25},
        health_check={"period_s": 1, "timeout_s": 5},
    )
    runtime.deploy(spec, timeout_s=180)
    try:
        first = runtime.predict("fragile", "hello")["pid"]
        runtime.predict("fragile", "break")

        def replaced() -> bool:
            try:
                return runtime.predict("fragile", "again", timeout_s=10)["pid"] != first
            except Exception:
                return False  # between replicas

        wait_for(replaced, 90, "Serve to replace the unhealthy replica")
    finally:
        runtime.delete("fragile")
