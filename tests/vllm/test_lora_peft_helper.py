# Port of vllm tests/lora/test_peft_helper.py
# llama32_lora_files (a hub adapter of Llama-3.2) -> a PEFT adapter of a tiny Llama that the test
# writes with peft (rank 8, alpha 32, every attention and MLP projection). vLLM's PEFTHelper reads
# and checks the adapter; poolkit's reader is poolkit.lora.checkpoint.read_checkpoint, and its refusals are
# held to vLLM's words (rank, DoRA, a rank that is no positive integer).
# DEPARTURE: the ("test_modules_to_save", {"modules_to_save": ["lm_head"]}) error case: poolkit
# applies modules_to_save (a classifier head an adapter saves whole), so it is no error here.
# DEPARTURE: embed_tokens and lm_head are not among the targets: poolkit refuses embedding LoRA
# (and a pooling model has no lm_head to adapt), so the adapter targets the projections only.
# Not ported: test_peft_helper_invalid_rank_direct, test_trainable_token_indices_* and
# test_trainable_tokens_require_sufficient_capacity construct vLLM's PEFTHelper directly
# (trainable tokens are not supported: such an adapter has tensors poolkit refuses).
import json
import math
import shutil

import pytest
import torch

from poolkit import LoRARequest
from poolkit.contracts.errors import InvalidRequest
from poolkit.lora.checkpoint import read_checkpoint as read_adapter

peft = pytest.importorskip("peft")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ERROR_CASES = [
    ("test_rank", {"r": 1024}, "is greater than max_lora_rank"),
    ("test_dora", {"use_dora": True}, "does not yet support DoRA"),
    ("test_rank_zero", {"r": 0}, "must be a positive integer"),
    ("test_rank_negative", {"r": -8}, "must be a positive integer"),
]


@pytest.fixture(scope="module")
def llama32_lora_files(tmp_path_factory):
    import transformers as T
    from tiny_models import build_decoder

    root = tmp_path_factory.mktemp("llama32")
    base = build_decoder(root / "llama", "llama")
    model = T.AutoModel.from_pretrained(base)
    config = peft.LoraConfig(r=8, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False)
    peft.get_peft_model(model, config).save_pretrained(root / "adapter")
    return root / "adapter"


def test_peft_helper_pass(llama32_lora_files, tmp_path):
    adapter = read_adapter(LoRARequest("a", 1, str(llama32_lora_files)), max_rank=16)
    config = json.loads((llama32_lora_files / "adapter_config.json").read_text())
    assert adapter.rank == config["r"] == 8
    assert config["lora_alpha"] == 32
    target_modules = sorted({layer.rpartition(".")[2] for layer in adapter.factors})
    assert target_modules == sorted(TARGETS)

    # test RSLoRA: B carries the scaling, lora_alpha / sqrt(r) instead of lora_alpha / r
    test_dir = tmp_path / "test_rslora"
    shutil.copytree(llama32_lora_files, test_dir)
    config_path = test_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config.update(use_rslora=True)
    config_path.write_text(json.dumps(adapter_config))
    rslora = read_adapter(LoRARequest("b", 2, str(test_dir)), max_rank=16)
    layer = next(iter(adapter.factors))
    ratio = rslora.factors[layer][1] / adapter.factors[layer][1]
    scaling = config["lora_alpha"] / math.sqrt(config["r"])
    assert torch.allclose(ratio, torch.full_like(ratio, scaling / (config["lora_alpha"] / config["r"])), rtol=1e-5)


@pytest.mark.parametrize("test_name,config_change,expected_error", ERROR_CASES)
def test_peft_helper_error(llama32_lora_files, tmp_path, test_name: str, config_change: dict, expected_error: str):
    test_dir = tmp_path / test_name
    shutil.copytree(llama32_lora_files, test_dir)
    config_path = test_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config.update(config_change)
    config_path.write_text(json.dumps(adapter_config))
    with pytest.raises(InvalidRequest, match=expected_error):
        read_adapter(LoRARequest("a", 1, str(test_dir)), max_rank=16)
