"""jina-reranker-v2-base-multilingual: published as ``XLMRobertaForSequenceClassification`` with
Jina's flash config and tensor names, read natively (``builtin_models/jina_reranker_v2.py``).

The reference is the publisher's computation written out below in plain torch, from the checkpoint's
tensors by their published names: ``modeling_xlm_roberta.py`` of jinaai/jina-reranker-v2-base-multilingual
(``XLMRobertaForSequenceClassification.forward``, ``compute_score``: the sigmoid of the logit, on the
tokenizer's padded pairs; ``rerank`` with ``reranker_tokenize_preproc`` for documents that fit),
``embedding.py`` (``XLMRobertaEmbeddings``), ``block.py`` (post-norm ``Block``), ``mha.py``
(``MHA`` / ``SelfAttention``, its -10000 key padding mask) and ``mlp.py`` (``Mlp``, exact GELU for
``hidden_act: gelu``). vLLM scores the checkpoint the same way: its ``RobertaForSequenceClassification``
loads these names through ``jina_to_vllm_mapper`` and scores one label with a sigmoid
(``act_fn_for_cross_encoder``). fp32, ``atol`` 1e-4 for logits and scores (DESIGN §7).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tiny_jina_reranker_v2 import build_jina_reranker_v2
from tiny_models import build_classifier
from transformers import PreTrainedTokenizerFast

from poolkit import LLM, PoolingParams
from poolkit.contracts.errors import ModelLoadError

ATOL = 1e-4
RAW = PoolingParams(use_activation=False)
QUERY = "what is the capital of france"
DOCS = [
    "paris is the capital of france",
    "berlin is the capital of germany",
    "hello world",
    "the quick brown fox jumps over the lazy dog " * 3,
    "is paris the capital of france? yes",
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_jina_reranker_v2(tmp_path_factory.mktemp("jina-reranker-v2") / "jina-reranker-v2-base-multilingual")


@pytest.fixture(scope="module")
def llm(ckpt: Path) -> LLM:
    return LLM(str(ckpt), dtype="float32")


# -- the publisher's computation (modeling_xlm_roberta.py and its modules) --------------------------


def tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """The checkpoint's tokenizer from its tokenizer files, as Jina's ``AutoTokenizer.from_pretrained`` loads
    them (read directly: with ``auto_map`` and no ``model_type`` in config.json, ``AutoTokenizer`` asks
    whether to run the remote code)."""
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def flash_xlm_roberta_logits(path: Path, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``XLMRobertaForSequenceClassification.forward(...).logits`` on a right-padded batch, ``[B, 1]``."""
    config = json.loads((path / "config.json").read_text())
    w = load_file(str(path / "model.safetensors"))
    hidden, heads, eps, pad = config["hidden_size"], config["num_attention_heads"], config["layer_norm_eps"], config["pad_token_id"]
    head_dim = hidden // heads
    batch, seqlen = input_ids.shape

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (hidden,), w[name + ".weight"], w[name + ".bias"], eps)

    def fc(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, w[name + ".weight"], w[name + ".bias"])

    # XLMRobertaEmbeddings.forward: positions by create_position_ids_from_input_ids(input_ids, padding_idx)
    keep = input_ids.ne(pad).int()
    position_ids = torch.cumsum(keep, dim=1) * keep + pad
    e = "roberta.embeddings."
    x = w[e + "word_embeddings.weight"][input_ids] + w[e + "position_embeddings.weight"][position_ids]
    x = x + w[e + "token_type_embeddings.weight"][torch.zeros(seqlen, dtype=torch.long)]
    x = ln(x, "roberta.emb_ln")
    # SelfAttention's additive key padding mask
    padding = torch.full((batch, seqlen), -10000.0).masked_fill(attention_mask.bool(), 0.0)[:, None, None, :]
    for i in range(config["num_hidden_layers"]):
        block = f"roberta.encoder.layers.{i}."
        qkv = fc(x, block + "mixer.Wqkv").view(batch, seqlen, 3, heads, head_dim)  # "... (three h d) -> ... three h d"
        q, k, v = qkv.unbind(dim=2)
        scores = torch.einsum("bthd,bshd->bhts", q, k * (1.0 / math.sqrt(head_dim))) + padding
        context = torch.einsum("bhts,bshd->bthd", torch.softmax(scores, dim=-1), v).reshape(batch, seqlen, hidden)
        x = ln(fc(context, block + "mixer.out_proj") + x, block + "norm1")  # Block, prenorm=False
        x = ln(fc(F.gelu(fc(x, block + "mlp.fc1"), approximate="none"), block + "mlp.fc2") + x, block + "norm2")
    # XLMRobertaClassificationHead.forward: the <s> token, dense, tanh, out_proj
    return fc(torch.tanh(fc(x[:, 0, :], "classifier.dense")), "classifier.out_proj")


