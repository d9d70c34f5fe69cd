"""Static embeddings (:mod:`poolkit.builtin_models.static`) against their publishers' own code on
tiny random folders those libraries saved themselves (:mod:`tiny_static`):

- model2vec folders against ``model2vec.StaticModel.from_pretrained(dir).encode(texts)``
  (``model2vec/model.py``: ``tokenize`` without special tokens, the model's unknown token dropped,
  the first ``max_length`` = 512 tokens kept, ``_encode_batch``'s mean, zeros for a text with no
  tokens, L2 normalisation when ``config.json`` says ``normalize``);
- sentence-transformers ``StaticEmbedding`` folders against
  ``sentence_transformers.SentenceTransformer(dir).encode(texts)`` (``EmbeddingBag`` mean, then
  ``Normalize``), through ``poolkit.LLM``, ``poolkit.SentenceTransformer`` and ``poolkit embed``.

fp32, DESIGN §7: cosine >= 0.99999 and max |diff| <= 1e-4 (both references average in float32 or
wider; poolkit sums in float32 in another order); the zero vector of a text with no kept tokens
(empty, blank, unknown characters only) is compared exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_static import build_model2vec, build_st_static
from typer.testing import CliRunner

import poolkit
from poolkit import LLM
from poolkit.contracts.errors import ModelLoadError
from poolkit.entrypoints.cli import app

ATOL = 1e-4
#: Plain texts, upper case, an empty and a blank text, texts of unknown characters only (the tiny
#: WordPiece vocabulary has no ``€`` nor ``¥``) and mixed, the special tokens written out.
TEXTS = [
    "paris is the capital of france",
    "The Quick Brown Fox jumps over the lazy dog!",
    "",
    "   ",
    "€ ¥",
    "hello € world",
    "[CLS] berlin [SEP] germany [UNK]",
    "a",
]
#: model2vec folders: the published layout's switches.
MODEL2VEC = {
    "wordpiece": {},
    "not-normalized": dict(normalize=False),
    "unigram": dict(tokenizer="unigram"),
    "vocabulary-quantized": dict(clusters=16),
}
#: sentence-transformers folders: 6.x (module in the folder itself), 5.x (``0_StaticEmbedding/``), model2vec's keys.
ST = {
    "root": {},
    "not-normalized": dict(normalize=False),
    "module-folder": dict(module_folder=True),
    "model2vec-keys": dict(module_folder=True, model2vec_keys=True),
}


#: Texts over model2vec's ``max_length`` (512): two of words of one-character pieces (under
#: WordPiece's 100 characters a word), which its cut to ``max_length * median_token_length``
#: characters leaves over 512 tokens (then cut to 512, the second after 20 unknown tokens), and one
#: of whole words, which that cut leaves under 512.
LONG_TEXTS = [("ab" * 40 + " ") * 8, "€ " * 20 + ("cd" * 40 + " ") * 8, "paris is the capital of france " * 100]


def embeddings(llm: LLM, texts: list[str]) -> np.ndarray:
    return np.array([o.outputs.embedding for o in llm.embed(texts)], dtype=np.float64)


def assert_parity(got: np.ndarray, want: np.ndarray, atol: float = ATOL) -> None:
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    zero = ~want.any(axis=1)
    assert (got[zero] == 0).all(), "a text with no kept tokens is the zero vector"
    assert np.abs(got - want).max() <= atol
    g, w = got[~zero], want[~zero]
    cosine = (g * w).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(w, axis=1)
    assert cosine.min() >= 0.99999


@pytest.fixture(scope="module")
def model2vec_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("model2vec")
    return {name: build_model2vec(root / name, seed=i, **kw) for i, (name, kw) in enumerate(MODEL2VEC.items())}


@pytest.fixture(scope="module")
def st_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("st_static")
    return {name: build_st_static(root / name, seed=i, **kw) for i, (name, kw) in enumerate(ST.items())}


@pytest.mark.parametrize("name", sorted(MODEL2VEC))
def test_model2vec_folders_match_model2vec(model2vec_dirs, name):
    from model2vec import StaticModel

    reference = StaticModel.from_pretrained(model2vec_dirs[name])
    kept = [len(ids) for ids in reference.tokenize(LONG_TEXTS, max_length=512)]
    assert kept[:2] == [512, 512] and kept[2] < 512 < len(reference.tokenize(LONG_TEXTS[2:], max_length=None)[0])
    texts = TEXTS + LONG_TEXTS
    llm = LLM(str(model2vec_dirs[name]))

    assert_parity(embeddings(llm, texts), reference.encode(texts))
    one_by_one = np.concatenate([embeddings(llm, [t]) for t in texts])
    assert np.abs(one_by_one - embeddings(llm, texts)).max() <= 1e-6  # batch invariance


def test_model2vec_drops_the_unknown_token_of_a_wordpiece_model_only(model2vec_dirs):
    """model2vec drops ``tokenizer.model.unk_token``: a WordPiece model's ``[UNK]``; a Unigram model
    (model2vec 0.7's own tokenizers) names none, so its unknown pieces are averaged."""
    from model2vec import StaticModel

    wordpiece, unigram = LLM(str(model2vec_dirs["wordpiece"])), LLM(str(model2vec_dirs["unigram"]))
    assert wordpiece.model.hf_config.dropped_token_id == wordpiece.model.tokenizer.convert_tokens_to_ids("[UNK]")
    assert unigram.model.hf_config.dropped_token_id is None
    assert not embeddings(wordpiece, ["€ ¥"]).any()
    assert embeddings(unigram, ["€ ¥"]).any() == StaticModel.from_pretrained(model2vec_dirs["unigram"]).encode(["€ ¥"]).any()


def test_a_float16_table(tmp_path):
    """model2vec's ``distill`` saves float16 tables by default (``quantize_to``). model2vec averages
    them into float16 means (numpy's float32 intermediates), poolkit in float32: they differ by
    float16's rounding of the means (2**-11 of values under 1, normalised)."""
    from model2vec import StaticModel

    path = build_model2vec(tmp_path / "fp16", dtype="float16")
    assert json.loads((path / "config.json").read_text())["embedding_dtype"] == "float16"
    assert_parity(embeddings(LLM(str(path)), TEXTS), StaticModel.from_pretrained(path).encode(TEXTS), atol=2.0**-10)


@pytest.mark.parametrize("name", sorted(ST))
def test_sentence_transformers_static_embedding_matches_sentence_transformers(st_dirs, name):
    from sentence_transformers import SentenceTransformer

    texts = TEXTS + ["a " * 700]  # no truncation: max_seq_length is infinite
    want = SentenceTransformer(str(st_dirs[name]), device="cpu").encode(texts)
    assert_parity(embeddings(LLM(str(st_dirs[name])), texts), want)


def test_poolkit_sentence_transformer_and_the_cli_match_sentence_transformers(st_dirs):
    from sentence_transformers import SentenceTransformer

    path = st_dirs["module-folder"]
    want = SentenceTransformer(str(path), device="cpu").encode(TEXTS)
    assert_parity(np.asarray(poolkit.SentenceTransformer(str(path)).encode(TEXTS), dtype=np.float64), want)

    result = CliRunner().invoke(app, ["embed", "--model", str(path), *TEXTS[:2], "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert_parity(np.array([r["embedding"] for r in rows]), want[:2])


def test_info_names_the_layout(model2vec_dirs, st_dirs):
    m2v = LLM(str(model2vec_dirs["vocabulary-quantized"])).model.describe()
    assert m2v["layout"] == {
        "value": "model2vec",
        "source": "config.json architectures (StaticModel), model.safetensors (embeddings, mapping, weights)",
    }
    assert m2v["averaged_tokens"]["value"] == "the first 512, unknown token 1 left out"
    assert m2v["max_model_len"]["value"] is None  # no positions
    st = LLM(str(st_dirs["module-folder"])).model.describe()
    assert st["layout"] == {"value": "sentence-transformers StaticEmbedding", "source": "modules.json: 0_StaticEmbedding"}
    assert st["architecture"] == "StaticEmbedding" and st["use_activation"]["value"] is True
    raw = LLM(str(st_dirs["not-normalized"])).model.describe()
    assert raw["layout"]["source"] == "modules.json: the model folder" and raw["use_activation"]["value"] is False


def _rewrite(path, **tensors) -> None:
    """Replace tensors of ``path/model.safetensors``."""
    saved = load_file(str(path / "model.safetensors"))
    save_file({**saved, **tensors}, str(path / "model.safetensors"))


def _refused(path) -> str:
    with pytest.raises(ModelLoadError) as err:
        LLM(str(path))
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_table_that_does_not_fit_the_tokenizer_is_refused_in_one_line(tmp_path):
    path = build_model2vec(tmp_path / "rows")
    _rewrite(path, embeddings=torch.randn(100, 32))
    assert "the table 'embeddings' has 100 rows, but the tokenizer (tokenizer.json) has 112 tokens" in _refused(path)

    st = build_st_static(tmp_path / "st")
    _rewrite(st, **{"embedding.weight": torch.randn(111, 32)})
    assert "the table 'embedding.weight' has 111 rows, but the tokenizer (tokenizer.json) has 112 tokens" in _refused(st)


@pytest.mark.parametrize(
    "tensors, message",
    [
        (dict(mapping=torch.zeros(50, dtype=torch.long)), "'mapping' has shape (50,), but the tokenizer (tokenizer.json) has 112 tokens"),
        (dict(weights=torch.ones(113)), "'weights' has shape (113,), but the tokenizer (tokenizer.json) has 112 tokens"),
        (dict(mapping=torch.full((112,), 16, dtype=torch.long)), "'mapping' points at rows 16..16, but 'embeddings' has 16 rows"),
    ],
    ids=["short-mapping", "long-weights", "mapping-past-the-table"],
)
def test_a_mapping_or_weights_of_the_wrong_length_is_refused_in_one_line(tmp_path, tensors, message):
    path = build_model2vec(tmp_path / "quantized", clusters=16)
    _rewrite(path, **tensors)
    assert message in _refused(path)


def test_normalize_in_config_and_modules_json_must_agree(tmp_path):
    path = build_model2vec(tmp_path / "m2v")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "normalize": False}))
    assert _refused(path) == "config.json says normalize: false, but modules.json has a Normalize module"


def test_bench_measures_model2vec(model2vec_dirs):
    """``poolkit bench --vs model2vec``: model2vec itself is the peer and the parity reference (a
    static model has no matmul: the bench's FLOP figures are 0)."""
    from poolkit.entrypoints.bench import Bench

    args = poolkit.EngineArgs(model=str(model2vec_dirs["wordpiece"]), device="cpu")
    bench = Bench(args, rounds=1, scale=0.005, memory=False, vs="model2vec")
    result = bench.w1()
    assert bench.peer.implementation(bench.encoder).startswith("model2vec 0.7")
    assert result.poolkit_items_per_s > 0 and result.peer_items_per_s > 0 and result.padding_fraction_peer == 0.0
    assert result.min_cosine >= 0.99999
