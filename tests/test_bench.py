"""poolkit bench: a smoke configuration runs and its JSON has every field."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from poolkit.cli import app, main  # noqa: F401 - main registers plugin commands

FIELDS = {
    "workload", "description", "items", "tokens", "poolkit_items_per_s", "peer_items_per_s", "poolkit_tokens_per_s",
    "peer_tokens_per_s", "ratio", "rounds", "min_cosine", "max_abs_diff", "poolkit_peak_rss_mb", "peer_peak_rss_mb",
    "padding_fraction_peer", "padding_fraction_poolkit", "poolkit_gflops", "peer_gflops", "notes",
}


def _app():
    from poolkit.plugins import get_manager

    get_manager().register_commands(app)
    return app


def test_bench_smoke_json():
    result = CliRunner().invoke(_app(), ["bench", "--smoke", "--json", "--workloads", "W1,W3,W6,W7"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"model", "dtype", "device", "threads", "gemm_peak_gflops", "versions", "results"} <= set(report)
    assert report["gemm_peak_gflops"] > 0
    assert [r["workload"] for r in report["results"]] == ["W1", "W3", "W6", "W7"]
    for row in report["results"]:
        assert set(row) == FIELDS
        assert row["poolkit_tokens_per_s"] > 0 and row["peer_tokens_per_s"] > 0 and row["ratio"] > 0
    w1 = report["results"][0]
    assert w1["min_cosine"] > 0.999 and w1["padding_fraction_poolkit"] == 0.0
    assert w1["poolkit_gflops"] > 0 and w1["peer_gflops"] > 0
    assert report["results"][2]["max_abs_diff"] < 1e-4
    w7 = report["results"][3]
    assert w7["min_cosine"] > 0.99 and "non-zero terms per text" in w7["notes"]


def test_bench_rejects_unknown_workloads():
    result = CliRunner().invoke(_app(), ["bench", "--smoke", "--workloads", "W99"])
    assert result.exit_code == 1 and "unknown workload(s) W99" in result.stderr
