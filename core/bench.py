"""``poolkit bench``: poolkit and sentence-transformers on the same weights, corpus and machine.

Each workload runs both libraries in one process, interleaved, for several rounds, and reports
throughput (tokens/s, items/s), the median ratio, parity against sentence-transformers fp32,
peak RSS of each library measured in its own child process, and the padding fraction
sentence-transformers computes. The corpus is made by a seeded generator from the docstrings of
Python's standard library, so nothing is downloaded. The command is registered through the
``poolkit_register_commands`` hook, like a third-party command.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .hookspecs import hookimpl

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_STDLIB = ("os", "json", "re", "collections", "itertools", "functools", "pathlib", "typing", "random", "statistics",
           "argparse", "logging", "subprocess", "threading", "unittest", "email", "http.client", "csv", "decimal")


def _words() -> list[str]:
    import importlib

    words: list[str] = []
    for name in _STDLIB:
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            with warnings.catch_warnings():  # typing.re and friends warn when touched
                warnings.simplefilter("ignore", DeprecationWarning)
                doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str):
                words += [w.strip(".,:;()`'\"") for w in doc.split() if w.isascii() and 1 < len(w) < 15]
    return sorted({w for w in words if w.isalpha()})


#: The exact configurations of popular embedders, for speed-only runs with random weights: their
#: sentence-transformers pooling, and ``config.json`` as published.
_BERT = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30522, "type_vocab_size": 2,
         "max_position_embeddings": 512, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0}
PRESETS: dict[str, dict[str, Any]] = {
    "bge-small": {"pooling": "cls", "config": {**_BERT, "hidden_size": 384, "intermediate_size": 1536,
                                                 "num_hidden_layers": 12, "num_attention_heads": 12}},
    "bge-base": {"pooling": "cls", "config": {**_BERT, "hidden_size": 768, "intermediate_size": 3072,
                                                "num_hidden_layers": 12, "num_attention_heads": 12}},
    "qwen3-embedding-0.6b": {"pooling": "lasttoken", "config": {
        "model_type": "qwen3", "architectures": ["Qwen3Model"], "vocab_size": 151669, "hidden_size": 1024,
        "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
        "head_dim": 128, "max_position_embeddings": 32768, "rope_theta": 1000000, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "attention_bias": False, "hidden_act": "silu", "use_sliding_window": False,
    }},
}


def resolve_bench_model(model: str) -> tuple[str, str]:
    """The directory of the model to benchmark and what its weights are.

    A preset name (:data:`PRESETS`) builds, once, a model of that exact configuration with seeded
    random weights under ``$POOLKIT_BENCH_CACHE`` (default ``~/.cache/poolkit/bench``), with
    all-MiniLM-L6-v2's tokenizer and the preset's sentence-transformers pooling; any other value
    is a model name or path, as for ``LLM``.
    """
    from .plugins import get_manager

    if model not in PRESETS:
        found = get_manager().resolve_model(model)
        return str(found if found is not None else model), "real" if found is not None or Path(model).exists() else "as given"
    root = Path(os.environ.get("POOLKIT_BENCH_CACHE") or Path.home() / ".cache" / "poolkit" / "bench") / model
    if not (root / "model.safetensors").is_file():
        _build_preset(model, root)
    return str(root), f"random, with the exact config of {model} (speed only)"


def _build_preset(name: str, root: Path) -> None:
    import torch
    import transformers

    from .plugins import get_manager

    preset = PRESETS[name]
    fields = dict(preset["config"])
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config, torch_dtype=torch.float32)
    tmp = root.with_name(root.name + ".partial")
    model.save_pretrained(tmp)
    transformers.AutoTokenizer.from_pretrained(get_manager().resolve_model(DEFAULT_MODEL)).save_pretrained(tmp)
    width = int(config.hidden_size)
    (tmp / "1_Pooling").mkdir(exist_ok=True)
    (tmp / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": width, **{f"pooling_mode_{m}": False for m in
                                              ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens",
                                               "weightedmean_tokens", "lasttoken")},
        f"pooling_mode_{'cls_token' if preset['pooling'] == 'cls' else 'lasttoken'}": True,
    }))
    (tmp / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512, "do_lower_case": False}))
    if root.exists():
        import shutil

        shutil.rmtree(root)
    tmp.rename(root)


def make_corpus(n: int, mean_words: float, sigma: float, seed: int, max_words: int = 2000) -> list[str]:
    """``n`` texts whose lengths in words follow a lognormal around ``mean_words`` (seeded)."""
    rng = random.Random(seed)
    words = _words()
    texts = []
    for _ in range(n):
        length = max(1, min(max_words, int(rng.lognormvariate(math.log(mean_words), sigma))))
        texts.append(" ".join(rng.choice(words) for _ in range(length)).capitalize() + ".")
    return texts


@dataclass
class Result:
    """One workload's figures."""

    workload: str
    description: str
    items: int
    tokens: int
    poolkit_items_per_s: float
    peer_items_per_s: float | None
    poolkit_tokens_per_s: float
    peer_tokens_per_s: float | None
    ratio: float | None
    rounds: list[dict[str, float]] = field(default_factory=list)
    min_cosine: float | None = None
    max_abs_diff: float | None = None
    poolkit_peak_rss_mb: float | None = None
    peer_peak_rss_mb: float | None = None
    padding_fraction_peer: float | None = None
    padding_fraction_poolkit: float = 0.0
    poolkit_gflops: float | None = None
    peer_gflops: float | None = None
    notes: str = ""


