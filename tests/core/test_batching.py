"""The batcher groups concurrent requests and never holds back a lone one."""

from __future__ import annotations

import asyncio
import time

import pytest
from servekit.core._private.batching import Batcher


def make(max_batch_size: int, max_wait_ms: float, work_s: float = 0.0):
    seen: list[int] = []

    async def run(model_id: str, items: list) -> list:
        seen.append(len(items))
        await asyncio.sleep(work_s)
        return [(model_id, item) for item in items]

    return Batcher(run, max_batch_size, max_wait_ms), seen


async def request(batcher: Batcher, model_id: str, item):
    with batcher.arriving():
        await asyncio.sleep(0)  # parsing the body, as an HTTP request would
        return await batcher.submit(model_id, item)


def test_concurrent_requests_form_batches():
    async def main():
        batcher, seen = make(max_batch_size=8, max_wait_ms=50, work_s=0.01)
        results = await asyncio.gather(*(request(batcher, "m", i) for i in range(40)))
        return results, seen

    results, seen = asyncio.run(main())
    assert results == [("m", i) for i in range(40)]
    assert max(seen) > 1
    assert max(seen) <= 8
    assert sum(seen) == 40


def test_lone_request_does_not_wait_for_max_wait():
    async def main():
        batcher, seen = make(max_batch_size=32, max_wait_ms=2000)
        started = time.perf_counter()
        result = await request(batcher, "m", "x")
        return result, time.perf_counter() - started, seen

    result, elapsed, seen = asyncio.run(main())
    assert result == ("m", "x")
    assert seen == [1]
    assert elapsed < 1.0  # far below the 2 s max_wait


def test_batches_never_mix_models():
    async def main():
        batcher, _ = make(max_batch_size=16, max_wait_ms=20, work_s=0.005)
        calls = [request(batcher, f"m{i % 3}", i) for i in range(30)]
        return await asyncio.gather(*calls)

    for i, (model_id, item) in enumerate(asyncio.run(main())):
        assert (model_id, item) == (f"m{i % 3}", i)


def test_a_failing_batch_fails_each_of_its_requests_and_the_next_batch_runs():
    calls = []

    async def run(model_id: str, items: list) -> list:
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("model exploded")
        return items

    async def main():
        batcher = Batcher(run, 4, 0)
        bad = await asyncio.gather(request(batcher, "m", "bad"), return_exceptions=True)
        good = await request(batcher, "m", "good")
        return bad, good

    bad, good = asyncio.run(main())
    assert isinstance(bad[0], ValueError)
    assert good == "good"


def test_an_exception_in_place_of_an_output_fails_that_request_alone():
    async def run(model_id: str, items: list) -> list:
        return [ValueError(f"bad {i}") if i == "bad" else i for i in items]

    async def main():
        batcher = Batcher(run, 8, 20)
        return await asyncio.gather(
            *(request(batcher, "m", i) for i in ["a", "bad", "c"]), return_exceptions=True
        )

    a, bad, c = asyncio.run(main())
    assert (a, c) == ("a", "c")
    assert isinstance(bad, ValueError)


def test_wrong_number_of_outputs_is_an_error():
    async def run(model_id: str, items: list) -> list:
        return []

    async def main():
        return await request(Batcher(run, 4, 0), "m", 1)

    with pytest.raises(RuntimeError, match="returned 0 outputs for a batch of 1"):
        asyncio.run(main())


def test_batching_off_runs_each_request_alone_and_concurrently():
    async def main():
        batcher, seen = make(max_batch_size=1, max_wait_ms=50, work_s=0.05)
        started = time.perf_counter()
        results = await asyncio.gather(*(request(batcher, "m", i) for i in range(10)))
        return results, seen, time.perf_counter() - started

    results, seen, elapsed = asyncio.run(main())
    assert results == [("m", i) for i in range(10)]
    assert seen == [1] * 10
    assert elapsed < 0.4  # ten 50 ms calls overlapped instead of queueing (0.5 s)


def test_reconfigure_changes_the_batch_size_live():
    async def main():
        batcher, seen = make(max_batch_size=2, max_wait_ms=50, work_s=0.01)
        await asyncio.gather(*(request(batcher, "m", i) for i in range(10)))
        first = max(seen)
        seen.clear()
        batcher.configure(max_batch_size=10, max_wait_ms=50)
        await asyncio.gather(*(request(batcher, "m", i) for i in range(10)))
        return first, max(seen)

    first, second = asyncio.run(main())
    assert first == 2
    assert second > 2
