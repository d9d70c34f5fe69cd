"""poolkit bench's workload R (multi-vector retrieval): its seeded labelled corpus, its metrics, and a
small run on all-MiniLM-L6-v2's real token vectors whose table has every setting, with the bytes each
reduction stores and metrics in range. Quality itself is measured, not asserted."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from poolkit.entrypoints.bench import format_table
from poolkit.entrypoints.bench.retrieval import ATTRIBUTES, FIRST_NAMES, LAST_NAMES, make_retrieval_corpus, ndcg_at, recall_at
from poolkit.entrypoints.cli import app, main  # noqa: F401 - main registers plugin commands

SETTINGS = ("full", "pool2", "pool3", "binary", "binary_float_queries", "int8", "muvera", "muvera_rerank")
FIELDS = ("bytes_per_doc", "vectors_per_doc", "ndcg_at_10", "recall_at_100", "prepare_ms_per_doc", "search_ms_per_query")


def _app():
    from poolkit.plugins import get_manager

    get_manager().register_commands(app)
    return app


def test_the_corpus_is_seeded_and_every_relevant_passage_names_the_asked_person():
    corpus = make_retrieval_corpus(300, 40, seed=3)
    assert corpus == make_retrieval_corpus(300, 40, seed=3)
    assert corpus.passages != make_retrieval_corpus(300, 40, seed=4).passages
    assert len(corpus.passages) == 300 and len(corpus.queries) == len(corpus.relevant) == 40
    for query, relevant in zip(corpus.queries, corpus.relevant):
        (name,) = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES if f"{first} {last}" in query]
        assert relevant and all(name in corpus.passages[i] for i in relevant), query
    values = {v for a in ATTRIBUTES.values() for v in a.values}
    assert not any(v in q.replace("?", "").split() for q in corpus.queries for v in values)  # no query names the answer


def test_ndcg_and_recall_arithmetic():
    assert ndcg_at([5, 1, 2], frozenset({5})) == 1.0
    assert math.isclose(ndcg_at([1, 5, 2], frozenset({5})), 1 / math.log2(3))
    assert math.isclose(ndcg_at([5, 1, 7], frozenset({5, 7})), (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert ndcg_at(list(range(20)), frozenset({15})) == 0.0  # below the first 10
    assert recall_at([3, 4], frozenset({4, 9})) == 0.5
    assert recall_at(list(range(200)), frozenset({150})) == 0.0  # below the first 100


def test_workload_r_reports_every_setting_with_its_bytes(minilm_dir):
    args = ["bench", "-w", "R", "--scale", "0.05", "--rounds", "1", "--no-memory", "--dtype", "float32", "--json",
            "-m", str(minilm_dir)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    (row,) = report["results"]
    assert row["workload"] == "R" and row["items"] == 150 and row["tokens"] > 150
    stages = row["stages"]
    assert set(stages) == {"forward_ms_per_doc", "forward_ms_per_query"} | {f"{s}.{f}" for s in SETTINGS for f in FIELDS}
    dim = 384
    tokens = stages["full.vectors_per_doc"]
    assert tokens == pytest.approx(row["tokens"] / row["items"])
    assert stages["full.bytes_per_doc"] == pytest.approx(4 * dim * tokens)
    assert stages["binary.bytes_per_doc"] == pytest.approx(dim / 8 * tokens)
    assert stages["binary_float_queries.bytes_per_doc"] == stages["binary.bytes_per_doc"]
    assert stages["int8.bytes_per_doc"] == pytest.approx(dim * tokens)
    assert stages["pool3.bytes_per_doc"] < stages["pool2.bytes_per_doc"] < stages["full.bytes_per_doc"]
    for factor in (2, 3):  # the [CLS] kept, the other tokens cut to a factor-th
        assert stages[f"pool{factor}.bytes_per_doc"] == pytest.approx(4 * dim * stages[f"pool{factor}.vectors_per_doc"])
        assert stages[f"pool{factor}.vectors_per_doc"] <= 1 + (tokens - 1) / factor + 1e-9
    assert stages["muvera.vectors_per_doc"] == 1 and stages["muvera.bytes_per_doc"] == 4 * 20 * 32 * 16  # fastembed's defaults
    assert stages["muvera_rerank.bytes_per_doc"] == pytest.approx(stages["muvera.bytes_per_doc"] + stages["full.bytes_per_doc"])
    for setting in SETTINGS:
        assert 0.0 <= stages[f"{setting}.ndcg_at_10"] <= 1.0 and 0.0 <= stages[f"{setting}.recall_at_100"] <= 1.0
        assert stages[f"{setting}.search_ms_per_query"] > 0 and stages[f"{setting}.prepare_ms_per_doc"] >= 0
    assert stages["forward_ms_per_doc"] > 0 and stages["forward_ms_per_query"] > 0
    table = format_table(report)
    for name in ("float32 (full)", "token_pool_factor 2", "token_pool_factor 3", "binary (Hamming)", "int8 (cosine)",
                 "MUVERA alone", "MUVERA top 100 + MaxSim", "nDCG@10", "recall@100", "bytes/doc"):
        assert name in table


def test_workload_r_skips_a_model_without_token_vectors():
    from types import SimpleNamespace

    from poolkit.contracts.errors import InvalidRequest
    from poolkit.entrypoints.bench.base import SkipWorkload
    from poolkit.entrypoints.bench.retrieval import retrieval_workload

    def refuse(*args, **kwargs):
        raise InvalidRequest("this model does not support the token_embed task")

    bench = SimpleNamespace(llm=SimpleNamespace(encode=refuse), _n=lambda n: n)
    with pytest.raises(SkipWorkload, match="workload R needs token vectors: this model does not support"):
        retrieval_workload(bench)
