"""A tiny jina-reranker-m0 laid out as Jina publishes it, and the publisher's modeling code as the reference.

Sources of the layout (each key below says which it follows):

- [modeling] the publisher's remote code, ``modeling.py`` of ``jinaai/jina-reranker-m0``
  (https://huggingface.co/jinaai/jina-reranker-m0/blob/main/modeling.py): ``JinaVLForRanking``
  subclasses ``Qwen2VLForConditionalGeneration``, ``score`` = ``nn.Sequential(Linear(H, H), ReLU,
  Linear(H, 1))`` (so tensors ``score.0.*``, ``score.2.*``), ``lm_head`` an ``nn.Identity`` (no
  tensor), ``score_token_id = 100``, ``LOGIT_BIAS = 2.65``, ``formatting_prompts_func``; vLLM's test
  ``tests/models/multimodal/pooling/test_jinavl_reranker.py`` writes out an earlier revision.
- [vllm] vLLM's ``vllm/model_executor/models/jina_vl.py``: its ``weight_mapper`` reads the
  original checkpoint's ``model.`` (decoder) and ``visual.`` (vision tower) prefixes and
  ``score.0.`` / ``score.2.``; its ``get_score_template`` / ``post_process_tokens`` are the prompt
  and the appended token 100; ``vllm/model_executor/models/config.py``
  (``JinaVLForSequenceClassificationConfig``) sets ``num_labels = 1`` and ``logit_bias = 2.65``.
- [qwen2-vl] the base model's ``config.json`` (``Qwen/Qwen2-VL-2B-Instruct``, which the model card
  names as the base): the flat layout transformers 4.4x wrote (decoder keys at the top level,
  ``rope_scaling`` with ``mrope_section``, ``vision_config`` with ``embed_dim``, ``in_chans``,
  ``spatial_patch_size``), its vision token ids named by their tokens, and its image processor
  (``Qwen2VLImageProcessor``: ``min_pixels`` / ``max_pixels``, CLIP mean and std).

Sizes are scaled down (hidden 64, 2 decoder layers, a 2-block vision tower of 4-pixel patches) and
the vocabulary is the tests' tiny byte-level BPE with Qwen2-VL's vision tokens; the token ids
follow from that vocabulary (published: 151652.., here their tiny ids), the score token stays 100.
Not checked against the published files (not reachable offline): whether ``config.json`` carries
``auto_map`` (kept: the model card loads the model through remote code).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers as T
from safetensors.torch import save_file
from torch import nn

from tiny_models import QWEN_VL_TOKENS, qwen_vl_tokenizer
from tiny_qwen_vl import IMAGE_PAD, _fill, _redraw

#: [modeling] ``self.score_token_id = 100`` and ``LOGIT_BIAS = 2.65``.
SCORE_TOKEN_ID = 100
LOGIT_BIAS = 2.65
VISION = "<|vision_start|><|image_pad|><|vision_end|>"
#: Pixels of the tiny image processor: 4-pixel patches merged 2x2, at most 48 x 48 pixels.
PATCH, MIN_PIXELS, MAX_PIXELS = 4, 8 * 8, 48 * 48


def _config(tok: T.PreTrainedTokenizerFast) -> dict[str, Any]:
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_VL_TOKENS}
    return {
        "architectures": ["JinaVLForRanking"],  # [modeling] [vllm] the registered name
        "auto_map": {"AutoModel": "modeling.JinaVLForRanking"},  # [modeling] remote code (see the module note)
        "model_type": "qwen2_vl",  # [vllm] served as a Qwen2-VL config
        "attention_dropout": 0.0,  # [qwen2-vl] and the keys below, scaled down
        "bos_token_id": tok.eos_token_id,
        "eos_token_id": tok.eos_token_id,
        "hidden_act": "silu",
        "hidden_size": 64,  # [modeling] the score MLP reads config.hidden_size
        "initializer_range": 0.02,
        "intermediate_size": 96,
        "max_position_embeddings": 32768,
        "max_window_layers": 2,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vocab_size": len(tok),
        "vision_config": {
            "depth": 2, "embed_dim": 32, "mlp_ratio": 2, "num_heads": 2, "in_chans": 3, "hidden_size": 64,
            "patch_size": PATCH, "spatial_merge_size": 2, "spatial_patch_size": PATCH, "temporal_patch_size": 2,
        },
    }


#: [vllm] the original checkpoint's names: transformers 5's ``model.language_model.`` is ``model.``,
#: its ``model.visual.`` is ``visual.``.
PUBLISHED_NAMES = (("model.language_model.", "model."), ("model.visual.", "visual."))


def _published(name: str) -> str:
    for new, old in PUBLISHED_NAMES:
        if name.startswith(new):
            return old + name[len(new):]
    return name


def build_jina_reranker_m0(out: Path, seed: int = 0) -> Path:
    """A tiny ``JinaVLForRanking`` checkpoint saved to ``out``: ``config.json``, ``model.safetensors``
    (``model.*``, ``visual.*``, ``score.0.*``, ``score.2.*``, no ``lm_head``), the tokenizer and
    ``preprocessor_config.json``. Every parameter is drawn again (matrices with std
    ``1.5 / sqrt(fan_in)``, norms around 1, biases around 0), so a dropped one shows in the scores."""
    tok = qwen_vl_tokenizer()
    tok.model_max_length = 32768  # [qwen2-vl] tokenizer_config.json
    config = _config(tok)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    model = JinaVLForRankingReference(T.Qwen2VLConfig(**config))
    _redraw(model, seed)
    tensors = {_published(k): v.contiguous() for k, v in model.state_dict().items() if not k.startswith("lm_head.")}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    tok.save_pretrained(out)
    T.Qwen2VLImageProcessorPil(
        patch_size=PATCH, merge_size=2, temporal_patch_size=2, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
    ).save_pretrained(out)
    return out


class JinaVLForRankingReference(T.Qwen2VLForConditionalGeneration):
    """[modeling] The publisher's ``JinaVLForRanking``, minimal: the LM head dropped, the ``score``
    MLP on the last token's final hidden state, ``sigmoid(score - LOGIT_BIAS)``."""

    def __init__(self, config: T.Qwen2VLConfig) -> None:
        config.tie_word_embeddings = False
        super().__init__(config)
        self.lm_head = nn.Identity()
        hidden = getattr(config, "hidden_size", None) or config.text_config.hidden_size
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Scores of a batch of one prompt per row, the score token already last."""
        outputs = super().forward(
            input_ids=input_ids, mm_token_type_ids=mm_token_type_ids, use_cache=False, output_hidden_states=True, **kwargs
        )
        logits = self.score(outputs.hidden_states[-1][:, -1]).squeeze(-1)
        return torch.sigmoid(logits - LOGIT_BIAS)


def formatting_prompt(query: str, doc: str, query_type: str = "text", doc_type: str = "text", prefix: str = "") -> str:
    """[modeling] ``formatting_prompts_func``: the document, then the query; an image side is its placeholder."""
    query_part = "**Query**:\n" + (VISION if query_type == "image" else query)
    doc_part = "**Document**:\n" + (VISION if doc_type == "image" else doc)
    prompt = doc_part + "\n" + query_part
    return prefix + "\n" + prompt if prefix else prompt


def load_reference(model_dir: Path) -> tuple[JinaVLForRankingReference, Any, Any]:
    """The reference model on the published checkpoint (vLLM's test maps the original names the
    same way), its tokenizer and transformers' image processor (the PIL backend)."""
    mapping = {r"^visual\.": "model.visual.", r"^model\.(?!visual\.|language_model\.)": "model.language_model."}
    model = JinaVLForRankingReference.from_pretrained(model_dir, key_mapping=mapping, dtype=torch.float32).eval()
    return model, T.AutoTokenizer.from_pretrained(model_dir), T.AutoImageProcessor.from_pretrained(model_dir, backend="pil")


def reference_score(ref: tuple, text: str, images: list) -> float:
    """[modeling] ``compute_score`` of one prompt: the text as Qwen2-VL's processor writes it (each
    ``<|image_pad|>`` repeated once per merged patch of its image, the images in the prompt's order:
    the document's before the query's), tokenized, the score token appended, the model run.
    Qwen2-VL's processor itself needs torchvision for its video processor; its text expansion is
    done here as it does it."""
    model, tok, processor = ref
    kwargs: dict[str, Any] = {}
    if images:
        pixels = processor(images=images, return_tensors="pt")
        text = _fill(text, IMAGE_PAD, [IMAGE_PAD * int(grid.prod() // 4) for grid in pixels["image_grid_thw"]])
        kwargs = dict(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
    input_ids = torch.tensor([tok(text)["input_ids"] + [SCORE_TOKEN_ID]])
    with torch.no_grad():
        score = model(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            mm_token_type_ids=(input_ids == model.config.image_token_id).int(), **kwargs,
        )
    return float(score[0])
