"""Native DistilBERT against transformers 5.24's own classes and sentence-transformers, on tiny
random checkpoints saved with ``save_pretrained`` (tests/support/tiny_sparse.py ``build_distilbert``).

What is compared, each with the publisher's computation:

- hidden states: transformers' ``DistilBertModel`` (transformers/models/distilbert/modeling_distilbert.py)
  on one right-padded batch with an attention mask, against poolkit's packed batch, per unpadded row;
- MLM logits through SPLADE: ``DistilBertForMaskedLM.forward``'s logits (``vocab_transform``,
  activation, ``vocab_layer_norm``, ``vocab_projector``) pooled as sentence-transformers'
  ``SpladePooling.forward`` does (``log1p(relu(x))``, max over the unpadded tokens;
  sentence_transformers/sparse_encoder/modules/splade_pooling.py), against ``sparse_embed``;
- classifier logits: ``DistilBertForSequenceClassification.forward`` (first token, ``pre_classifier``,
  ReLU, ``classifier``), softmaxed, against ``classify``; ``DistilBertForTokenClassification.forward``
  (``classifier`` on every token), softmaxed, against ``token_classify``;
- a sentence-transformers DistilBERT embedder (``Transformer`` + mean ``Pooling``):
  ``SentenceTransformer.encode`` against ``embed``.

fp32, DESIGN.md §7: embeddings cosine >= 0.99999 and max |diff| <= 1e-4, logits and probabilities
``atol=1e-4``; hidden states also in float64, where any difference beyond 1e-9 is a bug.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from tiny_sparse import build_distilbert
from typer.testing import CliRunner
from hidden_parity import agreement, reference_hidden, run

from poolkit import LLM
from poolkit.builtin_models import distilbert
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import checkpoint_files, iter_tensors
from poolkit.plugins import registry

ATOL = 1e-4
MIN_COS = 0.99999
LENGTHS = [1, 7, 60, 13, 7, 33, 2, 128]
TEXTS = [
    "paris is the capital of france",
    "hello",
    "the quick brown fox jumps over the lazy dog " * 3,
    "what is the capital of germany? berlin is the capital of germany.",
    "zebra xylophone",  # unknown words: [UNK]
]
LAYOUT = "DistilBERT (transformers' tensor names, read into BERT's layout)"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distilbert")
    return {
        "embed": build_distilbert(root / "embed", "embed"),
        "masked_lm": build_distilbert(root / "masked_lm", "masked_lm", seed=1),
        "classify": build_distilbert(root / "classify", "classify", seed=2, init_range=1.0),
        "ner": build_distilbert(root / "ner", "token_classify", seed=5, num_labels=5),
        # the other activation and position table transformers' DistilBERT takes
        "relu_sinusoidal": build_distilbert(root / "relu_sinusoidal", "masked_lm", seed=3, activation="relu", sinusoidal_pos_embds=True),
        # a vocab_projector of its own
        "untied": build_distilbert(root / "untied", "masked_lm", seed=4, tie_word_embeddings=False),
    }


def load(path: Path, arch: type = distilbert.DistilBertModel) -> distilbert.DistilBertModel:
    model = arch(T.AutoConfig.from_pretrained(path))
    model.load_weights(iter_tensors(checkpoint_files(path)))
    return model.eval()


def random_sequences(lengths: list[int], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 100, (n,), generator=g).tolist() for n in lengths]


def hf_outputs(model: torch.nn.Module, path: Path, texts: list[str]) -> tuple[object, torch.Tensor]:
    enc = T.AutoTokenizer.from_pretrained(str(path))(texts, padding=True, return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"}  # DistilBERT takes no token types
    with torch.no_grad():
        out = model(**enc)
    return out, enc["attention_mask"]


def rows(outputs, field: str) -> torch.Tensor:
    return torch.stack([torch.as_tensor(getattr(o.outputs, field)) for o in outputs])


# -- the architecture -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["embed", "masked_lm", "classify", "ner", "relu_sinusoidal"])
def test_hidden_states_match_transformers(models: dict[str, Path], name: str) -> None:
    path = models[name]
    encoder = T.AutoModel.from_pretrained(str(path)).eval()  # the bare DistilBertModel, whatever the task
    assert type(encoder).__name__ == "DistilBertModel"
    seqs = random_sequences(LENGTHS, seed=1)
    arch = load(path)

    max_diff, _ = agreement(run(copy.deepcopy(arch).double(), seqs), reference_hidden(copy.deepcopy(encoder).double(), seqs))
    assert max_diff <= 1e-9, f"{name} float64: max |diff| {max_diff:.3g}"
    max_diff, min_cos = agreement(run(arch, seqs), reference_hidden(encoder, seqs))
    assert max_diff <= ATOL and min_cos >= MIN_COS, (max_diff, min_cos)


@pytest.mark.parametrize("name", ["masked_lm", "relu_sinusoidal", "untied"])
def test_sparse_embed_is_splade_over_transformers_logits(models: dict[str, Path], name: str) -> None:
    """MLM logits (``vocab_projector`` tied to the word embeddings or not, its own bias) through SPLADE."""
    path = models[name]
    assert ("vocab_projector.weight" in dict(iter_tensors(checkpoint_files(path)))) == (name == "untied")  # tied: not saved
    out, mask = hf_outputs(T.AutoModelForMaskedLM.from_pretrained(str(path)).eval(), path, TEXTS)
    ref = torch.log1p(torch.relu(out.logits * mask.unsqueeze(-1))).amax(dim=1)
    llm = LLM(str(path))
    assert llm.model.architecture_name == "DistilBertForMaskedLM"
    assert "sparse_embed" in llm.supported_tasks
    assert (llm.model.architecture.mlm_head.decoder is None) == (name != "untied")
    got = rows(llm.encode(TEXTS, pooling_task="sparse_embed"), "data")
    assert got.shape == ref.shape == (len(TEXTS), len(T.AutoTokenizer.from_pretrained(str(path))))
    assert (got - ref).abs().max().item() <= ATOL
    for row_got, row_ref in zip(got, ref):
        assert torch.equal(row_got.nonzero().flatten(), row_ref.nonzero().flatten())
    # token_classify: the MLM head's softmax over the vocabulary at every token, as vLLM serves a masked LM.
    for o, logits, keep in zip(llm.encode(TEXTS, pooling_task="token_classify"), out.logits, mask.bool()):
        assert torch.allclose(o.outputs.data, torch.softmax(logits[keep], dim=-1), atol=ATOL)


def test_classify_matches_transformers(models: dict[str, Path]) -> None:
    path = models["classify"]
    out, _ = hf_outputs(T.AutoModelForSequenceClassification.from_pretrained(str(path)).eval(), path, TEXTS)
    ref = torch.softmax(out.logits, dim=-1)
    llm = LLM(str(path))
    assert llm.model.architecture_name == "DistilBertForSequenceClassification"
    outs = llm.classify(TEXTS)
    got = rows(outs, "probs")
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=ATOL)
    assert [o.outputs.label for o in outs] == [f"class_{i}" for i in ref.argmax(-1).tolist()]
    assert ref.std(0).max() > 0.01, "the tiny classifier must not be constant"


def test_token_classify_matches_transformers(models: dict[str, Path]) -> None:
    path = models["ner"]
    out, mask = hf_outputs(T.AutoModelForTokenClassification.from_pretrained(str(path)).eval(), path, TEXTS)
    llm = LLM(str(path))
    assert llm.model.architecture_name == "DistilBertForTokenClassification"
    assert "token_classify" in llm.supported_tasks and "classify" not in llm.supported_tasks
    for o, logits, keep in zip(llm.encode(TEXTS, pooling_task="token_classify"), out.logits, mask.bool()):
        ref = torch.softmax(logits[keep], dim=-1)
        assert o.outputs.data.shape == ref.shape == (int(keep.sum()), 5)
        assert torch.allclose(o.outputs.data, ref, atol=ATOL)


def test_sentence_transformers_embedder(models: dict[str, Path], tmp_path: Path) -> None:
    """A DistilBERT embedder as sentence-transformers saves one: Transformer + mean Pooling."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    st = SentenceTransformer(modules=[Transformer(str(models["embed"])), Pooling(32, "mean")], device="cpu")
    st.save(str(tmp_path / "st"))
    llm = LLM(str(tmp_path / "st"))
    info = llm.model.describe()
    assert (info["architecture"], info["implementation"]) == ("DistilBertModel", "native")
    assert info["tasks"]["embed"]["pooling_type"]["value"] == "MEAN"
    assert info["use_activation"]["value"] is False  # no Normalize module: the mean as it is
    texts = TEXTS + [" ".join(["the capital of france"] * 20)]
    ref = torch.tensor(st.encode(texts))
    got = rows(llm.embed(texts), "embedding")
    assert got.shape == ref.shape
    assert F.cosine_similarity(got, ref).min().item() >= MIN_COS
    assert (got - ref).abs().max().item() <= ATOL


