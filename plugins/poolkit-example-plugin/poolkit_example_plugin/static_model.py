"""A static word-embedding architecture (model2vec style): each token's vector is a lookup.

Such a model has no attention and no positions: the hidden state of a token is its row of the
embedding matrix, and the sentence vector comes from pooling (``MEAN`` by default).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Iterable

import torch
import torch.nn.functional as F

from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.loading.weights import load_into

MODEL_TYPE = "poolkit-static"
UNK = "[UNK]"


class StaticEmbeddingModel(Architecture):
    """Token ids ``[T]`` to their embedding rows ``[T, hidden_size]``.

    Reads ``vocab_size`` and ``hidden_size`` from ``config.json``; the checkpoint holds one
    tensor, ``embeddings.weight`` or model2vec's ``embeddings``.
    """

    default_pooling_type: ClassVar[str | None] = "MEAN"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.embeddings = torch.nn.Embedding(int(config.vocab_size), int(config.hidden_size))

    @property
    def max_positions(self) -> int | None:
        return None  # no position table: any length works

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        load_into(self, weights, rename=lambda name: "embeddings.weight" if name == "embeddings" else name)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return F.embedding(batch.input_ids, self.embeddings.weight)


def build_static_model(path: Path | str, vocab_words: list[str], dim: int, seed: int) -> Path:
    """Write a random static embedding model that poolkit can load, without any download.

    The directory gets ``config.json``, ``model.safetensors`` (one ``embeddings`` matrix, row
    ``i`` for token id ``i``) and a fast tokenizer: a lower-casing, whitespace-splitting word
    vocabulary with ``[UNK]`` as id 0 and no special tokens around a text.

    Args:
        path: the model directory to create (it may exist).
        vocab_words: the vocabulary; lower-cased, duplicates dropped.
        dim: the embedding width.
        seed: seed of the random embedding matrix.

    Returns:
        The model directory.

    Example:
        >>> path = build_static_model(tmp_path / "static", ["hello", "world"], dim=8, seed=0)
        >>> llm = poolkit.LLM(model=str(path))
    """
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    words = [UNK] + [w for w in dict.fromkeys(w.lower() for w in vocab_words) if w != UNK.lower()]
    vocab = {word: i for i, word in enumerate(words)}

    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=UNK).save_pretrained(str(path))

    generator = torch.Generator().manual_seed(seed)
    save_file({"embeddings": torch.randn(len(words), dim, generator=generator)}, str(path / "model.safetensors"))
    config = {
        "architectures": ["StaticEmbeddingModel"],
        "model_type": MODEL_TYPE,
        "vocab_size": len(words),
        "hidden_size": dim,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path