def _median_ratio(rounds: list[dict[str, float]]) -> float | None:
    ratios = [r["peer_s"] / r["poolkit_s"] for r in rounds if r.get("peer_s")]
    return statistics.median(ratios) if ratios else None


def _interleave(rounds: int, ours: Callable[[], Any], theirs: Callable[[], Any] | None) -> list[dict[str, float]]:
    ours()
    if theirs is not None:
        theirs()
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        ours()
        row = {"poolkit_s": time.perf_counter() - t}
        if theirs is not None:
            t = time.perf_counter()
            theirs()
            row["peer_s"] = time.perf_counter() - t
        out.append(row)
    return out


def _padding_fraction(lengths: list[int], batch_size: int = 32) -> float:
    """Share of padded positions when texts are sorted by length and batched (what ST does)."""
    ordered = sorted(lengths, reverse=True)
    padded = sum(max(ordered[i : i + batch_size]) * len(ordered[i : i + batch_size]) for i in range(0, len(ordered), batch_size))
    return 1.0 - sum(lengths) / padded if padded else 0.0


def model_flops(model: Any, lengths: list[int], per_token: int = 0) -> float:
    """Multiply-add FLOPs of a forward pass over sequences of ``lengths`` (real tokens only).

    Per token: twice the weights of every linear layer of the architecture (classifier heads
    excluded) plus ``per_token`` (a head applied outside the linear layers, such as a tied MLM
    decoder); per token and layer, attention against its sequence's ``L`` tokens: ``4 L d``
    (``d`` = heads x head size), half that for causal attention.
    """
    import torch

    arch = model.architecture
    heads = {id(p) for head in (arch.sequence_head(), arch.token_head()) if head is not None for p in head.parameters()}
    weights = sum(m.weight.numel() for m in arch.modules() if isinstance(m, torch.nn.Linear) and id(m.weight) not in heads)
    config = model.hf_config
    width = int(config.num_attention_heads) * int(
        getattr(config, "head_dim", None) or int(config.hidden_size) // int(config.num_attention_heads)
    )
    attention = 4 * int(config.num_hidden_layers) * width * (0.5 if getattr(arch, "causal", False) else 1.0)
    return float(sum(n * (2 * weights + per_token + attention * n) for n in lengths))


def gemm_peak_gflops(config: Any, dtype: Any, device: Any = "cpu", tokens: int = 4096, repeats: int = 10) -> float:
    """What this machine's matmul reaches on the model's feed-forward shape, in GFLOP/s.

    The best of ``repeats`` calls of both ``F.linear`` and the device's ``linear_act`` kernel
    (oneDNN with packed weights on the CPU): the ceiling for a pooling model's throughput, since
    matmuls are most of its work.
    """
    import torch

    from .kernel import select_kernel

    h, i = int(config.hidden_size), int(config.intermediate_size)
    x = torch.randn(tokens, h, dtype=dtype, device=device)
    w = torch.randn(i, h, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    best = math.inf
    with torch.inference_mode():
        for linear in (torch.nn.functional.linear, select_kernel("linear_act", device)):
            linear(x, w, None)
            for _ in range(repeats):
                sync()
                t = time.perf_counter()
                linear(x, w, None)
                sync()
                best = min(best, time.perf_counter() - t)
    return 2 * tokens * h * i / best / 1e9


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM, which a new program starts afresh)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peer_model(cls: str, path: str, device: str, dtype: str) -> Any:
    """A sentence-transformers model (``cls``: ``SentenceTransformer``, ``CrossEncoder``, ``SparseEncoder``)
    on ``device`` in ``dtype``."""
    import sentence_transformers
    import torch

    peer = getattr(sentence_transformers, cls)(path, device=device)
    target = getattr(torch, dtype)
    if cls == "CrossEncoder":
        peer.model.to(target)
        return peer
    return peer.to(target)


