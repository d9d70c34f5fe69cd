"""``poolkit bench --lora N``: LoRA adapters mixed in one load, against the base model alone and
against peft on transformers' own model.

N random PEFT adapters of rank ``--lora-rank`` are written for the model (every linear layer of
its transformer blocks targeted, as a fine-tune of attention and MLP saves them). The same corpus
is embedded by the base model, then with 1, 4, ... N adapters mixed (prompt ``i`` with adapter
``i mod k``), each through ``LLM.embed(lora_request=[...])`` in one call, interleaved with peft's
``PeftModel`` running the same mix in padded batches of 32 (``adapter_names`` per row, peft's
mixed-batch inference). The report gives items per second of each, the ratio of each mix to the
base, poolkit's ratio to peft, and the least cosine between poolkit's and peft's embeddings
(mean pooling on both sides: a speed figure only counts when the results agree).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...config.settings import EngineArgs
from .corpus import make_corpus
from .measure import settle
from .presets import resolve_bench_model

#: Linear layers of transformer blocks in the common checkpoint layouts (BERT, decoders, NomicBERT, GTE, ModernBERT).
_BLOCKS = re.compile(r"(^|\.)(layer|layers)\.\d+\.")
#: Token and position tables, which an adapter of attention and MLP leaves alone.
_TABLES = re.compile(r"(^|\.)(embeddings|embed_tokens)\b")
_POOLING = {"pooling_type": "MEAN", "use_activation": False}
#: Inputs longer than the model's context are cut to it, as the peer's tokenizer cuts them.
_CUT = {"truncate_prompt_tokens": -1}


def adapter_counts(n: int) -> list[int]:
    """The mixes measured for ``--lora n``: 1, 4, 16, ... up to ``n``, and ``n``."""
    counts, k = [], 1
    while k < n:
        counts.append(k)
        k *= 4
    return [*counts, n]


def write_adapters(model_dir: Path, out: Path, n: int, rank: int, seed: int = 0) -> list[Path]:
    """``n`` PEFT adapters of ``model_dir`` with random factors (B scaled so outputs move but stay sane)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = sorted(model_dir.glob("*.safetensors"))
    shapes: dict[str, tuple[int, int]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                shape = tuple(f.get_slice(name).get_shape())
                if len(shape) == 2 and name.endswith(".weight") and _BLOCKS.search(name) and not _TABLES.search(name):
                    shapes[name.removesuffix(".weight")] = shape
    targets = sorted({layer.rpartition(".")[2] for layer in shapes})
    folders = []
    for i in range(n):
        generator = torch.Generator().manual_seed(seed + i)
        tensors = {}
        for layer, (rows, cols) in shapes.items():
            tensors[f"base_model.model.{layer}.lora_A.weight"] = torch.randn(rank, cols, generator=generator) / cols**0.5
            tensors[f"base_model.model.{layer}.lora_B.weight"] = torch.randn(rows, rank, generator=generator) * 0.02
        folder = out / f"adapter-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, folder / "adapter_model.safetensors")
        config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": targets, "bias": "none"}
        (folder / "adapter_config.json").write_text(json.dumps(config))
        folders.append(folder)
    return folders


def run_lora_bench(args: EngineArgs, n: int, rank: int, texts: int, rounds: int, peer: bool = True) -> dict[str, Any]:
    """The LoRA report (see the module's docstring)."""
    from ...api.llm import LLM
    from ...lora.request import LoRARequest

    path, weights = resolve_bench_model(args.model)
    corpus = make_corpus(texts, 40.0, 0.6, seed=7)
    with tempfile.TemporaryDirectory(prefix="poolkit-lora-bench-") as tmp:
        folders = write_adapters(Path(path), Path(tmp), n, rank)
        requests = [LoRARequest(f"adapter-{i}", i + 1, str(folder)) for i, folder in enumerate(folders)]
        llm = LLM.from_args(
            args.model_copy(update={"model": path, "enable_lora": True, "max_lora_rank": rank, "max_loras": n, "pooler_config": _POOLING})
        )
        counts = adapter_counts(n)
        plans = {0: None, **{k: [requests[i % k] for i in range(len(corpus))] for k in counts}}
        reference = _PeftRunner(path, folders, llm.model.dtype) if peer else None
        rows: dict[int, dict[str, Any]] = {k: {"adapters": k, "poolkit_s": [], "peft_s": []} for k in plans}
        for k, plan in plans.items():  # one untimed pass each
            llm.embed(corpus, _CUT, lora_request=plan)
        for _ in range(rounds):
            for k, plan in plans.items():
                settle()
                started = time.perf_counter()
                llm.embed(corpus, _CUT, lora_request=plan)
                rows[k]["poolkit_s"].append(time.perf_counter() - started)
                if reference is not None and k > 0:
                    settle()
                    started = time.perf_counter()
                    reference.embed(corpus, [i % k for i in range(len(corpus))])
                    rows[k]["peft_s"].append(time.perf_counter() - started)
        base = float(np.median(rows[0]["poolkit_s"]))
        table = []
        for k, row in rows.items():
            ours = float(np.median(row["poolkit_s"]))
            entry = {"adapters": k, "items_per_s": round(len(corpus) / ours, 1), "vs_base": round(base / ours, 3)}
            if row["peft_s"]:
                theirs = float(np.median(row["peft_s"]))
                entry["peft_items_per_s"] = round(len(corpus) / theirs, 1)
                entry["vs_peft"] = round(theirs / ours, 3)
            table.append(entry)
        cosine = None
        if reference is not None:
            k = counts[-1]
            sample = corpus[:64]
            ours = np.array([o.outputs.embedding for o in llm.embed(sample, _CUT, lora_request=plans[k][:64])])
            theirs = reference.embed(sample, [i % k for i in range(len(sample))])
            cosine = float(np.min(np.sum(ours * theirs, 1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))))
    return {
        "model": args.model, "weights": weights, "dtype": str(llm.model.dtype).removeprefix("torch."), "rank": rank,
        "texts": len(corpus), "rounds": rounds, "rows": table, "min_cosine_vs_peft": cosine,
    }


