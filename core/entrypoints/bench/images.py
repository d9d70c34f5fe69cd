"""Workload I: image embeddings of a vision-language model, poolkit against transformers' own model.

Both sides embed the same pages (random photographs' worth of pixels at ``--image-size``, one
image per prompt with the model's image-only prompt) with the same weights and dtype, interleaved
for several rounds: poolkit through ``LLM.embed`` (its own pre-processing included), transformers
through its processor and its model's forward on a padded batch, last token pooled. The report
gives images per second of each, their ratio, and the least cosine between the two sides'
embeddings (a speed figure only counts when the results agree).

A model is a path, or a preset of an exact published configuration with seeded random weights
(:data:`IMAGE_PRESETS`, built once under ``$POOLKIT_BENCH_CACHE`` in bfloat16).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...config.settings import EngineArgs
from .measure import _interleave, _median_ratio

#: Vision-language configurations as published (their transformers config fields, and the image
#: processor's where it is not Qwen2-VL's default), for speed-only runs with random weights:
#: ``qwen2-vl-2b`` is the backbone of ColQwen2 and DSE-Qwen2, ``qwen3-vl-2b`` Qwen3-VL-Embedding-2B's.
IMAGE_PRESETS: dict[str, dict[str, Any]] = {
    "qwen2-vl-2b": {
        "model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"],
        "text_config": {
            "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
            "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            "tie_word_embeddings": True,
        },
        "vision_config": {
            "depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "hidden_act": "quick_gelu",
        },
    },
    "qwen3-vl-2b": {
        "model_type": "qwen3_vl", "architectures": ["Qwen3VLForConditionalGeneration"],
        "processor": {"patch_size": 16, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                      "size": {"shortest_edge": 65536, "longest_edge": 16777216}},
        "text_config": {
            "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
            "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                "mrope_interleaved": True},
        },
        "vision_config": {
            "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "out_hidden_size": 2048,
            "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [5, 11, 17], "hidden_act": "gelu_pytorch_tanh",
        },
    },
    "tiny-vl": {  # the smoke run's: seconds, not minutes
        "model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"],
        "text_config": {
            "vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        },
        "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14},
    },
}
#: The vision tokens a preset's tokenizer gets (Qwen2-VL's), by the config field that names each one's id.
_VISION_TOKENS = {
    "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>",
    "image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
}


def resolve_image_model(model: str) -> tuple[str, str]:
    """The directory of the model and what its weights are (a preset is built once)."""
    if model not in IMAGE_PRESETS:
        return model, "real"
    root = Path(os.environ.get("POOLKIT_BENCH_CACHE") or Path.home() / ".cache" / "poolkit" / "bench") / model
    if not (root / "model.safetensors").is_file() and not (root / "model.safetensors.index.json").is_file():
        _build(model, root)
    return str(root), f"random, with {model}'s configuration (speed only)"


def _build(name: str, root: Path) -> None:
    import shutil

    import torch
    import transformers

    from ...config.settings import DEFAULT_MODEL
    from ...plugins.manager import get_manager

    # all-MiniLM's tokenizer with Qwen2-VL's vision tokens added: the config names the ids they get
    tok = transformers.AutoTokenizer.from_pretrained(get_manager().resolve_model(DEFAULT_MODEL))
    tok.add_tokens(list(_VISION_TOKENS.values()), special_tokens=True)
    ids = {name: tok.convert_tokens_to_ids(text) for name, text in _VISION_TOKENS.items()}
    fields = dict(IMAGE_PRESETS[name])
    processor = fields.pop("processor", {})
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields, **ids)
    torch.manual_seed(0)
    model = getattr(transformers, fields["architectures"][0])(config).to(torch.bfloat16)
    tmp = root.with_name(root.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    transformers.Qwen2VLImageProcessorPil(**processor).save_pretrained(tmp)
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)


def pages(n: int, size: int, seed: int = 0) -> list[Any]:
    """``n`` RGB images of ``size × size`` pixels: smooth gradients with noise, as scanned pages
    and photographs are neither flat nor white noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    out = []
    for _ in range(n):
        base = ramp[None, :, None] * rng.uniform(0.2, 1, 3) + ramp[:, None, None] * rng.uniform(0, 0.5, 3)
        noisy = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(noisy, "RGB"))
    return out


