"""``poolkit bench --vs transformers``: transformers' own class of a model the fallback cannot run
(SigLIP 2, ColModernVBERT), on the tiny checkpoints the model tests build: each measured workload
has its ratio and poolkit's least cosine to transformers fp32; a model it cannot compare is refused."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from poolkit.entrypoints.cli import app, main  # noqa: F401 - main registers plugin commands

pytest.importorskip("PIL")


def _app():
    from poolkit.plugins import get_manager

    get_manager().register_commands(app)
    return app


def _bench(path, workloads: str) -> dict:
    args = ["bench", "--vs", "transformers", "--smoke", "--json", "--dtype", "float32", "-m", str(path), "-w", workloads]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _assert_measured(report: dict, workloads: list[str]) -> None:
    assert [r["workload"] for r in report["results"]] == workloads
    for r in report["results"]:
        assert r["ratio"] > 0 and r["poolkit_items_per_s"] > 0 and r["peer_items_per_s"] > 0, r["workload"]
        assert r["min_cosine"] >= 0.9999, (r["workload"], r["min_cosine"])


def test_siglip2_texts_and_images_against_its_transformers_class(tmp_path):
    """SigLIP 2: ``get_text_features`` on left-padded batches (W1, W2) and ``get_image_features``
    on NaFlex patches (I), each within a least cosine of 0.9999 of poolkit in fp32."""
    from tiny_siglip2 import build_siglip2

    report = _bench(build_siglip2(tmp_path / "siglip2"), "W1,W2,I,W4")
    assert report["vs"] == "transformers" and report["peer"] == "transformers' own class"
    assert report["implementation"]["peer"] == "transformers Siglip2Model in float32"
    _assert_measured(report, ["W1", "W2", "I"])
    assert report["results"][2]["items"] == 4
    assert set(report["skipped"]) == {"W4"}


def test_colmodernvbert_query_and_page_token_vectors_against_its_transformers_class(tmp_path):
    """ColModernVBERT: every real token's vector of queries (W1, and W2's over-long ones cut as
    poolkit cuts them) and of pages (I), per token within 0.9999 of poolkit in fp32."""
    from tiny_modernvbert import build_colmodernvbert

    report = _bench(build_colmodernvbert(tmp_path / "colmodernvbert"), "W1,W2,I")
    assert report["implementation"]["peer"] == "transformers ColModernVBertForRetrieval in float32"
    _assert_measured(report, ["W1", "W2", "I"])


def test_modernvbert_pooled_texts_and_no_image_side(tmp_path):
    """ModernVBERT's pooled (CLS) text vectors are compared; its images, prompts of free text with
    ``<image>`` placeholders, are skipped with the reason."""
    from tiny_modernvbert import build_colmodernvbert, build_modernvbert

    backbone = build_modernvbert(build_colmodernvbert(tmp_path / "colmodernvbert"), tmp_path / "modernvbert")
    report = _bench(backbone, "W1,I")
    _assert_measured(report, ["W1"])
    assert report["skipped"]["I"].startswith("images of ModernVBertModel are not compared")


def test_image_workload_in_a_list_needs_the_transformers_peer(tmp_path):
    """Workload I among others with another peer is skipped, saying which peer runs it."""
    from tiny_siglip2 import build_siglip2

    args = ["bench", "--vs", "poolkit", "--smoke", "--json", "--dtype", "float32", "-m", str(build_siglip2(tmp_path / "s")), "-w", "I,W1"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped"]["I"].startswith("in a list of workloads, I runs with --vs transformers")


@pytest.mark.parametrize(
    "build, message",
    [
        ("jina_v2", "Error: --vs transformers: transformers has no class for JinaBertForMaskedLM (its checkpoints name remote code)"),
        ("distilbert", "Error: --vs transformers: it compares Siglip2Model, ModernVBertModel, ColModernVBertForRetrieval; "
                       "transformers' own DistilBertModel is what --vs fallback runs: use --vs fallback"),
    ],
)
def test_a_model_it_cannot_compare_is_refused_in_one_line(tmp_path, build, message):
    if build == "jina_v2":
        from tiny_jina_v2 import build_jina_v2

        path = build_jina_v2(tmp_path / "jina")
    else:
        from tiny_models import build_transformers_model

        path = build_transformers_model(tmp_path / "distilbert", "DistilBertModel")
    result = CliRunner().invoke(_app(), ["bench", "--vs", "transformers", "--smoke", "-w", "W1", "-m", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(message + "; nothing to compare") and result.stderr.count("\n") <= 2