def test_batch_invariance(models: dict[str, Path]) -> None:
    arch = load(models["embed"])
    seqs = random_sequences([3, 40, 17, 40, 1, 90], seed=4)
    together = run(arch, seqs)
    for i in range(len(seqs)):
        max_diff, min_cos = agreement(run(arch, [seqs[i]]), [together[i]])
        assert min_cos >= MIN_COS and max_diff <= ATOL


# -- loading and what poolkit says of it -----------------------------------------------------------


def test_config_contradicting_the_weights_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "bad"
    shutil.copytree(models["masked_lm"], path)
    config = json.loads((path / "config.json").read_text())
    for edit, message in (
        ({"n_layers": 3}, "config.json n_layers is 3, but the weights hold 2 layers"),
        ({"hidden_dim": 48}, r"config.json hidden_dim is 48, but the weights hold 64 \('distilbert.transformer.layer.0.ffn.lin1.weight'"),
        ({"n_heads": 5}, "config.json dim 32 is not a multiple of n_heads 5"),
    ):
        (path / "config.json").write_text(json.dumps({**config, **edit}))
        with pytest.raises(ModelLoadError, match=message) as caught:
            LLM(str(path))
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "name, dropped, message",
    [
        ("masked_lm", "distilbert.transformer.layer.1.ffn.lin2.bias", r"checkpoint lacks weights for transformer\.layer\.1\.ffn\.lin2\.bias$"),
        ("masked_lm", "distilbert.transformer.layer.0.attention.v_lin.weight", r"transformer\.layer\.0\.attention\.v_lin\.weight"),
        ("masked_lm", "vocab_layer_norm.weight", r"checkpoint lacks weights for vocab_layer_norm\.weight \(the MLM head\)"),
        ("masked_lm", "vocab_projector.bias", r"checkpoint lacks weights for vocab_projector\.bias \(the MLM head\)"),
        ("classify", "pre_classifier.weight", r"checkpoint lacks weights for pre_classifier\.weight$"),
    ],
)
def test_missing_tensor_is_named_as_the_checkpoint_names_it(models: dict[str, Path], name: str, dropped: str, message: str) -> None:
    path = models[name]
    arch = registry("architecture").get(json.loads((path / "config.json").read_text())["architectures"][0])(T.AutoConfig.from_pretrained(path))
    weights = [(n, t) for n, t in iter_tensors(checkpoint_files(path)) if n != dropped]
    with pytest.raises(ModelLoadError, match=message) as caught:
        arch.load_weights(weights)
    assert "\n" not in str(caught.value)