def compute_score(path: Path, sentence_pairs: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Jina's ``compute_score``: the tokenizer's padded pairs, the logits, their sigmoid (logits too, for a tighter check)."""
    tok = tokenizer(path)
    inputs = tok(sentence_pairs, padding=True, truncation=True, return_tensors="pt")
    logits = flash_xlm_roberta_logits(path, inputs["input_ids"], inputs["attention_mask"]).view(-1).float()
    return logits, torch.sigmoid(logits)


def jina_rerank(path: Path, query: str, documents: list[str], top_n: int | None = None, max_length: int = 1024,
                max_query_length: int = 512) -> list[dict]:
    """Jina's ``rerank`` for documents that fit ``max_length`` beside the query (``reranker_tokenize_preproc``'s
    unchunked branch: ``query ids + [sep] + passage ids + [sep]``; the sliding window over longer
    documents is not written out), sorted by score, each with its index."""
    tok = tokenizer(path)
    query_ids = tok(query, truncation=True, max_length=max_query_length)["input_ids"]
    room = max_length - len(query_ids) - 2
    merged = []
    for passage in documents:
        ids = tok(passage, add_special_tokens=False)["input_ids"]
        assert len(ids) <= room, "written out for documents that fit"
        merged.append(query_ids + [tok.sep_token_id] + ids + [tok.sep_token_id])
    width = max(map(len, merged))
    input_ids = torch.tensor([m + [tok.pad_token_id] * (width - len(m)) for m in merged])
    mask = torch.tensor([[1] * len(m) + [0] * (width - len(m)) for m in merged])
    scores = torch.sigmoid(flash_xlm_roberta_logits(path, input_ids, mask).view(-1).float()).tolist()
    order = sorted(range(len(documents)), key=lambda i: -scores[i])[: top_n or len(documents)]
    return [{"document": documents[i], "relevance_score": scores[i], "index": i} for i in order]


# -- the published layout, natively -----------------------------------------------------------------


def test_the_published_layout_loads_natively_as_a_cross_encoder(llm: LLM) -> None:
    assert llm.model.architecture_name == "XLMRobertaForSequenceClassification"
    assert type(llm.model.architecture).__name__ == "XLMRobertaFlashForSequenceClassification"
    assert llm.model.architecture.implementation == "native"
    assert llm.score_type == "cross-encoder"
    assert llm.model.max_model_len.value == 1024  # max_position_embeddings 1026 less RoBERTa's offset, and the tokenizer's


def test_score_matches_compute_score(llm: LLM, ckpt: Path) -> None:
    logits, scores = compute_score(ckpt, [[QUERY, doc] for doc in DOCS])
    got = torch.tensor([o.outputs.score for o in llm.score(QUERY, DOCS)])
    torch.testing.assert_close(got, scores, atol=ATOL, rtol=0)
    raw = torch.tensor([o.outputs.score for o in llm.score(QUERY, DOCS, RAW)])
    torch.testing.assert_close(raw, logits, atol=ATOL, rtol=0)
    assert scores.max() - scores.min() > 0.05, "the tiny weights should tell the documents apart"


def test_pairwise_score_matches_compute_score(llm: LLM, ckpt: Path) -> None:
    queries = [QUERY, "berlin", "hello", "fox"]
    docs = DOCS[:4]
    _, scores = compute_score(ckpt, [[q, d] for q, d in zip(queries, docs)])
    got = torch.tensor([o.outputs.score for o in llm.score(queries, docs)])
    torch.testing.assert_close(got, scores, atol=ATOL, rtol=0)


def test_rerank_matches_jinas_rerank(llm: LLM, ckpt: Path) -> None:
    for top_n in (None, 2):
        want = jina_rerank(ckpt, QUERY, DOCS, top_n=top_n)
        got = llm.rerank(QUERY, DOCS, top_n=top_n)
        assert [r.index for r in got] == [r["index"] for r in want]
        assert [r.document for r in got] == [r["document"] for r in want]
        torch.testing.assert_close(torch.tensor([r.relevance_score for r in got]),
                                   torch.tensor([r["relevance_score"] for r in want]), atol=ATOL, rtol=0)


def test_info_names_the_layout(llm: LLM, ckpt: Path) -> None:
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    layout = llm.model.describe()["layout"]
    assert layout["value"] == "jina-reranker-v2 (Jina's XLM-RoBERTa flash-attention tensor names)"
    assert "XLMRobertaForSequenceClassification" in layout["source"] and "use_flash_attn True" in layout["source"]
    result = CliRunner().invoke(app, ["info", str(ckpt)])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["layout"] == layout


def test_xlm_roberta_cross_encoders_without_the_flash_config_stay_transformers_layout(tmp_path: Path) -> None:
    path = build_classifier(tmp_path / "bge-reranker-like", "xlm-roberta", 1)
    llm = LLM(str(path))
    assert type(llm.model.architecture).__name__ == "XLMRobertaForSequenceClassification"
    assert llm.model.describe()["layout"]["value"] == "Hugging Face folder"


# -- bad input: a checkpoint that contradicts itself ------------------------------------------------


@pytest.mark.parametrize(("held", "message"), [
    (1, "config.json num_hidden_layers is 2, but the weights hold 1 layer"),
    (3, "config.json num_hidden_layers is 2, but the weights hold 3 layers; to run only the first 2, set num_hidden_layers with hf_overrides"),
])
def test_jina_names_with_another_layer_count_fail_in_one_line(tmp_path: Path, held: int, message: str) -> None:
    path = build_jina_reranker_v2(tmp_path / "ckpt", layers_held=held)
    with pytest.raises(ModelLoadError) as failed:
        LLM(str(path))
    assert str(failed.value) == message


def test_a_fused_projection_of_another_width_fails_in_one_line(tmp_path: Path) -> None:
    path = build_jina_reranker_v2(tmp_path / "ckpt")
    tensors = load_file(str(path / "model.safetensors"))
    tensors["roberta.encoder.layers.0.mixer.Wqkv.weight"] = tensors["roberta.encoder.layers.0.mixer.Wqkv.weight"][:64]
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"^config\.json 3 \* hidden_size is 3 \* 32 = 96, but the weights hold 64 "):
        LLM(str(path))


def test_the_flash_config_over_transformers_names_fails_in_one_line_with_the_way_out(tmp_path: Path) -> None:
    path = build_classifier(tmp_path / "ckpt", "xlm-roberta", 1)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "use_flash_attn": True}))
    with pytest.raises(ModelLoadError) as failed:
        LLM(str(path))
    assert "\n" not in str(failed.value) and "hf_overrides={'use_flash_attn': False}" in str(failed.value)
    assert type(LLM(str(path), hf_overrides={"use_flash_attn": False}).model.architecture).__name__ == "XLMRobertaForSequenceClassification"


def test_a_missing_tensor_is_named(tmp_path: Path, ckpt: Path) -> None:
    path = tmp_path / "ckpt"
    shutil.copytree(ckpt, path)
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["roberta.encoder.layers.1.norm2.bias"]
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="encoder.layer.1.output.LayerNorm.bias"):
        LLM(str(path))
