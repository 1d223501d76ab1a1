"""The ASGI app in-process: a prediction that reaches a worker whose model is still loading.

Health turns 200 as soon as one worker has loaded the model, so Vertex can send a request
to a sibling worker (or a freshly replaced one) that is still loading; it must wait for the
load rather than fail with 503.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from serving_image.server import artifact
from serving_image.server.app import ServingApp
from serving_image.server.config import Config
from serving_image.server.loading import ModelState
from serving_image.server.predictor import load_predictor
from tests.server.answers import answer_difference


async def post_predict(app: ServingApp, payload: Any) -> tuple[int, Any]:
    """One POST on the predict route through the ASGI interface; (status, JSON body)."""
    body = orjson.dumps(payload)
    scope = {
        "type": "http",
        "method": "POST",
        "path": app.config.predict_route,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
    }
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], orjson.loads(sent[1]["body"])


def finish_loading_later(state: ModelState, model_dir: Path, delay_s: float) -> asyncio.Task:
    async def finish() -> None:
        await asyncio.sleep(delay_s)
        state.predictor, _ = load_predictor(model_dir)

    return asyncio.get_running_loop().create_task(finish())


def test_a_prediction_on_a_loading_worker_waits_for_the_model(
    penguins_model_dir: Path, tmp_path: Path
) -> None:
    instances = artifact.read_jsonl(penguins_model_dir / artifact.INSTANCES_FILE)
    expected = artifact.read_jsonl(penguins_model_dir / artifact.EXPECTED_FILE)
    state = ModelState(str(penguins_model_dir), tmp_path)
    app = ServingApp(Config(load_wait_s=30), state)

    async def main() -> tuple[int, Any]:
        loader = finish_loading_later(state, penguins_model_dir, 0.3)
        answer = await post_predict(app, {"instances": instances})
        await loader
        return answer

    status, body = asyncio.run(main())
    assert status == 200
    assert answer_difference(expected, body["predictions"]) is None


def test_a_prediction_gives_up_after_the_load_wait_with_503_and_the_setting(
    penguins_model_dir: Path, tmp_path: Path
) -> None:
    state = ModelState(str(penguins_model_dir), tmp_path)
    app = ServingApp(Config(load_wait_s=0), state)
    status, body = asyncio.run(post_predict(app, {"instances": [[1]]}))
    assert status == 503
    assert "still loading" in body["error"] and "SERVING_LOAD_WAIT_S" in body["error"]
