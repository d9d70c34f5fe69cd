"""Tiny random models built offline with transformers' own config classes and save_pretrained.

The WordPiece vocabulary is hand-built so token ids are the same on every run.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

CORPUS = [
    "paris is the capital of france",
    "the quick brown fox jumps over the lazy dog",
    "what is the capital of germany",
    "berlin is the capital of germany",
    "hello world",
    "query passage instruction represent this sentence for searching",
]


def wordpiece_tokenizer(model_max_length: int = 128, lowercase: bool = True) -> T.PreTrainedTokenizerFast:
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = sorted({w for line in CORPUS for w in line.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]
    vocab += list(chars + ".,!?'-:") + ["##" + c for c in chars] + words
    tk = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tk.decoder = decoders.WordPiece()
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def _encoder_kwargs(vocab_size: int, init_range: float) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=init_range,
    )


def build_encoder(out: Path, kind: str, seed: int = 0, init_range: float = 0.5, lowercase: bool = True) -> Path:
    """A tiny ``BertModel`` / ``RobertaModel`` / ``XLMRobertaModel`` with a tokenizer, saved to ``out``."""
    tok = wordpiece_tokenizer(lowercase=lowercase)
    kw = _encoder_kwargs(len(tok), init_range)
    if kind == "bert":
        model = T.BertModel(T.BertConfig(**kw, max_position_embeddings=128, pad_token_id=tok.pad_token_id), add_pooling_layer=False)
    elif kind == "roberta":
        model = T.RobertaModel(T.RobertaConfig(**kw, max_position_embeddings=130, pad_token_id=0, type_vocab_size=1), add_pooling_layer=False)
    elif kind == "xlm-roberta":
        model = T.XLMRobertaModel(T.XLMRobertaConfig(**kw, max_position_embeddings=130, pad_token_id=0, type_vocab_size=1), add_pooling_layer=False)
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    model.init_weights()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
