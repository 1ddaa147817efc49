"""What an endpoint's Router costs: the same echo service called directly and through an
endpoint that routes all its traffic to it, side by side under wrk, 1 and 32 connections.

    python bench/router.py [--seconds 10] [--rounds 3]

The Router reads each request, picks a service and replays the request over a streaming
DeploymentHandle: one more hop than a direct call. No goal was set for it; this measures
the hop so that docs/rollouts.md can state it. Writes bench/results/router.json and the
"Endpoint Router" section of docs/benchmarks.md.
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

BODY = json.dumps({"x": 1})
CLI = str(Path(sys.executable).with_name("servekit"))


def main() -> None:
    args = _load.arguments(__doc__).parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-router-"))
    port = _load.free_port()
    os.environ.update({"SERVEKIT_HOME": str(work / "home"), "SERVEKIT_HTTP_PORT": str(port)})
    os.environ.pop("RAY_ADDRESS", None)
    try:
        subprocess.run([CLI, "up", "--num-cpus", "2"], check=True, timeout=300)
        from servekit.core import Runtime, ServiceSpec

        runtime = Runtime.connect(start=False)
        spec = ServiceSpec(
            name="echo",
            source="python:echo:Echo",
            runtime_env={"working_dir": str(_load.ROOT / "examples")},
            resources={"num_cpus": 0.5},
        )
        runtime.deploy(spec)
        runtime.route("ep", {"echo": 100})
        base = f"http://127.0.0.1:{port}"
        results = _load.alternate(
            {"direct": f"{base}/echo", "endpoint": f"{base}/ep"}, BODY, args.seconds, args.rounds
        )
    finally:
        subprocess.run([CLI, "down"], timeout=120)
    data = {"machine": _load.machine(), "tool": _load.tool(), **vars(args), "results": results}
    _load.write_section("router", "Endpoint Router", report(results, args), data)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {_load.DOC.relative_to(_load.ROOT)} and bench/results/router.json")


def report(results: dict, args: argparse.Namespace) -> str:
    direct, routed = results["direct"], results["endpoint"]
    lines = [
        f"Machine: {_load.machine()}. Load generator: {_load.tool()}, "
        f"{args.seconds:g} s per run, {args.rounds} alternating "
        "rounds, medians. One echo service (examples/echo.py, 0.5 CPU) called at its own "
        "route and through endpoint `ep` routing 100% to it. Run: `python bench/router.py`, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        *_load.load_table("path", [("direct", direct), ("through the endpoint", routed)]),
    ]
    added = routed["c1"]["p50_ms"] - direct["c1"]["p50_ms"]
    share = routed["c32"]["rps"] / direct["c32"]["rps"]
    lines += [
        "",
        f"- the Router adds **{added:.2f} ms** at p50 with one connection, and keeps "
        f"**{share:.2f}x** the direct req/s at 32 connections (no goal set)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
