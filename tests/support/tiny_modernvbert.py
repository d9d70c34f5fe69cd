"""A tiny random ColModernVBERT retriever (and its ModernVBERT backbone), built with transformers'
own classes and saved with its processor, for parity tests that download nothing.

Layout, as published (ModernVBERT/colmodernvbert-merged, ModernVBERT/modernvbert):
- config: ``ColModernVBertConfig`` (``model_type: colmodernvbert``, ``architectures:
  [ColModernVBertForRetrieval]``, ``embedding_dim``, a ``vlm_config`` of ``model_type: modernvbert``
  holding a ``modernbert`` ``text_config``, a ``siglip_vision_model`` ``vision_config``,
  ``pixel_shuffle_factor`` and ``image_token_id``): transformers 5.24's
  models/colmodernvbert/configuration_colmodernvbert.py and models/modernvbert/configuration_modernvbert.py.
  The published sizes (``image_token_id`` 50407, ``pixel_shuffle_factor`` 4, 512-pixel tiles of
  16-pixel patches: 64 ``<image>`` tokens a tile) are those defaults and vLLM's reading of the merged
  checkpoint (github.com/vllm-project/vllm, vllm/transformers_utils/configs/colmodernvbert.py); the
  tiny model keeps the keys and shrinks the sizes (32-pixel tiles of 4-pixel patches, factor 2: 16).
- weights: ``vlm.vision_model.*`` (SigLIP's vision tower; its unused head saved too),
  ``vlm.connector.modality_projection.weight`` (no bias), ``vlm.text_model.*`` (ModernBERT),
  ``embedding_proj_layer.*``: what transformers' ``ColModernVBertForRetrieval`` saves
  (modeling_colmodernvbert.py, modeling_modernvbert.py). The merged checkpoint's own names
  (``model.vision_model.vision_model.*``, ``model.connector.modality_projection.*``,
  ``model.text_model.*``, ``model.custom_text_proj.*``) are those vLLM's weights mapper reads
  (vllm/model_executor/models/colmodernvbert.py); the test renames the tiny checkpoint's to them.
- processor: transformers' ``ColModernVBertProcessor`` (processing_colmodernvbert.py) over an
  Idefics3 image processor (Lanczos resizes, tiles of ``max_image_size``): the special tokens
  ``<fake_token_around_image>``, ``<image>``, ``<end_of_utterance>``, ``<global-img>``,
  ``<row_{r}_col_{c}>`` (up to 6×6), the query augmentation (ten ``<end_of_utterance>``) and the
  visual prompt ``<|begin_of_text|>User:<image>Describe the image.<end_of_utterance>\\nAssistant:``
  are the processor's (illuin-tech/colpali's colpali_engine ColModernVBertProcessor writes the same).
  The tokenizer is a tiny WordPiece stand-in with ModernBERT's ``[CLS] … [SEP]`` template.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T

from tiny_colretrieval import _randomise
from tiny_models import wordpiece_tokenizer

#: The tokens the published tokenizer carries for the processor (processing_colmodernvbert.py).
PROCESSOR_TOKENS = ["<|begin_of_text|>", "<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]


def build_colmodernvbert(
    out: Path, seed: int = 0, image_size: int = 32, patch_size: int = 4, pixel_shuffle_factor: int = 2,
    longest_edge: int = 80, splitting: bool = True,
) -> Path:
    """A tiny ``ColModernVBertForRetrieval`` saved to ``out`` with its ``ColModernVBertProcessor``:
    a 2-layer SigLIP tower over ``image_size`` tiles of ``patch_size`` patches, the pixel-shuffle
    connector (``pixel_shuffle_factor``), a 3-layer ModernBERT (global attention every second layer,
    a 4-token local window), a projection to 16 dimensions. Images are resized to ``longest_edge``
    and split into ``image_size`` tiles (``splitting``), ``(image_size / patch_size / factor)²``
    ``<image>`` tokens per tile."""
    tok = wordpiece_tokenizer(model_max_length=4096, lowercase=False)
    tok.add_special_tokens({"additional_special_tokens": PROCESSOR_TOKENS})
    seq = (image_size // patch_size) ** 2 // pixel_shuffle_factor**2
    images = T.Idefics3ImageProcessorPil(
        size={"longest_edge": longest_edge}, max_image_size={"longest_edge": image_size},
        do_image_splitting=splitting, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    processor = T.ColModernVBertProcessor(image_processor=images, tokenizer=tok, image_seq_len=seq)  # adds <image> & co
    vlm = T.ModernVBertConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=4096, global_attn_every_n_layers=2, local_attention=4,
            pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
            bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
        ),
        vision_config=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
            patch_size=patch_size,
        ),
        image_token_id=processor.image_token_id,
        pixel_shuffle_factor=pixel_shuffle_factor,
    )
    model = T.ColModernVBertForRetrieval(T.ColModernVBertConfig(vlm_config=vlm, embedding_dim=16))
    _randomise(model, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_modernvbert(source: Path, out: Path) -> Path:
    """The backbone of the retriever at ``source`` as a ``ModernVBertModel`` checkpoint (its
    ``vlm_config``, the ``vlm.`` tensors without the prefix: the published ModernVBERT/modernvbert
    layout under ``model.``), saved to ``out`` with the same processor files."""
    retriever = T.ColModernVBertForRetrieval.from_pretrained(source, dtype=torch.float32)
    backbone = retriever.vlm
    out.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(out)
    T.ColModernVBertProcessor.from_pretrained(source).save_pretrained(out)
    return out
