"""The bench's report: each workload's :class:`~poolkit.entrypoints.bench.measure.Result`, the settings, the versions.

:func:`run_bench` gives the JSON-ready report (``poolkit bench --json``); :func:`format_table`
prints it as a table.
"""

from __future__ import annotations

import math
import platform
from dataclasses import asdict
from typing import Any

from ...config.settings import EngineArgs
from .breakdown import describe
from .peers import SkipWorkload
from .workloads import WORKLOADS, Bench

#: Workloads whose notes carry a second measurement, printed under their row (P: one prompt per call).
NOTED = frozenset({"P"})

def run_bench(
    args: EngineArgs, workloads: list[str], rounds: int, scale: float, memory: bool, peer_dtype: str | None = None,
    vs: str = "sentence-transformers", api: str = "llm", breakdown: bool = False,
) -> dict[str, Any]:
    """Run the workloads on the model ``args`` load, against the peer ``vs``; the JSON-ready report.

    The report's ``model`` is ``args.model`` as given (a preset keeps its name); ``dtype`` and
    ``device`` are what the model loaded in; ``skipped`` maps the workloads that cannot compare
    poolkit with this peer to why.
    """
    import torch
    import transformers

    bench = Bench(args, rounds, scale, memory, peer_dtype, vs, api, breakdown)
    results, skipped = [], {}
    for w in workloads:
        try:
            if w in bench.peer.skipped:
                raise SkipWorkload(bench.peer.skipped[w])
            results.append(asdict(WORKLOADS[w](bench)))
        except SkipWorkload as exc:
            skipped[w] = str(exc)
    versions = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import sentence_transformers

        versions["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        versions["sentence_transformers"] = None
    from poolkit import __version__

    versions["poolkit"] = __version__
    return {
        "model": args.model,
        "vs": vs,
        "api": api,
        "peer": bench.peer.name,
        "implementation": {
            "poolkit": bench.llm.model.architecture.implementation,
            "peer": None if bench.encoder is None else bench.peer.implementation(bench.encoder),
        },
        "dtype": bench.dtype,
        "quantization": bench.args.quantization,
        "peer_dtype": bench.peer_dtype,
        "device": str(bench.device),
        "threads": torch.get_num_threads(),
        "gemm_peak_gflops": bench.gemm_peak_gflops,
        "machine": platform.machine(),
        "versions": versions,
        "weights": bench.weights,
        "results": results,
        "skipped": skipped,
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as a header and one row per workload, for a terminal."""
    ours = ", ".join(
        [f"dtype {report['dtype']}"] + ([report["quantization"]] if report.get("quantization") else [])
        + (["through the sentence-transformers drop-in"] if report.get("api") == "sentence-transformers" else [])
    )
    lines = [
        f"model {report['model']}  weights: {report['weights']}\n"
        f"{ours}, peer: {report['peer']} in {report['peer_dtype']}  "
        f"device {report['device']}  threads {report['threads']}  matmul peak {report['gemm_peak_gflops']:.0f} GFLOP/s",
        f"{'workload':<5} {'items':>6} {'poolkit tok/s':>14} {'peer tok/s':>11} {'poolkit it/s':>13} {'peer it/s':>10} "
        f"{'ratio':>6} {'min cos ours/peer':>19} {'max|diff| ours/peer':>19} {'RSS MB ours/peer':>17} {'pad% peer':>9} {'% of peak ours/peer':>19}",
    ]
    peak = report["gemm_peak_gflops"]
    for r in report["results"]:
        fmt = lambda v, f: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, f)  # noqa: E731
        rss = f"{fmt(r['poolkit_peak_rss_mb'], '.0f')}/{fmt(r['peer_peak_rss_mb'], '.0f')}"
        pad = fmt(None if r["padding_fraction_peer"] is None else 100 * r["padding_fraction_peer"], ".1f")
        share = lambda v: None if v is None or not peak else 100 * v / peak  # noqa: E731
        mfu = f"{fmt(share(r['poolkit_gflops']), '.0f')}/{fmt(share(r['peer_gflops']), '.0f')}"
        cos = f"{fmt(r['min_cosine'], '.6f')}/{fmt(r['peer_min_cosine'], '.6f')}"
        diff = f"{fmt(r['max_abs_diff'], '.1e')}/{fmt(r['peer_max_abs_diff'], '.1e')}"
        lines.append(
            f"{r['workload']:<5} {r['items']:>6} {fmt(r['poolkit_tokens_per_s'], ',.0f'):>14} {fmt(r['peer_tokens_per_s'], ',.0f'):>11} "
            f"{fmt(r['poolkit_items_per_s'], ',.1f'):>13} {fmt(r['peer_items_per_s'], ',.1f'):>10} {fmt(r['ratio'], '.2f'):>6} "
            f"{cos:>19} {diff:>19} {rss:>17} {pad:>9} {mfu:>19}  {r['description']}"
        )
        if r.get("stages") or r["workload"] in NOTED:
            lines.append(f"{'':<5} {r['notes']}")
        if r.get("breakdown"):
            lines.append(f"{'':<5} {describe(r['breakdown'], peak)}")
    lines += [f"{w:<5} skipped: {why}" for w, why in report["skipped"].items()]
    return "\n".join(lines)

