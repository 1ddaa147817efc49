"""The same registered sklearn model served by `mlflow models serve` and by the `serve`
target (`mlflow deployments create -t serve`), under wrk with 1 and 32 connections.

    python bench/mlflow_target.py [--seconds 10] [--rounds 3] [--replicas 2] [--max-batch-size 32]

Both servers run at the same time and the runs alternate between them, round by round;
the report gives the median of the rounds.

Writes bench/results/mlflow_target.json and the "MLflow target" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _load

BIN = Path(sys.executable).parent
SERVEKIT, MLFLOW = str(BIN / "servekit"), str(BIN / "mlflow")


def register_model(work: Path) -> tuple[dict, str]:
    """Train iris logistic regression, register it as models:/iris/1; return env and body."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    uri = f"sqlite:///{work}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("bench", artifact_location=str(work / "artifacts"))
    x, y = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    with mlflow.start_run(experiment_id=experiment):
        mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name="iris",
            signature=infer_signature(x, model.predict(x)),
        )
    body = json.dumps(
        {"dataframe_split": {"columns": list(x.columns), "data": x.head(1).values.tolist()}}
    )
    return {"MLFLOW_TRACKING_URI": uri}, body


@contextlib.contextmanager
def mlflow_serve(env: dict, work: Path) -> Iterator[str]:
    port = _load.free_port()
    cmd = [
        MLFLOW,
        "models",
        "serve",
        "-m",
        "models:/iris/1",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    # mlflow models serve execs `uvicorn`, which must be on PATH.
    env = {**env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with _load.process(cmd, env=env, log=work / "mlflow-serve.log"):
        yield f"http://127.0.0.1:{port}/invocations"


@contextlib.contextmanager
def serve_target(env: dict, work: Path, args: argparse.Namespace) -> Iterator[str]:
    port = _load.free_port()
    env = {
        **os.environ,
        **env,
        "SERVEKIT_HOME": str(work / "home"),
        "SERVEKIT_HTTP_PORT": str(port),
        "SERVEKIT_QUIET": "1",
    }
    env.pop("RAY_ADDRESS", None)
    try:
        subprocess.run([SERVEKIT, "up", "--num-cpus", "2"], env=env, check=True, timeout=300)
        subprocess.run(
            [
                MLFLOW,
                "deployments",
                "create",
                "-t",
                "serve",
                "--name",
                "iris",
                "-m",
                "models:/iris/1",
                "-C",
                f"num_replicas={args.replicas}",
                "-C",
                f"num_cpus={2 / args.replicas:g}",
                "-C",
                f"max_batch_size={args.max_batch_size}",
            ],
            env=env,
            check=True,
            timeout=600,
        )
        yield f"http://127.0.0.1:{port}/iris/invocations"
    finally:
        subprocess.run([SERVEKIT, "down"], env=env, timeout=120)


def report(results: dict, seconds: float, args) -> str:
    ml, sk = results["mlflow_models_serve"], results["serve_target"]
    lines = [
        f"Machine: {_load.machine()}. Load generator: {_load.tool()}, {seconds:g} s per run, "
        f"{args.rounds} alternating rounds with both servers up, medians. "
        f"Model: scikit-learn logistic regression on iris, registered as `models:/iris/1`; "
        f"body: one row as `dataframe_split`. servekit: {args.replicas} replica(s), "
        f"`max_batch_size={args.max_batch_size}`. Run: `python bench/mlflow_target.py`, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| server | 1 conn req/s | 1 conn p50 ms | 32 conn req/s | 32 conn p50 ms "
        "| 32 conn p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in (("`mlflow models serve`", ml), ("`mlflow deployments create -t serve`", sk)):
        lines.append(
            f"| {label} | {r['c1']['rps']:,.0f} | {r['c1']['p50_ms']:.2f} "
            f"| {r['c32']['rps']:,.0f} | {r['c32']['p50_ms']:.2f} | {r['c32']['p99_ms']:.2f} "
            f"| {r['c1']['errors'] + r['c32']['errors']} |"
        )
    rps = sk["c32"]["rps"] / ml["c32"]["rps"]
    p99 = sk["c32"]["p99_ms"] / ml["c32"]["p99_ms"]
    p50 = sk["c1"]["p50_ms"] / ml["c1"]["p50_ms"]
    goals = [
        (rps >= 8, f"req/s at 32 connections: **{rps:.1f}x** MLflow's (goal at least 8x)"),
        (p99 <= 0.2, f"p99 at 32 connections: **{p99:.2f}x** MLflow's (goal at most 0.2x)"),
        (p50 <= 1.2, f"p50 at 1 connection: **{p50:.2f}x** MLflow's (goal at most 1.2x)"),
    ]
    return "\n".join(lines + _load.goal_lines(goals))


def main() -> None:
    parser = _load.arguments(__doc__)
    parser.add_argument("--max-batch-size", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))
    env, body = register_model(work)
    with mlflow_serve(env, work) as mlflow_url, serve_target(env, work, args) as serve_url:
        urls = {"mlflow_models_serve": mlflow_url, "serve_target": serve_url}
        results = _load.alternate(urls, body, args.seconds, args.rounds)
    data = {
        "machine": _load.machine(),
        "tool": _load.tool(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "replicas": args.replicas,
        "max_batch_size": args.max_batch_size,
        "results": results,
    }
    _load.write_section(
        "mlflow_target",
        "MLflow target: a registered sklearn model",
        report(results, args.seconds, args),
        data,
    )
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {_load.DOC.relative_to(_load.ROOT)} and bench/results/mlflow_target.json")


if __name__ == "__main__":
    main()
