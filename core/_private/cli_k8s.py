"""``servekit k8s``: the same spec files as KubeRay RayServices (render, apply, status,
wait, delete). No Ray is needed on the machine that runs these."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table
from servekit.core._private.cli import _err, _out, _print_json, _progress
from servekit.core._private.errors import SpecError


def add_commands(sub: Any) -> None:
    """Add ``k8s`` and its subcommands to the ``servekit`` parser's subparsers."""
    k8s = sub.add_parser(
        "k8s",
        help="run the services on Kubernetes through KubeRay",
        description="Render spec files as KubeRay RayServices and manage them.",
    )
    k8s.set_defaults(run=lambda args: _usage(k8s))
    verbs = k8s.add_subparsers(dest="k8s_command", metavar="COMMAND")

    def verb(name: str, run: Any, help: str, api: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = verbs.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
        p.add_argument("-n", "--namespace", help="default: the file's, else the context's")
        if api:
            p.add_argument("--kubeconfig", help="default: KUBECONFIG or ~/.kube/config")
            p.add_argument("--context", default=None, help="kubeconfig context")
        p.set_defaults(run=run)
        return p

    render = verb("render", _render, "write the RayService manifest of a spec file", api=False)
    render.add_argument("file", help="spec file (services, and an optional kubernetes: section)")
    render.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    render.add_argument(
        "--serve-config",
        action="store_true",
        help="write only the Ray Serve config (for `serve deploy` on any Ray cluster)",
    )
    _cluster_options(render)
    apply = verb("apply", _apply, "create or update the RayService of a spec file or manifest")
    apply.add_argument("file", help="spec file, or a RayService manifest from `render`")
    apply.add_argument("--wait", action="store_true", help="wait until it serves the new spec")
    apply.add_argument("--timeout", type=float, default=900.0, help="seconds (default 900)")
    _cluster_options(apply)
    status = verb("status", _status, "show a RayService: conditions, clusters, applications")
    status.add_argument("name")
    wait = verb("wait", _wait, "wait until a RayService serves its latest spec")
    wait.add_argument("name")
    wait.add_argument("--timeout", type=float, default=900.0, help="seconds (default 900)")
    delete = verb("delete", _delete, "delete a RayService and its Ray clusters")
    delete.add_argument("name")
    delete.add_argument("--no-wait", action="store_true", help="return without waiting")


def _cluster_options(p: argparse.ArgumentParser) -> None:
    """Flags over the file's ``kubernetes:`` section (docs/kubernetes.md lists them all)."""
    g = p.add_argument_group("cluster (override the file's kubernetes: section)")
    g.add_argument("--name", help="RayService name (default: the service's, if only one)")
    g.add_argument("--image", help="container image with servekit installed")
    g.add_argument("--head-cpu", help="head pod CPU, e.g. 1 or 500m")
    g.add_argument("--head-memory", help="head pod memory, e.g. 4Gi")
    g.add_argument("--workers", type=int, help="worker pods to start with")
    g.add_argument("--min-workers", type=int, help="autoscaler's lower bound")
    g.add_argument("--max-workers", type=int, help="autoscaler's upper bound")
    g.add_argument("--worker-cpu", help="worker pod CPU")
    g.add_argument("--worker-memory", help="worker pod memory")
    g.add_argument("--worker-gpus", type=int, help="GPUs per worker pod")
    g.add_argument(
        "--upgrade",
        choices=["NewCluster", "NewClusterWithIncrementalUpgrade", "None"],
        help="how KubeRay rolls out a cluster change (default NewCluster)",
    )
    g.add_argument("--gateway-class", help="Gateway class for incremental upgrades")
    g.add_argument("--step-size", type=int, help="percent of traffic moved per step")
    g.add_argument("--interval", type=int, help="seconds between steps")
    g.add_argument("--max-surge", type=int, help="percent of extra capacity while upgrading")
    g.add_argument("--ingress", choices=["haproxy", "python"], help="HTTP ingress (haproxy)")
    g.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="container variable"
    )


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# -- commands ------------------------------------------------------------------------


