"""Shared benchmark plumbing: wrk runs (or a Python fallback), servers in subprocesses,
and writing results to bench/results/*.json and a section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  io.write(string.format(
    "BENCH_JSON {\\"requests\\": %d, \\"seconds\\": %f, \\"errors\\": %d, " ..
    "\\"non_2xx\\": %d, \\"p50_ms\\": %f, \\"p99_ms\\": %f}\\n",
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, body: str, timeout_s: float = 180) -> None:
    """Wait until ``url`` answers a POST with 200."""
    host, port, path = _split(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            if conn.getresponse().status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


def load(url: str, body: str, connections: int, seconds: float) -> dict:
    """Closed-loop load: req/s, p50 and p99 latency in ms, errors."""
    if shutil.which("wrk"):
        return _wrk(url, body, connections, seconds)
    return _python_load(url, body, connections, seconds)


def alternate(
    urls: dict[str, str],
    body: str,
    seconds: float,
    rounds: int,
    connections: tuple[int, ...] = (1, 32),
    probes: dict[str, Callable[[str], dict]] | None = None,
    pause_s: float = 0.0,
) -> dict:
    """Load every server in ``urls`` (all running at once, so all see the same machine
    state), alternating their order round by round; each figure is the median over the
    rounds, so a noisy minute hurts all alike. ``probes`` are extra per-round measurements
    (``fn(url) -> {"p50_ms": ...}``) reported under their own key. ``pause_s`` between
    runs lets work a run left behind (spans still being exported) finish first."""
    probes = probes or {}
    for url in urls.values():
        wait_http(url, body)
        load(url, body, max(connections), 3)  # warm-up, not recorded
    keys = [f"c{c}" for c in connections] + list(probes)
    runs: dict[str, dict[str, list[dict]]] = {name: {key: [] for key in keys} for name in urls}
    for round_ in range(rounds):
        names = list(urls) if round_ % 2 == 0 else list(reversed(urls))
        steps = [(f"c{c}", lambda url, c=c: load(url, body, c, seconds)) for c in connections]
        for key, run in [*steps, *probes.items()]:
            for name in names:
                time.sleep(pause_s)
                result = run(urls[name])
                runs[name][key].append(result)
                shown = " ".join(f"{k} {v:.2f}" for k, v in result.items() if k != "errors")
                print(f"round {round_ + 1} {name:>22} {key:>5}: {shown}", flush=True)
    return {
        name: {key: _median(found) for key, found in by_key.items()}
        for name, by_key in runs.items()
    }


def _median(results: list[dict]) -> dict:
    merged = {
        key: statistics.median(r[key] for r in results) for key in results[0] if key != "errors"
    }
    merged["errors"] = sum(r.get("errors", 0) for r in results)
    if "rps" in results[0]:
        merged["rounds_rps"] = [r["rps"] for r in results]  # for paired comparisons
    return merged


def arguments(description: str | None) -> argparse.ArgumentParser:
    """The options every side-by-side benchmark takes; add your own to the parser."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=10, help="per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per server")
    parser.add_argument("--replicas", type=int, default=2, help="one per core by default")
    return parser


def goal_lines(goals: list[tuple[bool, str]]) -> list[str]:
    """Markdown bullets, one per (met, description) goal."""
    return ["", *(f"- {text}: {'met' if ok else 'missed'}" for ok, text in goals)]


def tool() -> str:
    return "wrk" if shutil.which("wrk") else "python (wrk not installed: numbers not comparable)"


def _wrk(
    url: str, body: str, connections: int, seconds: float, delay_ms: float | None = None
) -> dict:
    """wrk's summary; with ``delay_ms``, each connection pauses that long between its
    requests (an open-ish loop at a chosen rate instead of as fast as possible)."""
    script = _WRK_SCRIPT
    if delay_ms is not None:
        script += f"function delay() return {delay_ms:.3f} end\n"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    threads = max(1, min(2, connections))
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            f.name,
            url,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": body},
        timeout=seconds + 60,
    )
    os.unlink(f.name)
    match = re.search(r"BENCH_JSON (\{.*\})", out.stdout)
    if not match:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    raw = json.loads(match.group(1))
    return {
        "rps": raw["requests"] / raw["seconds"],
        "p50_ms": raw["p50_ms"],
        "p99_ms": raw["p99_ms"],
        "errors": raw["errors"] + raw["non_2xx"],
        "requests": raw["requests"],
    }


def _python_load(url: str, body: str, connections: int, seconds: float) -> dict:
    host, port, path = _split(url)
    latencies: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        mine = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors[0] += 1
            except (OSError, http.client.HTTPException):
                errors[0] += 1
                conn = http.client.HTTPConnection(host, port, timeout=10)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    qs = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": qs[49] * 1000,
        "p99_ms": qs[98] * 1000,
        "errors": errors[0],
        "requests": len(latencies),
    }


def _split(url: str) -> tuple[str, int, str]:
    match = re.match(r"http://([^:/]+):(\d+)(/.*)?$", url)
    if not match:
        raise ValueError(url)
    return match.group(1), int(match.group(2)), match.group(3) or "/"


@contextlib.contextmanager
def process(
    cmd: list[str], env: dict | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen]:
    """Run a server in its own session and stop that session (only it) afterwards."""
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if log:
            out.close()


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {sys.version.split()[0]}"


def write_section(name: str, title: str, markdown: str, data: dict) -> None:
    """Store ``data`` as bench/results/<name>.json and replace this benchmark's section
    of docs/benchmarks.md (other benchmarks' sections are kept)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{begin}\n## {title}\n\n{markdown.strip()}\n{end}"
    text = (
        DOC.read_text()
        if DOC.exists()
        else (
            "# Benchmarks\n\nEvery figure here comes from a script in `bench/`, run with "
            "`make bench` on the machine named in its section. Each compares servekit with a "
            "named baseline in the same run, using wrk as the load generator.\n"
        )
    )
    if begin in text:
        text = re.sub(
            re.escape(begin) + r".*?" + re.escape(end), lambda _: section, text, flags=re.S
        )
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)


def load_table(first: str, rows: list[tuple[str, dict]]) -> list[str]:
    """Markdown rows of 1- and 32-connection results, one per (label, result)."""
    lines = [
        f"| {first} | req/s (1 conn) | p50 ms (1 conn) | req/s (32 conn) | p50 ms | p99 ms "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['c1']['rps']:,.0f} | {r['c1']['p50_ms']:.2f} "
            f"| {r['c32']['rps']:,.0f} | {r['c32']['p50_ms']:.2f} | {r['c32']['p99_ms']:.2f} "
            f"| {r['c1']['errors'] + r['c32']['errors']} |"
        )
    return lines