def _rss_child(kind: str, task: str, model_dir: str, payload: Any, dtype: str, queue: Any) -> None:
    if kind == "poolkit":
        from poolkit import LLM

        llm = LLM(model_dir, dtype=dtype, device="cpu")
        if task == "rerank":
            queries, docs = payload
            for query in queries:
                llm.score(query, docs)
        else:
            llm.sparse_embed(payload) if task == "sparse" else llm.embed(payload)
    elif task == "rerank":
        queries, docs = payload
        peer_model("CrossEncoder", model_dir, "cpu", dtype).predict([(q, d) for q in queries for d in docs], batch_size=32)
    else:
        cls = "SparseEncoder" if task == "sparse" else "SentenceTransformer"
        peer_model(cls, model_dir, "cpu", dtype).encode(payload, batch_size=32)
    queue.put(_peak_rss_mb())


def peak_rss_mb(kind: str, model_dir: str, payload: Any, dtype: str, task: str = "embed") -> float:
    """Peak RSS (MiB) of one library on the CPU in a fresh process: embedding texts (``task``
    "embed" or "sparse") or reranking (``"rerank"``: ``payload`` is ``(queries, documents)``)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_rss_child, args=(kind, task, model_dir, payload, dtype, queue))
    proc.start()
    proc.join(timeout=600)
    return float(queue.get(timeout=5)) if proc.exitcode == 0 else float("nan")


class Bench:
    """The workloads, sharing the loaded models.

    ``peer_dtype`` is the dtype sentence-transformers runs in: by default poolkit's on the CPU
    (equal precision) and fp16 on CUDA (its usual GPU setting).
    """

    def __init__(
        self, model: str, dtype: str, rounds: int, scale: float, memory: bool,
        device: str | None = None, peer_dtype: str | None = None,
    ) -> None:
        from poolkit import LLM

        self.model_dir, self.weights = resolve_bench_model(model)
        self.llm = LLM(self.model_dir, dtype=dtype, device=device)
        self.device = self.llm.model.device
        self.config = self.llm.model.hf_config
        self.dtype = str(self.llm.model.dtype).removeprefix("torch.")
        self.peer_dtype = peer_dtype or ("float16" if self.device.type == "cuda" else self.dtype)
        self.gemm_peak_gflops = gemm_peak_gflops(self.config, self.llm.model.dtype, self.device)
        self.rounds = rounds
        self.scale = scale
        self.memory = memory and self.device.type == "cpu"
        self.st = self._peer("SentenceTransformer", self.model_dir)

    def _peer(self, cls: str, path: str, dtype: str | None = None) -> Any:
        """:func:`peer_model` on the bench's device, in the peer's dtype; None without the library."""
        try:
            import sentence_transformers  # noqa: F401
        except ImportError:
            return None
        return peer_model(cls, path, str(self.device), dtype or self.peer_dtype)

    def _n(self, n: int) -> int:
        return max(4, int(n * self.scale))

    def embed_workload(self, name: str, description: str, texts: list[str]) -> Result:
        import torch

        ours = lambda: self.llm.embed(texts)  # noqa: E731
        theirs = (lambda: self.st.encode(texts, batch_size=32)) if self.st is not None else None  # noqa: E731
        rounds = _interleave(self.rounds, ours, theirs)
        outputs = self.llm.embed(texts)
        lengths = [len(o.prompt_token_ids) for o in outputs]
        result = self._result(name, description, len(texts), sum(lengths), rounds, model_flops(self.llm.model, lengths))
        result.padding_fraction_peer = _padding_fraction(lengths)
        sample = texts[: min(len(texts), 256)]
        ref = self._reference(sample)
        if ref is not None:
            got = torch.tensor([o.outputs.embedding for o in outputs[: len(sample)]])
            result.min_cosine = float(torch.nn.functional.cosine_similarity(got, ref).min())
            result.max_abs_diff = float((got - ref).abs().max())
        if self.memory:
            result.poolkit_peak_rss_mb = peak_rss_mb("poolkit", self.model_dir, texts, self.dtype)
            if self.st is not None:
                result.peer_peak_rss_mb = peak_rss_mb("st", self.model_dir, texts, self.peer_dtype)
        return result

    def _reference(self, texts: list[str]) -> Any:
        """sentence-transformers fp32 vectors: the parity reference."""
        if self.st is None:
            return None
        return self._peer("SentenceTransformer", self.model_dir, "float32").encode(texts, convert_to_tensor=True).float().cpu()

    def _result(
        self, name: str, description: str, items: int, tokens: int, rounds: list[dict[str, float]], flops: float = 0.0
    ) -> Result:
        ours = statistics.median(r["poolkit_s"] for r in rounds)
        theirs = statistics.median(r["peer_s"] for r in rounds) if rounds and "peer_s" in rounds[0] else None
        result = Result(
            name, description, items, tokens, items / ours, items / theirs if theirs else None,
            tokens / ours, tokens / theirs if theirs else None, _median_ratio(rounds), rounds,
        )
        if flops:
            result.poolkit_gflops = flops / ours / 1e9
            result.peer_gflops = flops / theirs / 1e9 if theirs else None
        return result

    def _derived_model(self, path: str, architecture: str) -> None:
        """Save the model's encoder under a task head of ``architecture`` (the head randomly initialised)."""
        import torch
        import transformers

        from .errors import InvalidRequest

        config = transformers.AutoConfig.from_pretrained(self.model_dir)
        if config.model_type != "bert":
            raise InvalidRequest(f"workloads W4 and W7 derive BERT task models; {config.model_type} is not BERT")
        config.architectures = [architecture]
        config.num_labels = 1
        torch.manual_seed(0)
        model = getattr(transformers, architecture)(config)
        model.bert.load_state_dict(transformers.AutoModel.from_pretrained(self.model_dir).state_dict(), strict=False)
        model.tie_weights()
        if architecture == "BertForMaskedLM":
            self._calibrate_sparsity(model, config)
        model.save_pretrained(path)
        transformers.AutoTokenizer.from_pretrained(self.model_dir).save_pretrained(path)

    @staticmethod
    def _calibrate_sparsity(model: Any, config: Any, active: float = 0.01) -> None:
        """Shift the MLM output bias so that about ``active`` of the vocabulary scores above zero, as
        in trained SPLADE models (a random head would light up half the vocabulary)."""
        import torch

        with torch.no_grad():
            ids = torch.randint(1000, int(config.vocab_size), (8, 32), generator=torch.Generator().manual_seed(7))
            pooled = model(input_ids=ids).logits.float().amax(1)  # SPLADE max-pools each term over the tokens
            model.cls.predictions.bias -= torch.quantile(pooled.flatten(), 1 - active)

    def w1(self) -> Result:
        texts = make_corpus(self._n(2000), 22, 0.35, seed=1)
        result = self.embed_workload("W1", "short sentences, 16-64 tokens", texts)
        ours, theirs = self._latency(texts[:50])
        result.notes = f"one sentence per call: p50 {ours:.1f} ms" + (f" vs {theirs:.1f} ms" if theirs else "")
        return result

    def _latency(self, texts: list[str]) -> tuple[float, float | None]:
        """Median milliseconds of embedding one text per call (a single-request server's latency), each library."""
        for text in texts:  # warm-up: kernels are prepared once per input shape
            self.llm.embed(text)
            if self.st is not None:
                self.st.encode(text)
        calls = [self.llm.embed] + ([self.st.encode] if self.st is not None else [])
        timings: list[list[float]] = [[] for _ in calls]
        for text in texts:
            for call, samples in zip(calls, timings):
                start = time.perf_counter()
                call(text)
                samples.append(1000 * (time.perf_counter() - start))
        medians = [statistics.median(samples) for samples in timings]
        return medians[0], medians[1] if len(medians) > 1 else None

    def w2(self) -> Result:
        texts = make_corpus(self._n(200), 600, 0.05, seed=2)
        return self.embed_workload("W2", "long documents, truncated to the model limit", texts)

    def w3(self) -> Result:
        texts = make_corpus(self._n(1000), 60, 1.0, seed=3, max_words=600)
        random.Random(3).shuffle(texts)
        return self.embed_workload("W3", "mixed lengths 8-512 tokens, random order", texts)

    def w4(self) -> Result:
        """Rerank 32 queries x 100 documents with a cross-encoder of the model's shape (random head);
        the notes give the latency of one query x 100 documents."""
        import torch

        queries = make_corpus(max(1, int(32 * self.scale)), 8, 0.3, seed=4)
        docs = make_corpus(self._n(100), 120, 0.3, seed=5)
        with tempfile.TemporaryDirectory() as tmp:
            self._derived_model(tmp, "BertForSequenceClassification")
            from poolkit import LLM

            reranker = LLM(tmp, dtype=self.dtype, device=str(self.device))
            pairs = [(q, d) for q in queries for d in docs]
            ours = lambda: [reranker.score(q, docs) for q in queries]  # noqa: E731
            ce = self._peer("CrossEncoder", tmp)
            theirs = (lambda: ce.predict(pairs, batch_size=32)) if ce is not None else None  # noqa: E731
            rounds = _interleave(self.rounds, ours, theirs)
            scored = [s for q in queries for s in reranker.score(q, docs)]
            lengths = [len(s.prompt_token_ids) for s in scored]
            result = self._result(
                "W4", f"rerank {len(queries)} queries x {len(docs)} documents", len(pairs), sum(lengths), rounds,
                model_flops(reranker.model, lengths),
            )
            result.padding_fraction_peer = _padding_fraction(lengths)
            if ce is not None:
                ref = torch.tensor(self._peer("CrossEncoder", tmp, "float32").predict(pairs, batch_size=32))
                got = torch.tensor([s.outputs.score for s in scored])
                result.max_abs_diff = float((got - ref).abs().max())
            single = _interleave(
                max(3, self.rounds), lambda: reranker.score(queries[0], docs),
                (lambda: ce.predict(pairs[: len(docs)], batch_size=32)) if ce is not None else None,
            )
            latency = {k: 1000 * statistics.median(r[k] for r in single) for k in single[0]}
            result.notes = (
                f"cross-encoder: the model's encoder with a random one-output head; 1 query x {len(docs)} documents: "
                f"{latency['poolkit_s']:.0f} ms" + (f" vs {latency['peer_s']:.0f} ms" if "peer_s" in latency else "")
            )
            if self.memory:
                result.poolkit_peak_rss_mb = peak_rss_mb("poolkit", tmp, (queries, docs), self.dtype, "rerank")
                if ce is not None:
                    result.peer_peak_rss_mb = peak_rss_mb("st", tmp, (queries, docs), self.peer_dtype, "rerank")
        return result

    def w6(self) -> Result:
        """MaxSim of 1 query (32 x 128) against 1,000 documents (<= 300 x 128): kernel vs einsum."""
        import torch

        from poolkit.kernel import select_kernel

        gen = torch.Generator().manual_seed(6)
        lens = torch.randint(50, 300, (self._n(1000),), generator=gen).tolist()
        query = torch.nn.functional.normalize(torch.randn(32, 128, generator=gen), dim=-1).to(self.device)
        docs = [torch.nn.functional.normalize(torch.randn(n, 128, generator=gen), dim=-1).to(self.device) for n in lens]
        flat = torch.cat(docs)
        cu = torch.tensor([0] + lens, device=self.device).cumsum(0)
        kernel = select_kernel("maxsim", self.device)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

        def einsum() -> Any:
            padded = torch.nn.utils.rnn.pad_sequence(docs, batch_first=True)
            mask = torch.arange(padded.shape[1], device=self.device)[None] < torch.tensor(lens, device=self.device)[:, None]
            sims = torch.einsum("qd,ntd->nqt", query, padded).masked_fill(~mask[:, None], float("-inf"))
            return sims.max(-1).values.sum(-1)

        def synced(fn: Callable[[], Any]) -> Callable[[], Any]:
            return lambda: (fn(), sync())

        rounds = _interleave(self.rounds, synced(lambda: kernel(query, flat, cu)), synced(einsum))
        result = self._result("W6", f"ColBERT MaxSim, 1 query x {len(lens)} documents", len(lens), sum(lens), rounds)
        result.max_abs_diff = float((kernel(query, flat, cu) - einsum()).abs().max())
        result.notes = f"peer: padded einsum (the PyLate-style baseline); kernel selected for {self.device.type}"
        return result

    def w7(self) -> Result:
        """SPLADE on short sentences: sparse vectors of a masked-LM of the model's shape vs ``SparseEncoder``."""
        import torch

        from poolkit import LLM

        texts = make_corpus(self._n(1000), 22, 0.35, seed=7)
        with tempfile.TemporaryDirectory() as tmp:
            self._derived_model(tmp, "BertForMaskedLM")
            llm = LLM(tmp, dtype=self.dtype, device=str(self.device))
            encoder = self._peer("SparseEncoder", tmp)
            ours = lambda: llm.sparse_embed(texts)  # noqa: E731
            theirs = (lambda: encoder.encode(texts, batch_size=32)) if encoder is not None else None  # noqa: E731
            rounds = _interleave(self.rounds, ours, theirs)
            outputs = llm.sparse_embed(texts)
            lengths = [len(o.prompt_token_ids) for o in outputs]
            decoder = 2 * int(self.config.hidden_size) * int(self.config.vocab_size)  # the tied MLM decoder
            flops = model_flops(llm.model, lengths, per_token=decoder)
            result = self._result("W7", "SPLADE sparse vectors, short sentences", len(texts), sum(lengths), rounds, flops)
            result.padding_fraction_peer = _padding_fraction(lengths)
            if encoder is not None:
                sample = texts[: min(len(texts), 64)]
                got = torch.stack([torch.as_tensor(o.outputs.data).float() for o in llm.encode(sample, pooling_task="sparse_embed")])
                ref = self._peer("SparseEncoder", tmp, "float32").encode(sample, convert_to_tensor=True).to_dense().float().cpu()
                result.min_cosine = float(torch.nn.functional.cosine_similarity(got, ref).min())
                result.max_abs_diff = float((got - ref).abs().max())
            if self.memory:
                result.poolkit_peak_rss_mb = peak_rss_mb("poolkit", tmp, texts, self.dtype, "sparse")
                if encoder is not None:
                    result.peer_peak_rss_mb = peak_rss_mb("st", tmp, texts, self.peer_dtype, "sparse")
            active = statistics.mean(len(o.outputs.indices) for o in outputs)
            result.notes = (
                f"masked-LM of the model's shape (its encoder, a random MLM head biased to ~1% active terms); "
                f"{active:.0f} non-zero terms per text on average"
            )
        return result

    def w9(self) -> Result:
        """Cold start: a fresh process from start to its first embedding."""
        device = str(self.device)
        ours = [sys.executable, "-c", f"from poolkit import LLM; LLM({self.model_dir!r}, device={device!r}).embed('hello')"]
        theirs = [sys.executable, "-c", f"from sentence_transformers import SentenceTransformer as S; S({self.model_dir!r}, device={device!r}).encode('hello')"]
        run = lambda cmd: subprocess.run(cmd, check=True, capture_output=True)  # noqa: E731
        rounds = _interleave(max(1, self.rounds), lambda: run(ours), (lambda: run(theirs)) if self.st is not None else None)
        result = self._result("W9", "cold start: process start to first embedding", 1, 0, rounds)
        result.notes = "items/s here is 1 / seconds"
        return result

    def w10(self) -> Result:
        texts = [("pathological input " * 30000)[: 100_000 + 20_000 * i] for i in range(self._n(20))]
        return self.embed_workload("W10", "pathological: 100k-500k character inputs, truncated", texts)


