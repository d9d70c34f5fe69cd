"""Tiny sparse encoders laid out as published: an inference-free ``Router`` (opensearch's
doc-v2/v3 models) and a RoBERTa SPLADE model (ibm-granite/granite-embedding-30m-sparse), and the
DistilBERT that doc-v3-distill's document route is (also built for its other task heads).

The folders are written by sentence-transformers 6.2's own ``save`` and then moved into the
publisher's layout; what was confirmed where:

- opensearch-project/opensearch-neural-sparse-encoding-doc-v3-distill (hub tree at ``babf71f`` /
  ``017b7c4``): ``modules.json`` is one module ``{"idx": 0, "name": "0", "path": "", "type":
  "sentence_transformers.models.Router"}``; folders ``query_0_SparseStaticEmbedding/`` (``config.json``
  ``{"frozen": true}``, ``model.safetensors``, the tokenizer) and ``document_1_SpladePooling/``
  (``config.json``, 112 bytes: ``log1p_relu``, as sentence-transformers' ``test_opensearch_models.py``
  builds the model); ``config.json``, ``model.safetensors``, the tokenizer, ``idf.json``,
  ``query_token_weights.txt``, ``router_config.json`` and ``config_sentence_transformers.json`` at the
  top, and no ``document_0_MLMTransformer/`` folder: the masked LM is kept at the top, as the
  module named ``""`` of ``router_config.json`` (sentence-transformers' ``test_router.py``
  ``test_router_load_with_config(module_in_root=True)`` writes that form). Its body is
  ``DistilBertForMaskedLM``; opensearch-neural-sparse-encoding-doc-v2-mini ships the same Router
  layout over ``BertForMaskedLM`` (its config.json: hidden 384, 6 layers, pad 0, type_vocab 2,
  SpladePooling ``relu``). Both bodies are built here (hidden 32, 2 layers): ``body="distilbert"`` is
  doc-v3-distill's own (:func:`build_distilbert`), ``body="bert"`` doc-v2-mini's.
- DistilBERT (:func:`build_distilbert`): the config keys and tensor names are transformers 5.24's
  ``DistilBertConfig`` / ``modeling_distilbert.py`` (``dim``, ``n_layers``, ``n_heads``, ``hidden_dim``,
  ``activation``, ``sinusoidal_pos_embds``, ``qa_dropout``, ``seq_classif_dropout``;
  ``distilbert.transformer.layer.N.attention.q_lin``..., ``vocab_transform``, ``vocab_layer_norm``,
  ``vocab_projector``), with the values of distilbert-base-uncased's config.json, which
  doc-v3-distill is distilled from (``activation`` gelu, ``max_position_embeddings`` 512,
  ``pad_token_id`` 0, ``sinusoidal_pos_embds`` false, ``tie_weights_`` true, ``qa_dropout`` 0.1,
  ``seq_classif_dropout`` 0.2; printed in transformers' docs and in logs of its loading). Not
  confirmed: doc-v3-distill's own config.json beyond its architecture ``DistilBertForMaskedLM``, and
  its ``tokenizer_config.json`` (the tokenizer here is ``DistilBertTokenizer``, which transformers
  maps ``model_type`` distilbert to: BERT's WordPiece and special tokens, no segment ids; the pieces
  are the tiny vocabulary's, not bert-base-uncased's 30522). ``save_pretrained`` writes no
  ``vocab_projector.weight`` (tied); whether the published safetensors carry one is not confirmed.
- Not confirmed: the text of the published ``router_config.json`` (the module names and class paths
  in ``types``); the ones written here are sentence-transformers 5.0's paths
  (``sentence_transformers.sparse_encoder.models.*``), under which the models were converted.
- ibm-granite/granite-embedding-30m-sparse (hub tree, ``config.json``): ``RobertaForMaskedLM``,
  ``bos_token_id`` 0, ``eos_token_id`` 2, ``pad_token_id`` 1, ``hidden_act`` gelu, ``layer_norm_eps``
  1e-12, ``max_position_embeddings`` 514 (512 + pad + 1), ``type_vocab_size`` 2, ``vocab_size`` 50265,
  ``torch_dtype`` bfloat16 (the tiny one is saved in float32); ``modules.json`` of 274 bytes (the
  ``MLMTransformer`` at ``""`` and ``1_SpladePooling``), ``1_SpladePooling/config.json`` ``max`` /
  ``relu``; the tokenizer is RoBERTa's byte-level BPE (here a WordPiece one with the same special
  tokens, :func:`tiny_models.fairseq_tokenizer`). The MLM head's tensors are transformers'
  ``RobertaForMaskedLM`` names (``lm_head.dense``, ``lm_head.layer_norm``, ``lm_head.bias``; the
  decoder tied to the word embeddings, so ``save_pretrained`` writes no ``lm_head.decoder.weight``);
  whether the published safetensors carry ``lm_head.decoder.weight`` too is not confirmed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers as T
from tiny_models import _encoder_kwargs, build_masked_lm, fairseq_tokenizer, wordpiece_tokenizer

#: The class paths sentence-transformers 5.0 wrote, under which the opensearch models were converted.
ST5_TYPES = {
    "SparseStaticEmbedding": "sentence_transformers.sparse_encoder.models.SparseStaticEmbedding",
    "MLMTransformer": "sentence_transformers.sparse_encoder.models.MLMTransformer",
    "SpladePooling": "sentence_transformers.sparse_encoder.models.SpladePooling",
}


def query_table(vocab: int, seed: int = 0) -> torch.Tensor:
    """A positive weight for most tokens and zero for some, as an IDF table has."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(vocab, generator=g) * 6.0
    weights[torch.rand(vocab, generator=g) < 0.2] = 0.0
    return weights


