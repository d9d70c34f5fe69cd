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


def _wordpiece(specials: list[str], unk: str, lowercase: bool) -> Tokenizer:
    """A WordPiece model over ``CORPUS``: ``specials`` first, then characters, ``##`` continuations
    and the corpus's words, with BERT's normaliser, pre-tokeniser and decoder."""
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = sorted({w for line in CORPUS for w in line.split()})
    vocab = specials + list(chars + ".,!?'-:") + ["##" + c for c in chars] + words
    tk = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=unk))
    tk.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    return tk


def wordpiece_tokenizer(model_max_length: int = 128, lowercase: bool = True) -> T.PreTrainedTokenizerFast:
    """A BERT WordPiece tokenizer over ``CORPUS``; special tokens, template and segment ids as in
    all-MiniLM-L6-v2's tokenizer files (which the tests also load for real), ids the tiny vocabulary's."""
    tk = _wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"], "[UNK]", lowercase)
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def fairseq_tokenizer(model_max_length: int = 128, lowercase: bool = True) -> T.PreTrainedTokenizerFast:
    """A WordPiece tokenizer over ``CORPUS`` with the fairseq special tokens that RoBERTa, XLM-R and
    MPNet checkpoints ship: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>``; ``<s> A </s>``
    and ``<s> A </s></s> B </s>`` templates, no segment ids.

    Source: transformers' ``XLMRobertaTokenizer`` (default vocabulary, post-processor) and the
    ``RobertaConfig`` / ``XLMRobertaConfig`` defaults (pad 1, bos 0, eos 2); only the pieces differ.
    """
    tk = _wordpiece(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<unk>", lowercase)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", cls_token="<s>", sep_token="</s>")
    return T.PreTrainedTokenizerFast(tokenizer_object=tk, mask_token="<mask>", model_max_length=model_max_length, **specials)


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
    ``max_len`` tokens of context (position embeddings and the tokenizer's ``model_max_length``).

    Laid out as the published embedders (all-MiniLM-L6-v2, bge-m3): transformers' class with its
    ``pooler.dense`` saved, as the real all-MiniLM-L6-v2 carries it; RoBERTa / XLM-R with the fairseq
    special tokens of :func:`fairseq_tokenizer` and ``pad_token_id`` 1 (positions from 2).
    """
    fairseq = kind in ("roberta", "xlm-roberta")
    tok = fairseq_tokenizer(max_len, lowercase) if fairseq else wordpiece_tokenizer(max_len, lowercase)
    kw = _encoder_kwargs(len(tok), init_range)
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
    if kind == "bert":
        model = T.BertModel(T.BertConfig(**kw, max_position_embeddings=max_len, pad_token_id=tok.pad_token_id))
    elif fairseq:
        prefix = "Roberta" if kind == "roberta" else "XLMRoberta"
        config = getattr(T, f"{prefix}Config")(
            **kw, max_position_embeddings=max_len + 2, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, type_vocab_size=1,
        )
        model = getattr(T, f"{prefix}Model")(config)
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

    A large ``init_range`` keeps scores apart, so rankings and softmaxes are meaningful. Layout:
    transformers' classes; RoBERTa / XLM-R with the fairseq special tokens and ``pad_token_id`` 1.
    """
    fairseq = kind in ("roberta", "xlm-roberta")
    tok = fairseq_tokenizer(max_len) if fairseq else wordpiece_tokenizer(max_len)
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
    elif fairseq:
        prefix = "Roberta" if kind == "roberta" else "XLMRoberta"
        cfg = getattr(T, f"{prefix}Config")(
            **kw, max_position_embeddings=max_len + 2, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, type_vocab_size=1,
        )
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
    with ``num_labels`` (layout: transformers' classes; special-token ids as ``ModernBertConfig``'s
    defaults pair them, bos = cls, eos = sep). Four layers, global attention every second one and an 8-token local
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


def bytelevel_bpe_tokenizer(
    eos: str = "<|endoftext|>", vocab_size: int = 400, padding_side: str = "left"
) -> T.PreTrainedTokenizerFast:
    """A Qwen-style byte-level BPE tokenizer trained on ``QWEN_CORPUS``, padding on the left
    (or on ``padding_side``); Qwen's special-token names, ``<|endoftext|>`` the pad token
    (github.com/QwenLM/Qwen3-Embedding/issues/122)."""
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
        tokenizer_object=tk, eos_token=eos, pad_token=eos, model_max_length=128, padding_side=padding_side
    )