def _render(args: argparse.Namespace) -> int:
    from servekit.core._private.kuberay import render_rayservice, serve_config, to_yaml

    specs, options = _load(args)
    data = serve_config(specs, options) if args.serve_config else render_rayservice(specs, options)
    text = json.dumps(data, indent=2) + "\n" if args.json else to_yaml(data)
    if args.output == "-":
        _out.out(text, end="", highlight=False)
    else:
        Path(args.output).write_text(text)
        _err.print(f"wrote {args.output}", style="dim")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from servekit.core._private.kuberay import render_rayservice

    manifest = _manifest_in(args.file)
    if manifest is None:
        manifest = render_rayservice(*_load(args))
    namespace = args.namespace or (manifest.get("metadata") or {}).get("namespace")
    client = _client(args, namespace)
    name = manifest["metadata"]["name"]
    with _progress(args, f"applying {name}") as say:
        stored = client.apply(manifest, progress=say)
        state = client.wait(name, timeout_s=args.timeout, progress=say) if args.wait else None
    if args.json:
        _print_json({"applied": stored["metadata"], "status": state and state.to_dict()})
    elif state is not None:
        _out.print(f"[green]{name}[/green] serves generation {state.generation}")
    return 0


def _status(args: argparse.Namespace) -> int:
    state = _client(args).status(args.name)
    if args.json:
        _print_json(state.to_dict())
        return 0
    settled = "[green]ready[/green]" if state.settled else "[yellow]not ready[/yellow]"
    _out.print(
        f"RayService {state.namespace}/{state.name}: {settled} "
        f"(generation {state.generation}, observed {state.observed_generation})"
    )
    for kind, c in state.conditions.items():
        _out.print(f"  {kind}={c['status']} ({c['reason']}) {c['message']}".rstrip())
    table = Table("application", "cluster", "status", "message")
    for label, cluster, apps in (
        ("active", state.active_cluster, state.applications),
        ("pending", state.pending_cluster, state.pending_applications),
    ):
        for app, info in apps.items():
            share = f" {state.traffic[cluster]}%" if cluster in state.traffic else ""
            table.add_row(app, f"{label} {cluster}{share}", info["status"], info["message"])
    _out.print(table)
    return 0


def _wait(args: argparse.Namespace) -> int:
    client = _client(args)
    with _progress(args, f"waiting for {args.name}") as say:
        state = client.wait(args.name, timeout_s=args.timeout, progress=say)
    if args.json:
        _print_json(state.to_dict())
    else:
        _out.print(f"[green]{args.name}[/green] serves generation {state.generation}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    client = _client(args)
    with _progress(args, f"deleting {args.name}"):
        client.delete(args.name, wait=not args.no_wait)
    if args.json:
        _print_json({"deleted": args.name, "namespace": client.namespace})
    else:
        _out.print(f"deleted {client.namespace}/{args.name}")
    return 0


# -- inputs --------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> tuple[list[Any], Any]:
    from servekit.core._private.kuberay import KubeOptions
    from servekit.core._private.spec import ServiceSpec

    specs = ServiceSpec.from_yaml(args.file)
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError("--env", f"{item!r} is not KEY=VALUE")
        env[key] = value
    worker = {
        "replicas": args.workers,
        "min_replicas": args.min_workers,
        "max_replicas": args.max_workers,
        "cpu": args.worker_cpu,
        "memory": args.worker_memory,
        "gpus": args.worker_gpus,
    }
    worker = {key: value for key, value in worker.items() if value is not None}
    overrides: dict[str, Any] = {
        "name": args.name,
        "namespace": args.namespace,
        "image": args.image,
        "ingress": args.ingress,
        "head.cpu": args.head_cpu,
        "head.memory": args.head_memory,
        "upgrade.strategy": args.upgrade,
        "upgrade.gateway_class_name": args.gateway_class,
        "upgrade.step_size_percent": args.step_size,
        "upgrade.interval_s": args.interval,
        "upgrade.max_surge_percent": args.max_surge,
        "env": env or None,
    }
    options = KubeOptions.from_yaml(args.file, **overrides)
    if worker:
        if len(options.workers) > 1:
            raise SpecError(
                "--worker-*", "the file defines several worker groups: set them in its file"
            )
        group = options.workers[0].model_dump(exclude_unset=True)
        options = KubeOptions(
            **{**options.model_dump(exclude_unset=True), "workers": [{**group, **worker}]}
        )
    return specs, options


def _manifest_in(path: str) -> dict[str, Any] | None:
    """The RayService manifest in ``path``, or None when it is a spec file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None  # the spec loader reports it with the field and the reason
    if isinstance(data, dict) and data.get("kind") == "RayService":
        return data
    return None


def _client(args: argparse.Namespace, namespace: str | None = None) -> Any:
    from servekit.core._private.kube import RayServiceClient

    return RayServiceClient(
        args.namespace or namespace, kubeconfig=args.kubeconfig, context=args.context
    )
