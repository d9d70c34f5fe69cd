"""pooling_task="plugin" through an IO processor plugin installed with pip (plugins/poolkit-topk-plugin)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from poolkit import LLM, InvalidRequest
from poolkit.entrypoints.cli import app
from poolkit.plugins import get_manager

pytest.importorskip("poolkit_topk_plugin", reason="pip install ./plugins/poolkit-topk-plugin")

DATA = {
    "query": "What is the capital of France?",
    "documents": ["I like pizza.", "Paris is the capital of France.", "Berlin is in Germany.", "Cats sleep a lot."],
    "k": 2,
}


@pytest.fixture(scope="module")
def topk(minilm_dir):
    return LLM(str(minilm_dir), io_processor_plugin="topk_retrieval")


def test_discovered_through_its_entry_point():
    info = {i.name: i for i in get_manager().plugin_infos()}["topk"]
    assert info.distribution == "poolkit-topk-plugin" and info.status == "ok" and not info.builtin
    assert info.provides == {"io_processor": ["topk_retrieval"], "kernel": ["segment_pool:topk_cumsum"]}


def test_plugin_task_end_to_end(topk, minilm):
    assert "plugin" in topk.supported_tasks
    (out,) = topk.encode({"data": DATA}, pooling_task="plugin")
    assert out.request_id == ""
    vectors = torch.tensor([o.outputs.embedding for o in minilm.embed([DATA["query"], *DATA["documents"]])])
    scores = vectors[1:] @ vectors[0]
    best = scores.argsort(descending=True)[:2].tolist()
    assert [r["index"] for r in out.outputs] == best == [1, 2]
    assert [r["document"] for r in out.outputs] == [DATA["documents"][i] for i in best]
    assert [r["score"] for r in out.outputs] == pytest.approx(scores[best].tolist(), abs=1e-5)


def test_plugin_is_stateless_across_requests(topk):
    other = {"query": "pets", "documents": ["Cats sleep a lot.", "Taxes are due."], "k": 1}
    first = topk.encode({"data": DATA}, pooling_task="plugin")[0].outputs
    second = topk.encode({"data": other}, pooling_task="plugin")[0].outputs
    assert len(first) == 2 and second == [{"index": 0, "document": "Cats sleep a lot.", "score": second[0]["score"]}]


def test_plugin_errors(minilm, topk):
    with pytest.raises(InvalidRequest, match="No IOProcessor plugin installed"):
        minilm.encode({"data": DATA}, pooling_task="plugin")
    with pytest.raises(InvalidRequest, match=r"The model requires the 'nope' IO Processor plugin but it is not installed\. Available plugins: \[.*'topk_retrieval'.*\]"):
        LLM(minilm.model.name, io_processor_plugin="nope").encode({"data": DATA}, pooling_task="plugin")
    with pytest.raises(InvalidRequest, match="The 'data' field is only supported for the 'plugin' pooling task."):
        topk.encode({"data": DATA}, pooling_task="embed")
    with pytest.raises(InvalidRequest, match="'documents' must be a non-empty list of strings"):
        topk.encode({"data": {"query": "q", "documents": []}}, pooling_task="plugin")
    with pytest.raises(InvalidRequest, match=r"takes \{'data': ...\}"):
        topk.encode("plain text", pooling_task="plugin")


def test_cli_encode_plugin(minilm_dir):
    result = CliRunner().invoke(
        app, ["encode", "--task", "plugin", "--model", str(minilm_dir), "--io-processor-plugin", "topk_retrieval", json.dumps(DATA)]
    )
    assert result.exit_code == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["index"] == 0 and [r["index"] for r in row["data"]] == [1, 2]


def test_text_pairs_go_through_the_registry():
    from poolkit.plugins import registry

    prompts = registry("io_processor").get("text_pair").pre_process((["q1", "q2"], ["d1", "d2"]))
    assert [(p.text, p.text_pair) for p in prompts] == [("q1", "d1"), ("q2", "d2")]
    with pytest.raises(InvalidRequest, match="text_pair 1 must be a string"):
        registry("io_processor").get("text_pair").pre_process((["a", "b"], ["c", 3]))
