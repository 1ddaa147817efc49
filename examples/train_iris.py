"""Train a small iris classifier and register it in a local MLflow registry as `iris`.

    MLFLOW_TRACKING_URI=sqlite:///demo/mlflow.db python examples/train_iris.py

Prints the registered model URI and writes `iris-input.json`, a few rows to predict.
"""

import json
import os
from pathlib import Path

import mlflow
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def main() -> None:
    out = Path(os.environ.get("DEMO_DIR", ".")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = "demo-iris"
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=str(out / "artifacts"))
    mlflow.set_experiment(name)
    x, y = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name="iris",
            signature=infer_signature(x, model.predict(x)),
        )
    version = info.registered_model_version
    rows = x.sample(3, random_state=0)
    (out / "iris-input.json").write_text(rows.to_json(orient="records"))
    print(f"registered models:/iris/{version} (accuracy {model.score(x, y):.2f})")
    print(json.dumps({"model_uri": f"models:/iris/{version}"}))


if __name__ == "__main__":
    main()
