"""The server's fast path (issue 29, item 4): the guard's lane past FastAPI's layers, one write per
response, JSON numbers written by orjson from NumPy rows. Each must answer exactly as before."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from poolkit.entrypoints.server import INFERENCE_ROUTES, create_app  # noqa: E402
from poolkit.entrypoints.server.front import OneSendPerTurn  # noqa: E402
from poolkit.entrypoints.server.guard import TEI_ALIASES  # noqa: E402


@pytest.fixture(scope="module")
def app(minilm):
    return create_app(minilm, served_model_name="minilm")


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture()
def lane_answers(app, monkeypatch):
    """What the lane said of each request: ``True`` when it answered, ``False`` when it left it."""
    lane, said = app.state.poolkit.lane, []
    original = lane.answer

    async def spy(*args, **kwargs):
        said.append(await original(*args, **kwargs))
        return said[-1]

    monkeypatch.setattr(lane, "answer", spy)
    return said


def test_the_lane_takes_every_inference_route_with_a_request_model(app):
    # /invocations and TEI's root route choose their request model from the body
    assert set(app.state.poolkit.lane.routes) == (INFERENCE_ROUTES | TEI_ALIASES) - {"/invocations", "/"}


def test_the_lane_answers_and_its_numbers_are_the_python_apis(client, minilm, lane_answers):
    texts = ["Hello, my name is", "A man is eating food."]
    got = client.post("/v1/embeddings", json={"model": "minilm", "input": texts})
    assert got.status_code == 200 and lane_answers == [True]
    body = got.json()
    assert [d["index"] for d in body["data"]] == [0, 1] and body["usage"]["prompt_tokens"] == 15
    for item, want in zip(body["data"], minilm.embed(texts)):
        assert item["embedding"] == want.outputs.embedding  # the same doubles, read back exactly
    raw = got.content.decode()
    assert ": " not in raw and "NaN" not in raw  # compact, as before


def test_errors_read_as_fastapi_words_them(client, lane_answers):
    wrong = client.post("/v1/embeddings", json={"input": "a", "dimensions": "many"})  # FastAPI validates it
    assert wrong.status_code == 400 and lane_answers == [False]
    assert wrong.json()["error"]["param"] == "dimensions"
    unknown = client.post("/v1/embeddings", json={"model": "other", "input": "a"})  # the route refuses it
    assert unknown.status_code == 404 and lane_answers == [False, True]
    assert "The model `other` does not exist." in unknown.json()["error"]["message"]
    duplicate = client.post("/v1/embeddings", content=b'{"input": "a", "input": "b"}', headers={"content-type": "application/json"})
    assert duplicate.status_code == 400 and lane_answers[-1] is False and "duplicate key" in duplicate.json()["error"]["message"]
    too_long = client.post("/v1/embeddings", json={"input": "word " * 600})
    assert too_long.status_code == 400 and lane_answers[-1] is True
    assert "maximum context length is 256 tokens" in too_long.json()["error"]["message"]


def test_a_responses_writes_of_one_turn_leave_as_one():
    sent: list[bytes] = []

    class Transport:
        closed = False

        def write(self, data: bytes) -> None:
            sent.append(data)

        def is_closing(self) -> bool:
            return self.closed

        def close(self) -> None:
            self.closed = True

        def get_extra_info(self, name: str) -> str:
            return f"info {name}"

        def get_write_buffer_size(self) -> int:
            return 0

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport = OneSendPerTurn(Transport(), loop)
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"")
        transport.write(memoryview(b'{"a":1}'))
        assert sent == [] and transport.get_write_buffer_size() == 26
        await asyncio.sleep(0)
        assert sent == [b'HTTP/1.1 200 OK\r\n\r\n{"a":1}']
        transport.write(b"last")
        transport.close()  # what is pending goes first
        assert sent[-1] == b"last" and transport.is_closing() and transport.get_extra_info("peername") == "info peername"

    asyncio.run(main())


def test_a_nan_result_is_still_a_500(app, client, monkeypatch):
    import torch

    from poolkit.runtime.columns import Results

    engine = app.state.poolkit.llm.engine
    real_run = engine.run

    def nan_run(task, prompts, params, **kw):
        done = real_run(task, prompts, params, **kw)
        return Results(torch.full_like(done.data, float("nan")), done.token_ids, done.truncated)

    monkeypatch.setattr(engine, "run", nan_run)
    r = client.post("/v1/embeddings", json={"input": "a"})
    assert r.status_code == 500 and "non-finite" in r.json()["error"]["message"]
    assert json.loads(r.content)["error"]["code"] == 500
