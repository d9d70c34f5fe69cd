"""Tiny random models built offline with transformers' own config classes and save_pretrained.

The WordPiece vocabulary is hand-built so token ids are the same on every run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "paris is the capital of france",
    "the quick brown fox jumps over the lazy dog",
    "what is the capital of germany",
    "berlin is the capital of germany",
    "hello world",
    "query passage instruction represent this sentence for searching",
]


#: What BERT-style tokenizers hand the model; transformers 5 drops ``token_type_ids`` from a
#: tokenizer built from a ``tokenizers`` object unless it is told.
BERT_INPUT_NAMES = ["input_ids", "token_type_ids", "attention_mask"]


def give_segment_ids(out: Path) -> None:
    """Make the saved tokenizer hand out ``token_type_ids``, as BertTokenizer does."""
    tok_config = out / "tokenizer_config.json"
    saved = json.loads(tok_config.read_text())
    saved["model_input_names"] = BERT_INPUT_NAMES
    tok_config.write_text(json.dumps(saved, indent=2))


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


def build_encoder(
    out: Path, kind: str, seed: int = 0, init_range: float = 0.5, lowercase: bool = True, max_len: int = 128
) -> Path:
    """A tiny ``BertModel`` / ``RobertaModel`` / ``XLMRobertaModel`` with a tokenizer, saved to ``out``;
    ``max_len`` tokens of context (position embeddings and the tokenizer's ``model_max_length``)."""
    tok = wordpiece_tokenizer(model_max_length=max_len, lowercase=lowercase)
    kw = _encoder_kwargs(len(tok), init_range)
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
    if kind == "bert":
        model = T.BertModel(T.BertConfig(**kw, max_position_embeddings=max_len, pad_token_id=tok.pad_token_id), add_pooling_layer=False)
    elif kind == "roberta":
        model = T.RobertaModel(T.RobertaConfig(**kw, max_position_embeddings=max_len + 2, pad_token_id=0, type_vocab_size=1), add_pooling_layer=False)
    elif kind == "xlm-roberta":
        model = T.XLMRobertaModel(T.XLMRobertaConfig(**kw, max_position_embeddings=max_len + 2, pad_token_id=0, type_vocab_size=1), add_pooling_layer=False)
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    model.init_weights()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if kind == "bert":
        give_segment_ids(out)
    return out


def build_classifier(
    out: Path,
    kind: str,
    num_labels: int,
    token: bool = False,
    seed: int = 0,
    init_range: float = 1.0,
    max_len: int = 128,
    **config: object,
) -> Path:
    """A tiny sequence (or token) classifier of the BERT family, saved to ``out``; ``max_len``
    tokens of context.

    A large ``init_range`` keeps scores apart, so rankings and softmaxes are meaningful.
    """
    tok = wordpiece_tokenizer(model_max_length=max_len)
    kw = _encoder_kwargs(len(tok), init_range)
    kw.update(num_labels=num_labels, **config)
    if num_labels > 1 and "id2label" not in config:
        kw["id2label"] = {i: f"class_{i}" for i in range(num_labels)}
        kw["label2id"] = {v: k for k, v in kw["id2label"].items()}
    task = "TokenClassification" if token else "SequenceClassification"
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
    if kind == "bert":
        cfg = T.BertConfig(**kw, max_position_embeddings=max_len, pad_token_id=tok.pad_token_id)
        model = getattr(T, f"BertFor{task}")(cfg)
    elif kind in ("roberta", "xlm-roberta"):
        prefix = "Roberta" if kind == "roberta" else "XLMRoberta"
        cfg = getattr(T, f"{prefix}Config")(**kw, max_position_embeddings=max_len + 2, pad_token_id=0, type_vocab_size=1)
        model = getattr(T, f"{prefix}For{task}")(cfg)
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    model.init_weights()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if kind == "bert":
        give_segment_ids(out)
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


#: Texts the byte-level BPE is trained on; "yes" and "no" alone on a line become single tokens.
QWEN_CORPUS = CORPUS + ["yes", "no", "is paris the capital of france? yes", "is berlin the capital of france? no"]


def bytelevel_bpe_tokenizer(eos: str = "<|endoftext|>", vocab_size: int = 400) -> T.PreTrainedTokenizerFast:
    """A Qwen-style byte-level BPE tokenizer trained on ``QWEN_CORPUS``, padding on the left."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos, "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(QWEN_CORPUS * 20, trainer)
    for word in ("yes", "no"):
        if tk.token_to_id(word) is None:
            raise RuntimeError(f"the tiny BPE vocabulary has no single token '{word}'")
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token=eos, pad_token=eos, model_max_length=128, padding_side="left"
    )


def build_qwen(
    out: Path,
    family: str,
    task: str = "embed",
    num_labels: int = 1,
    seed: int = 0,
    init_range: float = 0.2,
    **config: object,
) -> Path:
    """A tiny Qwen2 / Qwen3 (``family``) for ``task``, saved to ``out`` with a byte-level BPE tokenizer.

    ``task``: ``embed`` (``*Model``), ``lm`` (``*ForCausalLM``), ``classify``
    (``*ForSequenceClassification``) or ``token_classify``. Hidden size 32, 4 query heads sharing 2
    key/value heads, so grouped-query attention is exercised; RMSNorm weights and biases are
    randomised too, so a dropped one would show.
    """
    tok = bytelevel_bpe_tokenizer()
    kw = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=init_range,
    )
    if family == "qwen3":
        kw["head_dim"] = 8  # Qwen2 configs must not get one
    if task in ("classify", "token_classify"):
        kw.update(num_labels=num_labels)
        if num_labels > 1:
            kw.update(id2label={i: f"class_{i}" for i in range(num_labels)}, label2id={f"class_{i}": i for i in range(num_labels)})
    kw.update(config)
    prefix = {"qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
    suffix = {"embed": "Model", "lm": "ForCausalLM", "classify": "ForSequenceClassification", "token_classify": "ForTokenClassification"}[task]
    # Seeded before construction: transformers 5 initialises there.
    torch.manual_seed(seed)
    model = getattr(T, prefix + suffix)(getattr(T, f"{prefix}Config")(**kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.5)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _transformers_config(family: str, vocab_size: int, pad_token_id: int, init_range: float) -> dict:
    if family == "DistilBert":
        return dict(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128,
                    pad_token_id=pad_token_id, initializer_range=init_range)
    if family == "Electra":
        # embedding_size != hidden_size: ELECTRA's embeddings_project is exercised too
        return dict(_encoder_kwargs(vocab_size, init_range), embedding_size=16, max_position_embeddings=128,
                    pad_token_id=pad_token_id)
    if family == "Llama":
        return dict(_encoder_kwargs(vocab_size, init_range), num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=128, pad_token_id=pad_token_id)
    if family == "Camembert":  # RoBERTa-style positions, counted from pad_token_id + 1
        return dict(_encoder_kwargs(vocab_size, init_range), max_position_embeddings=130, pad_token_id=pad_token_id,
                    type_vocab_size=1)
    if family == "GPT2":  # no pad token, as GPT-2 ships
        return dict(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128, initializer_range=init_range)
    raise ValueError(family)


def build_transformers_model(
    out: Path,
    class_name: str,
    num_labels: int | None = None,
    seed: int = 0,
    init_range: float = 0.5,
    **config: object,
) -> Path:
    """A tiny model of a family poolkit has no native code for (DistilBERT, ELECTRA, CamemBERT,
    Llama, GPT-2).

    ``class_name`` is the transformers class (``"ElectraForSequenceClassification"``); its
    family's config class gets ``num_labels`` (with ``class_<i>`` label names when several).
    One-dimensional parameters (LayerNorm / RMSNorm weights, biases) are randomised too.
    """
    tok = wordpiece_tokenizer()
    family = next(f for f in ("DistilBert", "Electra", "Camembert", "Llama", "GPT2") if class_name.startswith(f))
    kw = _transformers_config(family, len(tok), tok.pad_token_id, init_range)
    if num_labels is not None:
        kw["num_labels"] = num_labels
        if num_labels > 1:
            kw["id2label"] = {i: f"class_{i}" for i in range(num_labels)}
            kw["label2id"] = {f"class_{i}": i for i in range(num_labels)}
    kw.update(config)
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
    model = getattr(T, class_name)(getattr(T, f"{family}Config")(**kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if "norm" in name.lower() else 0.0, 0.5)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if family == "Electra":  # its tokenizer gives segment ids, as ElectraTokenizer does
        give_segment_ids(out)
    return out


def build_clip(out: Path, seed: int = 0, gain: float = 2.0, image_size: int = 32, patch_size: int = 8) -> Path:
    """A tiny ``CLIPModel`` (text and vision towers, 16-wide projections) with a WordPiece
    tokenizer and a Pillow CLIP image processor, saved to ``out``.

    The text config's ``eos_token_id`` is the tokenizer's ``[SEP]`` (not the legacy 2), so
    transformers pools the first ``[SEP]`` of each text, which closes it. Every parameter is drawn
    again: matrices with std ``gain / sqrt(fan_in)``, token and position embeddings with std 1,
    LayerNorm weights around 1 and biases (and the class embedding) around 0 with std 0.2, so
    different inputs get clearly different embeddings and a dropped parameter would show.
    """
    tok = wordpiece_tokenizer(model_max_length=64)
    config = T.CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
        ),
        projection_dim=16,
    )
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
    model = T.CLIPModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 0:  # logit_scale
                continue
            if p.ndim == 1:
                p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.2)
            elif name.endswith(("token_embedding.weight", "position_embedding.weight")):
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, gain * p[0].numel() ** -0.5)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    T.CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(out)
    return out


def build_masked_lm(
    out: Path, seed: int = 0, init_range: float = 0.5, tie_word_embeddings: bool = True, legacy_names: bool = False
) -> Path:
    """A tiny ``BertForMaskedLM`` (a SPLADE-shaped model) with a WordPiece tokenizer, saved to ``out``.

    One-dimensional parameters (LayerNorm weights, biases, the MLM bias) are randomised too, so a
    dropped one would show. ``tie_word_embeddings=False`` saves a decoder of its own (weight and
    bias); ``legacy_names`` rewrites LayerNorm ``weight``/``bias`` as TF-era ``gamma``/``beta``.
    """
    from safetensors.torch import load_file, save_file

    tok = wordpiece_tokenizer()
    kw = _encoder_kwargs(len(tok), init_range)
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
    config = T.BertConfig(
        **kw, max_position_embeddings=128, pad_token_id=tok.pad_token_id, tie_word_embeddings=tie_word_embeddings
    )
    model = T.BertForMaskedLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if "LayerNorm.weight" in name else 0.0, 0.5)
        if not tie_word_embeddings:
            model.cls.predictions.decoder.weight.normal_(0.0, init_range)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    give_segment_ids(out)
    if legacy_names:
        path = out / "model.safetensors"
        tensors = load_file(str(path))
        renamed = {
            k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in tensors.items()
        }
        save_file(renamed, str(path), metadata={"format": "pt"})
    return out
