"""The ``sparse_embed`` task and the SPLADE head.

SPLADE turns a masked language model into a sparse lexical encoder: each token's MLM logits go
through ``log(1 + relu(x))`` and are reduced (max, or sum for the original SPLADE) over all of
the sequence's tokens, special tokens included as sentence-transformers' ``SparseEncoder`` does,
into one ``[vocab]`` vector with a few dozen non-zero weights.

The task builds the head from the architecture's masked-LM logits (``Architecture.lm_head``),
so any architecture with an MLM head (``BertForMaskedLM``, ``RobertaForMaskedLM``) serves it; a
SPLADE model's architecture hands ``embed`` this task's head too. A sentence-transformers ``Router``
with an inference-free query route (:mod:`.sparse_router`) is recognised here, its layout and its
architecture registered by this plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from poolkit.contracts.architecture import LoadedModel
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.params import PoolingParams, Setting
from poolkit.contracts.sparse import SparseEmbedding, check_pruning
from poolkit.contracts.pooling import Head
from poolkit.contracts.tasks import Task
from poolkit.plugins.lookup import kernel_for
from poolkit.plugins.manager import registry

from .sparse_router import ARCHITECTURE, InferenceFreeSpladeModel, router_layout

#: Most MLM logits (rows x vocabulary) the SPLADE head holds at once: 2**24 floats (64 MiB in
#: fp32) is 549 token rows for BERT's 30522-token vocabulary.
LOGITS_BUDGET = 1 << 24
STRATEGIES = ("max", "sum")
ACTIVATIONS = ("relu", "log1p_relu")


class SpladeHead:
    """MLM logits of bounded chunks of token rows, activated and pooled per sequence (fp32).

    The ``[tokens, vocab]`` logits of a batch never exist at once: rows are taken ``chunk_rows``
    at a time, their logits computed, and the ``splade_pool`` kernel folds them into the
    ``[B, vocab]`` result.

    Args:
        mlm_logits: ``[n, H]`` hidden rows -> ``[n, vocab]`` logits (the architecture's MLM head).
        vocab_size: width of the logits.
        strategy: ``"max"`` (SPLADE v2 and later) or ``"sum"`` over a sequence's tokens.
        activation: ``"relu"`` (``log1p(relu(x))``) or ``"log1p_relu"`` (one more ``log1p``,
            OpenSearch's models), as sentence-transformers' ``SpladePooling`` names them.
        use_activation: the default when a request leaves ``use_activation`` unset; without the
            activation a request gets the raw logits reduced by ``strategy``.
        chunk_rows: token rows per chunk; ``None`` derives it from :data:`LOGITS_BUDGET`.
    """

    def __init__(
        self,
        mlm_logits: Callable[[torch.Tensor], torch.Tensor],
        vocab_size: int,
        strategy: str = "max",
        activation: str = "relu",
        use_activation: bool = True,
        chunk_rows: int | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ModelLoadError(f"SPLADE pooling strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
        if activation not in ACTIVATIONS:
            raise ModelLoadError(f"SPLADE activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
        self.mlm_logits = mlm_logits
        self.vocab_size = int(vocab_size)
        self.strategy = strategy
        self.activation = activation
        self.use_activation = use_activation
        self.chunk_rows = chunk_rows

    @property
    def pooling_name(self) -> str:
        """What ``poolkit info`` may show as the pooling of this head (``SPLADE_MAX``, ...)."""
        suffix = "" if self.activation == "relu" else f"_{self.activation.upper()}"
        return f"SPLADE_{self.strategy.upper()}{suffix}"

    @property
    def output_size(self) -> int:
        """Width of a result: the vocabulary."""
        return self.vocab_size

    @property
    def rows_per_chunk(self) -> int:
        return self.chunk_rows or max(1, LOGITS_BUDGET // self.vocab_size)

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        flags = [self.use_activation if p.use_activation is None else p.use_activation for p in params]
        start = float("-inf") if self.strategy == "max" else 0.0
        out = torch.full((batch.num_seqs, self.vocab_size), start, dtype=torch.float32, device=hidden.device)
        kernel = kernel_for(self, "splade_pool", hidden.device)
        seq_ids = batch.seq_ids
        mixed = len(set(flags)) > 1
        activated = torch.tensor(flags, dtype=torch.bool, device=hidden.device) if mixed else None
        step = self.rows_per_chunk
        for begin in range(0, batch.num_tokens, step):
            logits = self.mlm_logits(hidden[begin : begin + step])
            segments = seq_ids[begin : begin + step]
            if activated is None:  # every sequence alike
                kernel(logits, segments, out, self.strategy, self.activation if flags[0] else "none")
                continue
            rows = activated[segments]
            kernel(logits[rows], segments[rows], out, self.strategy, self.activation)
            kernel(logits[~rows], segments[~rows], out, self.strategy, "none")
        if self.strategy == "max":
            out.masked_fill_(out == float("-inf"), 0.0)  # a sequence with no tokens
        return list(out.unbind(0))


class SparseEmbedTask(Task):
    """One sparse lexical vector per input: ``[vocab]`` weights, mostly zero (SPLADE).

    Served by architectures with an MLM head (``Architecture.lm_head``), pooled as the model's
    sentence-transformers ``SpladePooling`` says (max and ``relu`` by default);
    :class:`poolkit.contracts.sparse.SparseEmbedding` turns a result into ``{indices, values, tokens}``.
    """

    name = "sparse_embed"
    granularity = "sequence"
    params = frozenset({"use_activation"})
    output_field = "values"
    default_rank = 4
    output_options = frozenset({"top_k", "threshold", "return_tokens"})
    tensor_output = False

    def check_options(self, options: dict[str, Any]) -> None:
        check_pruning(options.get("top_k"), options.get("threshold"))

    def render(self, data: torch.Tensor, model: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        """``{indices, values}`` strongest first, ``tokens`` too when ``return_tokens``."""
        tokenizer = model.tokenizer if options.get("return_tokens") else None
        top_k, threshold = options.get("top_k"), options.get("threshold")
        return SparseEmbedding.from_dense(data, top_k=top_k, threshold=threshold, tokenizer=tokenizer).to_dict()

    def record(self, data: torch.Tensor, model: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        """Records (CLI, corpus jobs) carry the tokens unless ``return_tokens`` is false."""
        return self.render(data, model, {"return_tokens": True, **{k: v for k, v in options.items() if v is not None}})

    def build(self, model: LoadedModel) -> Head | None:
        mlm_logits = model.architecture.lm_head()
        if mlm_logits is None:
            return None
        settings = self.settings(model)
        return SpladeHead(
            mlm_logits,
            int(model.architecture.config.vocab_size),
            strategy=settings["splade_pooling"].value,
            activation=settings["activation_fn"].value,
            use_activation=settings["use_activation"].value,
        )

    def settings(self, model: LoadedModel) -> dict[str, Setting]:
        """The SPLADE reduction and activation (the sentence-transformers ``SpladePooling``'s, else
        max and ``relu``); the task pools with no registered pooler."""
        splade = model.st.splade if model.st is not None and model.st.splade is not None else {}
        source = f"sentence-transformers SpladePooling ({splade.get('path')})"

        def setting(key: str, default: str) -> Setting:
            return Setting(splade[key], source) if key in splade else Setting(default, f"task default ({self.name})")

        return {
            **super().settings(model),
            "splade_pooling": setting("strategy", "max"),
            "activation_fn": setting("activation", "relu"),
            "use_activation": model.use_activation(from_st_normalize=False),
        }

    def check_model(self, model: LoadedModel) -> None:
        """Refuse a sentence-transformers ``SparseEncoder`` whose architecture does not make ``embed``
        the SPLADE vector (its embeddings would be wrong), and a ``Router`` whose query table does
        not weigh its tokenizer's tokens.

        Raises:
            ModelLoadError: the model is such a checkpoint.
        """
        if model.st is None or model.st.splade is None:
            return
        arch = model.architecture
        if isinstance(arch, InferenceFreeSpladeModel):
            arch.check_tokenizer(model.tokenizer)
        if arch.task_head(registry("task").get("embed"), model) is None:
            name = type(arch.document).__name__ if isinstance(arch, InferenceFreeSpladeModel) else model.architecture_name
            raise ModelLoadError(
                f"model '{model.name}' is a sentence-transformers SparseEncoder (SpladePooling), but "
                f"{name} has no SPLADE head in poolkit (BertForMaskedLM, RobertaForMaskedLM and "
                "XLMRobertaForMaskedLM have one); its embeddings would be wrong, so it is refused"
            )


@hookimpl
def poolkit_register_tasks(register):
    register("sparse_embed", SparseEmbedTask)


@hookimpl
def poolkit_register_architectures(register):
    register(ARCHITECTURE, InferenceFreeSpladeModel)


@hookimpl
def poolkit_checkpoint_layout(path):
    return router_layout(Path(path))
