# Port of vllm tests/entrypoints/pooling/basic/test_tiling_engine.py
# intfloat/multilingual-e5-small with max_num_seqs=2 (small, to trigger vLLM's tiling) ->
# all-MiniLM-L6-v2 with the same argument (poolkit packs by token budget, not sequence count).
# Not ported (they test vLLM's private engine loop, which poolkit does not have):
# - test_tiling_engine_abort_on_exception: mocks llm.llm_engine.step / abort_request;
# - test_late_chunk_mapping_follows_request_ids_and_preserves_request_errors,
#   test_late_chunk_mapping_aborts_on_failure_or_cancellation_and_is_not_reused (2 cases),
#   test_late_chunk_mapping_rejects_successful_output_with_wrong_row_count: unit tests of
#   PoolingOfflineMixin._run_tiling_engine with mocked engines and LateChunkingMetadata.
import pytest

from poolkit import LLM, PoolingParams


@pytest.fixture(scope="module")
def llm(minilm_dir):
    return LLM(
        str(minilm_dir),
        max_model_len=None,
        max_num_seqs=2,  # small to trigger tiling
        tensor_parallel_size=1,
        gpu_memory_utilization=0.75,
        enforce_eager=True,
        seed=0,
        enable_chunked_prefill=None,
    )


def test_tiling_engine_basic(llm):
    prompts = ["Hello", "World"]
    outputs = llm.encode(prompts, pooling_task="embed")
    assert len(outputs) == len(prompts)


def test_tiling_engine_many_requests(llm):
    num_prompts = 10
    prompts = [f"Prompt {i}" for i in range(num_prompts)]
    outputs = llm.encode(prompts, pooling_task="embed")
    assert len(outputs) == num_prompts


def test_tiling_engine_with_pooling_params(llm):
    num_prompts = 10
    prompts = [f"Prompt {i}" for i in range(num_prompts)]
    pooling_params = [PoolingParams() for _ in range(num_prompts)]

    outputs = llm.encode(prompts, pooling_params=pooling_params, pooling_task="embed")
    assert len(outputs) == num_prompts

    # Single PoolingParams shared across all prompts
    single_param = PoolingParams()
    outputs = llm.encode(prompts, pooling_params=single_param, pooling_task="embed")
    assert len(outputs) == num_prompts

    # None PoolingParams should fall back to default
    outputs = llm.encode(prompts, pooling_params=None, pooling_task="embed")
    assert len(outputs) == num_prompts
