"""BGE-M3 (``BgeM3EmbeddingModel``): dense, sparse and ColBERT outputs of one XLM-R model, checked
against a plain re-implementation of FlagEmbedding's ``BGEM3`` math on transformers."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from poolkit import LLM
from poolkit.contracts.errors import ModelLoadError

BGE_M3 = {"architectures": ["BgeM3EmbeddingModel"]}
TEXTS = [
    "the capital of france is paris",
    "hello world",
    "paris paris paris is the capital",  # repeated ids: the sparse weight is their maximum
    "the quick brown fox jumps over the lazy dog",
]
COLBERT_DIM = 24


def _save_linears(path, fmt: str) -> None:
    torch.manual_seed(11)
    sparse = torch.nn.Linear(32, 1)
    colbert = torch.nn.Linear(32, COLBERT_DIM)
    from transformers import AutoTokenizer, XLMRobertaModel

    tok = AutoTokenizer.from_pretrained(str(path))
    model = XLMRobertaModel.from_pretrained(str(path), add_pooling_layer=False).eval()
    with torch.no_grad():
        enc = tok(TEXTS, padding=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state[enc["attention_mask"].bool()]
        sparse.weight.mul_(4.0)
        projected = (hidden @ sparse.weight.T).flatten().sort().values
        k = len(projected) * 3 // 10  # most tokens get a weight above zero, not all, and none near zero
        sparse.bias.fill_(-(projected[k] + projected[k + 1]).item() / 2)
    for stem, module in (("sparse_linear", sparse), ("colbert_linear", colbert)):
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if fmt == "pt":
            torch.save(state, path / f"{stem}.pt")  # FlagEmbedding's torch.save(state_dict())
        else:
            from safetensors.torch import save_file

            save_file(state, str(path / f"{stem}.safetensors"))


@pytest.fixture(scope="module")
def m3_dir(tmp_path_factory):
    """A tiny XLM-R saved by transformers (config says ``XLMRobertaModel``, as bge-m3's does; XLM-R's
    ``<s>`` / ``</s>`` / ``<pad>`` / ``<unk>``) with random ``sparse_linear.pt`` (H -> 1) and
    ``colbert_linear.pt`` (H -> 24) beside it, the files and ``torch.save(state_dict())`` format
    FlagEmbedding's ``BGEM3FlagModel`` loads (its ``load_pooler``)."""
    from tiny_models import build_encoder

    path = build_encoder(tmp_path_factory.mktemp("bge-m3") / "tiny-bge-m3", "xlm-roberta", init_range=0.5)
    _save_linears(path, "pt")
    return path


@pytest.fixture(scope="module")
def m3_llm(m3_dir):
    return LLM(str(m3_dir), hf_overrides=BGE_M3, allow_pickle=True)


def flag_embedding_reference(path, texts):
    """FlagEmbedding ``BGEM3FlagModel.encode`` math, on a padded transformers batch.

    dense: ``normalize(h[:, 0])``; sparse: ``relu(sparse_linear(h))`` per token, max per token id,
    ``{cls, eos, pad, unk}`` ids left out, only weights > 0; colbert:
    ``normalize(colbert_linear(h[:, 1:]))`` over the attended tokens.
    """
    from transformers import AutoTokenizer, XLMRobertaModel

    tok = AutoTokenizer.from_pretrained(str(path))
    model = XLMRobertaModel.from_pretrained(str(path), add_pooling_layer=False).eval()
    sparse_linear, colbert_linear = torch.nn.Linear(32, 1), torch.nn.Linear(32, COLBERT_DIM)
    sparse_linear.load_state_dict(torch.load(path / "sparse_linear.pt", weights_only=True))
    colbert_linear.load_state_dict(torch.load(path / "colbert_linear.pt", weights_only=True))
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
        dense = F.normalize(hidden[:, 0], dim=-1)
        token_weights = torch.relu(sparse_linear(hidden)).squeeze(-1)
        colbert = colbert_linear(hidden[:, 1:]) * enc["attention_mask"][:, 1:, None].float()
        colbert = F.normalize(colbert, dim=-1)
    unused = {tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    sparse, vecs = [], []
    for i in range(len(texts)):
        n = int(enc["attention_mask"][i].sum())
        weights: dict[int, float] = {}
        for idx, w in zip(enc["input_ids"][i, :n].tolist(), token_weights[i, :n].tolist()):
            if idx not in unused and w > 0 and w > weights.get(idx, 0.0):
                weights[idx] = w
        sparse.append(weights)
        vecs.append(colbert[i, : n - 1])
    return dense, sparse, vecs, enc["input_ids"]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a.float() - b.float()).abs().max().item() <= 1e-4
    cos = F.cosine_similarity(a.float().reshape(1, -1), b.float().reshape(1, -1)).item()
    assert cos >= 0.99999


