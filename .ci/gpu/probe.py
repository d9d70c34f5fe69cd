"""Where poolkit's time goes on a GPU: throughput from raw text by stage, and a profile.

Run on a machine with a CUDA GPU (`.ci/gpu/run` calls it):

    python .ci/gpu/probe.py [PRESET ...]

For each preset (default: bge-small, bge-base, qwen3-embedding-0.6b) and for ~50-token and
512-token inputs: tokens/s of ``LLM.embed`` on raw text, of tokenization alone, and of the model on
token ids; then, for one bge-base call on 10,000 ~50-token texts (issue 85's short-text case), a
torch.profiler table (device kernels, and the host's operators and launches) and a cProfile of the
host's Python (where packing, scheduling and launching spend the call). ``PROBE_DTYPES`` (default
``bfloat16,float16``) chooses the dtypes probed.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
import warnings

import torch

from poolkit import LLM
from poolkit.contracts.io import Prompt
from poolkit.entrypoints.bench.corpus import make_corpus
from poolkit.entrypoints.bench.presets import resolve_bench_model

TRUNCATE = {"truncation": True}


def timed(fn, reps: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def probe(preset: str, dtype: str, corpora: dict[str, list[str]]) -> None:
    path, _ = resolve_bench_model(preset)
    llm = LLM(path, dtype=dtype, device="cuda")
    for name, texts in corpora.items():
        outputs = llm.embed(texts, tokenization_kwargs=TRUNCATE)
        tokens = sum(len(o.prompt_token_ids) for o in outputs)
        ids = [Prompt(token_ids=o.prompt_token_ids) for o in outputs]
        whole = timed(lambda: llm.embed(texts, tokenization_kwargs=TRUNCATE))
        tok = timed(lambda: llm.engine.tokenize([Prompt(text=t) for t in texts], [llm_params(llm)] * len(texts)))
        model = timed(lambda: llm.embed([{"prompt_token_ids": p.token_ids} for p in ids]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            llm.embed(texts[:2000], tokenization_kwargs=TRUNCATE)
            torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        print(
            f"{preset:22s} {dtype:8s} {name:5s} {len(texts):6d} texts {tokens / len(texts):6.1f} tok/text  "
            f"embed {tokens / whole / 1e6:6.3f}M tok/s  tokenize {tokens / tok / 1e6:6.3f}M  "
            f"from ids {tokens / model / 1e6:6.3f}M  syncs in 2000 texts: {len(syncs)}",
            flush=True,
        )
        for s in sorted(set(syncs))[:5]:
            print("   sync:", s[:200])
    llm = None  # noqa: F841 (frees the model before the next one loads)
    torch.cuda.empty_cache()


def llm_params(llm):
    from poolkit import PoolingParams

    params = PoolingParams(truncate_prompt_tokens=-1)
    return params


def profile(preset: str, texts: list[str]) -> None:
    from torch.profiler import ProfilerActivity, profile as prof

    path, _ = resolve_bench_model(preset)
    llm = LLM(path, dtype="bfloat16", device="cuda")
    llm.embed(texts, tokenization_kwargs=TRUNCATE)
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        llm.embed(texts, tokenization_kwargs=TRUNCATE)
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=60))
    host = cProfile.Profile()
    host.enable()
    llm.embed(texts, tokenization_kwargs=TRUNCATE)
    torch.cuda.synchronize()
    host.disable()
    pstats.Stats(host, stream=sys.stdout).sort_stats("tottime").print_stats(30)


def main(argv: list[str]) -> None:
    presets = argv or ["bge-small", "bge-base", "qwen3-embedding-0.6b"]
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    short = make_corpus(40000, 33, 0.1, seed=1)
    long = make_corpus(4000, 600, 0.05, seed=2)
    profile("bge-base", short[:10000])  # first: on 2026-11-30 the probes left it no time
    for preset in presets:
        corpora = {"~50": short, "512": long} if "qwen" not in preset else {"~50": short[:10000], "512": long[:1000]}
        for dtype in os.environ.get("PROBE_DTYPES", "bfloat16,float16").split(","):
            probe(preset, dtype, corpora)


if __name__ == "__main__":
    main(sys.argv[1:])
