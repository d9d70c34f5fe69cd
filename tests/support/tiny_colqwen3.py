"""Tiny ColQwen3 checkpoints as tomoro-ai publishes them (TomoroAI/tomoro-colqwen3-embed-4b / -8b),
built offline on the tiny Qwen3-VL of :func:`tiny_qwen_vl.build_qwen3_vl` and saved as tomoro's remote
``ColQwen3`` saves itself.

Where the layout comes from (the Hugging Face repositories themselves were not reachable; their
remote-code files were read in copies and in the ports that read them):

- ``architectures: ["ColQwen3"]``: vLLM's registry and docs (``ColQwen3`` -> ``colqwen3.ColQwen3Model``,
  "TomoroAI/tomoro-colqwen3-embed-4b, TomoroAI/tomoro-colqwen3-embed-8b", docs/models/supported_models.md);
- ``model_type: colqwen3`` with Qwen3-VL's ``text_config``, ``vision_config`` and token ids at the top,
  ``embed_dim`` (320 published; :data:`DIM` here), ``padding_side: "left"``, ``initializer_range``:
  the remote ``configuration_colqwen3.py`` (``class ColQwen3Config(Qwen3VLConfig)``, ``model_type =
  "colqwen3"``, ``__init__(vision_config, text_config, embed_dim=320, padding_side="left",
  initializer_range=0.02, dtype)``), which vLLM's ``transformers_utils/configs/colqwen3.py`` maps too;
  "320-dimensional" and "embed_dim: 320" in vLLM's ``EMBED_DIMS`` test table;
- ``auto_map``: not seen; written with the remote files' names (``configuration_colqwen3.ColQwen3Config``,
  ``modeling_colqwen3.ColQwen3``, ``processing_colqwen3.ColQwen3Processor``), unconfirmed;
- tensor names ``vlm.model.visual.*``, ``vlm.model.language_model.*``, ``vlm.lm_head.weight`` and
  ``embedding_proj_layer.{weight,bias}``: the remote ``modeling_colqwen3.py`` (``self.vlm =
  AutoModelForImageTextToText.from_config(...)``, ``self.embedding_proj_layer = nn.Linear(hidden,
  embed_dim)`` with its default bias) and vLLM's ``ColQwen3Model.hf_to_vllm_mapper`` ("TomoroAI:
  vlm.model.visual., vlm.model.language_model."; "embedding_proj_layer: TomoroAI naming");
  ``vlm.lm_head.weight`` is kept as the 8B (untied) has it, the 4B ties it away;
  :func:`bare_names` writes the names its ``_checkpoint_conversion_mapping`` reads from a bare
  ``Qwen3VLModel`` (``model.visual.*``, ``model.language_model.*``, ``custom_text_proj.*``);
- tokenizer, special tokens, image processor: Qwen3-VL's (the tiny ones of ``build_qwen3_vl``, the pad
  token ``<|endoftext|>`` as Qwen's), with the ``processor_class`` the remote processor would save;
  the published ``preprocessor_config.json``'s ``longest_edge`` was not seen, and does not matter:
  ``ColQwen3Processor.from_pretrained`` replaces it with ``max_num_visual_tokens`` (1280) merged patches.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tiny_qwen_vl import build_qwen3_vl

#: The width of the tiny projection (320 published).
DIM = 16

AUTO_MAP = {
    "AutoConfig": "configuration_colqwen3.ColQwen3Config",
    "AutoModel": "modeling_colqwen3.ColQwen3",
    "AutoProcessor": "processing_colqwen3.ColQwen3Processor",
}


def build_colqwen3(out: Path, seed: int = 0) -> Path:
    """A tiny tomoro ``ColQwen3`` saved to ``out``: the tiny Qwen3-VL of :func:`build_qwen3_vl` (its
    tokenizer and image processor too) under ``vlm.``, and a random ``embedding_proj_layer`` to
    :data:`DIM` with a random bias."""
    build_qwen3_vl(out, seed=seed)
    weights = out / "model.safetensors"
    tensors = {f"vlm.{name}": tensor for name, tensor in load_file(weights).items()}
    config = json.loads((out / "config.json").read_text())
    config.update(architectures=["ColQwen3"], model_type="colqwen3", embed_dim=DIM, padding_side="left",
                  initializer_range=0.02, auto_map=AUTO_MAP)
    generator = torch.Generator().manual_seed(seed + 1)
    hidden = config["text_config"]["hidden_size"]
    tensors["embedding_proj_layer.weight"] = torch.randn(DIM, hidden, generator=generator) * hidden**-0.5
    tensors["embedding_proj_layer.bias"] = torch.randn(DIM, generator=generator) * 0.5
    save_file(tensors, weights, metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    processor = json.loads((out / "preprocessor_config.json").read_text())
    processor.update(processor_class="ColQwen3Processor", auto_map={"AutoProcessor": AUTO_MAP["AutoProcessor"]})
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return out


def bare_names(model_dir: Path) -> None:
    """Rename a :func:`build_colqwen3` checkpoint's tensors to a bare ``Qwen3VLModel``'s
    (``model.visual.*``, ``model.language_model.*``, no ``lm_head``) and ``custom_text_proj``, the
    names tomoro's ``_checkpoint_conversion_mapping`` maps back."""
    weights = model_dir / "model.safetensors"
    tensors = {
        name.removeprefix("vlm.").replace("embedding_proj_layer.", "custom_text_proj."): tensor
        for name, tensor in load_file(weights).items()
        if not name.startswith("vlm.lm_head.")
    }
    save_file(tensors, weights, metadata={"format": "pt"})
