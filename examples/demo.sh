#!/usr/bin/env bash
# The main job on a fresh machine: start the local cluster, train and register a model,
# serve it with `mlflow deployments create -t serve`, query it, serve a LangChain chain and a
# python: model.
set -euo pipefail
cd "$(dirname "$0")"
BIN="$(cd ../.venv/bin && pwd)"
export DEMO_DIR="${DEMO_DIR:-$HOME/.servekit/demo}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$DEMO_DIR/mlflow.db}"
mkdir -p "$DEMO_DIR"

echo "== 1. start the embedded local Ray cluster (it keeps running for later commands)"
"$BIN/servekit" up

echo "== 2. train a classifier and register it in the MLflow registry at $MLFLOW_TRACKING_URI"
MODEL_URI="$("$BIN/python" train_iris.py | tail -1 | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["model_uri"])')"

echo "== 3. serve it: mlflow deployments create -t serve --name iris -m $MODEL_URI"
if "$BIN/mlflow" deployments get -t serve --name iris >/dev/null 2>&1; then
  "$BIN/mlflow" deployments update -t serve --name iris -m "$MODEL_URI"
else
  "$BIN/mlflow" deployments create -t serve --name iris -m "$MODEL_URI" -C max_batch_size=32
fi

echo "== 4. predict through MLflow's CLI: mlflow deployments predict -t serve --name iris --input-path $DEMO_DIR/iris-input.json"
"$BIN/mlflow" deployments predict -t serve --name iris --input-path "$DEMO_DIR/iris-input.json"
echo

URL="$("$BIN/servekit" list --json | "$BIN/python" -c 'import json,sys; print(next(s["url"] for s in json.load(sys.stdin) if s["name"]=="iris"))')"
echo "== 5. predict with curl, MLflow's scoring protocol: POST $URL/invocations"
curl -sS -X POST "$URL/invocations" -H 'content-type: application/json' \
  -d '{"dataframe_split": {"columns": ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"], "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}}'
echo

echo "== 6. a plain Python model without a plugin: servekit deploy echo.yaml"
"$BIN/servekit" deploy echo.yaml
ECHO_URL="$("$BIN/servekit" list --json | "$BIN/python" -c 'import json,sys; print(next(s["url"] for s in json.load(sys.stdin) if s["name"]=="echo"))')"
curl -sS -X POST "$ECHO_URL" -H 'content-type: application/json' -d '{"text": "hello"}'
echo

echo "== 7. a LangChain chain with LangServe's routes: servekit deploy chain.yaml"
"$BIN/servekit" deploy chain.yaml
CHAIN_URL="$("$BIN/servekit" list --json | "$BIN/python" -c 'import json,sys; print(next(s["url"] for s in json.load(sys.stdin) if s["name"]=="explain"))')"
echo "POST $CHAIN_URL/invoke"
curl -sS -X POST "$CHAIN_URL/invoke" -H 'content-type: application/json' -d '{"input": {"topic": "batching"}}'
echo
echo "POST $CHAIN_URL/stream (server-sent events)"
curl -sS -N -X POST "$CHAIN_URL/stream" -H 'content-type: application/json' -d '{"input": {"topic": "batching"}}'
echo

echo "== 8. what is running"
"$BIN/servekit" status
echo
echo "The cluster keeps running. Try: curl -X POST $URL/invocations -H 'content-type: application/json' -d @- < ..."
echo "Stop it with: .venv/bin/servekit down"
