"""What the bench measures: timings, model FLOPs, the machine's matmul peak, peak RSS, padding.

Every workload times both libraries with :func:`_interleave`, so that drifts of the machine
(thermal, other processes) hit both alike, each timed pass starting on a quiet machine
(:func:`settle`) and with empty prefix caches (:func:`emptier`: the rounds repeat the same texts,
which a decoder's cache would otherwise answer from the round before), and turns the timings into
a :class:`Result`. Peak RSS
is measured in a fresh child process per library, where the high-water mark is that library's own.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ...config.environment import env_number
from ...contracts.errors import InvalidRequest

if TYPE_CHECKING:
    from ...config.settings import EngineArgs
    from ...contracts.architecture import LoadedModel


#: Every poolkit call of the bench truncates over-long inputs to the model's limit, as
#: sentence-transformers does (poolkit's Python API refuses them unless asked, as vLLM does).
TRUNCATE = {"truncate_prompt_tokens": -1}


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
    #: The peer's own parity, where its model is not the reference (another dtype, an int8 export).
    peer_min_cosine: float | None = None
    peer_max_abs_diff: float | None = None
    poolkit_peak_rss_mb: float | None = None
    peer_peak_rss_mb: float | None = None
    padding_fraction_peer: float | None = None
    padding_fraction_poolkit: float = 0.0
    poolkit_gflops: float | None = None
    peer_gflops: float | None = None
    notes: str = ""
    #: Workload H: microseconds of host time per text of each stage (and the server's requests/s).
    stages: dict[str, float] = field(default_factory=dict)
    #: ``--breakdown``: one pass's time inside and outside the linear layers, and the same matmuls alone
    #: (:mod:`poolkit.entrypoints.bench.breakdown`).
    breakdown: dict[str, float] = field(default_factory=dict)


def _median_ratio(rounds: list[dict[str, float]]) -> float | None:
    ratios = [r["peer_s"] / r["poolkit_s"] for r in rounds if r.get("peer_s")]
    return statistics.median(ratios) if ratios else None


def _cpu_times() -> tuple[int, int] | None:
    """The machine's (total, idle) CPU time in clock ticks since boot, from ``/proc/stat``; ``None``
    where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(ticks), ticks[3] + ticks[4]  # idle and iowait


#: The environment variable that caps :func:`settle`'s wait, in seconds (0: time at once). The
#: suite's smoke runs of the bench set it to 0: on a machine busy with other work they would wait
#: out the cap before every timed pass, and they check what the bench reports, not its figures.
SETTLE_ENV = "POOLKIT_BENCH_SETTLE"


def settle_limit() -> float:
    """The longest :func:`settle` waits: ``POOLKIT_BENCH_SETTLE`` seconds, else 5."""
    limit = env_number(SETTLE_ENV, 5.0, "a number of seconds, 0 or more", positive=False)
    if not (limit >= 0 and math.isfinite(limit)):
        raise InvalidRequest(f"{SETTLE_ENV} must be a number of seconds, 0 or more, got {limit!r}")
    return limit


def settle(window: float = 0.05, quiet: float = 0.25, limit: float | None = None) -> float:
    """Wait until the machine is quiet: a ``window`` in which its cores were busy less than
    ``quiet`` of the time (a quarter: less than half a core of two), for ``limit`` seconds at most
    (:func:`settle_limit` when not given; 0: no wait). A library's pass may leave work running after
    it returns (vLLM's engine process keeps a core busy for about a second): timed at once, the next
    pass would pay for it. Returns the seconds waited.
    """
    limit = settle_limit() if limit is None else limit
    start = time.perf_counter()
    if limit <= 0:
        return 0.0
    before = _cpu_times()
    while before is not None and time.perf_counter() - start < limit:
        time.sleep(window)
        after = _cpu_times()
        total = after[0] - before[0]
        if total > 0 and 1 - (after[1] - before[1]) / total < quiet:
            break
        before = after
    return time.perf_counter() - start


def emptier(*models: Any) -> Callable[[], None]:
    """What empties the prefix caches of ``models`` (poolkit ``LLM``s and peers' models; those with no
    ``reset_prefix_cache``, or ``None``, pass): a timed pass then computes its texts, as a workload
    of new texts would, instead of reading the states that the pass before it kept of the same ones."""
    resets = [m.reset_prefix_cache for m in models if hasattr(m, "reset_prefix_cache")]

    def empty() -> None:
        for reset in resets:
            reset()

    return empty


