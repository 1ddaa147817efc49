"""LangServe's own server for the benchmark chain: `uvicorn langserve_app:app`."""

from fastapi import FastAPI
from joke_chain import chain
from langserve import add_routes

app = FastAPI()
add_routes(app, chain, path="/joke")