WORKLOADS = {
    "W1": Bench.w1, "W2": Bench.w2, "W3": Bench.w3, "W4": Bench.w4, "W6": Bench.w6, "W7": Bench.w7, "W9": Bench.w9,
    "W10": Bench.w10,
}


def run_bench(
    model: str, workloads: list[str], dtype: str, rounds: int, scale: float, memory: bool,
    device: str | None = None, peer_dtype: str | None = None,
) -> dict[str, Any]:
    """Run the workloads; the JSON-ready report."""
    import torch

    bench = Bench(model, dtype, rounds, scale, memory, device, peer_dtype)
    results = [asdict(WORKLOADS[w](bench)) for w in workloads]
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import sentence_transformers

        versions["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        versions["sentence_transformers"] = None
    from poolkit import __version__

    versions["poolkit"] = __version__
    return {
        "model": model,
        "dtype": bench.dtype,
        "peer_dtype": bench.peer_dtype,
        "device": str(bench.device),
        "threads": torch.get_num_threads(),
        "gemm_peak_gflops": bench.gemm_peak_gflops,
        "machine": platform.machine(),
        "versions": versions,
        "weights": bench.weights,
        "results": results,
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"model {report['model']}  weights: {report['weights']}\n"
        f"dtype {report['dtype']} (peer {report['peer_dtype']})  "
        f"device {report['device']}  threads {report['threads']}  matmul peak {report['gemm_peak_gflops']:.0f} GFLOP/s",
        f"{'workload':<5} {'items':>6} {'poolkit tok/s':>14} {'peer tok/s':>11} {'poolkit it/s':>13} {'peer it/s':>10} "
        f"{'ratio':>6} {'min cos':>9} {'max|diff|':>9} {'RSS MB ours/peer':>17} {'pad% peer':>9} {'% of peak ours/peer':>19}",
    ]
    peak = report["gemm_peak_gflops"]
    for r in report["results"]:
        fmt = lambda v, f: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, f)  # noqa: E731
        rss = f"{fmt(r['poolkit_peak_rss_mb'], '.0f')}/{fmt(r['peer_peak_rss_mb'], '.0f')}"
        pad = fmt(None if r["padding_fraction_peer"] is None else 100 * r["padding_fraction_peer"], ".1f")
        share = lambda v: None if v is None else 100 * v / peak  # noqa: E731
        mfu = f"{fmt(share(r['poolkit_gflops']), '.0f')}/{fmt(share(r['peer_gflops']), '.0f')}"
        lines.append(
            f"{r['workload']:<5} {r['items']:>6} {fmt(r['poolkit_tokens_per_s'], ',.0f'):>14} {fmt(r['peer_tokens_per_s'], ',.0f'):>11} "
            f"{fmt(r['poolkit_items_per_s'], ',.1f'):>13} {fmt(r['peer_items_per_s'], ',.1f'):>10} {fmt(r['ratio'], '.2f'):>6} "
            f"{fmt(r['min_cosine'], '.6f'):>9} {fmt(r['max_abs_diff'], '.1e'):>9} {rss:>17} {pad:>9} {mfu:>19}  {r['description']}"
        )
    return "\n".join(lines)


