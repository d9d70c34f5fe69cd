# Port of vllm tests/models/language/pooling/test_sentence_transformers_cross_encoder.py
# vLLM builds its models itself (tiny random modular sentence-transformers CrossEncoders, saved to
# tmp_path); so does the port, with the same code (port_utils.build_modular_bert_cross_encoder and
# build_logit_score_cross_encoder, shared with test_scoring_sentence_transformers_io_processor.py).
# vLLM's engine-implementation arguments that poolkit refuses as unknown LLM arguments
# (compilation_config, limit_mm_per_prompt; reported, not on issue 13's list) are left out;
# model_impl is passed as in vLLM ("vllm": poolkit's native code, "transformers": its transformers
# fallback). vLLM reads max_model_len from llm.llm_engine.model_config; poolkit from llm.model_config.
import importlib.util
from pathlib import Path

import pytest
from port_utils import build_logit_score_cross_encoder, build_modular_bert_cross_encoder

from poolkit import LLM, PoolingParams


@pytest.mark.parametrize(("model_impl", "enforce_eager"), [("vllm", True), ("transformers", True), ("transformers", False)])
def test_modular_bert_cross_encoder_score_parity(tmp_path: Path, model_impl: str, enforce_eager: bool) -> None:
    """A current modular BERT export must preserve pair and truncation semantics."""
    pytest.importorskip("sentence_transformers", minversion="5.7.0")
    model_path, pairs, reference_scores = build_modular_bert_cross_encoder(tmp_path)

    llm = LLM(
        model_path,
        runner="pooling",
        trust_remote_code=False,
        max_model_len=None,
        dtype="float32",
        model_impl=model_impl,
        enforce_eager=enforce_eager,
        gpu_memory_utilization=0.1,
        max_num_batched_tokens=32,
        max_num_seqs=2,
    )
    assert llm.model_config.max_model_len == 16
    for pair, expected_length, reference_score in zip(pairs, [16, 16, 5], reference_scores):
        output = llm.score(*pair)[0]
        assert len(output.prompt_token_ids) == expected_length
        assert output.outputs.score == pytest.approx(reference_score, abs=1e-4, rel=1e-4)
    # POOLKIT (beyond vLLM's test): the export's pooled vector runs through its score modules, a
    # score rather than an embedding, so it serves classify and no embedding task; model_impl chose
    # the implementation.
    assert llm.supported_tasks == ["classify"] and llm.default_task == "classify"
    implementation = "native" if model_impl == "vllm" else "fallback (transformers)"
    assert llm.model.describe()["implementation"] == implementation


@pytest.mark.parametrize("pooling_mode", ["cls", "mean", "lasttoken"])
def test_structured_cross_encoder_export_preserves_truncated_scores(tmp_path: Path, pooling_mode: str) -> None:
    """Saved structured exports retain the template tail used by the trained head."""
    pytest.importorskip("sentence_transformers", minversion="5.7.0")
    from sentence_transformers import CrossEncoder

    model_path, pairs, reference_scores = build_modular_bert_cross_encoder(tmp_path, structured=True, pooling_mode=pooling_mode)
    reference = CrossEncoder(model_path, device="cpu", trust_remote_code=False)
    features = reference.preprocess(pairs)
    expected_ids = [ids[mask.bool()].tolist() for ids, mask in zip(features["input_ids"], features["attention_mask"])]
    llm = LLM(model_path, trust_remote_code=False, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.1, max_model_len=None)
    outputs = llm.score([query for query, _ in pairs], [document for _, document in pairs])
    assert [output.prompt_token_ids for output in outputs] == expected_ids
    assert [output.outputs.score for output in outputs] == pytest.approx(reference_scores, abs=1e-4, rel=1e-4)


NEEDS_TORCHVISION = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None,
    reason="building the Qwen3-VL export needs torchvision (Qwen3VLVideoProcessor), which is not installed here",
)
MULTIMODAL_XFAIL = pytest.mark.xfail(
    strict=True,
    reason="Qwen3-VL (Qwen3VLForConditionalGeneration) and multimodal score inputs are not served by poolkit "
    "(CLIP is its only image model; docs/server.md: no multimodal content in /score); not on issue 13's list",
)


@pytest.mark.parametrize(
    "false_id,tied,multimodal",
    [
        (None, False, False),
        (5, False, False),
        (None, True, False),
        (5, True, False),
        pytest.param(5, False, True, marks=[NEEDS_TORCHVISION, MULTIMODAL_XFAIL]),
        pytest.param(5, True, True, marks=[NEEDS_TORCHVISION, MULTIMODAL_XFAIL]),
    ],
)
def test_logit_score_matches_sentence_transformers_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, false_id, tied: bool, multimodal: bool) -> None:
    """Score real exports through both logit modes, including tied LM heads."""
    pytest.importorskip("sentence_transformers", minversion="5.7.0")
    monkeypatch.setenv("TRITON_F32_DEFAULT", "ieee")
    model_path, pairs, expected, expected_raw, token_ids = build_logit_score_cross_encoder(tmp_path, false_id, tied, multimodal=multimodal)
    llm = LLM(model_path, dtype="float32", trust_remote_code=False, enforce_eager=True, gpu_memory_utilization=0.1, max_model_len=None)
    results = llm.score([pair[0] for pair in pairs], [pair[1] for pair in pairs])
    assert [result.prompt_token_ids for result in results] == token_ids
    actual = [result.outputs.score for result in results]
    raw_results = llm.score([pair[0] for pair in pairs], [pair[1] for pair in pairs], pooling_params=PoolingParams(use_activation=False))
    actual_raw = [result.outputs.score for result in raw_results]
    assert actual == pytest.approx(expected, abs=1e-4, rel=1e-4)
    assert actual_raw == pytest.approx(expected_raw, abs=1e-4, rel=1e-4)