class _PeftRunner:
    """peft's ``PeftModel`` on transformers' ``AutoModel``, every adapter loaded, mixed batches of 32."""

    def __init__(self, path: str, folders: list[Path], dtype: Any) -> None:
        import peft
        import transformers

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModel.from_pretrained(path, dtype=dtype)
        self.model = peft.PeftModel.from_pretrained(model, str(folders[0]), adapter_name="adapter-0")
        for i, folder in enumerate(folders[1:], start=1):
            self.model.load_adapter(str(folder), adapter_name=f"adapter-{i}")
        self.model.eval()

    def embed(self, texts: list[str], adapters: list[int]) -> np.ndarray:
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), 32):
                chunk = order[start : start + 32]
                enc = self.tokenizer([texts[i] for i in chunk], padding=True, truncation=True, return_tensors="pt")
                hidden = self.model(**enc, adapter_names=[f"adapter-{adapters[i]}" for i in chunk]).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out[chunk] = ((hidden * mask).sum(1) / mask.sum(1)).float().numpy()
        return out


def format_lora_bench(report: dict[str, Any]) -> str:
    lines = [
        f"LoRA adapters on {report['model']} ({report['weights']}), {report['dtype']}, rank {report['rank']}, "
        f"{report['texts']} texts, median of {report['rounds']} rounds",
        f"{'adapters':>8}  {'items/s':>9}  {'vs base':>8}  {'peft items/s':>12}  {'vs peft':>8}",
    ]
    for row in report["rows"]:
        name = "base" if row["adapters"] == 0 else str(row["adapters"])
        lines.append(
            f"{name:>8}  {row['items_per_s']:>9}  {row['vs_base']:>7}x  {row.get('peft_items_per_s', '-'):>12}  "
            f"{(str(row['vs_peft']) + 'x') if 'vs_peft' in row else '-':>8}"
        )
    if report["min_cosine_vs_peft"] is not None:
        lines.append(f"least cosine poolkit vs peft (the largest mix): {report['min_cosine_vs_peft']:.6f}")
    return "\n".join(lines)
