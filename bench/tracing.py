"""What tracing costs: the same service with tracing off, on with every request sampled,
and on with 10% sampled (spans exported over OTLP/HTTP), side by side under wrk, 1 and
32 connections, for two services: an echo model (nothing but serving: the worst case)
and the MLflow iris model of bench/mlflow_target.py (batched, as there).

    python bench/tracing.py [--seconds 10] [--rounds 3]

All six services run on one cluster at once; the traced ones were deployed with
``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a sink process (bench/apps/otlp_sink.py,
standing in for a collector) and ``OTEL_TRACES_SAMPLER``. Goal (issue 7): at most 10%
fewer req/s with every request traced, at 32 connections. Writes bench/results/tracing.json
and the "Tracing" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))
import _load
from mlflow_target import register_model

ECHO_BODY = json.dumps({"x": 1})
# label -> (service name suffix, the sampler variables it is deployed with)
VARIANTS = {
    "tracing off": ("", {}),
    "tracing on, 100% sampled": ("-all", {"OTEL_TRACES_SAMPLER": "always_on"}),
    "tracing on, 10% sampled": (
        "-tenth",
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    ),
}
CLI = str(Path(sys.executable).with_name("servekit"))


def main() -> None:
    args = _load.arguments(__doc__).parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    port, sink_port = _load.free_port(), _load.free_port()
    os.environ.update({"SERVEKIT_HOME": str(work / "home"), "SERVEKIT_HTTP_PORT": str(port)})
    os.environ.pop("RAY_ADDRESS", None)
    sink = [sys.executable, str(Path(__file__).parent / "apps" / "otlp_sink.py"), str(sink_port)]
    sink_url = f"http://127.0.0.1:{sink_port}"
    mlflow_env, iris_body = register_model(work)
    try:
        with _load.process(sink, log=work / "sink.log"):
            subprocess.run([CLI, "up", "--num-cpus", "2"], check=True, timeout=300)
            from servekit.core import Runtime, ServiceSpec

            runtime = Runtime.connect(start=False)
            echo = {
                "source": "python:echo:Echo",
                "runtime_env": {"working_dir": str(_load.ROOT / "examples")},
            }
            iris = {
                "source": "mlflow:models:/iris/1",
                "runtime_env": {"env_vars": mlflow_env},
                "batching": {"max_batch_size": 32, "max_wait_ms": 5},
            }
            for name, fields in (("echo", echo), ("iris", iris)):
                for suffix, sampler in VARIANTS.values():
                    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink_url, **sampler} if sampler else {}
                    with mock.patch.dict(os.environ, env):
                        spec = ServiceSpec(
                            name=name + suffix, resources={"num_cpus": 0.25}, **fields
                        )
                        runtime.deploy(spec)
            base = f"http://127.0.0.1:{port}"
            results = {}
            for name, body in (("echo", ECHO_BODY), ("iris", iris_body)):
                path = "/invocations" if name == "iris" else ""
                urls = {
                    label: f"{base}/{name}{suffix}{path}" for label, (suffix, _) in VARIANTS.items()
                }
                # A pause between runs: the 100%-sampled service's exporter finishes its
                # last spans before the next service is measured.
                results[name] = _load.alternate(urls, body, args.seconds, args.rounds, pause_s=3)
            time.sleep(6)  # the exporters' last batches
            with urllib.request.urlopen(sink_url, timeout=10) as reply:
                exports, received = (int(n) for n in reply.read().split())
    finally:
        subprocess.run([CLI, "down"], timeout=120)
    data = {
        "machine": _load.machine(),
        "tool": _load.tool(),
        **vars(args),
        "exports": exports,
        "bytes_received": received,
        "results": results,
    }
    _load.write_section("tracing", "Tracing", report(results, exports, received, args), data)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {_load.DOC.relative_to(_load.ROOT)} and bench/results/tracing.json")


def report(results: dict, exports: int, received: int, args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {_load.machine()}. Load generator: {_load.tool()}, "
        f"{args.seconds:g} s per run, 3 s apart, {args.rounds} alternating rounds, medians. "
        "Each service "
        "deployed three times on one cluster: plain, with every request traced "
        "(`OTEL_TRACES_SAMPLER=always_on`), and with 10% traced "
        "(`parentbased_traceidratio`, 0.1), spans exported over OTLP/HTTP to a sink "
        "process on the same machine (it counts bytes, it does not decode). echo: "
        "examples/echo.py, unbatched. iris: the scikit-learn model of the MLflow benchmark, "
        "`max_batch_size` 32. Run: `python bench/tracing.py`, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
    ]
    rows, goals, lines_loss = [], [], []
    for name, variants in results.items():
        rows += [(f"{name}, {label}", found) for label, found in variants.items()]
        off = variants["tracing off"]["c32"]["rounds_rps"]
        for label in list(VARIANTS)[1:]:
            # Paired by round (the machine's speed drifts from minute to minute): the
            # median of each round's traced/untraced ratio.
            on = variants[label]["c32"]["rounds_rps"]
            ratios = [a / b for a, b in zip(on, off, strict=True)]
            loss = 1 - statistics.median(ratios)
            shown = ", ".join(f"{ratio:.2f}" for ratio in ratios)
            lines_loss.append(
                f"- {name}, {label}: **{loss:.1%}** fewer req/s at 32 connections (the median "
                f"of the rounds' traced/untraced ratios: {shown})"
            )
            if label == "tracing on, 100% sampled":
                goals.append(
                    (loss <= 0.10, f"{name}, every request traced: at most 10% fewer req/s")
                )
    lines += _load.load_table("service", rows)
    lines += [
        "",
        *lines_loss,
        "",
        f"The sink received {exports:,} exports, {received / 1e6:,.1f} MB of spans.",
        *_load.goal_lines(goals),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
