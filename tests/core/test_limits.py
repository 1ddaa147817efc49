"""Request limits on a real local Ray with the HAProxy ingress: a body over the service's
limit gets 413 (announced or chunked), a client that stalls mid-body gets 408 when its
time is up, and the replica slot it held serves the next client."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def limited(runtime, sample_spec):
    spec = sample_spec(
        "limited",
        "Echo",
        limits={"max_body": "1Ki", "body_timeout_s": 2},
        max_ongoing_requests=1,  # one stalled client would block everyone without a deadline
    )
    runtime.deploy(spec, timeout_s=180)
    yield runtime.url("limited")
    runtime.delete("limited")


def test_an_announced_oversized_body_gets_413(limited):
    reply = httpx.post(limited, content=b'"' + b"x" * 2000 + b'"', timeout=30)
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"
    assert "1024 bytes" in reply.json()["error"]["message"]
    fits = httpx.post(limited, json="x" * 500, timeout=30)
    assert fits.status_code == 200, fits.text


def test_a_chunked_oversized_body_gets_413(limited):
    def chunks():
        for _ in range(40):
            yield b"x" * 100

    reply = httpx.post(limited, content=chunks(), timeout=30)
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"


def test_a_stalled_client_times_out_and_frees_the_slot(limited):
    url = urlsplit(limited)
    stalled = socket.create_connection((url.hostname, url.port), timeout=30)
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.hostname}\r\n"
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"x": '
    )
    started = time.monotonic()
    stalled.sendall(head.encode())  # and then nothing more
    answers: list[int] = []

    def other_client() -> None:
        time.sleep(0.5)  # after the stalled one took the replica's only slot
        answers.append(httpx.post(limited, json={"y": 1}, timeout=60).status_code)

    thread = threading.Thread(target=other_client)
    thread.start()
    first = stalled.recv(65536)
    waited = time.monotonic() - started
    reply = first
    while b"0\r\n\r\n" not in reply and (chunk := stalled.recv(65536)):  # chunked body's end
        reply += chunk
    reply = reply.decode()
    stalled.close()
    thread.join(timeout=60)
    assert reply.startswith("HTTP/1.1 408"), reply[:200]
    assert "did not arrive within 2s" in reply
    assert 1.5 < waited < 10, waited
    assert answers == [200]


def test_an_endpoint_relays_the_services_limits_and_has_its_own(runtime, limited):
    runtime.route("limited-ep", {"limited": 100})
    try:
        url = runtime.http_url + "/limited-ep"
        assert httpx.post(url, json="x" * 100, timeout=30).status_code == 200
        relayed = httpx.post(url, content=b'"' + b"x" * 2000 + b'"', timeout=30)
        assert relayed.status_code == 413  # the service's 1 KiB
        huge = httpx.post(url, content=b"x" * (17 * 2**20), timeout=60)
        assert huge.status_code == 413  # the Router's 16 MiB, before the service sees it
        assert "16777216 bytes" in huge.json()["error"]["message"]
    finally:
        runtime.delete_endpoint("limited-ep")