@hookimpl
def poolkit_register_commands(app):
    import typer

    from .cli import _errors, _setup_logging

    @app.command()
    def bench(
        workloads: str = typer.Option("W1,W2,W3,W4,W6,W7,W9,W10", "--workloads", "-w", help="Comma-separated workload ids."),
        model: str = typer.Option(
            DEFAULT_MODEL, "--model", "-m",
            help=f"Model with a sentence-transformers peer, or a random-weight preset: {', '.join(PRESETS)}.",
        ),
        dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on bf16 hardware) or float32."),
        peer_dtype: Optional[str] = typer.Option(
            None, "--peer-dtype", help="sentence-transformers' dtype (default: poolkit's on CPU, float16 on CUDA)."
        ),
        device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
        rounds: int = typer.Option(3, "--rounds", help="Interleaved rounds per workload."),
        scale: float = typer.Option(1.0, "--scale", help="Multiply every workload's size."),
        smoke: bool = typer.Option(False, "--smoke", help="A tiny configuration (CI): small sizes, one round, no RSS."),
        memory: Optional[bool] = typer.Option(None, "--memory/--no-memory", help="Measure peak RSS in child processes."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Benchmark poolkit against sentence-transformers on the same weights, interleaved."""
        with _errors():
            _setup_logging(True, False)
            names = [w.strip().upper() for w in workloads.split(",") if w.strip()]
            unknown = [w for w in names if w not in WORKLOADS]
            if unknown:
                from .errors import InvalidRequest

                raise InvalidRequest(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
            if smoke:
                rounds, scale = 1, min(scale, 0.02)
            report = run_bench(
                model, names, dtype, rounds, scale, memory if memory is not None else not smoke, device, peer_dtype
            )
            typer.echo(json.dumps(report, indent=2) if as_json else format_table(report))