def build_qwen(
    out: Path,
    family: str,
    task: str = "embed",
    num_labels: int = 1,
    seed: int = 0,
    init_range: float = 0.2,
    tokenizer: T.PreTrainedTokenizerFast | None = None,
    **config: object,
) -> Path:
    """A tiny Qwen2 / Qwen3 (``family``) for ``task``, saved to ``out`` with a byte-level BPE tokenizer
    (or ``tokenizer``, whose vocabulary sizes the model).

    ``task``: ``embed`` (``*Model``), ``lm`` (``*ForCausalLM``), ``classify``
    (``*ForSequenceClassification``) or ``token_classify``. Hidden size 32, 4 query heads sharing 2
    key/value heads, so grouped-query attention is exercised; RMSNorm weights and biases are
    randomised too, so a dropped one would show. Layout: transformers' classes (Qwen3-Embedding's
    own is ``tiny_published.build_qwen3_embedding``).
    """
    tok = tokenizer if tokenizer is not None else bytelevel_bpe_tokenizer()
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


#: transformers' config and model class prefixes of the Llama-style decoder families.
DECODER_FAMILIES = {
    "llama": ("Llama", "Llama"),
    "mistral": ("Mistral", "Mistral"),
    "gemma": ("Gemma", "Gemma"),
    "gemma2": ("Gemma2", "Gemma2"),
    "gemma3": ("Gemma3Text", "Gemma3"),
}


def build_decoder(
    out: Path,
    family: str,
    task: str = "embed",
    num_labels: int = 1,
    seed: int = 0,
    init_range: float = 0.2,
    padding_side: str = "left",
    **config: object,
) -> Path:
    """A tiny Llama / Mistral / Gemma / Gemma 2 / Gemma 3 text decoder (``family``) for ``task``,
    saved to ``out`` with the byte-level BPE tokenizer of :func:`build_qwen`.

    ``task``: ``embed`` (``*Model``, ``Gemma3TextModel``), ``lm`` (``*ForCausalLM``), ``classify``
    (``*ForSequenceClassification``, ``Gemma3TextForSequenceClassification``) or
    ``token_classify``. Hidden size 32, 4 query heads of width 8 sharing 2 key/value heads. Norm
    weights (around 1, or around 0 for Gemma's ``1 + weight`` norms) and biases are randomised too,
    so a dropped one would show. The family's defaults (sliding windows, soft-capping, Gemma 3's
    local/global layers) are small enough for test inputs to feel them; ``config`` overrides them.
    Layout: transformers' classes; the tokenizer is not Llama's / Gemma's SentencePiece.
    """
    tok = bytelevel_bpe_tokenizer(padding_side=padding_side)
    config_prefix, model_prefix = DECODER_FAMILIES[family]
    kw = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=init_range,
    )
    if family == "mistral":
        kw.update(sliding_window=6)
    elif family == "gemma2":
        # layer_types alternate sliding / full by default
        kw.update(num_hidden_layers=3, sliding_window=6, query_pre_attn_scalar=16, attn_logit_softcapping=1.0,
                  final_logit_softcapping=2.0)
    elif family == "gemma3":
        kw.update(
            num_hidden_layers=4,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            sliding_window=6,
            query_pre_attn_scalar=16,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
            },
        )
    if task in ("classify", "token_classify"):
        kw.update(num_labels=num_labels)
        if num_labels > 1:
            kw.update(id2label={i: f"class_{i}" for i in range(num_labels)}, label2id={f"class_{i}": i for i in range(num_labels)})
    kw.update(config)
    suffix = {"lm": "ForCausalLM", "classify": "ForSequenceClassification", "token_classify": "ForTokenClassification"}
    name = ("Gemma3TextModel" if family == "gemma3" else f"{model_prefix}Model") if task == "embed" else (
        f"Gemma3Text{suffix[task]}" if family == "gemma3" and task == "classify" else f"{model_prefix}{suffix[task]}"
    )
    offset = family.startswith("gemma")
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
    model = getattr(T, name)(getattr(T, f"{config_prefix}Config")(**kw))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if pname.endswith("norm.weight") and not offset else 0.0, 0.5)
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
    if family in ("Llama", "Phi3"):
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
    """A tiny model built with transformers' own classes: families poolkit has no native code for
    (DistilBERT, ELECTRA, CamemBERT, Phi-3, GPT-2), and Llama (native since the decoder family).

    ``class_name`` is the transformers class (``"ElectraForSequenceClassification"``); its
    family's config class gets ``num_labels`` (with ``class_<i>`` label names when several).
    One-dimensional parameters (LayerNorm / RMSNorm weights, biases) are randomised too.
    """
    tok = wordpiece_tokenizer()
    family = next(f for f in ("DistilBert", "Electra", "Camembert", "Llama", "Phi3", "GPT2") if class_name.startswith(f))
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
    tokenizer and a Pillow CLIP image processor, saved to ``out`` (weights: transformers' class;
    CLIP's own tokenizer and legacy ``eos_token_id``: ``tiny_published.build_openai_clip``).

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
    """A tiny ``BertForMaskedLM`` (a SPLADE-shaped model) with a WordPiece tokenizer, saved to ``out``
    (names as in the real SPLADE-tiny the tests load: ``bert.``, ``cls.predictions.*``).

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


def siglip_tokenizer(model_max_length: int = 64) -> T.PreTrainedTokenizerFast:
    """The WordPiece vocabulary shaped like SigLIP's tokenizer: no leading special token, ``</s>``
    appended to every text, and ``</s>`` also the padding token (SigLIP's own is a SentencePiece
    model, which needs the ``sentencepiece`` package and has no fast version); special tokens as
    transformers' ``SiglipTokenizer``."""
    tok = wordpiece_tokenizer(model_max_length=model_max_length)
    eos = tok.convert_tokens_to_ids("</s>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", eos)]
    )
    tok.add_special_tokens({"eos_token": "</s>", "pad_token": "</s>"})
    return tok


