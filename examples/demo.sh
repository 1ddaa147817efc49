#!/usr/bin/env bash
# The main job on a fresh machine: start the local cluster, deploy a model, query it.
set -euo pipefail
cd "$(dirname "$0")"
SERVEKIT=../.venv/bin/servekit
PORT="${SERVEKIT_HTTP_PORT:-8000}"

echo "== 1. start the embedded local Ray cluster (kept running for later commands)"
"$SERVEKIT" up
echo "== 2. deploy examples/echo.yaml: a python: model with dynamic batching"
"$SERVEKIT" deploy echo.yaml
URL="$("$SERVEKIT" list --json | ../.venv/bin/python -c 'import json,sys; print(next(s["url"] for s in json.load(sys.stdin) if s["name"]=="echo"))')"
echo "== 3. query it over HTTP: curl -X POST $URL -d '{\"text\": \"hello\"}'"
curl -sS -X POST "$URL" -H 'content-type: application/json' -d '{"text": "hello"}'
echo
echo "== 4. query it through the CLI (a Ray Serve handle)"
"$SERVEKIT" predict echo --data '{"text": "hello again"}'
echo "== 5. what is running"
"$SERVEKIT" status
echo
echo "The cluster keeps running: try 'curl -X POST $URL -d 1'; stop it with '.venv/bin/servekit down'."
