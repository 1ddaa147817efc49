"""One embedded Ray cluster for the whole session, started by the CLI in its own
SERVEKIT_HOME on free ports, so it never collides with anything else on the machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
SAMPLE_MODELS = str(TESTS / "sample_models")
SERVEKIT = str(Path(sys.executable).with_name("servekit"))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def servekit_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """SERVEKIT_HOME and HTTP port of the session's cluster, also set in os.environ."""
    home = tmp_path_factory.mktemp("servekit-home")
    env = {"SERVEKIT_HOME": str(home), "SERVEKIT_HTTP_PORT": str(_free_port())}
    os.environ.update(env)
    os.environ.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="session")
def cluster(servekit_env: dict[str, str]):
    """The session's embedded cluster, started by `servekit up` in a process that exits
    before any test runs: every test also shows that the cluster outlives its starter."""
    started = subprocess.run(
        [SERVEKIT, "up", "--num-cpus", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **servekit_env},
    )
    assert started.returncode == 0, started.stderr
    yield servekit_env
    import ray

    ray.shutdown()
    subprocess.run([SERVEKIT, "down"], timeout=120, env={**os.environ, **servekit_env})
    shutil.rmtree(servekit_env["SERVEKIT_HOME"], ignore_errors=True)


@pytest.fixture(scope="session")
def runtime(cluster):
    from servekit.core import Runtime

    return Runtime.connect(start=False)


@pytest.fixture(scope="session")
def sample_spec():
    """Build a spec serving a model from tests/sample_models (shipped with py_modules)."""
    from servekit.core import ServiceSpec

    def build(name: str, source: str, **fields) -> ServiceSpec:
        fields.setdefault("resources", {"num_cpus": 0.5})
        return ServiceSpec(
            name=name,
            source=f"python:sample_models:{source}",
            runtime_env={"py_modules": [SAMPLE_MODELS]},
            **fields,
        )

    return build


@pytest.fixture(scope="session")
def otlp_receiver():
    """An OTLP/HTTP receiver the replicas export their spans to."""
    from tests.plugins.otel.receiver import Receiver

    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def tracing_env(otlp_receiver) -> dict[str, str]:
    """Set while deploying, these make a service's replicas trace every request to the
    receiver (servekit passes OTEL_* on), exporting within 0.1 s, pushing metrics each 1 s."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "SERVEKIT_METRICS_PUSH_S": "1",
    }


@pytest.fixture(scope="session")
def memory_spans():
    """Spans this test process makes, kept in memory: a global tracer provider (one per
    process, so one per session), as an application's instrument() would set."""
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "a tracer provider was set before"
    return exporter


@pytest.fixture
def kube_api(tmp_path):
    """A fake Kubernetes API server serving RayServices (tests/kube_fake.py), its
    kubeconfig at ``.kubeconfig_path``. Each simulated KubeRay step lasts 0.25 s."""
    pytest.importorskip("kubernetes", reason="the k8s extra is not installed")
    from tests.kube_fake import FakeKubeAPI

    with FakeKubeAPI(step_s=0.25) as fake:
        fake.kubeconfig_path = fake.kubeconfig(tmp_path / "kubeconfig")
        yield fake
