"""Tiny EuroBERT checkpoints, laid out as the published ones (EuroBERT/EuroBERT-210m and its
fine-tuned classifiers), built with transformers' ``EuroBertConfig`` and ``save_pretrained``.

Sources of the layout (each key below says which):
- [tf] transformers 5's ``models/eurobert/configuration_eurobert.py`` (``EuroBertConfig``:
  ``model_type`` "eurobert", ``bos_token_id`` 128000, ``eos_token_id`` = ``pad_token_id`` 128001,
  ``mask_token_id`` 128002, ``hidden_act`` silu, ``rms_norm_eps`` 1e-5, ``classifier_pooling``
  "late" by default) and ``modeling_eurobert.py`` (the weight names: ``model.embed_tokens``,
  ``model.layers.*.self_attn.{q,k,v,o}_proj``, ``model.layers.*.mlp.{gate,up,down}_proj``,
  ``model.norm``; the masked LM's ``lm_head``, biased as the MLP; the sequence classifier's
  ``dense`` and ``classifier``; the token
  classifier's ``classifier``; the mask token's text ``<|mask|>`` in its fill-mask example).
- [audit] a public audit of the Hub configs (EuroBERT-210m / 610m / 2.1B and two fine-tuned
  sequence classifiers): the base models are masked LMs, ``rope_theta`` 250000, no attention or MLP biases,
  ``tie_word_embeddings`` false, grouped-query attention in the 610m and 2.1B sizes
  (18 query heads sharing 6), some fine-tuned configs naming the pooling ``clf_pooling``.
- [test] transformers' slow test of EuroBERT-210m (``tests/models/eurobert/test_modeling_eurobert.py``):
  its tokenizer turns "Hello World!" into 4 ids, the Llama-3 pieces ``Hello``, `` World``, ``!``
  after ``<|begin_of_text|>`` — the beginning token first, no end token after.
- [llama3] the Llama-3 tokenizer EuroBERT's is (its 128256-entry vocabulary and ids 128000..):
  byte-level BPE with the special tokens after the ordinary ones, ``<|begin_of_text|>`` first,
  then ``<|end_of_text|>``; EuroBERT puts ``<|mask|>`` at the next id [tf]. The tiny vocabulary
  keeps that order at its own size.

The sizes are tiny (hidden 32, 2 layers, 4 query heads sharing 2 key/value heads so grouped-query
attention is exercised); the norms and biases are randomised so a dropped one would show.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tiny_models import CORPUS

#: [llama3] / [tf]: the special tokens, in their published order after the ordinary vocabulary.
BOS, EOS, MASK = "<|begin_of_text|>", "<|end_of_text|>", "<|mask|>"
#: [audit] the published rotary base.
ROPE_THETA = 250_000.0
#: transformers' class name per task.
CLASSES = {
    "embed": "EuroBertModel",
    "mlm": "EuroBertForMaskedLM",
    "classify": "EuroBertForSequenceClassification",
    "token_classify": "EuroBertForTokenClassification",
}


def eurobert_tokenizer(vocab_size: int = 300) -> T.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer over ``CORPUS`` with EuroBERT's special tokens after the
    ordinary vocabulary [llama3], ``<|begin_of_text|>`` before each text [test], and
    ``<|end_of_text|>`` as padding [tf]; a pair is ``<|begin_of_text|> A <|end_of_text|> B``."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS * 20, trainer)
    tk.add_special_tokens([BOS, EOS, MASK])
    bos, eos = tk.token_to_id(BOS), tk.token_to_id(EOS)
    tk.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {EOS} $B:1", special_tokens=[(BOS, bos), (EOS, eos)]
    )
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=BOS, eos_token=EOS, pad_token=EOS, mask_token=MASK,
        model_max_length=8192, padding_side="right",
    )


def build_eurobert(
    out: Path, task: str = "embed", num_labels: int = 1, seed: int = 0, **config: object
) -> Path:
    """A tiny EuroBERT for ``task`` (:data:`CLASSES`), saved to ``out`` with its tokenizer.

    ``config`` overrides keys of the config (``classifier_pooling``, ``clf_pooling``,
    ``attention_bias``, ...).
    """
    tok = eurobert_tokenizer()
    kw: dict[str, object] = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        mask_token_id=tok.mask_token_id,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    if task in ("classify", "token_classify"):
        labels = [f"class_{i}" for i in range(num_labels)]
        kw.update(num_labels=num_labels)
        if num_labels > 1:
            kw.update(id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    kw.update(config)
    torch.manual_seed(seed)  # transformers 5 initialises at construction
    model = getattr(T, CLASSES[task])(T.EuroBertConfig(**kw))
    randomise_vectors(model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def randomise_vectors(model: torch.nn.Module) -> None:
    """RMSNorm weights spread around 1 and biases around 0 (transformers starts them at 1 and 0),
    so that a norm or bias dropped or swapped by a port changes the outputs."""
    vectors = [(name, p) for name, p in model.named_parameters() if p.ndim == 1]
    with torch.no_grad():
        for name, p in vectors:
            p.normal_(float(name.endswith("norm.weight")), 0.5)
