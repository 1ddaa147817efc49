"""Load held: the MLflow iris model under constant load at 80% of its measured capacity
for five minutes, through `mlflow deployments create -t serve` and, side by side in the
same run, through `mlflow models serve` (the baseline) at 80% of its own capacity.

    python bench/soak.py [--seconds 300] [--share 0.8]

Each server's capacity is first measured with wrk (32 connections, closed loop); the soak
then runs wrk with a pause between each connection's requests, calibrated so that the
offered rate stays near ``share`` of that capacity instead of saturating. The goal: zero errors, and
the serving processes' resident memory grows less than 10% from the end of the first
minute to the end. Writes bench/results/soak.json and the "Load held" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _load
from mlflow_target import mlflow_serve, register_model, serve_target

CONNECTIONS = 32  # as many as the capacity run: fewer could not offer 80% of it


def paced(url: str, body: str, rate: float, seconds: float) -> dict:
    """wrk at about ``rate`` req/s: each connection pauses between its requests, the
    pause calibrated by two short probes (a connection's cycle is its latency plus the
    pause, and the latency at the paced load is lower than at full load)."""
    cycle_ms = CONNECTIONS * 1000.0 / rate  # what each connection's cycle must take
    delay_ms = cycle_ms
    for _ in range(2):
        probe = _load._wrk(url, body, CONNECTIONS, 8, delay_ms=delay_ms)
        latency_ms = max(0.0, CONNECTIONS * 1000.0 / probe["rps"] - delay_ms)
        delay_ms = max(0.0, cycle_ms - latency_ms)
    return {**_load._wrk(url, body, CONNECTIONS, seconds, delay_ms=delay_ms), "delay_ms": delay_ms}


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def serving_pids(match: str) -> list[int]:
    """Processes whose command line contains ``match`` (read-only: for memory samples)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if match in cmdline:
                found.append(int(entry.name))
    return found


def soak(url: str, body: str, pids: list[int], args: argparse.Namespace) -> dict:
    capacity = _load.load(url, body, 32, 10)
    rate = args.share * capacity["rps"]
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        started = time.monotonic()
        while not stop.wait(5):
            samples.append((time.monotonic() - started, rss_mib(pids)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    result = paced(url, body, rate, args.seconds)
    stop.set()
    sampler.join()
    after_warmup = [rss for at, rss in samples if at >= 60] or [rss for _, rss in samples]
    growth = (after_warmup[-1] - after_warmup[0]) / after_warmup[0] if after_warmup[0] else 0.0
    return {
        "capacity": capacity,
        "target_rps": rate,
        "soak": result,
        "rss_mib": samples,
        "rss_growth": growth,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--share", type=float, default=0.8)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    env, body = register_model(work)
    results = {}
    with serve_target(env, work, args) as url:
        _load.wait_http(url, body)
        results["servekit"] = soak(url, body, serving_pids("ServeReplica:iris"), args)
    with mlflow_serve(env, work) as url:
        _load.wait_http(url, body)
        results["mlflow"] = soak(url, body, serving_pids("mlflow.pyfunc.scoring_server"), args)
    data = {"machine": _load.machine(), "tool": _load.tool(), **vars(args), "results": results}
    _load.write_section("soak", "Load held", report(results, args), data)
    print(f"wrote {_load.DOC.relative_to(_load.ROOT)} and bench/results/soak.json")


def report(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {_load.machine()}. Load generator: {_load.tool()}. The MLflow iris model "
        f"(one row per request); capacity measured with 32 connections for 10 s, then "
        f"{args.seconds:g} s at {args.share:.0%} of it with {CONNECTIONS} paced connections. "
        f"Memory: resident set of the serving processes, sampled every 5 s. Run: "
        f"`python bench/soak.py`, {time.strftime('%Y-%m-%d')}.",
        "",
        "| server | capacity req/s | offered req/s | held req/s | p50 ms | p99 ms | errors "
        "| RSS after 1 min MiB | RSS at end MiB | growth |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    goals = []
    for label, key in (
        ("`mlflow deployments create -t serve`", "servekit"),
        ("`mlflow models serve`", "mlflow"),
    ):
        r = results[key]
        warm = [rss for at, rss in r["rss_mib"] if at >= 60] or [rss for _, rss in r["rss_mib"]]
        lines.append(
            f"| {label} | {r['capacity']['rps']:,.0f} | {r['target_rps']:,.0f} "
            f"| {r['soak']['rps']:,.0f} | {r['soak']['p50_ms']:.1f} | {r['soak']['p99_ms']:.1f} "
            f"| {r['soak']['errors']} | {warm[0]:,.0f} | {warm[-1]:,.0f} | {r['rss_growth']:+.1%} |"
        )
    sk = results["servekit"]
    held = sk["soak"]["rps"] / sk["capacity"]["rps"]
    lines += [
        "",
        f"servekit held {held:.0%} of its measured capacity (asked: {args.share:.0%}); on two "
        "cores wrk shares the CPUs with the server, and the pause calibrated by short probes "
        "lands a few points under the target.",
    ]
    goals.append((sk["soak"]["errors"] == 0, f"zero errors: {sk['soak']['errors']}"))
    goals.append((sk["rss_growth"] < 0.10, f"memory growth under 10%: {sk['rss_growth']:+.1%}"))
    return "\n".join([*lines, "", *_load.goal_lines(goals)])


if __name__ == "__main__":
    main()
