"""Tiny Qwen3.5 text checkpoints (``Qwen3_5TextModel`` / ``Qwen3_5ForCausalLM`` /
``Qwen3_5TextForSequenceClassification``) built offline with transformers' own classes and random
weights, in the layout Qwen publishes.

Where the layout comes from:

- config keys and values: the ``text_config`` of Qwen's Qwen3.5 checkpoints (e.g.
  huggingface.co/NexVeridian/OmniCoder-9B-5bit/blob/main/config.json, a Qwen3.5-9B conversion)
  and the text-only ``Qwen3_5ForCausalLM`` configs published from them
  (huggingface.co/oopere/Qwen3.5-0.65B-Base-Rearchitected/blob/main/config.json,
  huggingface.co/halen214/st01/blob/main/config.json): ``model_type: qwen3_5_text``,
  ``attn_output_gate: true``, ``full_attention_interval: 4`` with ``layer_types`` written out,
  ``linear_conv_kernel_dim: 4``, ``linear_num_key_heads`` / ``linear_num_value_heads`` (16 / 32 in
  the 9B: two value heads per key head, kept here), ``mamba_ssm_dtype: float32``,
  ``mtp_num_hidden_layers: 1``, ``rope_parameters`` with ``mrope_interleaved: true``,
  ``mrope_section: [11, 11, 10]``, ``partial_rotary_factor: 0.25``, ``rope_theta: 10000000``,
  ``rope_type: default``; ``head_dim`` explicit (256 there, 16 here);
- weight names: transformers 5.24's ``models/qwen3_5/modeling_qwen3_5.py`` (``Qwen3_5ForCausalLM``:
  ``model.layers.N.linear_attn.{in_proj_qkv,in_proj_z,in_proj_b,in_proj_a,conv1d,dt_bias,A_log,norm,out_proj}``,
  ``model.layers.N.self_attn.{q_proj,k_proj,v_proj,o_proj,q_norm,k_norm}``, ``lm_head``), plus the
  multi-token-prediction tensors ``mtp.*`` the published checkpoints carry beside them (transformers'
  ``_keys_to_ignore_on_load_unexpected = [r"^mtp.*"]``), one of which is written here so that
  dropping it is tested;
- special tokens: Qwen's ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` (the tiny byte-level BPE
  tokenizer of :func:`tiny_models.bytelevel_bpe_tokenizer`), and for the vision-language layout
  ``<|vision_start|>``, ``<|vision_end|>``, ``<|image_pad|>``, ``<|video_pad|>`` with their ids in
  the config (``image_token_id`` ...);
- the vision-language layout (:func:`build_qwen3_5_vl`): Qwen's own checkpoints, e.g. the 9B
  conversion above: ``architectures: ["Qwen3_5ForConditionalGeneration"]``, ``model_type: qwen3_5``,
  the text config under ``text_config``, the tower's under ``vision_config`` (Qwen3-VL's keys without
  ``deepstack_visual_indexes``; ``out_hidden_size`` the text width), tensors ``model.language_model.*``,
  ``model.visual.*``, ``lm_head.weight`` and ``mtp.*`` (transformers 5.24's ``Qwen3_5ForConditionalGeneration``
  and ``Qwen3_5_ForCausalLM``'s ``_keys_to_ignore_on_load_unexpected``); its image processor Qwen3-VL's
  (transformers maps ``qwen3_5`` to ``Qwen3VLProcessor``), as :func:`tiny_qwen_vl.build_qwen3_vl` writes it.

Sizes are tiny: hidden 32, 4 layers alternating delta-net and full attention
(``full_attention_interval: 2``, so a delta-net layer also follows an attention layer), 4 query
heads sharing 2 key/value heads of 16 dimensions (4 of them rotary), 2 key heads and 4 value heads
of 8 in the delta-net.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T
from safetensors.torch import load_file, save_file

from tiny_models import bytelevel_bpe_tokenizer, qwen_vl_tokenizer

#: transformers' class of each task.
CLASSES = {"embed": "Qwen3_5TextModel", "lm": "Qwen3_5ForCausalLM", "classify": "Qwen3_5TextForSequenceClassification"}


def qwen3_5_config(vocab_size: int, pad_token_id: int, eos_token_id: int, **config: object) -> T.Qwen3_5TextConfig:
    """A tiny ``Qwen3_5TextConfig`` with the published keys (module docstring), ``config`` on top."""
    interval = int(config.pop("full_attention_interval", 2))
    layers = int(config.pop("num_hidden_layers", 4))
    kw: dict = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        layer_types=["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)],
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        attention_bias=False,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        initializer_range=0.2,
        rope_parameters={
            "mrope_interleaved": True,
            "mrope_section": [11, 11, 10],
            "partial_rotary_factor": 0.25,
            "rope_theta": 10_000_000.0,
            "rope_type": "default",
        },
    )
    kw.update(config)
    cfg = T.Qwen3_5TextConfig(**kw)
    # Published keys transformers' config class does not define; kept so the layout is the published one.
    cfg.attn_output_gate = True
    cfg.full_attention_interval = interval
    cfg.mamba_ssm_dtype = "float32"
    cfg.mtp_num_hidden_layers = 1
    return cfg


def build_qwen3_5(out: Path, task: str = "lm", num_labels: int = 1, seed: int = 0, **config: object) -> Path:
    """A tiny Qwen3.5 text checkpoint for ``task`` (``embed``, ``lm``, ``classify``), saved to ``out``
    with a Qwen-style tokenizer; every norm weight, ``dt_bias`` and ``A_log`` random too, so a
    dropped or misread one shows."""
    tok = bytelevel_bpe_tokenizer()
    if task == "classify":
        config = {**config, "num_labels": num_labels}
    cfg = qwen3_5_config(len(tok), tok.pad_token_id, tok.eos_token_id, **config)
    cfg.architectures = [CLASSES[task]]
    torch.manual_seed(seed)  # transformers 5 initialises at construction
    model = getattr(T, CLASSES[task])(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty_like(p).uniform_(0.05, 4.0).log())  # decays from slow to fast
            elif name.endswith("linear_attn.norm.weight"):
                p.normal_(1.0, 0.5)  # the gated norm scales by its weight
            elif p.ndim == 1:
                p.normal_(0.0, 0.5)  # (1 + weight) norms, dt_bias, biases
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    weights = out / "model.safetensors"
    tensors = load_file(weights)
    tensors["mtp.fc.weight"] = torch.randn(cfg.hidden_size, 2 * cfg.hidden_size)  # as published: beside the model, unused
    save_file(tensors, weights, metadata={"format": "pt"})
    return out


def build_qwen3_5_vl(out: Path, seed: int = 0, max_pixels: int = 64 * 64) -> Path:
    """A tiny ``Qwen3_5ForConditionalGeneration``: the text model above (hidden 32, 4 layers, heads of
    32 with 8 rotary dimensions split by ``mrope_section`` [2, 1, 1], interleaved) behind a tower of
    3 blocks with 8-pixel patches merged 2x2 and learned positions on a 4x4 grid; every tensor drawn
    again as :func:`tiny_qwen_vl._redraw` draws them, Qwen3-VL's image processor settings."""
    from tiny_qwen_vl import _redraw, _save, _token_ids

    tok = qwen_vl_tokenizer()
    text = qwen3_5_config(len(tok), tok.pad_token_id, tok.eos_token_id, head_dim=32)
    text.rope_parameters = {**text.rope_parameters, "mrope_section": [2, 1, 1]}
    config = T.Qwen3_5Config(
        text_config=text.to_dict(),
        vision_config=dict(
            depth=3, hidden_size=32, out_hidden_size=32, intermediate_size=48, num_heads=2, patch_size=8,
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=16,
            hidden_act="gelu_pytorch_tanh",
        ),
        **_token_ids(tok),
    )
    config.architectures = ["Qwen3_5ForConditionalGeneration"]
    model = T.Qwen3_5ForConditionalGeneration(config)
    _redraw(model, seed)
    pixels = dict(patch_size=8, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image = dict(pixels, size={"shortest_edge": 16 * 16, "longest_edge": max_pixels})
    video = dict(pixels, video_processor_type="Qwen3VLVideoProcessor", size={"shortest_edge": 16 * 16, "longest_edge": 4 * 48 * 48}, do_sample_frames=False)
    _save(out, model, tok, image, video)
    weights = out / "model.safetensors"
    tensors = load_file(weights)
    tensors["mtp.fc.weight"] = torch.randn(text.hidden_size, 2 * text.hidden_size)
    save_file(tensors, weights, metadata={"format": "pt"})
    return out
