"""Tiny checkpoints laid out file for file as a published model ships them, where that layout is not
the one transformers' ``save_pretrained`` writes for the model's class.

Each builder starts from a builder of ``tiny_models`` and then rewrites what the publisher's
repository has otherwise (weight names, ``config.json``'s architecture, tokenizer templates,
sentence-transformers files), saying where each difference comes from.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, normalizers, processors

from tiny_models import build_clip, build_decoder, build_qwen

#: Qwen3-Embedding's query prompt, as its config_sentence_transformers.json and model card give it.
QWEN3_EMBEDDING_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"


def build_qwen3_embedding(out: Path, seed: int = 0) -> Path:
    """A tiny Qwen/Qwen3-Embedding-0.6B: ``config.json`` naming ``Qwen3ForCausalLM`` over a
    ``Qwen3Model``'s tensors, a tokenizer that appends ``<|endoftext|>`` to every text, and the
    sentence-transformers files (last-token pooling, Normalize, the ``query`` / ``document`` prompts).

    Sources of the layout:

    - ``architectures: ["Qwen3ForCausalLM"]``, ``model_type: qwen3``, tied embeddings: vLLM's pooling
      table lists Qwen/Qwen3-Embedding-0.6B under ``Qwen3ForCausalLM`` (docs/models.md, row 14).
    - weight names without the ``model.`` prefix and no ``lm_head``: llama.cpp's conversion of the
      published checkpoint had to allow for it (github.com/ggml-org/llama.cpp/pull/15023: "the tensor
      names are not prefixed with ``model.``").
    - the tokenizer's ``TemplateProcessing`` appending ``<|endoftext|>`` (the pad token too), with
      ``<|im_end|>`` the eos token: github.com/QwenLM/Qwen3-Embedding/issues/54 ("an EOS token is
      automatically added at the end") and issues/122 (``input_ids`` ending in 151643, the pad id;
      ``eos_token_id`` 151645), github.com/ggml-org/llama.cpp/issues/14252 (added as a later fix).
    - ``modules.json`` (Transformer, ``1_Pooling`` with ``pooling_mode_lasttoken``, ``2_Normalize``) and
      the prompts in ``config_sentence_transformers.json``: the model card's sentence-transformers usage
      (``model.encode(queries, prompt_name="query")``, last-token pooling, normalised outputs).
    """
    path = build_qwen(out, "qwen3", "lm", seed=seed)
    tensors = load_file(str(path / "model.safetensors"))
    renamed = {name.removeprefix("model."): t for name, t in tensors.items() if not name.startswith("lm_head.")}
    save_file(renamed, str(path / "model.safetensors"), metadata={"format": "pt"})

    tok = T.AutoTokenizer.from_pretrained(str(path))
    end = tok.convert_tokens_to_ids("<|endoftext|>")
    # the pair template follows the single one; the sources above show single texts only
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 <|endoftext|>:1", special_tokens=[("<|endoftext|>", end)]
    )
    tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    tok.save_pretrained(str(path))

    hidden = json.loads((path / "config.json").read_text())["hidden_size"]
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": True,
        "include_prompt": True,
    }
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (path / "2_Normalize").mkdir(exist_ok=True)
    st_config = {
        "prompts": {"query": QWEN3_EMBEDDING_QUERY_PROMPT, "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    (path / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))
    # max_seq_length sized to the tiny model's 128 positions (the published one is the model's own)
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    return path


def build_openai_clip(out: Path, seed: int = 0) -> Path:
    """A tiny CLIP as openai/clip-vit-base-patch32 ships: the text ends with ``<|endoftext|>``, the
    vocabulary's last id (``<|startoftext|>`` the one before it), which is also the pad and unknown
    token, and ``text_config`` keeps the legacy ``bos_token_id`` 0 / ``pad_token_id`` 1 /
    ``eos_token_id`` 2, so transformers pools each text at its largest token id.

    Sources of the layout: transformers' ``CLIPTokenizer`` (``<|startoftext|>`` / ``<|endoftext|>``,
    ``<|endoftext|>`` as pad and unknown token, ``bos A eos`` template) and ``CLIPTextTransformer``,
    whose ``eos_token_id == 2`` branch is there for these published configs ("the legacy
    configuration ... eos_token_id was incorrect"); vLLM's ``CLIPModel`` row names this checkpoint.
    The weights are :func:`tiny_models.build_clip`'s, with two token-embedding rows added.
    """
    path = build_clip(out, seed=seed)
    tok = T.AutoTokenizer.from_pretrained(str(path))
    tok.add_special_tokens({"additional_special_tokens": ["<|startoftext|>", "<|endoftext|>"]})
    start, end = tok.convert_tokens_to_ids("<|startoftext|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        pair="<|startoftext|> $A <|endoftext|> <|endoftext|> $B <|endoftext|>",
        special_tokens=[("<|startoftext|>", start), ("<|endoftext|>", end)],
    )
    tok.add_special_tokens({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    tok.save_pretrained(str(path))

    file = path / "model.safetensors"
    tensors = load_file(str(file))
    table = tensors["text_model.embeddings.token_embedding.weight"]
    extra = torch.randn(2, table.shape[1], generator=torch.Generator().manual_seed(seed + 1))
    tensors["text_model.embeddings.token_embedding.weight"] = torch.cat([table, extra])
    save_file(tensors, str(file), metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["text_config"].update(vocab_size=end + 1, bos_token_id=0, pad_token_id=1, eos_token_id=2)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def mistral_sentencepiece_tokenizer() -> T.PreTrainedTokenizerFast:
    """A Llama/Mistral-style SentencePiece BPE (a ``▁`` before the text, spaces as ``▁``, byte
    fallback: a newline is ``<0x0A>``), whose pieces for GritLM's markers are Mistral's: ``▁<``
    at the start of the text, ``<`` elsewhere, ``|``, ``user``, ``embed``, ``>``."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyz", "<", "|", ">", ",", ".", "?", "▁<", "em", "emb", "embe", "embed", "us", "use", "user"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "<"), ("e", "m"), ("em", "b"), ("emb", "e"), ("embe", "d"), ("u", "s"), ("us", "e"), ("use", "r")]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return T.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")


def build_gritlm(out: Path, seed: int = 3) -> Path:
    """A tiny Mistral causal LM saved as parasail-ai/GritLM-7B-vllm is: ``architectures: ["GritLM"]``,
    ``model_type: mistral`` (with its sliding window), Mistral's SentencePiece pieces, 2048 positions
    (source: vLLM's gritlm.py, which reads that name and finds ``<|embed|>`` from those pieces)."""
    path = build_decoder(out, "mistral", "lm", seed=seed, sliding_window=4, max_position_embeddings=2048)
    tok = mistral_sentencepiece_tokenizer()
    tok.save_pretrained(path)
    raw = json.loads((path / "config.json").read_text())
    raw.update(architectures=["GritLM"], vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=2)
    (path / "config.json").write_text(json.dumps(raw))
    # the tiny model's embedding table is the byte-level tokenizer's: redraw it for this vocabulary
    tensors = load_file(path / "model.safetensors")
    g = torch.Generator().manual_seed(5)
    hidden = tensors["model.embed_tokens.weight"].shape[1]
    tensors["model.embed_tokens.weight"] = torch.randn(len(tok), hidden, generator=g) * 0.2
    tensors.pop("lm_head.weight", None)
    save_file(tensors, path / "model.safetensors")
    return path
