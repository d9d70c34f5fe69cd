# Port of vllm tests/entrypoints/pooling/token_embed/test_offline.py
# intfloat/multilingual-e5-small with PoolerConfig(task="token_embed") -> all-MiniLM-L6-v2, same
# pooler config; vLLM's (11, 384) is e5's token count: here the tokenizer's own count.
# nomic-ai/nomic-embed-text-v1 (remote code) in test_nomic_late_chunking_offline -> all-MiniLM-L6-v2.
import pytest
import torch
from port_utils import check_embeddings_close
from transformers import AutoTokenizer

from poolkit import LLM, LateChunkingParams, PoolerConfig, PoolingParams, PoolingRequestOutput

prompt = "The chef prepared a delicious meal."
embedding_size = 384


@pytest.fixture(scope="module")
def prompt_token_ids(minilm_dir):
    return AutoTokenizer.from_pretrained(str(minilm_dir))(prompt)["input_ids"]


@pytest.fixture(scope="module")
def llm(minilm_dir):
    llm = LLM(
        str(minilm_dir),
        max_model_len=None,
        pooler_config=PoolerConfig(task="token_embed"),
        max_num_batched_tokens=32768,
        tensor_parallel_size=1,
        gpu_memory_utilization=0.75,
        enforce_eager=True,
        seed=0,
        enable_chunked_prefill=None,
    )
    assert embedding_size == llm.model_config.embedding_size
    return llm


def test_str_prompts(llm: LLM, prompt_token_ids):
    outputs = llm.encode(prompt, pooling_task="token_embed", use_tqdm=False)
    assert len(outputs) == 1
    assert isinstance(outputs[0], PoolingRequestOutput)
    assert outputs[0].outputs.data.shape == (len(prompt_token_ids), 384)


def test_token_ids_prompts(llm: LLM, prompt_token_ids):
    outputs = llm.encode([prompt_token_ids], pooling_task="token_embed", use_tqdm=False)
    assert len(outputs) == 1
    assert isinstance(outputs[0], PoolingRequestOutput)
    assert outputs[0].outputs.data.shape == (len(prompt_token_ids), 384)


@pytest.mark.parametrize(
    "task",
    ["embed", "classify", "token_classify", "plugin"],
)
def test_unsupported_tasks(llm: LLM, task: str):
    if task == "embed":
        # DEPARTURE: vLLM serves only the configured pooling_task (token_embed) and raises "Try
        # switching the model's pooling_task via ..."; poolkit serves every task the model supports.
        (out,) = llm.encode(prompt, pooling_task=task, use_tqdm=False)
        assert out.outputs.data.shape == (embedding_size,)
        return
    if task == "plugin":
        err_msg = "No IOProcessor plugin installed."
    else:
        err_msg = "Classification API is not supported by this model.+"

    with pytest.raises(ValueError, match=err_msg):
        llm.encode(prompt, pooling_task=task, use_tqdm=False)


