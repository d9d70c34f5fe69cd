"""Tiny random static embedding models, saved by their publishers' own code: model2vec's
``StaticModel.save_pretrained`` (minishlab/potion-base-8M and the other potion models are model2vec
saves) and sentence-transformers' ``SentenceTransformer.save`` of a ``StaticEmbedding``.

Layout sources:

- model2vec folders: written by model2vec 0.7 itself (``model2vec/hf_utils.py``
  ``save_pretrained``): ``config.json`` (the config dict below plus ``embedding_dtype`` and, for a
  vocabulary-quantized save, ``vocabulary_quantization``), ``model.safetensors`` (``embeddings``,
  and ``mapping`` / ``weights`` when given), ``tokenizer.json``, ``modules.json`` (``StaticEmbedding``
  at ``.``, ``Normalize`` at ``1_Normalize`` when ``normalize``) and ``README.md``. The config keys are
  those ``model2vec/distill/distillation.py`` (0.7) writes: ``model_type``, ``architectures``,
  ``tokenizer_name``, ``apply_pca``, ``sif_coefficient``, ``hidden_dim``, ``seq_length``,
  ``normalize``, ``pooling``; ``tokenizer_name`` "baai/bge-base-en-v1.5" is what public ports quote
  of potion-base-8M's config.json (the potion model files themselves could not be read here).
- Tokenizers: a BERT WordPiece one (:func:`tiny_models.wordpiece_tokenizer`: ``[UNK]``, and
  ``[CLS] $A [SEP]`` around a text, as bge-base-en-v1.5's), which model2vec saves as it is (models
  distilled before 0.7 kept their teacher's tokenizer), and the Unigram one that model2vec 0.7's
  ``create_tokenizer`` turns it into (no template, ``[UNK]`` and ``[PAD]`` the only added tokens, no
  ``unk_token`` on its model), made by model2vec's own function.
- A vocabulary-quantized save (``StaticModel(..., weights=, token_mapping=)``, what
  ``quantize_vocabulary`` returns): ``mapping`` int64 token id -> cluster row, ``weights`` one float
  per token (random here; model2vec clusters with k-means and weights by SIF).
- sentence-transformers folders: written by sentence-transformers 6.2 itself
  (``SentenceTransformer(modules=[StaticEmbedding(...), Normalize()]).save``): the
  ``StaticEmbedding`` in the folder itself (``save_in_root``, path ``""`` in ``modules.json``) with
  ``model.safetensors`` (``embedding.weight``) and ``tokenizer.json``, ``1_Normalize/``,
  ``config_sentence_transformers.json``, no ``config.json``. The ``0_StaticEmbedding/`` folder of
  earlier versions, and model2vec's tensor names in it (which ``StaticEmbedding.load`` reads too),
  are made by moving the same files (:func:`build_st_static` ``module_folder`` / ``model2vec_keys``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tiny_models import wordpiece_tokenizer

#: model2vec 0.7 ``distill``'s config keys (``normalize`` and ``hidden_dim`` set per model).
MODEL2VEC_CONFIG = {
    "model_type": "model2vec",
    "architectures": ["StaticModel"],
    "tokenizer_name": "baai/bge-base-en-v1.5",
    "apply_pca": 256,
    "sif_coefficient": 1e-4,
    "seq_length": 1000000,
    "pooling": "mean",
}


def static_tokenizer(kind: str = "wordpiece"):
    """The tiny tokenizer as a ``tokenizers.Tokenizer``: ``"wordpiece"`` (BERT's, with its template
    and ``[UNK]``) or ``"unigram"`` (model2vec 0.7's ``create_tokenizer`` of it)."""
    tok = wordpiece_tokenizer()
    if kind == "unigram":
        from model2vec.tokenizer import create_tokenizer

        tok = create_tokenizer(tok, vocabulary=["capital", "capitals", "germany"])
    return tok.backend_tokenizer


def build_model2vec(
    out: Path,
    *,
    seed: int = 0,
    dim: int = 32,
    tokenizer: str = "wordpiece",
    normalize: bool = True,
    clusters: int | None = None,
    dtype: str = "float32",
) -> Path:
    """A model2vec folder saved by ``StaticModel.save_pretrained``; ``clusters`` makes it
    vocabulary-quantized (``mapping`` into that many rows, per-token ``weights``)."""
    from model2vec import StaticModel

    backend = static_tokenizer(tokenizer)
    tokens = len(backend.get_vocab())
    rng = np.random.default_rng(seed)
    rows = clusters if clusters is not None else tokens
    vectors = rng.standard_normal((rows, dim)).astype(dtype)
    mapping = rng.integers(0, clusters, tokens).astype(np.int64) if clusters is not None else None
    weights = rng.uniform(0.1, 2.0, tokens).astype(np.float32) if clusters is not None else None
    config = {**MODEL2VEC_CONFIG, "hidden_dim": dim, "normalize": normalize}
    model = StaticModel(vectors, backend, config=config, normalize=normalize, weights=weights, token_mapping=mapping)
    model.save_pretrained(out)
    return out


def build_st_static(
    out: Path, *, seed: int = 0, dim: int = 32, normalize: bool = True, module_folder: bool = False, model2vec_keys: bool = False
) -> Path:
    """A sentence-transformers folder of a ``StaticEmbedding`` (then ``Normalize``), saved by
    ``SentenceTransformer.save``; ``module_folder`` moves the module to ``0_StaticEmbedding/`` (the
    layout before sentence-transformers 6), ``model2vec_keys`` writes its table under model2vec's
    names (``embeddings``, ``mapping``, ``weights``: 8 rows, mapped)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

    backend = static_tokenizer("wordpiece")
    tokens = backend.get_vocab_size()
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(tokens, dim, generator=generator)
    modules = [StaticEmbedding(backend, embedding_weights=table)] + ([Normalize()] if normalize else [])
    SentenceTransformer(modules=modules).save(str(out))
    module = out
    if module_folder:
        module = out / "0_StaticEmbedding"
        module.mkdir()
        for name in ("model.safetensors", "tokenizer.json"):
            shutil.move(str(out / name), str(module / name))
        listed = json.loads((out / "modules.json").read_text())
        listed[0]["path"] = "0_StaticEmbedding"
        (out / "modules.json").write_text(json.dumps(listed, indent=2))
    if model2vec_keys:
        save_file(
            {
                "embeddings": torch.randn(8, dim, generator=generator),
                "mapping": torch.randint(0, 8, (tokens,), generator=generator),
                "weights": torch.rand(tokens, generator=generator) + 0.5,
            },
            str(module / "model.safetensors"),
        )
    return out
