"""Recipe: your training step -> our package, build, check and upload.

For a team that already trains in its own component. ``your_training`` stands for it: it fits
a scikit-learn ``Pipeline`` (one-hot encoding, then LightGBM, XGBoost or a scikit-learn
estimator) and writes what such a step usually writes, a joblib file and a table of raw rows.
``package_model`` turns them into our model artifact (feature schema, checksum, library
versions, the sample with the predictions the fitted model gives in-process); from there the
path is ours: the serving image built with the model's library versions, checked as Vertex
would run it against those predictions (the skew guard), and uploaded.
"""

from typing import Any

from kfp import dsl
from kfp.dsl import Dataset, Model, Output

from components.images import COMPONENTS_IMAGE
from components.package_model import package_model
from pipelines.examples.steps import Backend, vertex_settings


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def your_training(
    model: Output[Model],
    sample: Output[Dataset],
    estimator: str = "lightgbm",
    seed: int = 7,
):
    """Stands for your training step: fits a classifier of penguin species.

    Args:
        estimator: ``lightgbm``, ``xgboost`` or ``scikit-learn`` (logistic regression).
        seed: the split's and the estimator's seed.

    Returns:
        model: a directory with ``model.joblib``, the fitted ``Pipeline``.
        sample: a directory with ``sample.csv``: held-out raw rows, the target included.
    """
    import os

    import joblib
    import pandas as pd
    from palmerpenguins import load_penguins
    from sklearn.compose import ColumnTransformer
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import LabelEncoder, OneHotEncoder

    frame = load_penguins().dropna(subset=["species"])
    x, y = frame.drop(columns=["species"]), frame["species"]
    text = [name for name in x.columns if not pd.api.types.is_numeric_dtype(x[name])]
    x[text] = x[text].astype(object).where(x[text].notna(), None)
    x_train, x_held, y_train, y_held = train_test_split(x, y, test_size=0.2, random_state=seed)
    if estimator == "lightgbm":
        from lightgbm import LGBMClassifier

        final = LGBMClassifier(n_estimators=40, random_state=seed, verbose=-1)
    elif estimator == "xgboost":
        from xgboost import XGBClassifier

        final = XGBClassifier(n_estimators=40, max_depth=3, random_state=seed)
        # XGBoost's classifier takes class indices only.
        encoder = LabelEncoder().fit(y)
        y_train, y_held = encoder.transform(y_train), encoder.transform(y_held)
    elif estimator == "scikit-learn":
        from sklearn.linear_model import LogisticRegression

        final = LogisticRegression(max_iter=2000)
    else:
        raise ValueError(f"estimator {estimator!r}: use lightgbm, xgboost or scikit-learn")
    steps = [("text", OneHotEncoder(handle_unknown="ignore"), text)]
    if estimator == "scikit-learn":  # no missing numbers for a linear model
        from sklearn.impute import SimpleImputer

        numbers = [name for name in x.columns if name not in text]
        steps.append(("numbers", SimpleImputer(strategy="median"), numbers))
    encode = ColumnTransformer(steps, remainder="passthrough")
    fitted = Pipeline([("encode", encode), ("classify", final)]).fit(x_train, y_train)
    os.makedirs(model.path, exist_ok=True)
    joblib.dump(fitted, os.path.join(model.path, "model.joblib"))
    os.makedirs(sample.path, exist_ok=True)
    held = x_held.assign(species=y_held)
    held.to_csv(os.path.join(sample.path, "sample.csv"), index=False)


def _dag(
    steps: Backend,
    vertex: dict[str, Any],
    estimator: Any,
    image_name: Any,
    display_name: Any,
    registry_dir: Any,
) -> None:
    """your training -> package -> build and check -> upload."""
    trained = steps.component(your_training)(estimator=estimator)
    packaged = steps.component(package_model)(
        model=trained.outputs["model"], sample=trained.outputs["sample"], target="species"
    )
    checked = steps.build_and_check(packaged.outputs["packaged"], vertex, image_name)
    steps.upload(checked, display_name, vertex, registry_dir)


def build_pipeline(backend: str = "vertex", components_image: str = COMPONENTS_IMAGE) -> Any:
    """The recipe for ``backend`` (``"vertex"`` or ``"local"``: ``kfp.local`` with podman or
    docker and the local registry), our components running in ``components_image``."""
    steps = Backend(backend, components_image)
    if steps.local:

        @dsl.pipeline(name="your-training-our-serving-local")
        def local_pipeline(
            registry_dir: str,
            estimator: str = "lightgbm",
            image_name: str = "your-training-model",
            display_name: str = "your-model",
        ) -> None:
            """Your training step, then our package, build, check and upload, here."""
            _dag(steps, {}, estimator, image_name, display_name, registry_dir)

        return local_pipeline

    @dsl.pipeline(name="your-training-our-serving")
    def vertex_pipeline(
        project: str,
        staging_bucket: str,
        location: str = "us-central1",
        image_repository: str = "train-to-serve",
        estimator: str = "lightgbm",
        image_name: str = "your-training-model",
        display_name: str = "your-model",
    ) -> None:
        """Your training step, then our package, build and check (Cloud Build), and GCPC's
        upload."""
        vertex = vertex_settings(project, location, staging_bucket, image_repository)
        _dag(steps, vertex, estimator, image_name, display_name, "")

    return vertex_pipeline
