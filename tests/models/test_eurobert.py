"""Native EuroBERT against transformers' classes (``EuroBertModel``, ``EuroBertForSequenceClassification``,
``EuroBertForTokenClassification``), on tiny checkpoints laid out as published
(``tiny_eurobert.build_eurobert``: grouped-query attention, randomised norms).

transformers runs the sequences as one right-padded batch with an attention mask; poolkit packs
them, sequences of different lengths side by side, and the unpadded rows must agree. The
sequence classifier is tested with each ``classifier_pooling`` (``bos``, ``mean``, and ``late``,
the default: the head on every token, then the mean of the logits) and with the ``clf_pooling``
name of configs written for the publisher's remote code.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
import transformers as T
from tiny_eurobert import build_eurobert
from test_decoders import random_sequences, reference_hidden, run  # noqa: E402
from tolerances import assert_bf16_as_close_as_the_reference

from poolkit import LLM, LoRARequest
from poolkit.builtin_models import eurobert
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import checkpoint_files, iter_tensors
from poolkit.plugins import registry

ATOL = 1e-4
#: Neighbours of different lengths, one of a single token.
LENGTHS = [7, 1, 19, 4, 12]
TEXTS = ["paris is the capital of france", "hello", "the quick brown fox jumps over the lazy dog " * 2, "berlin"]
ARCHS = {
    "embed": eurobert.EuroBertModel,
    "classify": eurobert.EuroBertForSequenceClassification,
    "token_classify": eurobert.EuroBertForTokenClassification,
    "mlm": eurobert.EuroBertForMaskedLM,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eurobert")
    return {
        "embed": build_eurobert(root / "embed", "embed"),
        "late": build_eurobert(root / "late", "classify", 3, seed=1),
        "bos": build_eurobert(root / "bos", "classify", 3, seed=2, classifier_pooling="bos"),
        "mean": build_eurobert(root / "mean", "classify", 3, seed=3, classifier_pooling="mean", attention_bias=True, mlp_bias=True),
        "score": build_eurobert(root / "score", "classify", 1, seed=4, classifier_pooling="bos"),
        "ner": build_eurobert(root / "ner", "token_classify", 5, seed=5),
        # EuroBERT/EuroBERT-210m and its siblings are published as masked LMs
        "mlm": build_eurobert(root / "mlm", "mlm", seed=7),
    }


def task_of(path: Path) -> str:
    arch = json.loads((path / "config.json").read_text())["architectures"][0]
    return {v.__name__: k for k, v in ARCHS.items()}[arch]


def load(path: Path) -> eurobert.EuroBertModel:
    model = ARCHS[task_of(path)](T.AutoConfig.from_pretrained(path))
    model.load_weights(iter_tensors(checkpoint_files(path)))
    return model.eval()


def max_diff(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    return (torch.cat(ours).double() - torch.cat(theirs).double()).abs().max().item()


def hf_outputs(model: torch.nn.Module, path: Path, texts: list[str], pairs: list[str] | None = None) -> tuple[object, torch.Tensor]:
    """transformers' outputs on one padded batch of tokenized texts (or pairs), and its attention mask."""
    enc = T.AutoTokenizer.from_pretrained(str(path))(texts, pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return out, enc["attention_mask"].bool()


# -- the architecture -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["embed", "mean", "ner", "mlm"])
def test_packed_matches_transformers(models: dict[str, Path], name: str) -> None:
    path = models[name]
    encoder = T.AutoModel.from_pretrained(str(path)).eval()
    seqs = random_sequences(LENGTHS, seed=1)
    arch = load(path)
    # In float64 rounding is out of the way: any difference is a bug.
    exact = max_diff(run(copy.deepcopy(arch).double(), seqs), reference_hidden(copy.deepcopy(encoder).double(), seqs))
    assert exact <= 1e-9, f"{name} float64: max |diff| {exact:.3g}"
    assert max_diff(run(arch, seqs), reference_hidden(encoder, seqs)) <= ATOL


def test_packed_equals_one_at_a_time(models: dict[str, Path]) -> None:
    arch = load(models["embed"])
    seqs = random_sequences(LENGTHS, seed=2)
    together = run(arch, seqs)
    for seq, packed in zip(seqs, together):
        assert max_diff(run(arch, [seq]), [packed]) <= ATOL


def test_attention_is_bidirectional(models: dict[str, Path]) -> None:
    """The first token's state changes with the tokens after it (a causal stack's would not)."""
    arch = load(models["embed"])
    (a,), (b,) = run(arch, [[300, 5, 6, 7]]), run(arch, [[300, 5, 6, 8]])  # 300: <|begin_of_text|>
    assert (a[0] - b[0]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "name, dropped",
    [("embed", "layers.1.self_attn.k_proj.weight"), ("embed", "norm.weight"), ("late", "dense.bias"), ("ner", "classifier.weight")],
)
def test_missing_tensor_is_named(models: dict[str, Path], name: str, dropped: str) -> None:
    path = models[name]
    arch = ARCHS[task_of(path)](T.AutoConfig.from_pretrained(path))
    weights = [(n, t) for n, t in iter_tensors(checkpoint_files(path)) if n.removeprefix("model.") != dropped]
    with pytest.raises(ModelLoadError, match=rf"(?<![\w.]){re.escape(dropped)}"):
        arch.load_weights(weights)


def test_unknown_classifier_pooling_is_refused(models: dict[str, Path]) -> None:
    config = T.AutoConfig.from_pretrained(models["late"])
    config.classifier_pooling = "max"
    with pytest.raises(ModelLoadError, match="unsupported classifier_pooling 'max'"):
        eurobert.EuroBertForSequenceClassification(config)


def test_hooks_register_architectures() -> None:
    registered: dict[str, object] = {}
    eurobert.poolkit_register_architectures(register=registered.__setitem__)
    names = [cls.__name__ for cls in ARCHS.values()]
    assert registered == {n: getattr(eurobert, n) for n in names}
    assert all(registry("architecture").entry(n).plugin == "builtin_eurobert" for n in names)


# -- the public API -------------------------------------------------------------------------------


def test_embed_is_the_normalized_mean(models: dict[str, Path]) -> None:
    path = models["embed"]
    out, mask = hf_outputs(T.AutoModel.from_pretrained(str(path)).eval(), path, TEXTS)
    summed = (out.last_hidden_state * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    ref = torch.nn.functional.normalize(summed, dim=-1)
    got = torch.tensor([o.outputs.embedding for o in LLM(str(path)).embed(TEXTS)])
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= ATOL


@pytest.mark.parametrize("pooling", ["late", "bos", "mean"])
def test_classify_matches_transformers(models: dict[str, Path], pooling: str) -> None:
    path = models[pooling]
    reference = T.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    assert reference.classifier_pooling == pooling
    out, _ = hf_outputs(reference, path, TEXTS)
    ref = torch.softmax(out.logits, dim=-1)
    outs = LLM(str(path)).classify(TEXTS)
    got = torch.tensor([o.outputs.probs for o in outs])
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= ATOL
    assert [o.outputs.label for o in outs] == [f"class_{i}" for i in ref.argmax(-1).tolist()]
    assert ref.std(0).max() > 0.01, "the tiny model must not be constant"


def test_legacy_clf_pooling_is_read(models: dict[str, Path], tmp_path: Path) -> None:
    """A config written for the publisher's remote code names its pooling ``clf_pooling``: it is
    what the classifier was trained with, so it wins over transformers' default (``late``)."""
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for f in models["bos"].iterdir():
        (legacy / f.name).write_bytes(f.read_bytes())
    raw = json.loads((legacy / "config.json").read_text())
    raw.pop("classifier_pooling")
    (legacy / "config.json").write_text(json.dumps({**raw, "clf_pooling": "bos"}))
    reference = T.AutoModelForSequenceClassification.from_pretrained(str(models["bos"])).eval()
    out, _ = hf_outputs(reference, models["bos"], TEXTS)
    got = torch.tensor([o.outputs.probs for o in LLM(str(legacy)).classify(TEXTS)])
    assert (got - torch.softmax(out.logits, dim=-1)).abs().max() <= ATOL


def test_score_is_the_one_label_classifier_on_pairs(models: dict[str, Path]) -> None:
    path = models["score"]
    query, docs = TEXTS[0], TEXTS[1:]
    reference = T.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    out, _ = hf_outputs(reference, path, [query] * len(docs), docs)
    ref = torch.sigmoid(out.logits[:, 0])
    got = torch.tensor([s.outputs.score for s in LLM(str(path)).score(query, docs)])
    assert (got - ref).abs().max() <= ATOL
    assert ref.std() > 1e-3, "the tiny model must not be constant"


def test_token_classify_matches_transformers(models: dict[str, Path]) -> None:
    path = models["ner"]
    out, mask = hf_outputs(T.AutoModelForTokenClassification.from_pretrained(str(path)).eval(), path, TEXTS)
    llm = LLM(str(path))
    assert "token_classify" in llm.supported_tasks and "classify" not in llm.supported_tasks
    for got, row, keep in zip(llm.encode(TEXTS, pooling_task="token_classify"), out.logits, mask):
        ref = torch.softmax(row[keep], dim=-1)
        assert got.outputs.data.shape == ref.shape
        assert (got.outputs.data - ref).abs().max() <= ATOL


def test_masked_lm_embeds_and_classifies_tokens_with_its_head(models: dict[str, Path]) -> None:
    """The published base checkpoints (``EuroBertForMaskedLM``): ``embed`` is the body's mean;
    ``token_classify`` the head's softmax over the vocabulary at every token."""
    path = models["mlm"]
    model = T.AutoModelForMaskedLM.from_pretrained(str(path)).eval()
    out, mask = hf_outputs(model.model, path, TEXTS)
    want = torch.nn.functional.normalize((out.last_hidden_state * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    llm = LLM(str(path))
    assert llm.model.architecture_name == "EuroBertForMaskedLM"
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    assert (got - want).abs().max() <= ATOL
    with torch.no_grad():
        logits = model.lm_head(out.last_hidden_state)
    for got, row, keep in zip(llm.encode(TEXTS, pooling_task="token_classify"), logits, mask):
        assert got.outputs.data.shape == (int(keep.sum()), model.config.vocab_size)
        assert (got.outputs.data - torch.softmax(row[keep], dim=-1)).abs().max() <= ATOL


def test_sequence_classifier_classifies_tokens_with_its_whole_head(models: dict[str, Path]) -> None:
    """``token_classify`` on a sequence classifier: the per-token logits that ``late`` averages."""
    path = models["late"]
    model = T.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    out, mask = hf_outputs(model.model, path, TEXTS)
    with torch.no_grad():
        logits = model.classifier(model.activation(model.dense(out.last_hidden_state)))
    for got, row, keep in zip(LLM(str(path)).encode(TEXTS, pooling_task="token_classify"), logits, mask):
        assert (got.outputs.data - torch.softmax(row[keep], dim=-1)).abs().max() <= ATOL


def test_bfloat16_follows_float32(models: dict[str, Path]) -> None:
    """bf16 embeddings stay as close to the fp32 reference as transformers' own bf16 model does."""
    path = models["embed"]

    def reference(dtype: torch.dtype) -> list[torch.Tensor]:
        model = T.AutoModel.from_pretrained(str(path), dtype=dtype).eval()
        out, mask = hf_outputs(model, path, TEXTS)
        summed = (out.last_hidden_state.float() * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return list(torch.nn.functional.normalize(summed, dim=-1))

    ours = [torch.tensor(o.outputs.embedding) for o in LLM(str(path), dtype="bfloat16").embed(TEXTS)]
    assert_bf16_as_close_as_the_reference(ours, reference(torch.bfloat16), reference(torch.float32))


def test_bfloat16_late_classifier_follows_float32(models: dict[str, Path]) -> None:
    """The ``late`` head (float32, as every classifier) over a bf16 body, against transformers' bf16 model."""
    path = models["late"]

    def reference(dtype: torch.dtype) -> list[torch.Tensor]:
        model = T.AutoModelForSequenceClassification.from_pretrained(str(path), dtype=dtype).eval()
        return list(torch.softmax(hf_outputs(model, path, TEXTS)[0].logits.float(), dim=-1))

    ours = [torch.tensor(o.outputs.probs) for o in LLM(str(path), dtype="bfloat16").classify(TEXTS)]
    assert_bf16_as_close_as_the_reference(ours, reference(torch.bfloat16), reference(torch.float32))


def test_lora_adapter_matches_peft(models: dict[str, Path], tmp_path: Path) -> None:
    """A PEFT adapter on attention and feed-forward projections (fused q/k/v and gate/up here),
    mixed with the bare model in one call, against peft's ``PeftModel`` on transformers' model."""
    peft = pytest.importorskip("peft")
    base = models["embed"]
    torch.manual_seed(6)
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
    peft.get_peft_model(T.AutoModel.from_pretrained(str(base)), config).save_pretrained(tmp_path / "adapter")
    reference = peft.PeftModel.from_pretrained(T.AutoModel.from_pretrained(str(base)), tmp_path / "adapter").eval()
    out, mask = hf_outputs(reference, base, TEXTS)
    want = torch.nn.functional.normalize((out.last_hidden_state * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    llm = LLM(str(base), enable_lora=True)
    request = LoRARequest("eurobert", 1, str(tmp_path / "adapter"))
    got = llm.embed(TEXTS + TEXTS[:1], lora_request=[request] * len(TEXTS) + [None])
    adapted = torch.tensor([o.outputs.embedding for o in got[: len(TEXTS)]])
    assert (adapted - want).abs().max() <= ATOL
    plain = torch.tensor(got[-1].outputs.embedding)
    assert (plain - torch.tensor(llm.embed(TEXTS[:1])[0].outputs.embedding)).abs().max() <= ATOL
    assert (plain - adapted[0]).abs().max() > 1e-2
