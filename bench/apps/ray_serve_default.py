"""Baseline: the same echo on bare Ray Serve with default settings (Python proxy)."""

import sys
import time

import ray
from ray import serve
from starlette.requests import Request


@serve.deployment
class Echo:
    async def __call__(self, request: Request):
        return await request.json()


if __name__ == "__main__":
    port = int(sys.argv[1])
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=sys.argv[2])
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    print("ready", flush=True)
    while True:
        time.sleep(3600)