def redraw_siglip(model: torch.nn.Module, gain: float) -> None:
    """Draw a SigLIP (or SigLIP 2) model's parameters again, the contrastive ``logit_*`` aside:
    matrices with std ``gain / sqrt(fan_in)``, token and position embeddings and the probe with
    std 1, LayerNorm weights around 1 and biases around 0 with std 0.2."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("logit_"):
                continue
            if p.ndim == 1:
                p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.2)
            elif name.endswith(("token_embedding.weight", "position_embedding.weight", "head.probe")):
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, gain * p[0].numel() ** -0.5)


def build_siglip(
    out: Path, seed: int = 0, gain: float = 2.0, image_size: int = 32, patch_size: int = 8, max_len: int = 64
) -> Path:
    """A tiny ``SiglipModel`` (text and vision towers, 32 wide, the text head to 32) with a
    SigLIP-shaped WordPiece tokenizer (:func:`siglip_tokenizer`) and a Pillow SigLIP image
    processor (resize to ``image_size`` square, bicubic, rescale, normalise with mean and std 0.5),
    saved to ``out``.

    Layout: transformers' class. Every parameter is drawn again as :func:`build_clip` does (matrices with std
    ``gain / sqrt(fan_in)``, embeddings and the probe with std 1, LayerNorm weights around 1 and
    biases around 0 with std 0.2), so different inputs get clearly different embeddings and a
    dropped parameter would show.
    """
    tok = siglip_tokenizer(model_max_length=max_len)
    config = T.SiglipConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=max_len,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=None,
            projection_size=32,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
        ),
    )
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
    model = T.SiglipModel(config)
    redraw_siglip(model, gain)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    T.SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


def build_mpnet(
    out: Path,
    task: str = "embed",
    num_labels: int = 3,
    seed: int = 0,
    init_range: float = 0.5,
    max_len: int = 128,
    **config: object,
) -> Path:
    """A tiny MPNet for ``task``, saved to ``out`` with :func:`fairseq_tokenizer`; ``max_len`` tokens
    of context (the position table has 2 more rows, as MPNet's counts from ``padding_idx + 1``).

    ``task``: ``embed`` (``MPNetModel``), ``masked_lm`` (``MPNetForMaskedLM``, the class
    all-mpnet-base-v2's config names), ``classify`` / ``token_classify``
    (``MPNetFor{Sequence,Token}Classification`` with ``num_labels``). Four heads, so the relative
    position bias differs per head; one-dimensional parameters are randomised too.
    """
    tok = fairseq_tokenizer(model_max_length=max_len)
    kw = _encoder_kwargs(len(tok), init_range)
    kw.update(
        num_attention_heads=4,
        max_position_embeddings=max_len + 2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    if task in ("classify", "token_classify"):
        kw["num_labels"] = num_labels
        if num_labels > 1:
            kw["id2label"] = {i: f"class_{i}" for i in range(num_labels)}
            kw["label2id"] = {f"class_{i}": i for i in range(num_labels)}
    kw.update(config)
    classes = {
        "embed": T.MPNetModel,
        "masked_lm": T.MPNetForMaskedLM,
        "classify": T.MPNetForSequenceClassification,
        "token_classify": T.MPNetForTokenClassification,
    }
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
    model = classes[task](T.MPNetConfig(**kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0, 0.5)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_pylate_colbert(out: Path, backbone: Path, dim: int = 16, seed: int = 2, **config) -> Path:
    """A PyLate-style ColBERT saved by sentence-transformers: ``backbone``'s Transformer and a
    bias-free ``Dense`` to ``dim`` features (no Pooling), with PyLate's keys (``query_prefix``,
    ``document_prefix``, ``query_length``, ``document_length``, ``do_query_expansion``, ...) from
    ``config`` in ``config_sentence_transformers.json`` (files: sentence-transformers' own ``save``)."""
    import json

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Transformer

    transformer = Transformer(str(backbone))
    torch.manual_seed(seed)
    dense = Dense(transformer.get_embedding_dimension(), dim, bias=False, activation_function=torch.nn.Identity())
    SentenceTransformer(modules=[transformer, dense], device="cpu").save(str(out))
    path = out / "config_sentence_transformers.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return out


def build_stanford_colbert(out: Path, metadata: dict | None = None, dim: int = 16, max_len: int = 128) -> Path:
    """A colbert-ai ``HF_ColBERT`` checkpoint: a tiny BERT under ``bert.`` plus a ``dim``-wide
    ``linear`` projection, with ``metadata`` as its ``artifact.metadata`` (none when ``None``); names
    as vLLM's colbert.py ``load_weights`` reads them (``bert.``, bias-free ``linear``, width ``dim``)."""
    import json

    from safetensors.torch import load_file, save_file

    path = build_encoder(out, "bert", init_range=0.5, max_len=max_len)
    state = {f"bert.{k}": v for k, v in load_file(str(path / "model.safetensors")).items()}
    torch.manual_seed(5)
    state["linear.weight"] = torch.randn(dim, 32) * 0.3
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config.update(architectures=["HF_ColBERT"], dim=dim)
    (path / "config.json").write_text(json.dumps(config))
    if metadata is not None:
        (path / "artifact.metadata").write_text(json.dumps(metadata))
    return path


#: The special tokens of Qwen2-VL's tokenizer that its prompts use (image and video placeholders).
QWEN_VL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def qwen_vl_tokenizer() -> T.PreTrainedTokenizerFast:
    """The tiny byte-level BPE tokenizer with Qwen2-VL's vision tokens added as special tokens."""
    tok = bytelevel_bpe_tokenizer(eos="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": QWEN_VL_TOKENS})
    return tok


def build_qwen2_vl(out: Path, seed: int = 0, patch_size: int = 4, min_pixels: int = 8 * 8, max_pixels: int = 48 * 48) -> Path:
    """A tiny ``Qwen2VLForConditionalGeneration`` (vision tower of 2 blocks, 2x2 patch merging, a
    2-layer Qwen2 decoder with M-RoPE sections [2, 3, 3]), its tokenizer and a Pillow image
    processor with ``patch_size`` 4 (merged patches of 8x8 pixels), saved to ``out``.

    Every parameter is drawn again (matrices with std ``1.5 / sqrt(fan_in)``, norms around 1, biases
    around 0), so a dropped one or a misplaced image feature shows in the embeddings. Layout:
    ``save_pretrained`` writes Qwen2-VL's published names back (``model.*``, ``visual.*``, ``lm_head``).
    """
    tok = qwen_vl_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_VL_TOKENS}
    config = T.Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.eos_token_id,
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
    torch.manual_seed(seed)
    model = T.Qwen2VLForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.2)
            else:
                p.normal_(0.0, 1.5 * p[0].numel() ** -0.5)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    T.Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=2, temporal_patch_size=2, min_pixels=min_pixels, max_pixels=max_pixels
    ).save_pretrained(out)
    return out


def picture(height: int, width: int, seed: int, mode: str = "RGB") -> "Image.Image":
    """A ``height × width`` image of seeded random pixels (``mode`` ``RGB``, ``RGBA`` or ``L``): every
    pixel differs from its neighbours, so a misplaced patch or a wrong resize shows."""
    import numpy as np
    from PIL import Image

    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    data = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(data.squeeze(-1) if channels == 1 else data, mode)