@pytest.mark.parametrize("use_v2_runner", [False, True])
def test_nomic_late_chunking_offline(minilm_dir, monkeypatch, use_v2_runner):
    """Compare worker chunking with unnormalized states using both GPU runners."""
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1" if use_v2_runner else "0")
    prompts = [
        "search_document: Berlin is a city. It is in Germany.",
        "search_document: 中文 😀 café e\u0301",
        "   ",
        "search_document: short",
        "search_document: A longer paragraph with several different token lengths.",
        "search_document: repeated text",
    ]
    llm = LLM(
        str(minilm_dir),
        runner="pooling",
        pooler_config=PoolerConfig(task="token_embed"),
        dtype="float32",
        max_model_len=128,
        max_num_seqs=2,
        gpu_memory_utilization=0.3,
        enforce_eager=True,
        enable_prefix_caching=False,
        enable_chunked_prefill=False,
    )
    for add_special_tokens in (True, False):
        # Empty token sequences are checked separately below.
        texts = prompts if add_special_tokens else [p for p in prompts if p.strip()]
        kwargs = {"add_special_tokens": add_special_tokens}
        raw = llm.encode(texts, pooling_task="token_embed", use_tqdm=False, pooling_params=PoolingParams(use_activation=False), tokenization_kwargs=kwargs)
        normal = llm.encode(texts, pooling_task="token_embed", use_tqdm=False, tokenization_kwargs=kwargs)
        for normalize in (False, True):
            sizes = [1, 3, 2, 128, 4, None][: len(texts)]
            params = [
                PoolingParams(
                    late_chunking_params=LateChunkingParams(chunk_size=c) if c is not None else None,
                    use_activation=normalize,
                    skip_reading_prefix_cache=False,
                )
                for c in sizes
            ]
            actual = llm.encode(texts, pooling_task="token_embed", use_tqdm=False, pooling_params=params, tokenization_kwargs=kwargs)
            for text, size, states, ordinary, output in zip(texts, sizes, raw, normal, actual):
                assert output.prompt_token_ids == states.prompt_token_ids
                if size is None:
                    expected = ordinary.outputs.data if normalize else states.outputs.data
                    assert output.late_chunking is None
                else:
                    expected = torch.stack([part.float().mean(0) for part in states.outputs.data.split(size)])
                    if normalize:
                        expected = torch.nn.functional.normalize(expected, p=2, dim=-1)
                    metadata = output.late_chunking
                    assert metadata is not None
                    encoded = llm.get_tokenizer()(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
                    assert encoded["input_ids"] == output.prompt_token_ids
                    assert metadata.input_tokens == len(encoded["input_ids"])
                    assert len(metadata.chunks) == expected.shape[0]
                    for chunk in metadata.chunks:
                        start, end = chunk.token_range
                        offsets = [(a, b) for a, b in encoded["offset_mapping"][start:end] if a < b]
                        char_range = (min(a for a, _ in offsets), max(b for _, b in offsets)) if offsets else None
                        assert chunk.char_range == char_range
                check_embeddings_close(
                    embeddings_0_lst=output.outputs.data.tolist(),
                    embeddings_1_lst=expected.tolist(),
                    name_0="late_chunking",
                    name_1="contextual_token_reference",
                )
                torch.testing.assert_close(output.outputs.data.norm(dim=-1), expected.norm(dim=-1), atol=1e-3, rtol=1e-3)
            assert all(p.task is None for p in params)

    for text, kwargs in [("long " * 256, {}), ("   ", {"add_special_tokens": False})]:
        with pytest.raises(ValueError):  # vllm.exceptions.VLLMValidationError
            llm.encode(
                text,
                pooling_task="token_embed",
                use_tqdm=False,
                pooling_params=PoolingParams(late_chunking_params=LateChunkingParams(chunk_size=3)),
                tokenization_kwargs=kwargs,
            )
    # Rejections must leave the instance usable, with no retained chunk ranges.
    output = llm.encode("after rejection", pooling_task="token_embed", use_tqdm=False)[0]
    assert output.late_chunking is None


@pytest.mark.parametrize("normalize", [False, True])
def test_e5_late_chunking_mixed_requests(llm: LLM, normalize: bool):
    texts = [prompt, "Short text.", "中文 😀 café"]
    raw = llm.encode(texts, pooling_task="token_embed", use_tqdm=False, pooling_params=PoolingParams(use_activation=False))
    sizes = [3, None, 100]
    params = [
        PoolingParams(late_chunking_params=LateChunkingParams(size) if size is not None else None, use_activation=normalize)
        for size in sizes
    ]
    actual = llm.encode(texts, pooling_task="token_embed", pooling_params=params, use_tqdm=False)
    for original, result, size in zip(raw, actual, sizes):
        expected = original.outputs.data
        if size is not None:
            expected = torch.stack([part.float().mean(0) for part in expected.split(size)])
            assert result.late_chunking is not None
            assert len(result.late_chunking.chunks) == len(expected)
            assert result.late_chunking.input_tokens == len(result.prompt_token_ids)
        else:
            assert result.late_chunking is None
        if normalize:
            expected = torch.nn.functional.normalize(expected, dim=-1)
        check_embeddings_close(
            embeddings_0_lst=result.outputs.data.tolist(),
            embeddings_1_lst=expected.tolist(),
            name_0="late_chunking",
            name_1="token_reference",
        )
        torch.testing.assert_close(result.outputs.data.norm(dim=-1), expected.norm(dim=-1), atol=1e-3, rtol=1e-3)


def test_late_chunking_token_prompt_has_no_char_ranges(llm: LLM, prompt_token_ids):
    # From test_bge_m3_late_chunking_keeps_special_tokens (BAAI/bge-m3 as BgeM3EmbeddingModel has no
    # offline stand-in; its BOS-dropping token_embed is bge-m3's own): a chunk of one special token
    # covers no text, and a token-id prompt has no text at all.
    (out,) = llm.encode(prompt, pooling_task="token_embed", use_tqdm=False, pooling_params=PoolingParams(late_chunking_params=LateChunkingParams(1)))
    assert out.late_chunking.chunks[0].char_range is None
    assert out.late_chunking.chunks[1].char_range == (0, 3)  # "The"
    (ids,) = llm.encode([prompt_token_ids], pooling_task="token_embed", use_tqdm=False, pooling_params=PoolingParams(late_chunking_params=LateChunkingParams(4)))
    assert [c.char_range for c in ids.late_chunking.chunks] == [None] * len(ids.late_chunking.chunks)
    assert [c.token_range for c in ids.late_chunking.chunks][-1] == (8, len(prompt_token_ids))


# vllm tests/entrypoints/pooling/token_embed/test_offline.py::test_late_chunking_recomputes_cached_prefix_with_chunked_prefill
# is not ported: it checks vLLM's prefix cache and chunked prefill scheduling (num_cached_tokens > 0
# on a repeat), which poolkit does not have: every request runs its whole input.
