"""BGE-M3: dense, sparse (lexical weights) and multi-vector (ColBERT) outputs of one XLM-R pass.

BAAI/bge-m3 is an XLM-RoBERTa checkpoint with two small linears saved beside it, as FlagEmbedding
writes them: ``sparse_linear.pt`` (``Linear(H, 1)``) and ``colbert_linear.pt`` (``Linear(H, D)``),
``torch.save``-d state dicts. Select the architecture as in vLLM, with
``hf_overrides={"architectures": ["BgeM3EmbeddingModel"]}``; one loaded model then serves

- ``embed``: the CLS hidden state, L2-normalised (the ordinary task head);
- ``sparse_embed``: FlagEmbedding's lexical weights ``relu(sparse_linear(h))`` per token, the
  maximum per token id, special tokens (CLS, EOS, PAD, UNK) left out, as a ``[vocab]`` vector;
- ``token_embed``: ``colbert_linear(h)`` of every token but the first (CLS), L2-normalised.

The linears are read from ``*.safetensors`` files of the same names when present, else from the
pickles, only with ``allow_pickle`` (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.io import Prompt
from poolkit.contracts.params import PoolingParams

from .bert import XLMRobertaModel

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.architecture import LoadedModel, TaskSpec
    from poolkit.contracts.model import Tokenizer
    from poolkit.contracts.pooling import Head

logger = logging.getLogger(__name__)

#: The companion files, by the attribute they load into.
COMPANIONS = ("sparse_linear", "colbert_linear")


def read_companion(model_dir: Path, stem: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The state dict of ``<stem>.safetensors``, else of the pickle ``<stem>.pt`` (only with
    ``allow_pickle``), names stripped of a ``<stem>.`` prefix.

    Raises:
        ModelLoadError: neither file exists, or only the pickle does and ``allow_pickle`` is false.
    """
    safe, pickle = model_dir / f"{stem}.safetensors", model_dir / f"{stem}.pt"
    if safe.is_file():
        from safetensors.torch import load_file

        try:
            state = load_file(str(safe))
        except Exception as exc:
            raise ModelLoadError(f"cannot read {safe}: {type(exc).__name__}: {exc}") from None
    elif pickle.is_file():
        if not allow_pickle:
            raise ModelLoadError(
                f"{pickle} is a pickle file, which can run code when loaded; convert it to {safe.name}, "
                "or opt in with allow_pickle=True (--allow-pickle)"
            )
        try:
            state = torch.load(str(pickle), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot read {pickle}: {type(exc).__name__}: {exc}") from None
    else:
        raise ModelLoadError(
            f"BgeM3EmbeddingModel needs {stem}.pt or {stem}.safetensors beside the weights, and {model_dir} has neither"
        )
    if not isinstance(state, dict):
        raise ModelLoadError(f"{stem} in {model_dir} is not a state dict (got {type(state).__name__})")
    return {name.removeprefix(f"{stem}."): tensor for name, tensor in state.items()}


def build_linear(stem: str, state: dict[str, torch.Tensor], hidden_size: int, out_features: int | None) -> nn.Linear:
    """An ``nn.Linear`` from a ``{weight, bias}`` state dict, its shapes checked.

    Raises:
        ModelLoadError: a tensor is missing or has the wrong shape.
    """
    weight, bias = state.get("weight"), state.get("bias")
    if weight is None or weight.ndim != 2 or weight.shape[1] != hidden_size:
        shape = None if weight is None else tuple(weight.shape)
        raise ModelLoadError(f"{stem} weight has shape {shape}; it must be [out, {hidden_size}]")
    if out_features is not None and weight.shape[0] != out_features:
        raise ModelLoadError(f"{stem} weight has shape {tuple(weight.shape)}; it must be [{out_features}, {hidden_size}]")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ModelLoadError(f"{stem} bias has shape {tuple(bias.shape)}; it must be [{weight.shape[0]}]")
    linear = nn.Linear(hidden_size, weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


class Fp32Linear(nn.Module):
    """Applies a linear in fp32, whatever dtype the model runs in (heads are a sliver of the work)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.linear.bias is None else self.linear.bias.float()
        return F.linear(x.float(), self.linear.weight.float(), bias)


class ColbertVectorsHead:
    """FlagEmbedding's ``colbert_vecs``: ``colbert_linear`` over every token but the first (CLS),
    in fp32, normalised unless a request says ``use_activation=False``; ``dimensions`` and late
    chunking apply as for any ``token_embed`` head."""

    def __init__(self, linear: nn.Linear, use_activation: bool, dimensions: int | None) -> None:
        self.linear = Fp32Linear(linear)
        self.use_activation = use_activation
        self.dimensions = dimensions

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        out = []
        for rows, p in zip(batch.split(hidden), params):
            vectors = self.linear(rows[1:])
            if p.late_chunking_params is not None:
                size = p.late_chunking_params.chunk_size
                vectors = torch.stack([part.mean(0) for part in vectors.split(size)])
            dims = p.dimensions or self.dimensions
            if dims:
                vectors = vectors[..., :dims]
            activate = self.use_activation if p.use_activation is None else p.use_activation
            out.append(F.normalize(vectors, dim=-1) if activate else vectors)
        return out


class LexicalWeightsHead:
    """FlagEmbedding's sparse output as a ``[vocab]`` vector per sequence (fp32).

    ``relu(sparse_linear(h))`` gives one weight per token; a token id's weight is the maximum over
    its occurrences; special token ids get none. With ``use_activation=False`` the ReLU is
    skipped (ids absent from the text are still 0).
    """

    pooling_name = "BGE_M3_SPARSE"

    def __init__(self, linear: nn.Linear, vocab_size: int, skip_ids: Sequence[int], use_activation: bool) -> None:
        self.linear = Fp32Linear(linear)
        self.vocab_size = int(vocab_size)
        self.skip_ids = sorted({int(i) for i in skip_ids})
        self.use_activation = use_activation

    @property
    def output_size(self) -> int:
        return self.vocab_size

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        weights = self.linear(hidden).squeeze(-1)
        flags = torch.tensor(
            [self.use_activation if p.use_activation is None else p.use_activation for p in params],
            dtype=torch.bool, device=hidden.device,
        )
        seq_ids = batch.seq_ids
        weights = torch.where(flags[seq_ids], torch.relu(weights), weights)
        ids = batch.input_ids
        keep = ~torch.isin(ids, torch.tensor(self.skip_ids, dtype=ids.dtype, device=ids.device))
        out = torch.full((batch.num_seqs * self.vocab_size,), float("-inf"), dtype=torch.float32, device=hidden.device)
        out.scatter_reduce_(0, (seq_ids * self.vocab_size + ids)[keep], weights[keep], reduce="amax")
        out.masked_fill_(out == float("-inf"), 0.0)
        return list(out.view(batch.num_seqs, self.vocab_size).unbind(0))


class BgeM3EmbeddingModel(XLMRobertaModel):
    """BGE-M3 (vLLM's name): XLM-R plus the sparse and ColBERT linears of its companion files.

    Serves ``embed`` (CLS, normalised), ``sparse_embed`` (lexical weights) and ``token_embed``
    (ColBERT vectors without CLS, normalised) from one forward pass; ``LLM.score`` is the cosine
    of the dense vectors (bi-encoder), as in vLLM.
    """

    pooling_tasks: ClassVar[frozenset[str] | None] = frozenset({"embed", "sparse_embed", "token_embed"})

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.sparse_linear: nn.Linear | None = None
        self.colbert_linear: nn.Linear | None = None

    def load_companion_files(self, model_dir: Path, allow_pickle: bool) -> None:
        model_dir = Path(model_dir)
        hidden = self.hidden_size
        self.sparse_linear = build_linear(
            "sparse_linear", read_companion(model_dir, "sparse_linear", allow_pickle), hidden, 1
        )
        self.colbert_linear = build_linear(
            "colbert_linear", read_companion(model_dir, "colbert_linear", allow_pickle), hidden, None
        )

    def role_prompts(self, texts: list[str], side: str, model: LoadedModel) -> list[Prompt]:
        """BGE-M3 encodes queries and documents alike (FlagEmbedding's ``encode_queries`` and
        ``encode_corpus`` differ only in their length limits): the texts as they are, either side."""
        return [Prompt(text=text) for text in texts]

    def special_token_ids(self, tokenizer: Tokenizer) -> list[int]:
        """FlagEmbedding's ``unused_tokens`` (CLS, EOS, PAD, UNK ids), plus SEP where it differs."""
        names = ("cls_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id")
        ids = [getattr(tokenizer, name, None) for name in names]
        return [int(i) for i in ids if isinstance(i, int)]

    def task_head(self, task: TaskSpec, model: LoadedModel) -> Head | None:
        if task.name == "sparse_embed" and self.sparse_linear is not None:
            return LexicalWeightsHead(
                self.sparse_linear,
                int(self.config.vocab_size),
                self.special_token_ids(model.tokenizer),
                model.use_activation(from_st_normalize=False).value,
            )
        if task.name == "token_embed" and self.colbert_linear is not None:
            return ColbertVectorsHead(
                self.colbert_linear, model.use_activation(from_st_normalize=False).value, model.dimensions.value
            )
        return None


@hookimpl
def poolkit_register_architectures(register):
    register("BgeM3EmbeddingModel", BgeM3EmbeddingModel)