def run_image_bench(args: EngineArgs, images: int, size: int, rounds: int) -> dict[str, Any]:
    """Workload I on the model ``args`` load: poolkit's and transformers' images/s, ratio and least cosine."""
    import torch
    import transformers
    from poolkit import LLM

    path, weights = resolve_image_model(args.model)
    llm = LLM.from_args(args.model_copy(update={"model": path}))
    dtype = llm.model.dtype
    arch = llm.model.architecture
    if not llm.renderer.reads.media:
        from ...contracts.errors import InvalidRequest

        raise InvalidRequest(f"workload I needs a model that reads text and images; '{args.model}' does not")
    hf_class = getattr(transformers, type(arch).__name__)
    peer = hf_class.from_pretrained(path, dtype=dtype).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(path)
    tok = llm.get_tokenizer()
    token = int(llm.model.hf_config.image_token_id)
    prompt = "<|vision_start|><|image_pad|><|vision_end|>"
    batch = pages(images, size)

    last: dict[str, torch.Tensor] = {}

    def ours() -> None:
        out = llm.embed([{"prompt": prompt, "multi_modal_data": {"image": image}} for image in batch])
        last["ours"] = torch.tensor([o.outputs.embedding for o in out])
        last["tokens"] = len(out[0].prompt_token_ids)

    def theirs() -> None:
        pixels = processor(images=batch, return_tensors="pt")
        counts = (pixels["image_grid_thw"].prod(-1) // 4).tolist()
        base = tok(prompt)["input_ids"]
        rows = [[x for t in base for x in ([t] * n if t == token else [t])] for n in counts]
        width = max(map(len, rows))
        ids = torch.tensor([[tok.pad_token_id or 0] * (width - len(r)) + r for r in rows])  # left padding: last token last
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.inference_mode():
            hidden = peer.model(
                input_ids=ids, attention_mask=mask, pixel_values=pixels["pixel_values"].to(dtype),
                image_grid_thw=pixels["image_grid_thw"], mm_token_type_ids=(ids == token).int(),
            ).last_hidden_state
        last["theirs"] = torch.nn.functional.normalize(hidden[:, -1].float(), dim=-1)

    started = time.perf_counter()
    timings = _interleave(rounds, ours, theirs, cold=(llm,))
    cos = torch.nn.functional.cosine_similarity(last["ours"], last["theirs"], dim=-1)
    median = lambda side: float(np.median([r[side] for r in timings]))  # noqa: E731
    return {
        "workload": "I",
        "model": args.model,
        "weights": weights,
        "dtype": str(dtype).removeprefix("torch."),
        "images": images,
        "image_size": size,
        "tokens_per_image": last["tokens"],
        "poolkit_images_per_s": images / median("poolkit_s"),
        "transformers_images_per_s": images / median("peer_s"),
        "speedup": _median_ratio(timings),
        "least_cosine": float(cos.min()),
        "rounds": rounds,
        "seconds": time.perf_counter() - started,
    }


def format_image_bench(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    return (
        f"workload I: {report['images']} images of {report['image_size']}x{report['image_size']} "
        f"({report['tokens_per_image']} tokens each), {report['model']} ({report['weights']}), {report['dtype']}\n"
        f"  poolkit       {report['poolkit_images_per_s']:8.2f} images/s\n"
        f"  transformers  {report['transformers_images_per_s']:8.2f} images/s\n"
        f"  poolkit / transformers: {report['speedup']:.2f}x   least cosine: {report['least_cosine']:.5f}"
    )
