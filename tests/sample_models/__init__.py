"""Models the tests deploy. Shipped to replicas with runtime_env py_modules."""

from __future__ import annotations

import asyncio
import collections
import os

_loads: collections.Counter[str] = collections.Counter()


class Echo:
    """Echoes each input with the batch it ran in and the replica process."""

    def __init__(self, greeting: str = "hello", delay_s: float = 0.0) -> None:
        self.greeting = greeting
        self.delay_s = delay_s

    async def predict(self, batch: list) -> list:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if "explode" in batch:
            raise ValueError("cannot echo 'explode'")
        return [
            {"echo": item, "greeting": self.greeting, "batch_size": len(batch), "pid": os.getpid()}
            for item in batch
        ]


class SyncEcho:
    """A blocking model: runs in servekit's model thread."""

    def __call__(self, batch: list) -> list:
        return [
            {"echo": item, "threads": os.environ.get("OMP_NUM_THREADS"), "pid": os.getpid()}
            for item in batch
        ]


class Versioned:
    """One instance per model id; reports how often this replica loaded that id."""

    def __init__(self, model_id: str) -> None:
        if model_id.startswith("bad"):
            raise FileNotFoundError(f"no weights for model {model_id!r}")
        _loads[model_id] += 1
        self.model_id = model_id
        self.loads = _loads[model_id]

    def predict(self, batch: list) -> list:
        return [
            {"model": self.model_id, "loads": self.loads, "pid": os.getpid(), "input": item}
            for item in batch
        ]


class Fragile:
    """Healthy until it is sent "break"; then its health check fails."""

    def __init__(self) -> None:
        self.broken = False

    def predict(self, batch: list) -> list:
        self.broken = self.broken or "break" in batch
        return [{"pid": os.getpid(), "input": item} for item in batch]

    def check_health(self) -> None:
        if self.broken:
            raise RuntimeError("model state is corrupt")


class Failing:
    """A model version that answers every request with an error (a bad release)."""

    def __init__(self, greeting: str = "failing") -> None:
        self.greeting = greeting

    def predict(self, batch: list) -> list:
        raise RuntimeError(f"{self.greeting}: this release is broken")


class Broken:
    """A factory that fails the way a missing weights file does."""

    def __init__(self) -> None:
        raise ValueError("weights file /models/missing.bin not found")


class WrongLength:
    def predict(self, batch: list) -> list:
        return []


class Forwarder:
    """Answers through another service: a DeploymentHandle hop inside the cluster."""

    def __init__(self, to: str) -> None:
        self.to = to

    async def predict(self, batch: list) -> list:
        from servekit.core import service_handle

        handle = service_handle(self.to)
        answers = await asyncio.gather(*(handle.predict.remote(item) for item in batch))
        return [{"via": os.getpid(), "answer": answer} for answer in answers]