#: transformers' DistilBERT task classes by the ``task`` of :func:`build_distilbert`.
DISTILBERT_CLASSES = {
    "embed": "DistilBertModel",
    "masked_lm": "DistilBertForMaskedLM",
    "classify": "DistilBertForSequenceClassification",
    "token_classify": "DistilBertForTokenClassification",
}


def build_distilbert(
    out: Path, task: str = "masked_lm", seed: int = 0, init_range: float = 0.5, num_labels: int = 3, **config: object
) -> Path:
    """A tiny DistilBERT for ``task`` (:data:`DISTILBERT_CLASSES`), saved to ``out`` with a WordPiece
    ``DistilBertTokenizer``: distilbert-base-uncased's config keys and values (hidden 32, 2 layers, 4
    heads, 128 positions here), ``config`` over them (``activation``, ``sinusoidal_pos_embds``, ...).
    One-dimensional parameters (norms, biases, the MLM bias) are randomised too, so a dropped one
    would show."""
    tok = wordpiece_tokenizer()
    kw: dict = dict(
        vocab_size=len(tok), dim=32, n_layers=2, n_heads=4, hidden_dim=64, activation="gelu", max_position_embeddings=128,
        sinusoidal_pos_embds=False, dropout=0.1, attention_dropout=0.1, qa_dropout=0.1, seq_classif_dropout=0.2,
        pad_token_id=tok.pad_token_id, initializer_range=init_range, tie_weights_=True,
        architectures=[DISTILBERT_CLASSES[task]],
    )
    if task in ("classify", "token_classify"):
        kw.update(num_labels=num_labels, id2label={i: f"class_{i}" for i in range(num_labels)})
        kw["label2id"] = {v: k for k, v in kw["id2label"].items()}
    kw.update(config)
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
    model = getattr(T, DISTILBERT_CLASSES[task])(T.DistilBertConfig(**kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0, 0.5)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    tok_config = out / "tokenizer_config.json"
    tok_config.write_text(json.dumps({**json.loads(tok_config.read_text()), "tokenizer_class": "DistilBertTokenizer"}, indent=2))
    return out


def build_router_splade(
    out: Path, activation: str = "relu", seed: int = 0, document_in_root: bool = True, body: str = "bert"
) -> Path:
    """An inference-free sparse encoder: a ``Router`` of a ``SparseStaticEmbedding`` query route and
    a masked LM + ``SpladePooling`` document route, laid out as opensearch publishes it
    (``document_in_root``: the masked LM at the top, module ``""``) or as sentence-transformers saves
    it (``document_0_MLMTransformer/``). ``body``: ``"bert"`` (``BertForMaskedLM``, doc-v2-mini's) or
    ``"distilbert"`` (``DistilBertForMaskedLM``, doc-v3-distill's)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, Router, SparseStaticEmbedding, SpladePooling

    builder = {"bert": build_masked_lm, "distilbert": build_distilbert}[body]
    body_dir = builder(out.parent / f"{out.name}-body", seed=seed)
    document = MLMTransformer(str(body_dir))
    query = SparseStaticEmbedding(tokenizer=document.tokenizer, weight=query_table(len(document.tokenizer), seed), frozen=True)
    router = Router.for_query_document([query], [document, SpladePooling("max", activation_function=activation)])
    SparseEncoder(modules=[router], similarity_fn_name="dot").save(str(out))
    shutil.rmtree(body_dir)
    if document_in_root:  # the publisher's token -> weight table beside (read by SparseStaticEmbedding.from_json, not by load)
        weights = query_table(len(document.tokenizer), seed)
        idf = {token: float(weights[i]) for token, i in document.tokenizer.get_vocab().items() if weights[i] > 0}
        (out / "idf.json").write_text(json.dumps(idf))
    modules = json.loads((out / "modules.json").read_text())
    modules[0]["type"] = "sentence_transformers.models.Router"  # the published modules.json
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    config = json.loads((out / "router_config.json").read_text())
    config["types"] = {name: ST5_TYPES[name.rsplit("_", 1)[-1]] for name in config["types"]}
    config["parameters"].pop("route_mappings", None)  # sentence-transformers 5.0 had none
    if document_in_root:
        folder = out / "document_0_MLMTransformer"
        for file in folder.iterdir():
            file.rename(out / file.name)
        folder.rmdir()
        config["structure"]["document"][0] = ""
        config["types"] = {("" if k == "document_0_MLMTransformer" else k): v for k, v in config["types"].items()}
    (out / "router_config.json").write_text(json.dumps(config, indent=4))
    return out


def build_granite_sparse(out: Path, seed: int = 0, tie_word_embeddings: bool = True) -> Path:
    """A tiny granite-embedding-30m-sparse: ``RobertaForMaskedLM`` with granite's config keys, saved
    by sentence-transformers as ``MLMTransformer`` + ``SpladePooling`` (max, relu). One-dimensional
    parameters (norms, biases, the MLM bias) are randomised too, so a dropped one would show;
    ``tie_word_embeddings=False`` saves a decoder of its own."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    tok = fairseq_tokenizer()
    torch.manual_seed(seed)
    config = T.RobertaConfig(
        **_encoder_kwargs(len(tok), 0.5),
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=tok.pad_token_id,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        max_position_embeddings=128 + tok.pad_token_id + 1,
        type_vocab_size=2,
        tie_word_embeddings=tie_word_embeddings,
        architectures=["RobertaForMaskedLM"],
    )
    model = T.RobertaForMaskedLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if "norm.weight" in name.lower() else 0.0, 0.5)
        if not tie_word_embeddings:
            model.lm_head.decoder.weight.normal_(0.0, 0.5)
    body = out.parent / f"{out.name}-body"
    model.save_pretrained(body)
    tok.save_pretrained(body)
    SparseEncoder(modules=[MLMTransformer(str(body)), SpladePooling("max", activation_function="relu")], similarity_fn_name="dot").save(str(out))
    shutil.rmtree(body)
    return out
