# Port of vllm tests/models/language/pooling/test_multi_vector_retrieval.py
# BAAI/bge-m3 with PoolerConfig(task="token_embed") -> all-MiniLM-L6-v2, same pooler config;
# hf_runner(auto_cls=AutoModel) -> transformers' AutoModel on the same weights.
import pytest
import torch
from port_utils import check_embeddings_close
from transformers import AutoModel, AutoTokenizer

from poolkit import LLM, PoolerConfig


@pytest.mark.parametrize("model", ["bge-m3-stand-in"])
@pytest.mark.parametrize("dtype", ["float"])
@torch.inference_mode
def test_embed_models(minilm_dir, example_prompts, model: str, dtype: str):
    vllm_model = LLM(str(minilm_dir), runner="pooling", pooler_config=PoolerConfig(task="token_embed"), max_model_len=None, dtype=dtype)
    vllm_outputs = [o.outputs.data for o in vllm_model.encode(example_prompts, pooling_task="token_embed")]

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    hf = AutoModel.from_pretrained(str(minilm_dir)).eval()
    hf_outputs = []
    for prompt in example_prompts:
        inputs = tokenizer([prompt], return_tensors="pt")
        output = hf(**inputs)
        hf_outputs.append(output.last_hidden_state[0].float().cpu())

    for hf_output, vllm_output in zip(hf_outputs, vllm_outputs):
        check_embeddings_close(embeddings_0_lst=hf_output, embeddings_1_lst=vllm_output, name_0="hf", name_1="vllm", tol=1e-2)
