"""Tiny random ColQwen2 and ColPali retrievers, built with transformers' own classes and saved
with their processors, for parity tests that download nothing.

Layout: the ``-hf`` checkpoints (vidore/colqwen2-v1.0-hf, vidore/colpali-v1.3-hf) are what
transformers' ``ColQwen2ForRetrieval`` / ``ColPaliForRetrieval`` save, so ``save_pretrained`` is
their layout; the tokenizers are tiny stand-ins with the published special-token names.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tiny_models import QWEN_CORPUS, QWEN_VL_TOKENS, qwen_vl_tokenizer


def _randomise(model: torch.nn.Module, seed: int, gain: float = 1.5) -> None:
    """Draw every parameter again (matrices with std ``gain / sqrt(fan_in)``, norm weights around 1,
    biases around 0), so a dropped parameter or a misplaced image feature shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                centre = 1.0 if "norm" in name and name.endswith("weight") and "language_model" not in name else 0.0
                p.normal_(centre, 0.2)
            else:
                p.normal_(0.0, gain * p[0].numel() ** -0.5)


def build_colqwen2(out: Path, seed: int = 0, patch_size: int = 4, min_pixels: int = 8 * 8, max_pixels: int = 48 * 48) -> Path:
    """A tiny ``ColQwen2ForRetrieval`` (the tiny Qwen2-VL of ``tiny_models.build_qwen2_vl``, then a
    projection to 16 dimensions), saved to ``out`` with its ``ColQwen2Processor``: the byte-level
    BPE tokenizer with Qwen2-VL's vision tokens and a Pillow Qwen2-VL image processor."""
    tok = qwen_vl_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_VL_TOKENS}
    vlm = T.Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
        ),
        vision_config=dict(
            depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=patch_size,
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    config = T.ColQwen2Config(vlm_config=vlm, embedding_dim=16)
    model = T.ColQwen2ForRetrieval(config)
    _randomise(model, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    images = T.Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=2, temporal_patch_size=2, min_pixels=min_pixels, max_pixels=max_pixels
    )
    T.ColQwen2Processor(image_processor=images, tokenizer=tok).save_pretrained(out)
    images.save_pretrained(out)
    return out


#: Gemma's special tokens as the tiny PaliGemma tokenizer has them.
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def gemma_like_tokenizer() -> T.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Gemma's special tokens (``<pad>``, ``<eos>``, ``<bos>``) and
    no special tokens of its own added to a text, as PaliGemma's processor tokenizes (it turns
    Gemma's BOS and EOS off and writes ``<bos>`` into the prompt)."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=GEMMA_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(QWEN_CORPUS * 20, trainer)
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        model_max_length=2048, padding_side="right",
    )


def build_colpali(out: Path, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """A tiny ``ColPaliForRetrieval`` (PaliGemma: a 2-layer SigLIP vision tower without its head,
    the projector, a 2-layer Gemma decoder; then a projection to 16 dimensions), saved to ``out``
    with its ``ColPaliProcessor`` (which adds ``<image>`` and PaliGemma's location and segmentation
    tokens to the tokenizer) and a Pillow SigLIP image processor of ``image_size`` squares:
    ``(image_size / patch_size)²`` image tokens per image."""
    tok = gemma_like_tokenizer()
    seq = (image_size // patch_size) ** 2
    images = T.SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3
    )
    images.image_seq_length = seq
    processor = T.ColPaliProcessor(image_processor=images, tokenizer=tok)  # adds <image> and <loc....>/<seg...>
    vlm = T.PaliGemmaConfig(
        text_config=dict(
            model_type="gemma", vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
            patch_size=patch_size, projection_dim=64, vision_use_head=False,
        ),
        image_token_id=processor.image_token_id,
        projection_dim=64,
        hidden_size=64,
    )
    config = T.ColPaliConfig(vlm_config=vlm, embedding_dim=16)
    model = T.ColPaliForRetrieval(config)
    _randomise(model, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    images.save_pretrained(out)
    return out
