"""Tiny ColQwen3.5 and BiQwen3.5 checkpoints (colpali-engine's ``ColQwen3_5`` / ``BiQwen3_5``), built
offline on the tiny Qwen3.5 of :func:`tiny_qwen3_5.build_qwen3_5_vl` and saved as colpali-engine saves
them.

Where the layout comes from:

- ``architectures: ["ColQwen3_5"]`` / ``["BiQwen3_5"]``: the class names of colpali-engine 0.3.18
  (``colpali_engine/models/qwen3_5/``), which ``save_pretrained`` writes, and vLLM's registry entry
  for athrael-soju/colqwen3.5-4.5B-v3 (``"ColQwen3_5": ("colqwen3_5", "ColQwen3_5Model")``,
  vllm/model_executor/models/registry.py);
- ``model_type`` ``qwen3_5`` with ``text_config`` / ``vision_config`` at the top: the classes subclass
  transformers' ``Qwen3_5Model`` and take its ``Qwen3_5Config``;
- ``dim`` and ``embed_dim`` on the top config: the model card of athrael-soju/colqwen3.5-4.5B-v3
  (huggingface.co/athrael-soju/colqwen3.5-4.5B-v3: "config.json sets dim: 320 (read by ColQwen3_5)
  with embed_dim: 320 as a synonym"); 16 here;
- tensor names ``language_model.*``, ``visual.*``, ``custom_text_proj.{weight,bias}``, merged (not a
  PEFT adapter): what ``save_pretrained`` of a ``Qwen3_5Model`` subclass writes, and what vLLM's
  ``ColQwen3_5Model`` reads from the published checkpoint (vllm/model_executor/models/colqwen3_5.py:
  ``hf_to_vllm_mapper`` maps ``language_model.`` and drops ``mtp.``; the projection is
  ``custom_text_proj`` with a trained bias). The card says the weights are a LoRA (r=16) merged
  into Qwen3.5-4B; no ``adapter_config.json`` was found for it;
- no BiQwen3.5 checkpoint was found published: its layout is the class's (``language_model.*``,
  ``visual.*``, no projection);
- tokenizer, special tokens, image processor: Qwen3.5's (the tiny Qwen-VL tokenizer and Qwen3-VL
  image processor of :func:`tiny_qwen3_5.build_qwen3_5_vl`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tiny_qwen3_5 import build_qwen3_5_vl

#: The width of the tiny projection (320 in athrael-soju/colqwen3.5-4.5B-v3).
DIM = 16


def build_colqwen3_5(out: Path, head: str = "col", seed: int = 0) -> Path:
    """A tiny ``ColQwen3_5`` (``head="col"``) or ``BiQwen3_5`` (``head="bi"``) saved to ``out``: the
    tiny Qwen3.5 of :func:`build_qwen3_5_vl` (its tokenizer and image processor too), its tensors
    renamed to colpali-engine's ``Qwen3_5Model`` names (``model.`` dropped, no ``lm_head`` or
    ``mtp.*``), and for ``col`` a random ``custom_text_proj`` to :data:`DIM` with a random bias."""
    build_qwen3_5_vl(out, seed=seed)
    weights = out / "model.safetensors"
    tensors = {
        name.removeprefix("model."): tensor
        for name, tensor in load_file(weights).items()
        if not name.startswith(("lm_head.", "mtp."))
    }
    config = json.loads((out / "config.json").read_text())
    config["architectures"] = ["ColQwen3_5" if head == "col" else "BiQwen3_5"]
    if head == "col":
        config["dim"] = config["embed_dim"] = DIM
        generator = torch.Generator().manual_seed(seed + 1)
        hidden = config["text_config"]["hidden_size"]
        tensors["custom_text_proj.weight"] = torch.randn(DIM, hidden, generator=generator) * hidden**-0.5
        tensors["custom_text_proj.bias"] = torch.randn(DIM, generator=generator) * 0.5
    save_file(tensors, weights, metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
