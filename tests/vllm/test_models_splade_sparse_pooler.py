# Port of vllm tests/models/language/pooling/test_splade_sparse_pooler.py
# 1) vLLM feeds random hidden states straight into its SPLADESparsePooler class with a fresh
#    BertMLMHead. poolkit's SPLADE pooler is reached through the model: the port runs a tiny
#    BertForMaskedLM (B=2 sequences, the second without a trailing [SEP], as vLLM's metadata has
#    it) as BertSpladeSparseEmbeddingModel and checks the formula — log1p(relu(MLM logits)), max
#    over the tokens — against transformers' MLM logits (1e-4); see the DEPARTURE on [CLS]/[SEP].
# 2) hf-internal-testing/tiny-random-bert with hf_overrides BertSpladeSparseEmbeddingModel ->
#    tests/support/tiny_models.build_masked_lm (a tiny random BertForMaskedLM), the same hf_overrides.
import numpy as np
import pytest
import torch

from poolkit import LLM

SPLADE = {"architectures": ["BertSpladeSparseEmbeddingModel"]}


@pytest.fixture(scope="module")
def mlm_dir(vllm_models_root):
    from tiny_models import build_masked_lm

    return build_masked_lm(vllm_models_root / "tiny-mlm")


@pytest.mark.parametrize("B,T", [(2, 3)])
@torch.inference_mode
def test_splade_pooler_matches_reference_formula(mlm_dir, B, T):
    """poolkit's SPLADE pooling matches log1p(relu(logits)) -> max over sequence length (after masking)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(mlm_dir))
    cls, sep = tok.cls_token_id, tok.sep_token_id
    a, b = tok.convert_tokens_to_ids(["paris", "berlin"])
    # Batch 0: [CLS], token, [SEP]; batch 1: [CLS], token, token (no [SEP]: the last token is kept)
    token_ids = [[cls, a, sep], [cls, b, b]]
    prompt_lens = [T, T]
    assert len(token_ids) == B

    llm = LLM(str(mlm_dir), hf_overrides=SPLADE)
    pooled = torch.tensor([o.outputs.embedding for o in llm.embed([{"prompt_token_ids": ids} for ids in token_ids])])

    hf = AutoModelForMaskedLM.from_pretrained(str(mlm_dir)).eval()
    V = hf.config.vocab_size
    assert pooled.shape == (B, V)
    for vec in pooled:
        assert torch.isfinite(vec).all()
        assert (vec >= 0).all(), "SPLADE outputs must be non-negative."

    def ref_one(ids: list[int], L: int) -> torch.Tensor:
        logits = hf(input_ids=torch.tensor([ids])).logits[0]  # [L, V]
        keep = torch.ones(L, dtype=torch.bool)
        # DEPARTURE: vLLM's pooler (remove_cls_sep=True) drops a leading [CLS] and a final [SEP]
        # here; poolkit keeps them, as sentence-transformers' SparseEncoder (SpladePooling) does
        # (builtin_poolers/sparse.py, docs/sparse.md), so the reference keeps every token.
        valid = logits[:L][keep[:L]]
        if valid.numel() == 0:
            return torch.zeros(V, dtype=torch.float32)
        scores = torch.log1p(torch.relu(valid))
        return scores.max(dim=0).values.to(torch.float32)

    torch.testing.assert_close(pooled[0], ref_one(token_ids[0], prompt_lens[0]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled[1], ref_one(token_ids[1], prompt_lens[1]), rtol=1e-4, atol=1e-4)


def test_bert_splade_sparse_embed_smoke(mlm_dir, monkeypatch):
    """Ensure BertSpladeSparseEmbeddingModel loads and produces sparse embeddings."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    tok = AutoTokenizer.from_pretrained(str(mlm_dir))
    vocab_size = tok.vocab_size

    vm = LLM(str(mlm_dir), runner="pooling", max_model_len=64, hf_overrides=SPLADE)
    outs = [np.asarray(o.outputs.embedding) for o in vm.embed(["hello world", "splade sparse test"])]

    # Basic sanity checks
    assert len(outs) == 2
    assert outs[0].shape[0] == vocab_size
    assert outs[1].shape[0] == vocab_size
    assert np.isfinite(outs[0]).all() and (outs[0] >= 0).all()
    assert np.isfinite(outs[1]).all() and (outs[1] >= 0).all()
