"""``poolkit bench-serve --routes every``: the mix of requests built from the server's own list of
models (no server here: the calls it would send)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from poolkit.contracts.errors import InvalidRequest
from poolkit.entrypoints.bench.mix import ROUTES, ServedModel, endpoint_call, every_route

EMBEDDER = ServedModel("emb", frozenset({"embed", "token_embed"}), None, (101, 7592, 102))
RERANKER = ServedModel("ce", frozenset({"classify", "score"}), "cross-encoder", (101, 102))
SPLADE = ServedModel("sp", frozenset({"embed", "sparse_embed", "token_classify"}), None, ())
TEXTS = ["a", "b", "c", "d"]


def _by_label(calls):
    return {call.label: call for call in calls}


def test_every_route_is_sent_once_per_model_that_can_run_it():
    calls, skipped = every_route([EMBEDDER, RERANKER, SPLADE], 4)
    labels = _by_label(calls)
    assert skipped == {}  # three models between them run every route
    assert {"POST /v1/embeddings [emb]", "POST /v1/embeddings [sp]"} <= set(labels)
    assert "POST /v1/embeddings [ce]" not in labels  # a reranker does not embed
    assert {"POST /rerank [ce]", "POST /rerank (TEI) [ce]", "POST /predict [ce]"} <= set(labels)
    assert "POST /decode [sp]" not in labels  # no token ids from its /tokenize to decode
    assert sum(label.startswith(("GET /v1/models", "GET /health", "GET /metrics")) for label in labels) == 3  # once each
    assert all(call.label.split(" [")[0] in {r.label for r in ROUTES} for call in calls)


def test_bodies_name_their_model_as_their_api_does():
    labels = _by_label(every_route([EMBEDDER, RERANKER], 4)[0])
    openai = labels["POST /v1/embeddings [emb]"]
    assert openai.body(TEXTS) == {"model": "emb", "input": TEXTS, "truncate_prompt_tokens": -1} and openai.headers == {}
    tei = labels["POST /embed [emb]"]
    assert tei.headers == {"x-model": "emb"} and "model" not in tei.body(TEXTS)
    assert labels["POST /predict [ce]"].body(TEXTS)["inputs"] == [["a", t] for t in TEXTS]  # pairs for a cross-encoder
    assert labels["POST /detokenize [emb]"].body(TEXTS) == {"model": "emb", "tokens": [101, 7592, 102]}
    assert labels["POST /embed_all [emb]"].inputs == 1  # a vector per token: one text
    assert labels["GET /health"].body is None and labels["GET /health"].method == "GET"


def test_routes_no_model_can_run_are_listed_with_the_reason():
    calls, skipped = every_route([EMBEDDER], 2)
    assert skipped["POST /score"] == "no served model has a Scoring API"
    assert skipped["POST /embed_sparse"] == "no served model has task 'sparse_embed'"
    assert not any(call.path == "/score" for call in calls)


def test_a_server_without_models_and_bad_settings_are_refused():
    with pytest.raises(InvalidRequest, match="lists no model"):
        every_route([], 2)
    from poolkit.entrypoints.bench.load import run_load

    with pytest.raises(InvalidRequest, match="unknown routes mode 'all'"):
        run_load("http://127.0.0.1:9", routes="all")
    with pytest.raises(InvalidRequest, match="warm-up at least 0"):
        run_load("http://127.0.0.1:9", warmup=-1)
    assert endpoint_call("/embed", 3).body(["x"]) == {"input": ["x"], "truncate_prompt_tokens": -1}


def test_bench_serve_refuses_an_unknown_routes_mode_before_starting_a_server(tmp_path):
    from poolkit.entrypoints.cli import app
    from poolkit.plugins import get_manager

    get_manager().register_commands(app)  # bench-serve comes from a plugin
    result = CliRunner().invoke(app, ["bench-serve", str(tmp_path / "nowhere"), "--routes", "all"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == "Error: unknown --routes 'all'; choose from endpoint, every"
