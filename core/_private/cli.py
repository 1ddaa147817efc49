"""The ``servekit`` command: up, down, status, deploy, delete, list, predict, k8s."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from servekit.core._private.errors import ServekitError, SpecError

# soft_wrap: an error stays one line however narrow the terminal (or pipe) is.
_out = Console(soft_wrap=True)
_err = Console(stderr=True, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 usage error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    # Ray's own INFO lines would drown the CLI's progress; its warnings still show.
    # Ray Serve sets its logger's level when it is imported, so import it first.
    if args.command != "k8s":  # which needs no Ray
        import ray.serve  # noqa: F401

        for name in ("ray", "ray.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        result: int = args.run(args)
        return result
    except ServekitError as exc:
        _fail(exc, args)
        return 1
    except KeyboardInterrupt:
        _err.print("interrupted")
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit",
        description="Serve models on Ray Serve: an embedded local cluster by default.",
    )
    address_help = (
        "Ray cluster to use (host:port, auto, ray://...); default: RAY_ADDRESS, "
        "else the embedded local cluster under SERVEKIT_HOME"
    )
    parser.add_argument("--address", default=None, help=address_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
        # Accepted after the command too; SUPPRESS keeps a value given before it.
        p.add_argument("--address", default=argparse.SUPPRESS, help=address_help)
        p.set_defaults(run=run)
        return p

    up = command("up", _up, "start the embedded local cluster (no-op if running)")
    up.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="HTTP port (default: SERVEKIT_HTTP_PORT, else 8000)",
    )
    up.add_argument("--num-cpus", type=float, default=None, help="logical CPUs for Ray")
    up.add_argument(
        "--ingress",
        choices=["auto", "haproxy", "python"],
        default="auto",
        help="HTTP ingress: HAProxy (fast; bundled with ray[serve] on Linux), Ray Serve's "
        "Python proxy, or auto (HAProxy when available)",
    )
    command("down", _down, "stop the embedded local cluster and every service on it")
    st = command("status", _status, "show the cluster, its ingress and the services")
    st.add_argument("name", nargs="?", help="one service")
    dp = command("deploy", _deploy, "deploy (or update) the services in a YAML spec file")
    dp.add_argument("file", help="YAML file with one spec, a list, or {services: [...]}")
    dp.add_argument("--no-wait", action="store_true", help="return without waiting for RUNNING")
    dp.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    rm = command("delete", _delete, "delete a service")
    rm.add_argument("name")
    command("list", _list, "list the services")
    pr = command("predict", _predict, "send one input to a service and print the output")
    pr.add_argument("name")
    pr.add_argument("--data", required=True, help="the input as JSON, or @FILE to read it")
    pr.add_argument("--model-id", default=None, help="model id for a multiplexed service")
    pr.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    from servekit.core._private.cli_k8s import add_commands

    add_commands(sub)
    return parser


# -- commands ------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    from servekit.core._private.cluster import LocalCluster
    from servekit.core._private.runtime import Runtime

    if not args.address and not os.environ.get("RAY_ADDRESS"):
        running = LocalCluster().info()
        asked = args.http_port is not None or args.num_cpus is not None or args.ingress != "auto"
        if running is not None and asked:
            _err.print(
                "a cluster is already running here; --http-port, --num-cpus and --ingress "
                "apply when it starts (run `servekit down` first to change them)"
            )
        with _progress(args, "starting") as say:
            LocalCluster().start(
                http_port=args.http_port,
                num_cpus=args.num_cpus,
                ingress=args.ingress,
                progress=say,
            )
    with _progress(args, "connecting") as say:
        runtime = Runtime.connect(args.address, start=False, progress=say)
    info = runtime.describe()
    if args.json:
        _print_json(info)
    else:
        _out.print(f"[green]cluster ready[/green] at {info['address']}")
        _out.print(f"HTTP: {info['http_url']}  (ingress: {info['ingress']})")
    return 0


def _down(args: argparse.Namespace) -> int:
    from servekit.core._private.cluster import LocalCluster

    if args.address or os.environ.get("RAY_ADDRESS"):
        raise ServekitError(
            "`servekit down` stops only the embedded local cluster; unset RAY_ADDRESS and "
            "--address, or stop an external cluster with its own tools"
        )
    with _progress(args, "stopping the local cluster"):
        stopped = LocalCluster().stop()
    if args.json:
        _print_json({"stopped": stopped})
    else:
        _out.print("cluster stopped" if stopped else "no local cluster was running")
    return 0


def _status(args: argparse.Namespace) -> int:
    runtime = _connect(args, start=False)
    if args.name:
        status = runtime.status(args.name)
        if args.json:
            _print_json(status.to_dict())
        else:
            _services_table([status])
            if status.message:
                _out.print(status.message)
        return 0
    info = runtime.describe()
    services = runtime.list()
    if args.json:
        _print_json({"cluster": info, "services": [s.to_dict() for s in services]})
        return 0
    _out.print(f"cluster: {info['address']} ({'embedded' if info['embedded'] else 'external'})")
    _out.print(f"HTTP: {info['http_url']}")
    _out.print(f"ingress: {info['ingress']}")
    _out.print(f"metrics: {info['metrics_url']} (servekit)")
    if info.get("ray_metrics_url"):
        _out.print(f"         {info['ray_metrics_url']} (Ray, this node)")
    _services_table(services)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from servekit.core._private.spec import ServiceSpec

    specs = ServiceSpec.from_yaml(args.file)
    runtime = _connect(args)
    results = []
    for spec in specs:
        with _progress(args, f"deploying {spec.name}") as say:
            status = runtime.deploy(
                spec, wait=not args.no_wait, timeout_s=args.timeout, progress=say
            )
        results.append(status)
        if not args.json:
            _out.print(f"[green]{spec.name}[/green] {status.status.lower()} at {status.url}")
        # With several specs, a failure stops here; the ones before it stay deployed.
    if args.json:
        _print_json([s.to_dict() for s in results])
    return 0


def _delete(args: argparse.Namespace) -> int:
    runtime = _connect(args, start=False)
    with _progress(args, f"deleting {args.name}"):
        runtime.delete(args.name)
    if args.json:
        _print_json({"deleted": args.name})
    else:
        _out.print(f"deleted {args.name}")
    return 0


def _list(args: argparse.Namespace) -> int:
    services = _connect(args, start=False).list()
    if args.json:
        _print_json([s.to_dict() for s in services])
    else:
        _services_table(services)
    return 0


def _predict(args: argparse.Namespace) -> int:
    raw = args.data
    if raw.startswith("@"):
        try:
            with open(raw[1:]) as f:
                raw = f.read()
        except OSError as exc:
            raise SpecError("--data", f"cannot read {raw[1:]}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SpecError("--data", f"not valid JSON ({exc})") from None
    runtime = _connect(args, start=False)
    output = runtime.predict(args.name, data, model_id=args.model_id, timeout_s=args.timeout)
    _print_json(output)
    return 0


# -- output --------------------------------------------------------------------------


def _connect(args: argparse.Namespace, start: bool = True) -> Any:
    from servekit.core._private.runtime import Runtime

    with _progress(args, "connecting to the cluster") as say:
        return Runtime.connect(args.address, start=start, progress=say)


@contextmanager
def _progress(args: argparse.Namespace, title: str) -> Iterator[Callable[[str], None]]:
    """A spinner with the current phase on stderr; phases also print as lines."""
    if args.json or not _err.is_terminal:
        yield (
            lambda message: (
                _err.print(message, style="dim", markup=False) if not args.json else None
            )
        )
        return
    with _err.status(title) as status:

        def say(message: str) -> None:
            status.update(escape(message))
            _err.print(message, style="dim", markup=False)

        yield say


def _services_table(services: list[Any]) -> None:
    if not services:
        _out.print("no services")
        return
    table = Table("name", "status", "replicas", "url")
    for s in services:
        replicas = ", ".join(f"{n} {state.lower()}" for state, n in sorted(s.replicas.items()))
        colour = "green" if s.status == "RUNNING" else "yellow"
        table.add_row(s.name, f"[{colour}]{s.status}[/{colour}]", replicas, s.url or "-")
    _out.print(table)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _fail(exc: ServekitError, args: argparse.Namespace) -> None:
    from servekit.core._private.errors import DeployError

    if getattr(args, "json", False):
        body: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
        if getattr(exc, "__notes__", None):
            body["notes"] = list(exc.__notes__)
        if isinstance(exc, DeployError):
            body["details"] = exc.details
        sys.stdout.write(json.dumps(body) + "\n")
    notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", []))
    _err.print(f"[red]error:[/red] {escape(str(exc))}{escape(notes)}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
