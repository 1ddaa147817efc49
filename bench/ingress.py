"""Ingress overhead: one JSON echo as plain FastAPI, as bare Ray Serve (defaults) and
as servekit (HAProxy ingress + ModelServer), under wrk with 1 and 32 connections.

    python bench/ingress.py [--seconds 15]

Writes bench/results/ingress.json and the "Ingress" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _load

APPS = Path(__file__).parent / "apps"
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]], "id": "bench"})
SERVEKIT = str(Path(sys.executable).with_name("servekit"))


def measure(name: str, url: str, seconds: float) -> dict:
    _load.wait_http(url, BODY)
    _load.load(url, BODY, 32, 3)  # warm-up, not recorded
    result = {
        "c1": _load.load(url, BODY, 1, seconds),
        "c32": _load.load(url, BODY, 32, seconds),
    }
    print(
        f"{name:>22}: 1 conn {result['c1']['rps']:8.0f} req/s p50 {result['c1']['p50_ms']:6.2f} ms"
        f" | 32 conn {result['c32']['rps']:8.0f} req/s p50 {result['c32']['p50_ms']:6.2f} ms"
        f" p99 {result['c32']['p99_ms']:6.2f} ms",
        flush=True,
    )
    return result


def bench_fastapi(seconds: float) -> dict:
    port = _load.free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(APPS),
        "echo_fastapi:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with _load.process(cmd):
        return measure("FastAPI + uvicorn", f"http://127.0.0.1:{port}/echo", seconds)


def bench_ray_default(seconds: float, work: Path) -> dict:
    port = _load.free_port()
    temp = Path(tempfile.mkdtemp(prefix="rsb-", dir="/tmp"))
    cmd = [sys.executable, str(APPS / "ray_serve_default.py"), str(port), str(temp)]
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        with _load.process(cmd, env=env, log=work / "ray-default.log"):
            return measure("Ray Serve (defaults)", f"http://127.0.0.1:{port}/echo", seconds)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def bench_servekit(seconds: float, work: Path) -> tuple[dict, dict]:
    port = _load.free_port()
    env = {**os.environ, "SERVEKIT_HOME": str(work / "home"), "SERVEKIT_HTTP_PORT": str(port)}
    env.pop("RAY_ADDRESS", None)
    spec = work / "echo.yaml"
    spec.write_text(
        f"name: echo\nsource: python:echo_model:Echo\nruntime_env: {{working_dir: {APPS}}}\n"
    )
    bare = [sys.executable, str(APPS / "ray_serve_haproxy.py")]
    try:
        subprocess.run([SERVEKIT, "up", "--num-cpus", "2"], env=env, check=True, timeout=300)
        subprocess.run(bare, env=env, check=True, timeout=300)
        haproxy = measure("Ray Serve + HAProxy", f"http://127.0.0.1:{port}/bare", seconds)
        subprocess.run([*bare, "delete"], env=env, check=True, timeout=300)
        subprocess.run([SERVEKIT, "deploy", str(spec)], env=env, check=True, timeout=300)
        return haproxy, measure("servekit", f"http://127.0.0.1:{port}/echo", seconds)
    finally:
        subprocess.run([SERVEKIT, "down"], env=env, timeout=120)


def report(results: dict, seconds: float) -> str:
    rows = [
        ("FastAPI + uvicorn", "fastapi"),
        ("Ray Serve 2.60, defaults", "ray_serve_default"),
        ("Ray Serve 2.60 + HAProxy ingress", "ray_serve_haproxy"),
        ("servekit", "servekit"),
    ]
    lines = [
        f"Machine: {_load.machine()}. Load generator: {_load.tool()}, {seconds:g} s per run. "
        f"Body: a {len(BODY)}-byte JSON document, echoed back. Run: `make bench` "
        f"(`python bench/ingress.py`), {time.strftime('%Y-%m-%d')}.",
        "",
        "| server | 1 conn req/s | 1 conn p50 ms | 32 conn req/s | 32 conn p50 ms "
        "| 32 conn p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, key in rows:
        r = results[key]
        lines.append(
            f"| {label} | {r['c1']['rps']:,.0f} | {r['c1']['p50_ms']:.2f} | {r['c32']['rps']:,.0f} "
            f"| {r['c32']['p50_ms']:.2f} | {r['c32']['p99_ms']:.2f} "
            f"| {r['c1']['errors'] + r['c32']['errors']} |"
        )
    sk, rs, fa = results["servekit"], results["ray_serve_default"], results["fastapi"]
    ratio_ray = sk["c32"]["rps"] / rs["c32"]["rps"]
    ratio_fa = sk["c32"]["rps"] / fa["c32"]["rps"]
    verdict = "meets" if ratio_ray >= 4 else "misses"
    lines += [
        "",
        f"At 32 connections servekit serves **{ratio_ray:.1f}x** bare Ray Serve's requests per "
        f"second ({verdict} the 4x goal) and {ratio_fa:.2f}x plain FastAPI's; at 1 connection "
        f"{sk['c1']['rps'] / rs['c1']['rps']:.1f}x Ray Serve's.",
        "",
        "Why: bare Ray Serve's default ingress is a Python proxy actor that forwards each "
        "request to the replica over Ray RPC. With Serve's HAProxy ingress (third row, same "
        "cluster as servekit) HTTP goes straight to the replica's own server. servekit adds "
        "two replica settings on top: no per-request access log (`access_log: true` in a "
        "spec turns it back on) and user code on the replica's HTTP event loop instead of a "
        "separate thread, which is safe because ModelServer runs blocking model code in a "
        "worker thread. FastAPI on uvicorn is the floor: one process, no routing, no replica.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingress-"))
    results = {
        "fastapi": bench_fastapi(args.seconds),
        "ray_serve_default": bench_ray_default(args.seconds, work),
    }
    results["ray_serve_haproxy"], results["servekit"] = bench_servekit(args.seconds, work)
    data = {
        "machine": _load.machine(),
        "tool": _load.tool(),
        "seconds": args.seconds,
        "body_bytes": len(BODY),
        "results": results,
    }
    _load.write_section("ingress", "Ingress: JSON echo", report(results, args.seconds), data)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {_load.DOC.relative_to(_load.ROOT)} and bench/results/ingress.json")


if __name__ == "__main__":
    main()
