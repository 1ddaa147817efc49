"""Faults under constant load on a real local Ray, bounded in time: a replica killed
mid-load costs at most the requests it held, and Serve replaces it; an update (a new
model config) under load loses no request."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import httpx
import pytest

pytestmark = pytest.mark.timeout(300)
CLIENTS = 4  # concurrent clients: at most this many requests are in flight at any time


class Load:
    """``CLIENTS`` threads posting to ``url`` back to back until stopped; every answer's
    status (or the exception's name) is counted, with the replica pid of each 200."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: Counter[object] = Counter()
        self.pids: Counter[int] = Counter()
        self.greetings: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    reply = client.post(self.url, json={"x": 1})
                    outcome: object = reply.status_code
                    body = reply.json() if reply.status_code == 200 else None
                except httpx.HTTPError as exc:
                    outcome, body = type(exc).__name__, None
                with self._lock:
                    self.outcomes[outcome] += 1
                    if body is not None:
                        self.pids[body["pid"]] += 1
                        self.greetings.append(body["greeting"])

    def total(self) -> int:
        return sum(self.outcomes.values())

    def wait_for(self, more: int, timeout_s: float = 60) -> None:
        target = self.total() + more
        deadline = time.monotonic() + timeout_s
        while self.total() < target:
            assert time.monotonic() < deadline, f"load stalled: {self.outcomes}"
            time.sleep(0.05)


def test_a_killed_replica_costs_at_most_its_requests_in_flight(runtime, sample_spec):
    spec = sample_spec("kill-me", "Echo", replicas=2, options={"delay_s": 0.01})
    runtime.deploy(spec, timeout_s=180)
    try:
        url = runtime.url("kill-me")
        with Load(url) as load:
            load.wait_for(200)
            victim = load.pids.most_common(1)[0][0]
            assert len(load.pids) == 2, load.pids  # both replicas serve
            before = load.total()
            os.kill(victim, signal.SIGKILL)
            # Serve notices, starts a replacement and the ingress drops the dead one.
            deadline = time.monotonic() + 120
            while True:
                status = runtime.status("kill-me")
                fresh = set(load.pids) - {victim}
                if status.status == "RUNNING" and len(fresh) >= 2:
                    break
                assert time.monotonic() < deadline, (status, load.outcomes)
                time.sleep(0.5)
            load.wait_for(200)
        failed = load.total() - load.outcomes[200]
        assert load.total() - before > 400
        assert failed <= CLIENTS, load.outcomes  # only what was in flight on the victim
        assert status.replicas.get("RUNNING") == 2
    finally:
        runtime.delete("kill-me")


def test_an_update_under_load_loses_no_request(runtime, sample_spec):
    spec = sample_spec("roll-me", "Echo", replicas=2, options={"greeting": "v1"})
    runtime.deploy(spec, timeout_s=180)
    try:
        url = runtime.url("roll-me")
        with Load(url) as load:
            load.wait_for(100)
            # A new model config restarts every replica (a rolling update).
            runtime.update(sample_spec("roll-me", "Echo", replicas=2, options={"greeting": "v2"}))
            load.wait_for(200)
        assert set(load.outcomes) == {200}, load.outcomes
        assert load.greetings[0] == "v1" and load.greetings[-1] == "v2"
    finally:
        runtime.delete("roll-me")
