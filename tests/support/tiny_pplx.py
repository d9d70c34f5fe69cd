"""A tiny perplexity-ai/pplx-embed-v1, laid out as the publisher ships it (the 0.6B and 4B repositories
share the layout; only the sizes differ).

Sources of the layout (each key below says which):
- [pin] a public recipe test that pins the published files at revisions 2c4d510d (0.6B) and 06456497
  (4B) and reads them with ``hf_hub_download``: ``config.json`` (``architectures`` ["PPLXQwen3Model"],
  ``model_type`` "bidirectional_pplx_qwen3", ``use_bidirectional_attention`` true, ``tie_word_embeddings``
  true, ``dtype`` "float32", ``max_position_embeddings`` 32768, ``hidden_size`` 1024 / 2560,
  ``num_hidden_layers`` 28 / 36); ``modules.json`` (the module types, in order:
  ``sentence_transformers.models.Transformer``, ``sentence_transformers.models.Pooling``,
  ``st_quantize.FlexibleQuantizer``); ``1_Pooling/config.json`` (``pooling_mode_mean_tokens`` true,
  ``pooling_mode_lasttoken`` and ``pooling_mode_cls_token`` false, ``word_embedding_dimension`` the
  hidden size); ``tokenizer_config.json`` (no chat template, ``bos_token`` null, ``model_max_length``
  131072); the tokenizer (Qwen's special tokens, ``<|endoftext|>`` 151643, no post-processor: nothing
  is added to a text); no ``sentence_bert_config.json``. A study of the same revisions adds: no
  ``config_sentence_transformers.json``, no Dense module.
- [code] the publisher's Python files as public copies give them: ``configuration.py`` (a
  ``Qwen3Config`` under ``model_type`` "bidirectional_pplx_qwen3", nothing else), ``modeling.py``
  (``PPLXQwen3Model(Qwen3Model)``, so the tensors are ``Qwen3Model``'s, without a prefix),
  ``st_quantize.py`` (``FlexibleQuantizer``, int8 by default).
- [ports] ports that read the published files: ``auto_map`` {"AutoConfig": "configuration.PPLXQwen3Config",
  "AutoModel": "modeling.PPLXQwen3Model"} (pplx-mlx's ``embeddings.py`` tells the model from its
  contextual sibling by that ``AutoModel``; a test fixture of another port writes the same map);
  the tensor names ``embed_tokens.weight``, ``layers.N.self_attn.{q,k,v,o}_proj.weight``,
  ``layers.N.self_attn.{q,k}_norm.weight``, ``layers.N.mlp.{gate,up,down}_proj.weight``,
  ``norm.weight``, all float32 (``pplx_embed.c``, a C port of the 0.6B model); ``head_dim`` 128 with
  16 query heads of a 1024-wide model, 8 key/value heads, ``rope_theta`` 1000000, ``rms_norm_eps``
  1e-6, ``intermediate_size`` 3072, ``vocab_size`` 151936 (the same port, and a geometry another port
  says it resolved from the live ``config.json``).
- [qwen3] transformers' ``Qwen3Config``: every other key, as ``save_pretrained`` writes it (the
  published file is a transformers 5 save: it says ``dtype``, not ``torch_dtype``).

Not confirmed from a source: the ``name``, ``path`` and ``idx`` of each ``modules.json`` entry and the
quantizer's ``"kwargs": ["quantization"]`` (sentence-transformers' own conventions; the kwargs as a
port's fixture writes them); the Pooling config's other keys (sentence-transformers' defaults); the
tokenizer's ``padding_side`` (right, transformers' default). The Python files stand for the
publisher's and raise if run: poolkit must never run them.

The sizes are tiny (hidden 32, 2 layers, 4 query heads of 16 wide sharing 2 key/value heads, so
``head_dim`` is not ``hidden_size / num_attention_heads``, as published); the rest is as published.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T
from tiny_models import bytelevel_bpe_tokenizer

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INNER = 32, 2, 4, 2, 16, 64
#: [pin] The types of the published ``modules.json``, in order.
MODULE_TYPES = ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling", "st_quantize.FlexibleQuantizer"]
#: The publisher's code files [code]; each stands in here as a file that fails if it is ever run.
REMOTE_CODE = ("configuration.py", "modeling.py", "st_quantize.py")


def qwen3_keys(vocab_size: int, pad_token_id: int) -> dict:
    """The Qwen3 keys of the published ``config.json``, at tiny sizes."""
    return {
        "attention_bias": False,  # [qwen3]
        "bos_token_id": pad_token_id,  # [qwen3] Qwen3-Base: <|endoftext|> (the tokenizer adds no BOS [pin])
        "eos_token_id": pad_token_id,  # [qwen3]
        "head_dim": HEAD_DIM,  # [ports] 128 published
        "hidden_act": "silu",  # [qwen3]
        "hidden_size": HIDDEN,  # [pin] 1024 / 2560 published
        "initializer_range": 0.2,  # [qwen3] 0.02; only the random draw reads it, wider here so that attention is not uniform
        "intermediate_size": INNER,  # [ports] 3072 published (0.6B)
        "max_position_embeddings": 128,  # [pin] 32768 published
        "num_attention_heads": HEADS,  # [ports] 16 published (0.6B)
        "num_hidden_layers": LAYERS,  # [pin] 28 / 36 published
        "num_key_value_heads": KV_HEADS,  # [ports] 8 published
        "rms_norm_eps": 1e-06,  # [ports]
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},  # [ports] rope_theta; [qwen3] the key
        "tie_word_embeddings": True,  # [pin]
        "use_cache": False,  # [ports] the contextual sibling's config checked by a port; a test fixture of another
        "use_sliding_window": False,  # [qwen3]
        "vocab_size": vocab_size,  # [ports] 151936 published
    }


def build_pplx(out: Path, seed: int = 0, **overrides: object) -> Path:
    """A tiny pplx-embed-v1 in ``out``: ``config.json``, the bare Qwen3 body in ``model.safetensors``
    (float32), the tokenizer, the sentence-transformers files and the publisher's code files (as
    stand-ins that fail when run). ``overrides`` replace keys of ``config.json`` as written.

    RMSNorm weights are drawn around 1 (not transformers' ones), so that a dropped norm shows."""
    tok = bytelevel_bpe_tokenizer(padding_side="right")  # [pin] Qwen's specials, nothing added to a text
    tok.model_max_length = 131072  # [pin]
    keys = qwen3_keys(len(tok), tok.pad_token_id)
    torch.manual_seed(seed)  # transformers 5 initialises in the constructor
    body = T.Qwen3Model(T.Qwen3Config(**keys))
    with torch.no_grad():
        for name, p in body.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0, 0.5)
    out.mkdir(parents=True, exist_ok=True)
    body.save_pretrained(out)  # [code] [ports] Qwen3Model's tensors, no prefix, float32
    tok.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.update(
        architectures=["PPLXQwen3Model"],  # [pin]
        auto_map={"AutoConfig": "configuration.PPLXQwen3Config", "AutoModel": "modeling.PPLXQwen3Model"},  # [ports]
        model_type="bidirectional_pplx_qwen3",  # [pin] [code]
        use_bidirectional_attention=True,  # [pin]
        dtype="float32",  # [pin]
    )
    config.update(overrides)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    modules = [{"idx": 0, "name": "0", "path": "", "type": MODULE_TYPES[0]},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": MODULE_TYPES[1]},
               {"idx": 2, "name": "2", "path": "", "type": MODULE_TYPES[2], "kwargs": ["quantization"]}]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": HIDDEN,  # [pin] the hidden size
        "pooling_mode_cls_token": False,  # [pin]
        "pooling_mode_mean_tokens": True,  # [pin]
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,  # [pin]
        "include_prompt": True,
    }, indent=4))
    for name in REMOTE_CODE:
        (out / name).write_text(f'raise RuntimeError("the publisher\'s {name} ran; poolkit never runs code shipped with a model")\n')
    return out
