"""The bare Ray Serve echo, deployed onto servekit's cluster (HAProxy ingress on,
Serve's replica settings left at their defaults), to split the ingress's share of
the gain from that of servekit's replica settings."""

import sys

from ray import serve
from servekit.core import Runtime
from starlette.requests import Request


@serve.deployment
class Echo:
    async def __call__(self, request: Request):
        return await request.json()


if __name__ == "__main__":
    Runtime.connect(start=False)
    if sys.argv[1:] == ["delete"]:
        serve.delete("bare")
    else:
        serve.run(Echo.bind(), name="bare", route_prefix="/bare")
