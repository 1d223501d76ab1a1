"""The ``smoke_test`` component: the sample through the live endpoint to the new deployed model.

The work is ``components.release.smoke_test_version`` (``contract.smoke``); this module
declares the KFP component around it.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Model, Output

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def smoke_test(
    endpoint: Input[Artifact],
    model: Input[Artifact],
    trained_model: Input[Model],
    report: Output[Markdown],
    result: Output[Artifact],
    rel_tol: float = 1e-6,
) -> bool:
    """Does the version just deployed answer the training-time sample as training predicted,
    where it serves?

    Sends the model's sample instances (``instances_sample.jsonl``) through the endpoint's
    rawPredict to the new deployed model, in batches and in another order, and compares each
    answer with ``expected_predictions.jsonl`` (the contract check's tolerance); records every
    answer and its latency. Locally the request reaches that deployed model directly; on
    Vertex the traffic split routes it, and answers from another deployed model
    (``X-Vertex-AI-Deployed-Model-Id``) are set aside and the request sent again. Never
    raises for a wrong answer: the pipeline promotes on True and rolls back on False.

    Args:
        endpoint: the endpoint (a ``VertexEndpoint``, or ``local_model_deploy``'s output).
        model: the uploaded version (``metadata.resourceName``: ``...models/ID@VERSION``).
        trained_model: the train step's model directory (the sample and its expectations).
        rel_tol: relative tolerance of a number in an answer.

    Returns:
        report: the answers, the differences and the latencies (Markdown).
        result: the same as JSON (``uri`` holds it): what promote and roll back record.
        True when every answer is the expected one.
    """
    import json
    from pathlib import Path

    from components.release import smoke_test_version, targets

    live, _ = targets(endpoint.metadata, model.metadata)
    smoke = smoke_test_version(
        live, model.metadata["resourceName"], trained_model.path, rel_tol=rel_tol
    )
    Path(report.path).write_text(smoke.markdown(), encoding="utf-8")
    Path(result.path).write_text(json.dumps(smoke.to_json(), indent=2), encoding="utf-8")
    result.metadata["passed"] = smoke.passed
    print(smoke.markdown())
    return smoke.passed
