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
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
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
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
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


def build_modernbert(
    out: Path,
    task: str,
    num_labels: int = 3,
    seed: int = 0,
    init_range: float = 0.5,
    **config: object,
) -> Path:
    """A tiny ModernBERT for ``task`` (``embed``, ``classify`` or ``token_classify``), saved to ``out``.

    ``embed`` builds a ``ModernBertModel``, the others ``ModernBertFor{Sequence,Token}Classification``
    with ``num_labels``. Four layers, global attention every second one and an 8-token local
    window (4 on each side) by default, so inputs longer than 5 tokens see local attention at
    work. LayerNorm weights and biases are randomised too: at their 1/0 init a dropped one would
    go unnoticed.
    """
    tok = wordpiece_tokenizer()
    kw = _encoder_kwargs(len(tok), init_range)
    kw.update(
        num_hidden_layers=4,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        cls_token_id=tok.cls_token_id,
        sep_token_id=tok.sep_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        global_attn_every_n_layers=2,
        local_attention=8,
    )
    if task != "embed":
        kw.update(
            num_labels=num_labels,
            id2label={i: f"class_{i}" for i in range(num_labels)},
            label2id={f"class_{i}": i for i in range(num_labels)},
        )
    kw.update(config)
    classes = {
        "embed": T.ModernBertModel,
        "classify": T.ModernBertForSequenceClassification,
        "token_classify": T.ModernBertForTokenClassification,
    }
    if task not in classes:
        raise ValueError(task)
    # Seeded before construction: transformers 5 initialises there, and init_weights() then keeps it.
    torch.manual_seed(seed)
    model = classes[task](T.ModernBertConfig(**kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.5)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