def test_dense_sparse_and_colbert_match_flag_embedding(m3_dir, m3_llm):
    dense_ref, sparse_ref, colbert_ref, ids = flag_embedding_reference(m3_dir, TEXTS)
    dense = m3_llm.embed(TEXTS)
    sparse = m3_llm.encode(TEXTS, pooling_task="sparse_embed")
    colbert = m3_llm.encode(TEXTS, pooling_task="token_embed")
    for i in range(len(TEXTS)):
        n = len(dense[i].prompt_token_ids)
        assert dense[i].prompt_token_ids == ids[i, :n].tolist()
        _close(torch.tensor(dense[i].outputs.embedding), dense_ref[i])
        vector = sparse[i].outputs.data
        assert vector.shape == (m3_llm.get_tokenizer().vocab_size,)
        nonzero = {int(j): float(vector[j]) for j in torch.nonzero(vector).flatten()}
        assert set(nonzero) == set(sparse_ref[i]) and nonzero  # special tokens dropped, duplicates merged
        _close(torch.tensor([nonzero[j] for j in sorted(nonzero)]), torch.tensor([sparse_ref[i][j] for j in sorted(nonzero)]))
        vecs = colbert[i].outputs.data
        assert vecs.shape == (n - 1, COLBERT_DIM)  # CLS dropped, EOS kept, as FlagEmbedding
        _close(vecs, colbert_ref[i])


def test_one_model_serves_all_three_tasks(m3_llm):
    assert {"embed", "sparse_embed", "token_embed"} == set(m3_llm.supported_tasks)
    arch = m3_llm.model.architecture
    calls = []
    handle = arch.register_forward_hook(lambda *args: calls.append(1))
    try:
        m3_llm.embed(TEXTS[0]), m3_llm.sparse_embed(TEXTS[0]), m3_llm.encode(TEXTS[0], pooling_task="token_embed")
    finally:
        handle.remove()
    assert len(calls) == 3  # one architecture, one forward per call, three heads
    (out,) = m3_llm.sparse_embed(TEXTS[3], top_k=2, return_tokens=True)
    assert len(out.outputs.indices) == 2 and list(out.outputs.values) == sorted(out.outputs.values, reverse=True)
    assert not {"[CLS]", "[SEP]", "[PAD]", "[UNK]"} & set(out.outputs.tokens)


def test_sparse_without_activation_keeps_raw_weights(m3_llm):
    (raw,) = m3_llm.encode(TEXTS[1], pooling_task="sparse_embed", pooling_params={"use_activation": False})
    (act,) = m3_llm.encode(TEXTS[1], pooling_task="sparse_embed")
    assert torch.equal(torch.relu(raw.outputs.data), act.outputs.data)


def test_batch_invariance(m3_llm):
    alone = [m3_llm.encode(t, pooling_task="token_embed")[0].outputs.data for t in TEXTS]
    together = m3_llm.encode(TEXTS, pooling_task="token_embed")
    for a, b in zip(alone, together):
        _close(a, b.outputs.data)


def test_pickle_companions_need_allow_pickle(m3_dir):
    with pytest.raises(ModelLoadError) as info:
        LLM(str(m3_dir), hf_overrides=BGE_M3)
    message = str(info.value)
    assert "\n" not in message and "sparse_linear.pt" in message and "allow_pickle=True" in message


def test_safetensors_companions_load_without_opt_in(m3_dir, m3_llm, tmp_path):
    path = tmp_path / "m3-safe"
    shutil.copytree(m3_dir, path)
    for stem in ("sparse_linear", "colbert_linear"):
        from safetensors.torch import save_file

        save_file(torch.load(path / f"{stem}.pt", weights_only=True), str(path / f"{stem}.safetensors"))
        (path / f"{stem}.pt").unlink()
    llm = LLM(str(path), hf_overrides=BGE_M3)
    for task in ("sparse_embed", "token_embed"):
        a = llm.encode(TEXTS, pooling_task=task)
        b = m3_llm.encode(TEXTS, pooling_task=task)
        for x, y in zip(a, b):
            assert torch.equal(x.outputs.data, y.outputs.data)


def test_missing_or_malformed_companion_is_a_load_error(m3_dir, tmp_path):
    path = tmp_path / "m3-broken"
    shutil.copytree(m3_dir, path)
    (path / "colbert_linear.pt").unlink()
    with pytest.raises(ModelLoadError, match="colbert_linear.pt or colbert_linear.safetensors"):
        LLM(str(path), hf_overrides=BGE_M3, allow_pickle=True)
    torch.save({"weight": torch.zeros(8, 5)}, path / "colbert_linear.pt")
    with pytest.raises(ModelLoadError, match=r"colbert_linear weight has shape \(8, 5\)"):
        LLM(str(path), hf_overrides=BGE_M3, allow_pickle=True)


def test_without_override_it_is_plain_xlm_roberta(m3_dir):
    llm = LLM(str(m3_dir))
    assert "sparse_embed" not in llm.supported_tasks
    assert json.loads((m3_dir / "config.json").read_text())["architectures"] == ["XLMRobertaModel"]


def test_score_is_dense_cosine(m3_llm):
    """``LLM.score`` of BGE-M3 is the bi-encoder cosine of the dense vectors (vLLM's score type)."""
    assert m3_llm.score_type == "bi-encoder"
    scores = m3_llm.score(TEXTS[0], TEXTS[1:])
    dense = [torch.tensor(o.outputs.embedding) for o in m3_llm.embed(TEXTS)]
    for out, doc in zip(scores, dense[1:]):
        assert out.outputs.score == pytest.approx(float(dense[0] @ doc), abs=1e-5)
