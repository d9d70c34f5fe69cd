"""The GPU table of issue 44 in one run per model: poolkit against the floor and the peers.

    python .ci/gpu/table.py [--device cuda] [--presets bge-small,bge-base,qwen3-embedding-0.6b]
                            [--short N] [--long N] [--seconds S] [--no-server] [--api-server-counts 1,8]

For each preset and for ~50-token and 512-token texts, tokens/s of:

- ``poolkit text``: ``LLM.embed`` from raw text (tokenization included);
- ``poolkit ids``: ``LLM.embed`` from token ids;
- ``tokenize``: poolkit's tokenization alone, and ``encode_batch``: the Rust tokenizer's own
  ``encode_batch`` on the same texts and threads (the issue's target: tokenize >= 0.9x it);
- ``hf eager``: transformers' own ``AutoModel`` from token ids, eager attention, padded batches of
  texts sorted by length (the floor poolkit must beat by 1.3x);
- ``st fp16``: sentence-transformers in fp16 from raw text;
- ``gpu busy``: the share of three back-to-back ``poolkit text`` calls in which the GPU was busy
  (NVML's utilization, as nvidia-smi reports it; the issue's goal: >= 80% of a long offline run);

then ``poolkit serve`` on the preset under two loads, each from several client processes so the
client is not the bottleneck: 64 connections x 32 texts (against offline from text: >= 0.8x) and
256 connections x 1 text (requests/s and p99), with one API process and with eight
(``--api-server-count``; ``--api-server-counts`` chooses). ``--device cpu`` with small counts is the smoke test
this machine runs (``--presets host-bert --short 200 --long 20 --seconds 3``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import threading
import time

import torch

from poolkit import LLM
from poolkit.contracts.io import Prompt
from poolkit.entrypoints.bench.corpus import make_corpus
from poolkit.entrypoints.bench.presets import resolve_bench_model
from poolkit import PoolingParams

TRUNCATE = {"truncate_prompt_tokens": -1}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best(fn, device: str, reps: int = 2, before=None) -> float:
    """The least seconds of ``reps`` calls of ``fn`` after an untimed one; ``before`` runs, untimed,
    before each (a model's ``reset_prefix_cache``: the calls repeat the same texts)."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _busy(fn, device: str, reps: int = 3) -> float:
    """The share of ``reps`` back-to-back calls of ``fn`` during which the GPU was busy: NVML's
    ``utilization.gpu`` (the share of its last sample period in which a kernel ran, as nvidia-smi
    reports it) read every 20 ms; NaN on the CPU or without NVML."""
    if not device.startswith("cuda"):
        return float("nan")
    try:
        torch.cuda.utilization()
    except Exception:  # no NVML (pynvml / nvidia-ml-py) in this environment
        return float("nan")
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            samples.append(torch.cuda.utilization())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        for _ in range(reps):
            fn()
        _sync(device)
    finally:
        done.set()
        thread.join()
    return sum(samples) / len(samples) / 100 if samples else float("nan")


def _hf_eager(path: str, ids: list[list[int]], device: str, dtype: torch.dtype, batch_tokens: int) -> float:
    """Seconds of transformers' own model on padded batches of the sorted token ids."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, dtype=dtype, attn_implementation="eager").to(device).eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches, batch, width = [], [], 0
    for i in order:
        width = max(width, len(ids[i]))
        if batch and (len(batch) + 1) * width > batch_tokens:
            batches.append(batch)
            batch, width = [], len(ids[i])
        batch.append(ids[i])
    if batch:
        batches.append(batch)
    tensors = []
    for b in batches:
        w = max(map(len, b))
        input_ids = torch.zeros(len(b), w, dtype=torch.long)
        mask = torch.zeros(len(b), w, dtype=torch.long)
        for r, seq in enumerate(b):
            input_ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        tensors.append((input_ids.to(device), mask.to(device)))

    def run() -> None:
        with torch.inference_mode():
            for input_ids, mask in tensors:
                model(input_ids=input_ids, attention_mask=mask)

    return _best(run, device)


def _st_fp16(path: str, texts: list[str], device: str, batch_size: int) -> float:
    from sentence_transformers import SentenceTransformer

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = SentenceTransformer(path, device=device, model_kwargs={"dtype": dtype})
    return _best(lambda: model.encode(texts, batch_size=batch_size), device)


def offline(preset: str, name: str, texts: list[str], device: str, dtype: str) -> dict[str, float]:
    path, _ = resolve_bench_model(preset)
    llm = LLM(path, dtype=dtype, device=device)
    outputs = llm.embed(texts, tokenization_kwargs=TRUNCATE)
    ids = [o.prompt_token_ids for o in outputs]
    tokens = sum(map(len, ids))
    params = PoolingParams(truncate_prompt_tokens=-1)
    prompts = [Prompt(text=t) for t in texts]
    rust = llm.model.tokenizer.backend_tokenizer
    limit = llm.model.max_model_len.value or 512
    rust.enable_truncation(limit)
    rust.no_padding()
    row = {
        "poolkit text": tokens / _best(lambda: llm.embed(texts, tokenization_kwargs=TRUNCATE), device, before=llm.reset_prefix_cache),
        "poolkit ids": tokens / _best(lambda: llm.embed([{"prompt_token_ids": i} for i in ids]), device, before=llm.reset_prefix_cache),
        "tokenize": tokens / _best(lambda: llm.engine.tokenize(prompts, [params] * len(prompts)), device),
        "encode_batch": tokens / _best(lambda: rust.encode_batch(texts), device),
        "busy": _busy(lambda: llm.embed(texts, tokenization_kwargs=TRUNCATE), device),
    }
    del llm
    torch_dtype = getattr(torch, dtype)
    row["hf eager"] = tokens / _hf_eager(path, ids, device, torch_dtype, 256 * 64 if name == "~50" else 64 * 512)
    row["st fp16"] = tokens / _st_fp16(path, texts, device, 256 if name == "~50" else 64)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def _client(args: tuple) -> dict:
    from poolkit.entrypoints.bench.load import run_load

    url, clients, seconds, inputs, seed = args
    return run_load(url, clients=clients, seconds=seconds, inputs_per_request=inputs, seed=seed).as_dict()


def served(preset: str, device: str, dtype: str, seconds: float, api_servers: int = 1, processes: int = 4) -> list[str]:
    """``poolkit serve`` (``--api-server-count api_servers``) under the issue's two loads, each from
    ``processes`` client processes."""
    from poolkit.config.settings import EngineArgs
    from poolkit.entrypoints.bench.load import StartedServer

    path, _ = resolve_bench_model(preset)
    server = StartedServer(EngineArgs(model=path, device=device, dtype=dtype), serve_flags=["--api-server-count", str(api_servers)])
    lines = []
    try:
        for connections, inputs in ((64, 32), (256, 1)):
            each = max(1, connections // processes)
            with multiprocessing.get_context("spawn").Pool(processes) as pool:
                reports = pool.map(_client, [(server.url, each, seconds, inputs, k) for k in range(processes)])
            requests = sum(r["requests"] for r in reports)
            texts_per_s = sum(r["inputs_per_s"] for r in reports)
            p99 = max(r["p99_ms"] for r in reports)
            codes: dict[str, int] = {}
            for r in reports:
                for code, n in r["status_codes"].items():
                    codes[code] = codes.get(code, 0) + n
            lines.append(
                f"  serve ({api_servers} API process{'es' if api_servers > 1 else ''}) {connections} connections x {inputs} texts: "
                f"{requests / seconds:,.0f} req/s, "
                f"{texts_per_s:,.0f} texts/s, p99 (worst process) {p99} ms, {codes}"
            )
    finally:
        server.stop()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--presets", default="bge-small,bge-base,qwen3-embedding-0.6b")
    parser.add_argument("--short", type=int, default=40000)
    parser.add_argument("--long", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument("--api-server-counts", default="1,8", help="the server's --api-server-count, one run of each")
    args = parser.parse_args()
    print(torch.__version__, torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu", flush=True)
    corpora = {"~50": make_corpus(args.short, 33, 0.1, seed=1), "512": make_corpus(args.long, 600, 0.05, seed=2)}
    columns = ("poolkit text", "poolkit ids", "tokenize", "encode_batch", "hf eager", "st fp16")
    for preset in [p for p in args.presets.split(",") if p]:
        print(f"{preset} ({args.dtype}; tokens/s)", flush=True)
        print("  " + f"{'texts':6s}" + "".join(f"{c:>14s}" for c in columns) + "   ids/hf  tok/encode  st/text  gpu busy")
        for name, texts in corpora.items():
            texts = texts if "qwen" not in preset else texts[: len(texts) // 4]
            row = offline(preset, name, texts, args.device, args.dtype)
            print(
                "  " + f"{name:6s}" + "".join(f"{row[c] / 1e6:13.3f}M" for c in columns)
                + f"   {row['poolkit ids'] / row['hf eager']:6.2f}  {row['tokenize'] / row['encode_batch']:10.2f}"
                + f"  {row['st fp16'] / row['poolkit text']:7.2f}  {row['busy']:8.0%}",
                flush=True,
            )
        if not args.no_server:
            for count in [int(c) for c in args.api_server_counts.split(",") if c]:
                for line in served(preset, args.device, args.dtype, args.seconds, count):
                    print(line, flush=True)


if __name__ == "__main__":
    main()
