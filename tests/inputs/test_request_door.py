"""One door in (issue 81): every surface builds a request record (:class:`poolkit.inputs.request.PoolRequest`)
from its own wire format and passes the renderer's one door, :meth:`poolkit.inputs.Renderer.render`,
which settles the prompt name, the side, the special tokens, the truncation and the adapter. Each
surface is driven here with the same text and prompt; each must reach the door with the same record
fields and come back with the vectors ``LLM.embed`` computes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from poolkit.inputs import Renderer
from poolkit.inputs.request import PoolRequest, Rendered

pytest.importorskip("fastapi")

TEXT = "The capital of France is Paris."


@pytest.fixture
def doors(monkeypatch):
    """The records that reach :meth:`Renderer.render` while a test runs."""
    seen: list[PoolRequest] = []
    real = Renderer.render

    def render(self, request, engine):
        seen.append(request)
        return real(self, request, engine)

    monkeypatch.setattr(Renderer, "render", render)
    return seen


def _reached(seen: list[PoolRequest], task: str = "embed") -> PoolRequest:
    assert seen, "the surface did not pass the renderer's door"
    request = seen[-1]
    assert request.task == task and (request.inputs == TEXT or list(request.inputs) == [TEXT]), request
    return request


def test_the_record_reads_llm_arguments():
    request = PoolRequest.of(
        [TEXT], None, task="embed", prompt_name="query",
        tokenization_kwargs={"input_type": "query", "add_special_tokens": False, "truncate_prompt_tokens": 8},
    )
    assert (request.side, request.add_special_tokens, request.truncation) == ("query", False, {"truncate_prompt_tokens": 8})
    assert PoolRequest.of([TEXT], task="embed").truncation is None
    with pytest.raises(Exception, match="frozen|cannot assign"):
        request.task = "classify"  # type: ignore[misc]


def test_the_door_answers_what_llm_prepare_answers(minilm):
    rendered = minilm.render(PoolRequest([TEXT, "a second text"], task="embed", truncation={"truncate_prompt_tokens": 4}))
    assert isinstance(rendered, Rendered)
    task, prompts, params = minilm.prepare([TEXT, "a second text"], pooling_task="embed", tokenization_kwargs={"truncate_prompt_tokens": 4})
    assert rendered.task is task and [p.text for p in rendered.prompts] == [p.text for p in prompts]
    assert [p.truncate_prompt_tokens for p in rendered.params] == [p.truncate_prompt_tokens for p in params] == [4, 4]


def test_every_surface_passes_the_door(minilm, minilm_dir, doors, tmp_path):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from poolkit import SentenceTransformer
    from poolkit.entrypoints.cli import app as cli
    from poolkit.entrypoints.server import create_app

    expected = np.asarray(minilm.embed([TEXT])[0].outputs.embedding)
    got: dict[str, np.ndarray] = {}

    got["LLM.embed"] = np.asarray(minilm.embed([TEXT])[0].outputs.embedding)
    _reached(doors)
    doors.clear()
    got["SentenceTransformer.encode"] = SentenceTransformer(str(minilm_dir)).encode([TEXT])[0]
    _reached(doors)
    doors.clear()
    (tmp_path / "in.txt").write_text(TEXT + "\n")
    result = CliRunner().invoke(cli, ["embed", "--model", str(minilm_dir), "-i", str(tmp_path / "in.txt"), "--format", "jsonl", "-q"])
    assert result.exit_code == 0, result.output
    got["poolkit embed"] = np.asarray(json.loads(result.output.splitlines()[-1])["embedding"])
    _reached(doors)

    grpc = pytest.importorskip("grpc")
    from poolkit.entrypoints.grpc.stubs import tei

    pb, services = tei()
    app = create_app(minilm, served_model_name="minilm", grpc_port=0)
    with TestClient(app) as client, grpc.insecure_channel(f"127.0.0.1:{app.state.poolkit.grpc_port}") as channel:
        for route, body, read in (
            ("/v1/embeddings", {"input": [TEXT]}, lambda r: r["data"][0]["embedding"]),
            ("/embed", {"inputs": TEXT}, lambda r: r[0]),
            ("/v2/embed", {"texts": [TEXT], "input_type": None, "embedding_types": ["float"]}, lambda r: r["embeddings"]["float"][0]),
        ):
            doors.clear()
            response = client.post(route, json=body)
            assert response.status_code == 200, (route, response.text)
            got[route] = np.asarray(read(response.json()))
            _reached(doors)
        doors.clear()
        got["gRPC Embed"] = np.asarray(services.EmbedStub(channel).Embed(pb.EmbedRequest(inputs=TEXT)).embeddings)
        _reached(doors)
    for surface, vector in got.items():
        np.testing.assert_allclose(vector, expected, atol=1e-5, err_msg=surface)
