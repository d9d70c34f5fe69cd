"""token_classify on a masked LM (BertForMaskedLM): the MLM head over the vocabulary at every token.

tests/vllm/test_models_mlm.py checks the softmax against transformers; this checks what it does
not: raw logits with ``use_activation=False`` (also mixed per request in one batch), that the
chunked head gives what one call over all rows gives, and which models do not gain the task.
"""

from __future__ import annotations

import pytest
import torch
from tolerances import order_bound
from transformers import AutoModelForMaskedLM, AutoTokenizer

from poolkit import LLM, InvalidRequest, PoolingParams

TEXTS = ["The capital of France is Paris.", "hello", "what is the capital of germany?"]


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    from tiny_models import build_masked_lm

    return build_masked_lm(tmp_path_factory.mktemp("mlm") / "mlm", tie_word_embeddings=False)


@torch.inference_mode()
def test_raw_logits_over_the_vocabulary_match_transformers(mlm_dir, tiny_encoders):
    tok = AutoTokenizer.from_pretrained(str(mlm_dir))
    hf = AutoModelForMaskedLM.from_pretrained(str(mlm_dir)).eval()
    ref = [hf(**tok([t], return_tensors="pt")).logits[0].float() for t in TEXTS]

    llm = LLM(str(mlm_dir), dtype="float32")
    assert llm.default_task == "embed"  # unchanged: token_classify ranks after embed
    assert "token_classify" in llm.supported_tasks
    # Raw in even positions, softmax in odd ones, all in one packed batch.
    params = [PoolingParams(use_activation=i % 2 == 1) for i in range(len(TEXTS))]
    outs = llm.encode(TEXTS, params, pooling_task="token_classify")
    for i, (out, want) in enumerate(zip(outs, ref)):
        got = out.outputs.data
        assert got.dtype == torch.float32 and got.shape == want.shape == (len(out.prompt_token_ids), hf.config.vocab_size)
        torch.testing.assert_close(got, want.softmax(-1) if i % 2 else want, atol=1e-4, rtol=1e-4)

    # The head takes the LM head a few rows at a time. The chunks change which rows each matmul
    # gets, and with them the BLAS kernel and its fp32 summation order (which varies by CPU): the
    # logits may move by the rounding of their sums, never more (a row given to the wrong sequence
    # would move them by O(1)).
    predictions = llm.model.architecture.cls.predictions
    seen: list[torch.Tensor] = []
    hook = predictions.transform.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    try:
        llm.encode(TEXTS, [PoolingParams(use_activation=False)] * len(TEXTS), pooling_task="token_classify")
    finally:
        hook.remove()
    bound = _mlm_head_order_bound(predictions, torch.cat(seen))
    head = llm.model.head(llm.model.task("token_classify"))
    head.chunk_rows = 3
    again = llm.encode(TEXTS, params, pooling_task="token_classify")
    for i, (a, b, rows) in enumerate(zip(outs, again, bound.split([len(o.prompt_token_ids) for o in outs]))):
        if i % 2:  # softmax: a probability moves by at most p * (its logit's move + the largest move)
            rows = a.outputs.data * (rows + rows.amax(-1, keepdim=True))
        assert ((a.outputs.data - b.outputs.data).abs() <= rows.float()).all(), i

    # STEP parameters stay refused without STEP pooling.
    with pytest.raises(InvalidRequest, match="does not support"):
        llm.encode(TEXTS[:1], PoolingParams(returned_token_ids=[1]), pooling_task="token_classify")

    # A BertModel checkpoint labelled BertForMaskedLM has no MLM head: no token_classify.
    headless = LLM(str(tiny_encoders["bert"]), hf_overrides={"architectures": ["BertForMaskedLM"]})
    assert headless.supported_tasks == ["embed", "token_embed"]


def _mlm_head_order_bound(predictions: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """:func:`tolerances.order_bound` carried through the MLM head (dense, GELU, LayerNorm,
    decoder), to first order: GELU's slope is below 1.13, and the LayerNorm scales an input's
    move by |gamma|/sigma (twice that, for the mean it also moves)."""
    transform = predictions.transform
    dense = torch.nn.functional.linear(hidden.double(), transform.dense.weight.double(), transform.dense.bias.double())
    moved = 1.13 * order_bound(hidden, transform.dense.weight, transform.dense.bias)
    sigma = torch.sqrt(transform.act(dense).var(-1, unbiased=False, keepdim=True) + transform.LayerNorm.eps)
    moved = 2 * transform.LayerNorm.weight.double().abs() * moved.amax(-1, keepdim=True) / sigma
    t = transform(hidden).double()
    decoder = predictions.decoder.weight
    return order_bound(t, decoder) + moved @ decoder.double().abs().T


def test_entities_need_a_token_classifier_with_labels(mlm_dir):
    # A masked LM classifies tokens over its vocabulary, not into entity labels.
    with pytest.raises(InvalidRequest, match="entities need a token classifier with labels"):
        LLM(str(mlm_dir)).entities("The capital of France is Paris.")