def test_a_masked_lm_checkpoint_embeds_as_its_encoder(models: dict[str, Path]) -> None:
    """Without sentence-transformers files, ``embed`` on DistilBertForMaskedLM pools the hidden
    states (CLS, normalized), as on BertForMaskedLM; the other task checkpoints convert to DistilBertModel."""
    path = models["masked_lm"]
    out, _ = hf_outputs(T.AutoModel.from_pretrained(str(path)).eval(), path, TEXTS)
    got = rows(LLM(str(path)).embed(TEXTS), "embedding")
    assert torch.allclose(got, F.normalize(out.last_hidden_state[:, 0], dim=-1), atol=ATOL)
    converted = LLM(str(models["classify"]), convert="embed")
    assert converted.model.architecture_name == "DistilBertModel"


def test_cli_info_names_the_layout(models: dict[str, Path]) -> None:
    from poolkit.entrypoints.cli import app

    result = CliRunner().invoke(app, ["info", str(models["masked_lm"])])
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["architecture"], info["implementation"], info["architecture_plugin"]) == (
        "DistilBertForMaskedLM", "native", "builtin_distilbert",
    )
    assert info["layout"] == {
        "value": LAYOUT,
        "source": "config.json model_type distilbert, architectures DistilBertForMaskedLM; tensors transformer.layer.N.attention.q_lin",
    }
    assert "sparse_embed" in info["tasks"]


def test_hooks_register_architectures() -> None:
    registered: dict[str, object] = {}
    distilbert.poolkit_register_architectures(register=registered.__setitem__)
    names = ("DistilBertModel", "DistilBertForMaskedLM", "DistilBertForSequenceClassification", "DistilBertForTokenClassification")
    assert registered == {n: getattr(distilbert, n) for n in names}
    assert all(registry("architecture").entry(n).plugin == "builtin_distilbert" for n in names)
    assert distilbert.DistilBertForMaskedLM.masked_lm_head
