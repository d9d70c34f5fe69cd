# Port of vllm tests/entrypoints/pooling/test_late_chunking.py
# vLLM's ``late_chunk_processor`` (a TokenEmbedIOProcessor of a NomicBertModel with MEAN / ALL
# pooling and a mocked renderer) -> all-MiniLM-L6-v2 with PoolerConfig(task="token_embed") (ALL
# token pooling), driven through LLM.encode with vLLM's offline context: pooling_task="token_embed",
# PoolingParams(late_chunking_params=LateChunkingParams(chunk_size=2)), tokenization_kwargs.
# vLLM's ``processor.renderer.render_cmpl.assert_not_called()`` -> ``llm.run`` replaced by a function
# that fails: the refusal comes before any prompt is tokenized or run. VLLMValidationError ->
# poolkit's InvalidRequest (a ValueError).
# Read from the stored version at commit f71c31c (10 test functions). Not ported, as they test vLLM
# internals that poolkit does not have:
# - test_late_chunk_render_requests_offsets_once_and_keeps_params_isolated: vLLM's renderer
#   (offsets requested once, render params copied); the observable half (char ranges, input_tokens,
#   the caller's params unchanged) is test_token_embed_offline.py::test_nomic_late_chunking_offline;
# - test_late_chunking_rejects_unsupported_execution_before_render (prefix_cache, chunked_prefill,
#   lora): poolkit has no prefix cache, chunked prefill or LoRA (it accepts and ignores the two
#   engine switches), so every late-chunked request runs its whole input in one pass;
# - test_late_chunk_ranges_keep_unicode_overlaps_and_special_only_chunks: a unit test of
#   build_late_chunking_metadata on hand-written offsets; the same unicode text's ranges are checked
#   against the tokenizer's offsets in test_nomic_late_chunking_offline;
# - test_late_chunk_ranges_reject_missing_or_invalid_offsets: feeds malformed offsets to that private
#   helper; poolkit takes offsets from the fast tokenizer it requires, so no public input reaches it;
# - test_late_chunk_mapping_preserves_order_mixed_requests_and_errors,
#   test_late_chunk_mapping_propagates_errors_and_is_not_reused,
#   test_late_chunk_mapping_rejects_successful_output_with_wrong_row_count: mock
#   PoolingOfflineMixin._run_tiling_engine and llm_engine.step; mixed late-chunked and plain requests
#   in input order are test_token_embed_offline.py::test_e5_late_chunking_mixed_requests;
# - test_late_chunk_contexts_remain_isolated_when_rendering_interleaves: vLLM keeps chunk metadata
#   per render context; poolkit keeps none in PoolingParams or in the LLM between calls.
import pytest
import torch

from poolkit import LLM, LateChunkingParams, PoolerConfig, PoolingParams


@pytest.fixture(scope="module")
def llm(minilm_dir):
    return LLM(str(minilm_dir), pooler_config=PoolerConfig(task="token_embed"))


def _late_chunk_params() -> PoolingParams:
    return PoolingParams(late_chunking_params=LateChunkingParams(chunk_size=2))


def _must_not_run(*args, **kwargs):
    raise AssertionError("a refused late-chunking request reached the engine")


def _encode(llm: LLM, prompts="a b", **kwargs):
    return llm.encode(
        prompts,
        pooling_task="token_embed",
        pooling_params=_late_chunk_params(),
        tokenization_kwargs=kwargs or None,
        use_tqdm=False,
    )


@pytest.mark.parametrize("prompts", ["", [1, 2], {"prompt": "abc", "multi_modal_data": {}}])
def test_late_chunking_rejects_unsupported_input_before_render(llm, monkeypatch, prompts):
    if isinstance(prompts, list):
        # DEPARTURE: vLLM refuses token-id prompts ("plain-text" input only). poolkit late-chunks
        # them: averaging token vectors needs only the tokens, and a caller with its own tokenizer
        # has token ids and their offsets already. The chunks carry token ranges and no char_range
        # (see test_token_embed_offline.py::test_late_chunking_token_prompt_has_no_char_ranges).
        (out,) = _encode(llm, prompts)
        assert out.prompt_token_ids == [1, 2]
        assert out.outputs.data.shape == (1, 384)
        assert [(c.token_range, c.char_range) for c in out.late_chunking.chunks] == [((0, 2), None)]
        return
    match = "plain-text"
    if isinstance(prompts, dict):
        # DEPARTURE (message only): poolkit's prompt parser refuses a multi_modal_data without an
        # image for every task, before late chunking is considered, and says so ("prompt 0:
        # multi_modal_data has no image"). A real image prompt is refused with vLLM's "plain-text"
        # message: test_late_chunking_rejects_image_prompts.
        match = "multi_modal_data has no image"
    monkeypatch.setattr(llm, "run", _must_not_run)
    with pytest.raises(ValueError, match=match):
        _encode(llm, prompts)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"truncate_prompt_tokens": 2},
        {"truncation": True},
        {"pad_prompt_tokens": 8},
        {"padding": True},
        {"do_lower_case": True},
    ],
)
def test_late_chunking_rejects_text_changes_before_render(llm, monkeypatch, kwargs):
    monkeypatch.setattr(llm, "run", _must_not_run)
    with pytest.raises(ValueError, match="does not support"):
        _encode(llm, **kwargs)
    if "truncate_prompt_tokens" in kwargs:
        # poolkit also takes truncation in PoolingParams (and from the server's request body).
        params = PoolingParams(late_chunking_params=LateChunkingParams(2), truncate_prompt_tokens=-1)
        with pytest.raises(ValueError, match="does not support"):
            llm.encode("a b", pooling_task="token_embed", pooling_params=params, use_tqdm=False)


def test_late_chunking_rejects_image_prompts(vllm_models_root, monkeypatch):
    # The multimodal case of test_late_chunking_rejects_unsupported_input_before_render with a real
    # image, on poolkit's one model that reads images (the tiny CLIP): an image is one vector, not
    # a text to cut into chunks. Without late chunking the same prompt runs.
    pytest.importorskip("PIL")
    from PIL import Image
    from tiny_models import build_clip

    clip = LLM(str(build_clip(vllm_models_root / "late-chunking-clip")))
    prompt = {"prompt": "", "multi_modal_data": {"image": Image.new("RGB", (40, 30), (200, 16, 32))}}
    (plain,) = clip.encode(prompt, pooling_task="token_embed", use_tqdm=False)
    assert plain.late_chunking is None and isinstance(plain.outputs.data, torch.Tensor)
    monkeypatch.setattr(clip, "run", _must_not_run)
    with pytest.raises(ValueError, match="plain-text"):
        _encode(clip, prompt)
