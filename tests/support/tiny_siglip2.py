"""A tiny SigLIP 2 NaFlex checkpoint (``Siglip2Model``) laid out as google/siglip2-*-naflex publish theirs.

Sources of the layout:

- ``config.json``: ``architectures: ["Siglip2Model"]``, ``model_type: "siglip2"``, a ``text_config``
  (``siglip2_text_model``: ``vocab_size``, ``max_position_embeddings`` 64, ``projection_size``,
  ``hidden_act: gelu_pytorch_tanh``, ``layer_norm_eps`` 1e-6) and a ``vision_config``
  (``siglip2_vision_model``: ``num_patches`` 256, ``patch_size`` 16, ``num_channels`` 3,
  ``vision_use_head: true``, no ``image_size``), as transformers' ``Siglip2Config`` defaults for
  google/siglip2-base-patch16-naflex (transformers/models/siglip2/configuration_siglip2.py) and the
  checkpoint's config.json quoted in a public port's tests (a Rust ``Siglip2NaflexConfig`` test,
  ``BASE_CONFIG_JSON``); sizes shrunk here: 32 wide, a 4x4 position grid of 4-pixel patches.
- weights: transformers' ``Siglip2Model`` names (``vision_model.embeddings.patch_embedding`` a
  linear layer over flattened patches, ``vision_model.head.probe``, ``text_model.head``, ...).
- ``preprocessor_config.json``: ``Siglip2ImageProcessor`` with ``patch_size`` and
  ``max_num_patches`` (256 published; 24 here, more than the 16 positions, so grids are resized
  up and down), bilinear resize keeping the aspect ratio, mean and std 0.5
  (transformers/models/siglip2/image_processing_pil_siglip2.py).
- tokenizer: ``Siglip2Tokenizer`` (Gemma's BPE with SigLIP 2's lower-casing), special tokens
  ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4 as its defaults
  (transformers/models/siglip2/tokenization_siglip2.py); the vocabulary here is single
  characters, with no merges.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
import transformers as T

from tiny_models import redraw_siglip


def siglip2_tokenizer(model_max_length: int = 64) -> T.PreTrainedTokenizerBase:
    """``Siglip2Tokenizer`` over the Gemma special tokens and single characters."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    pieces = ["▁"] + list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = {token: i for i, token in enumerate(specials + pieces)}
    return T.Siglip2Tokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def build_siglip2(out: Path, seed: int = 0, gain: float = 2.0, max_num_patches: int = 24) -> Path:
    """Write the tiny checkpoint to ``out``, every parameter drawn again (:func:`redraw_siglip`) so
    a dropped or misplaced parameter shows."""
    tok = siglip2_tokenizer()
    # What both towers of the published checkpoints share (their activation and LayerNorm epsilon), shrunk.
    tower = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
    )  # fmt: skip
    config = T.Siglip2Config(
        text_config=dict(
            tower, vocab_size=len(tok), max_position_embeddings=64, projection_size=32,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        ),  # fmt: skip
        vision_config=dict(tower, num_channels=3, patch_size=4, num_patches=16, vision_use_head=True),
    )
    config.architectures = ["Siglip2Model"]
    torch.manual_seed(seed)
    model = T.Siglip2Model(config)
    redraw_siglip(model, gain)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    T.Siglip2ImageProcessorPil(patch_size=4, max_num_patches=max_num_patches).save_pretrained(out)
    return out
