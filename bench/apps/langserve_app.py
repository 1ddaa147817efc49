"""LangServe's own server for the benchmark chain (examples/chain.py, on PYTHONPATH):
`uvicorn langserve_app:app`."""

from chain import make_chain
from fastapi import FastAPI
from langserve import add_routes

app = FastAPI()
add_routes(app, make_chain(), path="/joke")
