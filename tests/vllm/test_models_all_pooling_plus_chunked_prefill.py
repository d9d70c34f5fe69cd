# Port of vllm tests/models/language/pooling/test_all_pooling_plus_chunked_prefill.py
# Qwen/Qwen3-Embedding-0.6B -> a tiny Qwen3Model (tests/support/tiny_models.build_qwen). vLLM's token prompts
# are ids 1024.. (Qwen's vocabulary is 151k); the tiny vocabulary has about 400, so the port uses
# ids 100.. . vLLM schedules them in 10-token chunks with prefix caching (chunked prefill); poolkit
# runs whole sequences (max_num_batched_tokens / enable_chunked_prefill / enable_prefix_caching are
# accepted and mean nothing), so the check is the same per-token comparison with transformers.
import pytest
import torch
from port_utils import check_embeddings_close
from transformers import AutoModel

from poolkit import LLM, PoolerConfig


@pytest.fixture(scope="module")
def qwen3_dir(vllm_models_root):
    from tiny_models import build_qwen

    return build_qwen(vllm_models_root / "qwen3-embedding", "qwen3", "embed", init_range=0.5)


@pytest.mark.parametrize("model", ["Qwen3-Embedding-stand-in"])
@torch.inference_mode
def test_embed_models(qwen3_dir, model: str):
    chunk_size = 10
    n_prompt_tokens = [55, 56, 57]
    token_prompts = [[100 + i for i in range(n)] for n in n_prompt_tokens]

    vllm_model = LLM(
        str(qwen3_dir),
        runner="pooling",
        pooler_config=PoolerConfig(pooling_task="token_embed"),
        max_model_len=128,
        max_num_batched_tokens=chunk_size,
        enforce_eager=True,
        enable_chunked_prefill=True,
        enable_prefix_caching=True,
    )
    vllm_outputs = [o.outputs.data for o in vllm_model.encode([{"prompt_token_ids": t} for t in token_prompts], pooling_task="token_embed")]

    hf = AutoModel.from_pretrained(str(qwen3_dir)).eval()
    hf_outputs = []
    for token_prompt in token_prompts:
        output = hf(torch.tensor([token_prompt]))
        hf_outputs.append(output.last_hidden_state.cpu().float()[0])

    for hf_output, vllm_output in zip(hf_outputs, vllm_outputs):
        check_embeddings_close(embeddings_0_lst=hf_output, embeddings_1_lst=vllm_output, name_0="hf", name_1="vllm", tol=1e-2)