def _interleave(
    rounds: int, ours: Callable[[], Any], theirs: Callable[[], Any] | None, cold: Sequence[Any] = ()
) -> list[dict[str, float]]:
    """Both libraries' passes alternated ``rounds`` times after one untimed pass each, every timed
    pass started on a quiet machine (:func:`settle`) and, untimed, with the prefix caches of the
    models in ``cold`` emptied (:func:`emptier`)."""
    empty = emptier(*cold)
    ours()
    if theirs is not None:
        theirs()
    out = []
    for _ in range(rounds):
        empty()
        settle()
        t = time.perf_counter()
        ours()
        row = {"poolkit_s": time.perf_counter() - t}
        if theirs is not None:
            empty()
            settle()
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


def model_flops(model: LoadedModel, lengths: list[int], per_token: int = 0) -> float:
    """Multiply-add FLOPs of a forward pass over sequences of ``lengths`` (real tokens only).

    Per token: twice the weights of every linear layer of the architecture, int8 ones
    (``quantization="int8"``) included, classifiers excluded, plus ``per_token`` (a head applied outside the linear layers, such as a tied MLM
    decoder); per token and layer, attention against its sequence's ``L`` tokens: ``4 L d``
    (``d`` = heads x head size), half that for causal attention.
    """
    import torch

    arch = model.architecture
    classifiers = (arch.sequence_classifier(), arch.token_classifier())
    excluded = {id(p) for c in classifiers if c is not None for p in c.parameters()}
    weights = sum(m.weight.numel() for m in arch.modules() if isinstance(m, torch.nn.Linear) and id(m.weight) not in excluded)
    qweights = (getattr(m, "qweight", None) for m in arch.modules())
    weights += sum(q.numel() for q in qweights if isinstance(q, torch.Tensor))
    config = model.hf_config
    heads = getattr(config, "num_attention_heads", None)
    if heads:
        width = int(heads) * int(getattr(config, "head_dim", None) or int(config.hidden_size) // int(heads))
        attention = 4 * int(config.num_hidden_layers) * width * (0.5 if getattr(arch, "causal", False) else 1.0)
    else:  # no attention (a static embedding model: a gather and a mean)
        attention = 0.0
    return float(sum(n * (2 * weights + per_token + attention * n) for n in lengths))


def gemm_peak_gflops(config: Any, dtype: Any, device: Any = "cpu", tokens: int = 4096, repeats: int = 10) -> float:
    """What this machine's matmul reaches on the model's feed-forward shape, in GFLOP/s.

    The best of ``repeats`` calls of both ``F.linear`` and the device's ``linear_act`` kernel
    (oneDNN with packed weights on the CPU): the ceiling for a pooling model's throughput, since
    matmuls are most of its work; 0 for a model with no feed-forward layer (a static embedding
    model), which runs no matmul.
    """
    import torch

    from ...plugins.lookup import select_kernel

    if not getattr(config, "intermediate_size", None):
        return 0.0
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


def _rss_child(kind: str, task: str, settings: dict[str, Any], payload: Any, dtype: str, queue: Any) -> None:
    model_dir = settings["model"]
    if kind == "poolkit":
        from poolkit import LLM

        from ...config.settings import EngineArgs

        llm = LLM.from_args(EngineArgs(**{**settings, "dtype": dtype, "device": "cpu"}))
        if task == "rerank":
            queries, docs = payload
            for query in queries:
                llm.score(query, docs, tokenization_kwargs=TRUNCATE)
        else:
            llm.sparse_embed(payload, tokenization_kwargs=TRUNCATE) if task == "sparse" else llm.embed(payload, tokenization_kwargs=TRUNCATE)
    elif task == "rerank":
        queries, docs = payload
        peer_model("CrossEncoder", model_dir, "cpu", dtype).predict([(q, d) for q in queries for d in docs], batch_size=32)
    else:
        cls = "SparseEncoder" if task == "sparse" else "SentenceTransformer"
        peer_model(cls, model_dir, "cpu", dtype).encode(payload, batch_size=32)
    queue.put(_peak_rss_mb())


def peak_rss_mb(kind: str, args: EngineArgs, payload: Any, dtype: str, task: str = "embed") -> float:
    """Peak RSS (MiB) of one library on the CPU in a fresh process: embedding texts (``task``
    "embed" or "sparse") or reranking (``"rerank"``: ``payload`` is ``(queries, documents)``).

    ``args`` are the settings poolkit loads the model with (``args.model``: the directory both
    libraries load); the child rebuilds them from JSON, in ``dtype`` on the CPU.
    """
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_rss_child, args=(kind, task, args.model_dump(mode="json"), payload, dtype, queue))
    proc.start()
    proc.join(timeout=600)
    return float(queue.get(timeout=5)) if proc.exitcode == 0 else float("nan")

