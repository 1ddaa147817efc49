"""What tracing costs: the same echo service with tracing off and on (every request
sampled and exported over OTLP/HTTP), side by side under wrk, 1 and 32 connections.

    python bench/tracing.py [--seconds 10] [--rounds 3]

Both services run on one cluster at once; the traced one was deployed with
``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a sink process (bench/apps/otlp_sink.py,
standing in for a collector) and ``OTEL_TRACES_SAMPLER=always_on``. Goal (issue 7): at
most 10% fewer req/s with tracing on, at 32 connections. Writes bench/results/tracing.json
and the "Tracing" section of docs/benchmarks.md.
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
import urllib.request
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))
import _load

BODY = json.dumps({"x": 1})
CLI = str(Path(sys.executable).with_name("servekit"))


def main() -> None:
    args = _load.arguments(__doc__).parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    port, sink_port = _load.free_port(), _load.free_port()
    os.environ.update({"SERVEKIT_HOME": str(work / "home"), "SERVEKIT_HTTP_PORT": str(port)})
    os.environ.pop("RAY_ADDRESS", None)
    sink = [sys.executable, str(Path(__file__).parent / "apps" / "otlp_sink.py"), str(sink_port)]
    sink_url = f"http://127.0.0.1:{sink_port}"
    try:
        with _load.process(sink, log=work / "sink.log"):
            subprocess.run([CLI, "up", "--num-cpus", "2"], check=True, timeout=300)
            from servekit.core import Runtime, ServiceSpec

            runtime = Runtime.connect(start=False)

            def spec(name: str) -> ServiceSpec:
                return ServiceSpec(
                    name=name,
                    source="python:echo:Echo",
                    runtime_env={"working_dir": str(_load.ROOT / "examples")},
                    resources={"num_cpus": 0.5},
                )

            runtime.deploy(spec("plain"))
            traced = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url,
                "OTEL_TRACES_SAMPLER": "always_on",
            }
            with mock.patch.dict(os.environ, traced):
                runtime.deploy(spec("traced"))
            base = f"http://127.0.0.1:{port}"
            results = _load.alternate(
                {"tracing off": f"{base}/plain", "tracing on": f"{base}/traced"},
                BODY,
                args.seconds,
                args.rounds,
            )
            time.sleep(2)  # the last batch of spans
            with urllib.request.urlopen(sink_url, timeout=10) as reply:
                spans = int(reply.read())
    finally:
        subprocess.run([CLI, "down"], timeout=120)
    data = {
        "machine": _load.machine(),
        "tool": _load.tool(),
        **vars(args),
        "spans_received": spans,
        "results": results,
    }
    _load.write_section("tracing", "Tracing", report(results, spans, args), data)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {_load.DOC.relative_to(_load.ROOT)} and bench/results/tracing.json")


def report(results: dict, spans: int, args: argparse.Namespace) -> str:
    off, on = results["tracing off"], results["tracing on"]
    lines = [
        f"Machine: {_load.machine()}. Load generator: {_load.tool()}, "
        f"{args.seconds:g} s per run, {args.rounds} alternating rounds, medians. The same "
        "echo service (examples/echo.py, 0.5 CPU) deployed twice on one cluster: once "
        "plain, once with every request traced (`OTEL_TRACES_SAMPLER=always_on`) and "
        "exported over OTLP/HTTP to a sink process on the same machine. Run: "
        f"`python bench/tracing.py`, {time.strftime('%Y-%m-%d')}.",
        "",
        *_load.load_table("service", [("tracing off", off), ("tracing on, 100% sampled", on)]),
    ]
    loss = 1 - on["c32"]["rps"] / off["c32"]["rps"]
    lines += [
        "",
        f"The sink received {spans:,} spans.",
        *_load.goal_lines(
            [(loss <= 0.10, f"at most 10% fewer req/s with tracing on (32 conn): {loss:.1%}")]
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
