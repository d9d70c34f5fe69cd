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


def build_classifier(
    out: Path,
    kind: str,
    num_labels: int,
    token: bool = False,
    seed: int = 0,
    init_range: float = 1.0,
    **config: object,
) -> Path:
    """A tiny sequence (or token) classifier of the BERT family, saved to ``out``.

    A large ``init_range`` keeps scores apart, so rankings and softmaxes are meaningful.
    """
    tok = wordpiece_tokenizer()
    kw = _encoder_kwargs(len(tok), init_range)
    kw.update(num_labels=num_labels, **config)
    if num_labels > 1 and "id2label" not in config:
        kw["id2label"] = {i: f"class_{i}" for i in range(num_labels)}
        kw["label2id"] = {v: k for k, v in kw["id2label"].items()}
    task = "TokenClassification" if token else "SequenceClassification"
    if kind == "bert":
        cfg = T.BertConfig(**kw, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
        model = getattr(T, f"BertFor{task}")(cfg)
    elif kind in ("roberta", "xlm-roberta"):
        prefix = "Roberta" if kind == "roberta" else "XLMRoberta"
        cfg = getattr(T, f"{prefix}Config")(**kw, max_position_embeddings=130, pad_token_id=0, type_vocab_size=1)
        model = getattr(T, f"{prefix}For{task}")(cfg)
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    model.init_weights()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
