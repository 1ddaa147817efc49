"""A real MLflow registry (sqlite in a temp folder) with real models registered in it."""

from __future__ import annotations

import os

import pytest

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


class FailsToLoad(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        raise RuntimeError("tokenizer.json is missing from the model's artifacts")

    def predict(self, context, model_input):
        return model_input


class AddN(mlflow.pyfunc.PythonModel):
    """A custom pyfunc: adds ``n`` to every value (``params`` may override ``n``)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def predict(self, context, model_input, params=None):
        return model_input + (params or {}).get("n", self.n)


class Words(mlflow.pyfunc.PythonModel):
    """Streams its input text word by word; ``params={"upper": true}`` shouts; the word
    ``boom`` fails the stream midway."""

    def predict(self, context, model_input, params=None):
        return [str(model_input)]

    def predict_stream(self, context, model_input, params=None):
        for word in str(model_input).split():
            if word == "boom":
                raise ValueError("boom is not a word")
            yield {"word": word.upper() if (params or {}).get("upper") else word}


class Romanized(mlflow.pyfunc.PythonModel):
    """Needs ``roman``, which nothing in the test environment depends on: it loads only
    where the model's own requirements were installed."""

    def load_context(self, context):
        import roman

        self.to_roman = roman.toRoman

    def predict(self, context, model_input):
        return [self.to_roman(int(n)) for n in model_input["n"]]


@pytest.fixture(scope="session")
def registry(tmp_path_factory, cluster):
    """Tracking + registry in sqlite; ``iris`` v1 (logistic regression) and v2 (always
    predicts class 2, alias ``champion``), ``adder`` (custom pyfunc), ``broken``."""
    import sys

    import cloudpickle
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    # The replicas cannot import the tests package: pickle these model classes by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri  # subprocesses (the mlflow CLI) inherit it
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("servekit-tests", artifact_location=str(root / "art"))

    x, y = load_iris(return_X_y=True, as_frame=True)
    logistic = LogisticRegression(max_iter=500).fit(x, y)
    constant = DummyClassifier(strategy="constant", constant=2).fit(x, y)
    signature = infer_signature(x, logistic.predict(x))
    with mlflow.start_run(experiment_id=experiment):
        mlflow.sklearn.log_model(
            logistic, name="model", signature=signature, registered_model_name="iris"
        )
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.sklearn.log_model(
            constant, name="model", signature=signature, registered_model_name="iris"
        )
        constant_run = run.info.run_id
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("iris", "champion", "2")
    with mlflow.start_run(experiment_id=experiment):
        example = np.array([[1.0, 2.0]])
        mlflow.pyfunc.log_model(
            name="model",
            python_model=AddN(10),
            registered_model_name="adder",
            signature=infer_signature(example, example + 10, params={"n": 10}),
        )
    with mlflow.start_run(experiment_id=experiment):
        mlflow.pyfunc.log_model(
            name="model", python_model=FailsToLoad(), registered_model_name="broken"
        )
    with mlflow.start_run(experiment_id=experiment):
        mlflow.pyfunc.log_model(
            name="model",
            python_model=Words(),
            registered_model_name="words",
            signature=infer_signature("a b", ["a b"], params={"upper": False}),
        )
    with mlflow.start_run(experiment_id=experiment):
        mlflow.pyfunc.log_model(
            name="model",
            python_model=Romanized(),
            registered_model_name="romanized",
            pip_requirements=[
                f"mlflow=={mlflow.__version__}",
                f"cloudpickle=={cloudpickle.__version__}",
                "roman==5.2",
            ],
        )
    return {
        "uri": uri,
        "features": list(x.columns),
        "rows": x.head(5).values.tolist(),
        "expected_v1": logistic.predict(x.head(5)).tolist(),
        "constant_run": constant_run,
    }
