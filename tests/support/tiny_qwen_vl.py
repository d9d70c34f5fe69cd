"""Tiny random Qwen2.5-VL and Qwen3-VL models, built offline with transformers' own config classes
and ``save_pretrained``, with their tokenizer and image (and video) processor configs.

Every parameter is drawn again (matrices with std ``1.5 / sqrt(fan_in)``, norms around 1, biases
around 0), so a dropped one, a misplaced feature or a wrong position shows in the embeddings.
Layout: ``save_pretrained`` writes each family's published names (Qwen2.5-VL: ``model.*`` /
``visual.*``; Qwen3-VL: ``model.language_model.*`` / ``model.visual.*``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T

from tiny_models import QWEN_VL_TOKENS, qwen_vl_tokenizer


def _redraw(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.2)
            else:
                p.normal_(0.0, 1.5 * p[0].numel() ** -0.5)


def _text_config(tok: T.PreTrainedTokenizerFast, layers: int, interleaved: bool) -> dict:
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    if interleaved:
        rope["mrope_interleaved"] = True
    return dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, rope_parameters=rope,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
    )


def _token_ids(tok: T.PreTrainedTokenizerFast) -> dict:
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_VL_TOKENS}
    return dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )


def _save(out: Path, model: torch.nn.Module, tok: T.PreTrainedTokenizerFast, image: dict, video: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    T.Qwen2VLImageProcessorPil(**image).save_pretrained(out)
    # transformers' video processors need torchvision to be built: write their config as they save it.
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    return out


def build_qwen2_5_vl(out: Path, seed: int = 0, max_pixels: int = 48 * 48) -> Path:
    """A tiny ``Qwen2_5_VLForConditionalGeneration``: a vision tower of 3 RMSNorm blocks (block 1
    full attention, the others in windows of 2x2 merged patches), 4-pixel patches merged 2x2, a
    2-layer Qwen2 decoder with M-RoPE sections [2, 3, 3], ``tokens_per_second`` 4."""
    tok = qwen_vl_tokenizer()
    config = T.Qwen2_5_VLConfig(
        text_config=_text_config(tok, 2, interleaved=False),
        vision_config=dict(
            depth=3, hidden_size=32, out_hidden_size=64, intermediate_size=48, num_heads=2, patch_size=4,
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=16, fullatt_block_indexes=[1],
            tokens_per_second=4, hidden_act="silu",
        ),
        **_token_ids(tok),
    )
    model = T.Qwen2_5_VLForConditionalGeneration(config)
    _redraw(model, seed)
    image = dict(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=8 * 8, max_pixels=max_pixels)
    video = {
        "video_processor_type": "Qwen2VLVideoProcessor", "patch_size": 4, "merge_size": 2, "temporal_patch_size": 2,
        "size": {"shortest_edge": 8 * 8, "longest_edge": 32 * 32}, "image_mean": list(T.image_utils.OPENAI_CLIP_MEAN),
        "image_std": list(T.image_utils.OPENAI_CLIP_STD), "do_sample_frames": False,
    }
    return _save(out, model, tok, image, video)


def build_qwen3_vl(out: Path, seed: int = 0, max_pixels: int = 64 * 64) -> Path:
    """A tiny ``Qwen3VLForConditionalGeneration``: 8-pixel patches merged 2x2, learned positions on
    a 4x4 grid, 3 vision blocks with deepstack taps after blocks 0 and 1, a 3-layer Qwen3 decoder
    with interleaved M-RoPE, and Qwen3-VL's processor settings (mean and std 0.5, ``size`` keys)."""
    tok = qwen_vl_tokenizer()
    config = T.Qwen3VLConfig(
        text_config=_text_config(tok, 3, interleaved=True),
        vision_config=dict(
            depth=3, hidden_size=32, out_hidden_size=64, intermediate_size=48, num_heads=2, patch_size=8,
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=16,
            deepstack_visual_indexes=[0, 1], hidden_act="gelu_pytorch_tanh",
        ),
        **_token_ids(tok),
    )
    model = T.Qwen3VLForConditionalGeneration(config)
    _redraw(model, seed)
    half = [0.5, 0.5, 0.5]
    image = dict(
        patch_size=8, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 16 * 16, "longest_edge": max_pixels},
        image_mean=half, image_std=half,
    )
    video = {
        "video_processor_type": "Qwen3VLVideoProcessor", "patch_size": 8, "merge_size": 2, "temporal_patch_size": 2,
        "size": {"shortest_edge": 16 * 16, "longest_edge": 4 * 48 * 48}, "image_mean": half, "image_std": half,
        "do_sample_frames": False,
    }
    return _save(out, model, tok, image, video)


VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"


def _fill(text: str, pad: str, replacements: list[str]) -> str:
    parts = text.split(pad)
    assert len(parts) == len(replacements) + 1, "one placeholder per item"
    return parts[0] + "".join(r + p for r, p in zip(replacements, parts[1:]))


def hf_embedding(hf: tuple, text: str, images: list, videos: list[tuple], normalize: bool = True) -> torch.Tensor:
    """transformers' pooled embedding (the last token's final hidden state, L2-normalised unless
    ``normalize`` is false), its
    prompt written the way transformers' processors write it: images through its image processor,
    each placeholder replaced by the grid's count in the text (for Qwen3-VL a video's temporal
    patches each after its ``<t seconds>`` timestamp, 24 frames a second), M-RoPE by the model's
    own ``get_rope_index``. ``videos`` are ``(pixels, grid, frames)`` (transformers' video
    processors need torchvision, which the tests do not install)."""
    model, tok, processor = hf
    config = model.config
    family = config.model_type
    text = text or (VISION_START + IMAGE_PAD + VISION_END) * len(images) + (VISION_START + VIDEO_PAD + VISION_END) * len(videos)
    kwargs: dict = {}
    if images:
        pixels = processor(images=images, return_tensors="pt")
        kwargs.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
        text = _fill(text, IMAGE_PAD, [IMAGE_PAD * int(g.prod() // 4) for g in pixels["image_grid_thw"]])
    if videos:
        grids = torch.tensor([list(g) for _, g, _ in videos])
        kwargs.update(pixel_values_videos=torch.cat([torch.as_tensor(p) for p, _, _ in videos]), video_grid_thw=grids)
        if family == "qwen3_vl":
            from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

            fills = []
            for (_, (t, h, w), frames) in videos:
                stamps = Qwen3VLProcessor._calculate_timestamps(None, list(range(frames)), 24, 2)
                fills.append("".join(f"<{s:.1f} seconds>" + VISION_START + VIDEO_PAD * (h * w // 4) + VISION_END for s in stamps))
            text = _fill(text, VIDEO_PAD, fills)
        else:
            text = _fill(text, VIDEO_PAD, [VIDEO_PAD * int(g.prod() // 4) for g in grids])
        if family == "qwen2_5_vl":
            kwargs["second_per_grid_ts"] = torch.tensor([2 / 24] * len(videos))
    input_ids = torch.tensor([tok(text)["input_ids"]])
    kwargs["mm_token_type_ids"] = ((input_ids == config.image_token_id).int() + 2 * (input_ids == config.video_token_id).int())
    with torch.no_grad():
        hidden = model.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs).last_hidden_state
    return torch.nn.functional.normalize(hidden[0, -1], dim=-1) if normalize else hidden[0, -1]
