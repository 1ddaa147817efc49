"""The same chain (prompt -> fake chat model -> parser) under LangServe on uvicorn and
under servekit: wrk with 32 connections on /invoke, and the time to the first streamed
event of /stream, in one run.

    python bench/langchain_host.py [--seconds 10] [--rounds 3] [--replicas 2]

Both servers run at the same time and the runs alternate between them, round by round;
the report gives the median of the rounds. Writes bench/results/langchain_host.json and
the "LangChain host" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import _load

APPS = Path(__file__).parent / "apps"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BIN = Path(sys.executable).parent
BODY = json.dumps({"input": {"topic": "batching"}})


@contextlib.contextmanager
def langserve(work: Path) -> Iterator[str]:
    port = _load.free_port()
    cmd = [str(BIN / "uvicorn"), "--app-dir", str(APPS), "langserve_app:app"]
    # langserve_app imports the example chain from examples/.
    env = {"PYTHONPATH": str(EXAMPLES)}
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with _load.process(cmd, env=env, log=work / "langserve.log"):
        yield f"http://127.0.0.1:{port}/joke"


@contextlib.contextmanager
def servekit(work: Path, replicas: int) -> Iterator[str]:
    port = _load.free_port()
    env = {
        **os.environ,
        "SERVEKIT_HOME": str(work / "home"),
        "SERVEKIT_HTTP_PORT": str(port),
        "SERVEKIT_QUIET": "1",
    }
    env.pop("RAY_ADDRESS", None)
    spec = work / "joke.yaml"
    spec.write_text(
        "name: joke\n"
        "source: langchain:chain:make_chain\n"
        f"replicas: {replicas}\n"
        f"resources: {{num_cpus: {2 / replicas:g}}}\n"
        f"runtime_env: {{working_dir: {EXAMPLES}}}\n"
    )
    cli = str(BIN / "servekit")
    try:
        subprocess.run([cli, "up", "--num-cpus", "2"], env=env, check=True, timeout=300)
        subprocess.run([cli, "deploy", str(spec)], env=env, check=True, timeout=600)
        yield f"http://127.0.0.1:{port}/joke"
    finally:
        subprocess.run([cli, "down"], env=env, timeout=120)


def first_event(url: str, requests: int = 100) -> dict:
    """Sequential /stream calls: ms from sending to the first ``data`` event."""
    times = []
    with httpx.Client(timeout=30) as client:
        for _ in range(requests):
            started = time.perf_counter()
            with client.stream("POST", url + "/stream", content=BODY) as reply:
                for line in reply.iter_lines():
                    if line.startswith("event: data"):
                        times.append((time.perf_counter() - started) * 1000)
                        break
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(len(times) * 0.99) - 1]}


def report(results: dict, args: argparse.Namespace) -> str:
    ls, sk = results["langserve"], results["servekit"]
    lines = [
        f"Machine: {_load.machine()}. Load generator: {_load.tool()}, {args.seconds:g} s per "
        f"run, {args.rounds} alternating rounds with both servers up, medians. Chain: "
        "prompt -> stand-in chat model -> `StrOutputParser` (examples/chain.py); body "
        f"`{BODY}`. LangServe 0.3.3 on uvicorn (one process); servekit: {args.replicas} "
        f"replica(s). First event: 100 sequential `/stream` calls per round. Run: "
        f"`python bench/langchain_host.py`, {time.strftime('%Y-%m-%d')}.",
        "",
        "| server | /invoke req/s (32 conn) | p50 ms | p99 ms | first event p50 ms "
        "| first event p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in (("LangServe (`add_routes`)", ls), ("servekit (`langchain:`)", sk)):
        lines.append(
            f"| {label} | {r['c32']['rps']:,.0f} | {r['c32']['p50_ms']:.2f} "
            f"| {r['c32']['p99_ms']:.2f} | {r['ttfe']['p50_ms']:.2f} | {r['ttfe']['p99_ms']:.2f} "
            f"| {r['c32']['errors']} |"
        )
    rps = sk["c32"]["rps"] / ls["c32"]["rps"]
    first = sk["ttfe"]["p50_ms"] / ls["ttfe"]["p50_ms"]
    goals = [
        (rps >= 1.5, f"/invoke req/s: **{rps:.1f}x** LangServe's (goal at least 1.5x)"),
        (first <= 1.0, f"first stream event p50: **{first:.2f}x** LangServe's (goal no worse)"),
    ]
    return "\n".join(lines + _load.goal_lines(goals))


def main() -> None:
    parser = _load.arguments(__doc__)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-langchain-"))
    with langserve(work) as ls_url, servekit(work, args.replicas) as sk_url:
        invoke = {"langserve": ls_url + "/invoke", "servekit": sk_url + "/invoke"}
        bases = {invoke[name]: base for name, base in (("langserve", ls_url), ("servekit", sk_url))}
        results = _load.alternate(
            invoke,
            BODY,
            args.seconds,
            args.rounds,
            connections=(32,),
            probes={"ttfe": lambda url: first_event(bases[url])},
        )
    data = {"machine": _load.machine(), "tool": _load.tool(), **vars(args), "results": results}
    _load.write_section("langchain_host", "LangChain host", report(results, args), data)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {_load.DOC.relative_to(_load.ROOT)} and bench/results/langchain_host.json")


if __name__ == "__main__":
    main()
