# Port of sentence-transformers tests/multi_vector_encoder/test_model.py
# Six stored versions were read (11,043, 13,349, 28,153, 37,606, 55,119 and 89,239 characters); the
# port follows the newest (89,239: the sentence-transformers 6.2 API, query_expansion dicts, no
# convert_to_tensor) and adds the inference tests only older versions have
# (test_encode_query_pads_to_query_length, test_maxsim_pairwise_padded_tensor_without_mask_excludes_zero_rows).
# INVENTORY.md lists the rest (module internals, training scorers, saving, multimodal, PEFT).
# Stand-ins (conftest.py): upstream's ``model`` (stsb-bert-tiny converted to a MultiVectorEncoder) ->
# all-MiniLM-L6-v2 converted by sentence-transformers and saved (``mve_model``); the pipelines upstream
# builds from modules or sets on ``model[0]`` / ``model[2]`` -> sentence-transformers builds them and
# saves them (``colbert_mve_model``, ``save_native_mve``); upstream's per-test checkpoints (PyLate
# configs, Stanford-NLP ColBERT, dense and sparse SentenceTransformer saves) -> the same shapes on the
# tiny random BERT (``tiny_bert_dir``). Every poolkit model is compared with sentence-transformers'
# MultiVectorEncoder on the same directory (fp32, atol 1e-4). Inputs are passed positionally.
# Where upstream changes a loaded model's modules to reach a setting a checkpoint can carry, the port
# saves that setting with the checkpoint instead (ADAPTED).
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from st_port_utils import ATOL, assert_close, dense

FP32 = {"dtype": torch.float32}
CORPUS_PAIRS = (
    ["What is the capital of France?", "Who painted the Mona Lisa?"],
    ["Paris is big.", "Da Vinci painted.", "Berlin here.", "More text."],
)


def _assert_same_vectors(got, ref, atol: float = ATOL) -> None:
    """Per-input token vectors: the same number of inputs, of rows per input, and the same values."""
    assert len(got) == len(ref)
    for got_item, ref_item in zip(got, ref):
        assert tuple(got_item.shape) == tuple(ref_item.shape), f"{tuple(got_item.shape)} != reference {tuple(ref_item.shape)}"
        assert_close(got_item, ref_item, atol)


def _assert_same_scores(got, ref) -> None:
    """MaxSim scores (sums over query tokens) held to 1e-4 relative to their size."""
    assert_close(got, ref, atol=ATOL * max(1.0, float(dense(ref).abs().max())))


def _rows(embeddings) -> list[int]:
    return [int(e.shape[0]) for e in embeddings]


def _key(config: dict) -> str:
    """A directory name for one config."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


@pytest.fixture(scope="module")
def saves(tmp_path_factory):
    """``saves(name, build)``: the directory ``build(path)`` writes, built once per module."""
    root = tmp_path_factory.mktemp("mve-saves")
    built: dict[str, Path] = {}

    def get(name: str, build) -> Path:
        if name not in built:
            built[name] = Path(build(root / name))
        return built[name]

    return get


@pytest.fixture(scope="module")
def stanford_nometa_dir(saves) -> Path:
    from tiny_models import build_stanford_colbert

    return saves("stanford-nometa", lambda path: build_stanford_colbert(path, metadata=None))


def _st_save(path: Path, backbone: Path, dense_dim: int | None = None, **config) -> Path:
    """A SentenceTransformer (dense, mean pooling) save of ``backbone``, a Dense head of ``dense_dim``
    if given, ``config`` merged into config_sentence_transformers.json."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(str(backbone))
    hidden = transformer.get_embedding_dimension()
    modules = [transformer, Pooling(hidden, "mean")]
    if dense_dim is not None:
        torch.manual_seed(0)
        modules.append(Dense(in_features=hidden, out_features=dense_dim, bias=False, activation_function=torch.nn.Identity()))
    SentenceTransformer(modules=modules, device="cpu").save(str(path))
    config_path = path / "config_sentence_transformers.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **config}))
    return path


# -- loading and the default pipeline ----------------------------------------------------------


def test_loads_with_default_modules(mve_model, mve_reference) -> None:
    # DEPARTURE: poolkit has no module list (len(model), model[i]); the reference's pipeline is the
    # four modules upstream expects, and poolkit's width is its projection's, on every token vector.
    assert [type(module).__name__ for module in mve_reference] == ["Transformer", "Dense", "MultiVectorMask", "Normalize"]
    assert mve_reference[0].query_expansion is None
    assert mve_reference[1].module_input_name == "token_embeddings"
    assert mve_model.get_embedding_dimension() == mve_reference[1].out_features
    embeddings = mve_model.encode_query(["a query", "another query"])
    assert all(e.shape[1] == mve_model.get_embedding_dimension() for e in embeddings)
    # POOLKIT (beyond upstream): the vectors are sentence-transformers'.
    _assert_same_vectors(embeddings, mve_reference.encode_query(["a query", "another query"]))


def test_default_colbert_attributes(mve_model, mve_reference) -> None:
    assert mve_model.similarity_fn_name == "maxsim"
    # DEPARTURE: the Transformer's query_length / document_length / query_expansion (None) and the
    # MultiVectorMask's empty skiplist are module attributes; the port checks what they do: a query
    # is as many vectors as tokens (no expansion, no query length), and punctuation is kept.
    tokenizer = mve_model.tokenizer
    query = "short query"
    punctuated = "the cat, sat, on, the, mat."
    assert _rows(mve_model.encode_query([query])) == [len(tokenizer(query)["input_ids"])]
    assert _rows(mve_model.encode_document([punctuated])) == [len(tokenizer(punctuated)["input_ids"])]
    # POOLKIT (beyond upstream): as sentence-transformers encodes them.
    _assert_same_vectors(mve_model.encode_query([query, punctuated]), mve_reference.encode_query([query, punctuated]))
    _assert_same_vectors(mve_model.encode_document([query, punctuated]), mve_reference.encode_document([query, punctuated]))


def test_bare_checkpoint_gets_no_expansion(tiny_bert_dir, load_mve, load_mve_reference) -> None:
    # Stand-in: hf-internal-testing/tiny-random-bert -> the tiny random BERT (config.json only).
    model = load_mve(tiny_bert_dir)
    reference = load_mve_reference(tiny_bert_dir)
    assert reference[0].query_expansion is None
    # DEPARTURE: sentence-transformers appends a random 128-wide projection to a bare checkpoint;
    # poolkit's vectors are the encoder's, so token counts are compared, not values.
    texts = ["short query", "what is the capital of france"]
    expected = [len(model.tokenizer(text)["input_ids"]) for text in texts]
    assert _rows(model.encode_query(texts)) == _rows(reference.encode_query(texts)) == expected


def test_encode_query_pads_to_expansion_length(colbert_mve_model, colbert_mve_reference) -> None:
    # ADAPTED: upstream sets model[0].query_expansion = {"strategy": "fixed", "length": 16} on the
    # loaded model; the stand-in is saved with it.
    emb = colbert_mve_model.encode_query(["short query"])
    assert len(emb) == 1
    assert emb[0].shape[0] == 16
    assert emb[0].shape[1] == colbert_mve_model.get_embedding_dimension()
    # POOLKIT (beyond upstream): the [MASK] expansion's vectors are sentence-transformers'.
    _assert_same_vectors(emb, colbert_mve_reference.encode_query(["short query"]))


def test_encode_document_varies_with_length(mve_model, mve_reference) -> None:
    docs = ["one short doc", "a much longer document with more tokens to embed"]
    embs = mve_model.encode_document(docs)
    assert len(embs) == 2
    assert embs[1].shape[0] > embs[0].shape[0]
    _assert_same_vectors(embs, mve_reference.encode_document(docs))


# -- the skiplist -------------------------------------------------------------------------------


def test_encode_document_skiplist_removes_punctuation(colbert_mve_model, colbert_mve_reference) -> None:
    # ADAPTED: upstream sets the MultiVectorMask's skiplist_words to string.punctuation on the loaded
    # model; the stand-in is saved with that skiplist.
    no_punc = colbert_mve_model.encode_document(["the cat sat on the mat"])
    with_punc = colbert_mve_model.encode_document(["the cat, sat, on, the, mat."])
    assert with_punc[0].shape[0] == no_punc[0].shape[0]
    _assert_same_vectors(with_punc, colbert_mve_reference.encode_document(["the cat, sat, on, the, mat."]))


def test_encode_document_default_skiplist_keeps_punctuation(mve_model, mve_reference) -> None:
    no_punc = mve_model.encode_document(["the cat sat on the mat"])
    with_punc = mve_model.encode_document(["the cat, sat, on, the, mat."])
    assert with_punc[0].shape[0] > no_punc[0].shape[0]
    _assert_same_vectors(with_punc, mve_reference.encode_document(["the cat, sat, on, the, mat."]))


def test_skiplist_words_set_at_init_and_resolved_on_demand(saves, tiny_bert_dir, save_native_mve_fn, load_mve, load_mve_reference) -> None:
    # ADAPTED: upstream changes the loaded model's skiplist to ["!"] and resolves it; the port loads
    # the same pipeline saved without and with skiplist_words=["!"] (set at init).
    plain = saves("skiplist-none", lambda path: save_native_mve_fn(path, tiny_bert_dir))
    bang = saves("skiplist-bang", lambda path: save_native_mve_fn(path, tiny_bert_dir, skiplist_words=["!"]))
    document = "hello ! world !"
    tokens_before = load_mve(plain).encode_document([document])[0].shape[0]
    after = load_mve(bang).encode_document([document])
    assert after[0].shape[0] == tokens_before - 2
    _assert_same_vectors(after, load_mve_reference(bang).encode_document([document]))


def test_mask_keep_only_token_ids_restricts_document_mask(saves, tiny_bert_dir, save_native_mve_fn, load_mve, load_mve_reference) -> None:
    # DEPARTURE: upstream sets keep_only_token_ids (colpali-engine's image-token allowlist) on the
    # loaded model's MultiVectorMask; the port saves it with the checkpoint (the mask's config keeps
    # it). poolkit does not run such an allowlist and refuses the checkpoint instead of scoring every
    # token; sentence-transformers keeps the five periods only.
    from tiny_models import wordpiece_tokenizer

    from poolkit import PoolkitError

    period_id = wordpiece_tokenizer().convert_tokens_to_ids(".")
    path = saves("keep-only-period", lambda out: save_native_mve_fn(out, tiny_bert_dir, keep_only_token_ids=[period_id]))
    emb = load_mve_reference(path).encode_document(["the cat. sat. on. the. mat."])[0]
    assert emb.shape[0] == 5
    with pytest.raises(PoolkitError, match="token ids"):
        load_mve(path)


def test_stanford_metadata_seeds_skiplist_from_mask_punctuation(saves, load_mve, load_mve_reference) -> None:
    # ADAPTED: upstream monkeypatches the artifact.metadata reader and calls the private
    # _maybe_load_stanford_metadata; the port loads one colbert-ai checkpoint per metadata and checks
    # what the skiplist does to a punctuated document (its three marks are single tokens).
    from tiny_models import build_stanford_colbert

    punctuated, plain = "paris, the capital. of france!", "paris the capital of france"
    for name, metadata, masked in (
        ("absent", {}, True),  # absent: ColBERTConfig's own default is True
        ("false", {"mask_punctuation": False}, False),
        ("true", {"mask_punctuation": True}, True),
    ):
        path = saves(f"stanford-mask-{name}", lambda out, metadata=metadata: build_stanford_colbert(out, metadata=metadata))
        model = load_mve(path)
        got = model.encode_document([punctuated, plain])
        assert got[0].shape[0] == got[1].shape[0] + (0 if masked else 3), f"metadata={metadata}"
        _assert_same_vectors(got, load_mve_reference(path).encode_document([punctuated, plain]))


# -- PyLate configs -----------------------------------------------------------------------------

_NOT_NORMALIZED = (
    "a SentenceTransformer-format save (model_type 'SentenceTransformer') whose config_sentence_transformers.json "
    "has no truthy query_prefix / query_length / document_length is not read as late-interaction: poolkit's token "
    "vectors are the Dense output, not L2-normalized (core/loading/model.py use_activation follows modules.json, which has "
    "no Normalize); sentence-transformers' conversion always appends Normalize(module_input_name='token_embeddings') "
    "(multi_vector_encoder/model.py, MultiVectorEncoder._load_converted_modules)"
)


@pytest.mark.parametrize(
    ("model_config", "expected_qe"),
    [
        ({"query_length": 32}, {"strategy": "fixed", "attend": False, "length": 32}),
        ({"query_length": 32, "do_query_expansion": False}, None),
        ({"query_length": 32, "attend_to_expansion_tokens": True}, {"strategy": "fixed", "attend": True, "length": 32}),
        ({"query_length": 32, "attend_to_expansion_tokens": False}, {"strategy": "fixed", "attend": False, "length": 32}),
        ({"query_length": 32, "attend_to_mask_tokens": True}, {"strategy": "fixed", "attend": True, "length": 32}),
        # ADAPTED: upstream's query_length is 48; a checkpoint whose query_length is below its expansion
        # length does not load in sentence-transformers (ValueError), so the port saves 64.
        pytest.param(
            {"query_length": 64, "query_expansion": {"strategy": "fixed", "attend": True, "token": ".", "length": 64}},
            {"strategy": "fixed", "attend": True, "token": ".", "length": 64}
        ),
        pytest.param(
            {"query_length": 32, "query_expansion": None},
            None
        ),
        pytest.param({"similarity_fn_name": "maxsim"}, "absent"),
        pytest.param(
            {"query_length": None},
            {"strategy": "fixed", "attend": False, "length": 32}
        ),
    ],
    ids=[
        "query_length",
        "no_expansion",
        "attend_expansion",
        "attend_expansion_false",
        "attend_mask_tokens",
        "explicit_dict",
        "explicit_none",
        "no_pylate_marker",
        "null_query_length",
    ],
)
def test_parse_model_config_translates_pylate_expansion(
    saves, tiny_bert_dir, load_mve, load_mve_reference, model_config, expected_qe
) -> None:
    # ADAPTED: upstream calls the private _parse_model_config and reads the translated knobs; the port
    # saves a PyLate-style checkpoint with each config (tiny random BERT + Dense) and checks the query
    # widths the translation gives, and the vectors, against sentence-transformers on the same save.
    from tiny_models import build_pylate_colbert

    path = saves("pylate-" + _key(model_config), lambda out: build_pylate_colbert(out, tiny_bert_dir, **model_config))
    model, reference = load_mve(path), load_mve_reference(path)
    queries = ["short query", "what is the capital of france"]
    if isinstance(expected_qe, dict):
        expected_rows = [expected_qe["length"]] * len(queries)
        assert {k: reference[0].query_expansion[k] for k in expected_qe} == expected_qe
    else:
        expected_rows = [len(model.tokenizer(query)["input_ids"]) for query in queries]
        assert reference[0].query_expansion is None
    got = model.encode_query(queries)
    assert _rows(got) == expected_rows
    _assert_same_vectors(got, reference.encode_query(queries))


_PYLATE_PREFIX_AND_PROMPTS = {
    "query_prefix": "<s> ",
    "document_prefix": "</s> ",
    "prompts": {"query": "search_query: ", "document": "search_document: "},
}


@pytest.mark.parametrize(
    ("model_config", "user_prompts", "expected"),
    [
        ({"query_prefix": "<s> ", "document_prefix": "</s> "}, {}, ("<s> ", "</s> ")),
        ({"query_prefix": "<s> ", "document_prefix": "</s> ", "prompts": {"query": "", "document": ""}}, {}, ("<s> ", "</s> ")),
        (_PYLATE_PREFIX_AND_PROMPTS, {}, ("<s> search_query: ", "</s> search_document: ")),
        (
            {
                "query_prefix": "<s> ",
                "document_prefix": "</s> ",
                "prompts": {"query": "<s> search_query: ", "document": "</s> search_document: "},
            },
            {},
            ("<s> search_query: ", "</s> search_document: "),
        ),
        pytest.param(
            {"query_prefix": None, "document_prefix": None, "prompts": {"query": "q: ", "document": "d: "}},
            {},
            ("q: ", "d: ")
        ),
        (_PYLATE_PREFIX_AND_PROMPTS, {"query": "q: ", "document": "d: "}, ("q: ", "d: ")),
        (_PYLATE_PREFIX_AND_PROMPTS, {"query": "", "document": ""}, ("", "")),
    ],
    ids=[
        "prefix",
        "prefix_empty_prompts",
        "prefix_and_prompts",
        "already_composed",
        "null_prefix",
        "caller_prompts",
        "caller_empty_prompts",
    ],
)
def test_parse_model_config_composes_pylate_prefix_with_prompts(
    saves, tiny_bert_dir, load_mve, load_mve_reference, model_config, user_prompts, expected
) -> None:
    # ADAPTED: upstream feeds each config to the private _parse_model_config; the port saves it in a
    # PyLate-style checkpoint and loads it with the caller's prompts. Stand-in markers: "<s> " / "</s> "
    # (tokens of the tiny vocabulary) for PyLate's "[Q] " / "[D] ".
    from tiny_models import build_pylate_colbert

    path = saves("pylate-prompts-" + _key(model_config), lambda out: build_pylate_colbert(out, tiny_bert_dir, **model_config))
    kwargs = {"prompts": user_prompts} if user_prompts else {}
    model, reference = load_mve(path, **kwargs), load_mve_reference(path, **kwargs)
    assert (model.prompts["query"], model.prompts["document"]) == expected
    assert (reference.prompts["query"], reference.prompts["document"]) == expected
    # POOLKIT (beyond upstream): the composed prompts encode as sentence-transformers encodes them.
    texts = ["what is the capital of france", "paris, the capital. of france!"]
    _assert_same_vectors(model.encode_query(texts), reference.encode_query(texts))
    _assert_same_vectors(model.encode_document(texts), reference.encode_document(texts))


def test_pylate_marked_conversion_defaults_punctuation_skiplist(saves, tiny_bert_dir, load_mve, load_mve_reference) -> None:
    # ADAPTED: upstream's save is the stsb tiny SentenceTransformer without a Dense (sentence-transformers
    # adds a random projection); the stand-in is a PyLate-style save with a Dense, so the vectors can be
    # compared with the reference's.
    from tiny_models import build_pylate_colbert

    path = saves("pylate-marked", lambda out: build_pylate_colbert(out, tiny_bert_dir, query_prefix="[Q] ", document_prefix="[D] "))
    model = load_mve(path)
    # DEPARTURE: MultiVectorMask's skiplist_words -> the punctuation is left out of documents.
    got = model.encode_document(["paris, the capital. of france!", "paris the capital of france"])
    assert got[0].shape[0] == got[1].shape[0]
    assert model.prompts.get("query") == "[Q] "
    assert model.prompts.get("document") == "[D] "
    _assert_same_vectors(got, load_mve_reference(path).encode_document(["paris, the capital. of france!", "paris the capital of france"]))


def test_pylate_save_without_prefixes_skiplist(saves, tiny_bert_dir, load_mve, load_mve_reference) -> None:
    # POOLKIT (beyond upstream): the other side of test_pylate_marked_conversion_defaults_punctuation_skiplist:
    # a PyLate-style SentenceTransformer save with PyLate's length keys but no query_prefix / document_prefix.
    from tiny_models import build_pylate_colbert

    path = saves("pylate-no-prefix", lambda out: build_pylate_colbert(out, tiny_bert_dir, query_length=32))
    texts = ["paris, the capital. of france!"]
    _assert_same_vectors(load_mve(path).encode_document(texts), load_mve_reference(path).encode_document(texts))


# -- colbert-ai (Stanford-NLP) checkpoints ------------------------------------------------------


def test_loads_stanford_colbert_archetype(saves, load_mve, load_mve_reference) -> None:
    # Stand-in: upstream's _write_stanford_checkpoint (its tiny backbone re-saved as HF_ColBERT with a
    # root linear.weight) -> build_stanford_colbert, same layout, same metadata.
    from safetensors.torch import load_file
    from tiny_models import build_stanford_colbert

    metadata = {"query_maxlen": 8, "doc_maxlen": 96, "mask_punctuation": True, "attend_to_mask_tokens": False}
    path = saves("stanford-archetype", lambda out: build_stanford_colbert(out, metadata=metadata))
    model, reference = load_mve(path), load_mve_reference(path)

    expected = load_file(path / "model.safetensors")["linear.weight"]
    assert model.get_embedding_dimension() == expected.shape[0]
    # DEPARTURE: the Dense module's weight is the reference's (checked there); poolkit's vectors are
    # compared with the reference's below, so they are that weight's projection.
    assert torch.allclose(reference[1].linear.weight.cpu(), expected)

    # DEPARTURE: model[0].document_length / query_expansion -> the widths they give.
    queries = ["what is the capital of france", "hello world"]
    assert _rows(model.encode_query(queries)) == [8, 8]
    long_document = "hello world " * 60
    assert _rows(model.encode_document([long_document])) == [96]
    assert model.prompts == {"query": "[unused0] ", "document": "[unused1] "}
    # DEPARTURE: mask._skiplist_ids -> the punctuation is left out of documents.
    documents = ["paris, the capital. of france!", "paris the capital of france", long_document]
    got = model.encode_document(documents)
    assert got[0].shape[0] == got[1].shape[0]
    _assert_same_vectors(got, reference.encode_document(documents))
    _assert_same_vectors(model.encode_query(queries), reference.encode_query(queries))


def test_stanford_colbert_archetype_without_metadata_uses_defaults(stanford_nometa_dir, load_mve, load_mve_reference, caplog) -> None:
    reference = load_mve_reference(stanford_nometa_dir)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model = load_mve(stanford_nometa_dir)
    # DEPARTURE: a warning naming artifact.metadata, not sentence-transformers' sentence.
    assert "artifact.metadata" in caplog.text
    assert model.prompts == {"query": "[unused0] ", "document": "[unused1] "}
    # DEPARTURE: model[0].query_expansion["length"] == 32 -> 32-vector queries; the mask's
    # skiplist_words == string.punctuation -> punctuation left out of documents.
    assert _rows(model.encode_query(["short query"])) == [32]
    got = model.encode_document(["paris, the capital. of france!", "paris the capital of france"])
    assert got[0].shape[0] == got[1].shape[0]
    _assert_same_vectors(got, reference.encode_document(["paris, the capital. of france!", "paris the capital of france"]))


@pytest.mark.parametrize(
    ("user_prompts", "expected"),
    [
        ({"query": "custom: "}, {"query": "custom: ", "document": "[unused1] "}),
        ({"query": "", "document": ""}, {"query": "", "document": ""}),
    ],
)
def test_stanford_colbert_archetype_keeps_caller_prompts(stanford_nometa_dir, load_mve, load_mve_reference, user_prompts, expected) -> None:
    loaded = load_mve(stanford_nometa_dir, prompts=user_prompts)
    assert loaded.prompts == expected
    # POOLKIT (beyond upstream): the caller's prompts encode as sentence-transformers encodes them.
    reference = load_mve_reference(stanford_nometa_dir, prompts=user_prompts)
    assert reference.prompts == expected
    texts = ["what is the capital of france", "paris, the capital. of france!"]
    _assert_same_vectors(loaded.encode_query(texts), reference.encode_query(texts))
    _assert_same_vectors(loaded.encode_document(texts), reference.encode_document(texts))


# -- encode: outputs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("convert_to_numpy", "element_type"), [(False, torch.Tensor), (True, np.ndarray)])
def test_encode_output_formats(mve_model, mve_reference, convert_to_numpy: bool, element_type: type) -> None:
    docs = ["short doc", "a considerably longer document with many more distinct tokens than the first one"]
    dim = mve_model.get_embedding_dimension()
    out = mve_model.encode_document(docs, convert_to_numpy=convert_to_numpy)
    assert isinstance(out, list)
    assert len(out) == len(docs)
    assert all(isinstance(emb, element_type) and emb.ndim == 2 and emb.shape[1] == dim for emb in out)
    assert out[0].shape[0] < out[1].shape[0]
    _assert_same_vectors(out, mve_reference.encode_document(docs, convert_to_numpy=convert_to_numpy))


def test_singular_input_unwraps(mve_model, mve_reference) -> None:
    emb = mve_model.encode_document("a single doc string")
    assert isinstance(emb, torch.Tensor)
    assert emb.ndim == 2
    array = mve_model.encode_document("a single doc string", convert_to_numpy=True)
    assert isinstance(array, np.ndarray)
    assert array.ndim == 2
    assert_close(emb, mve_reference.encode_document("a single doc string"))


def test_encode_defaults_to_tensors_on_model_device(mve_model) -> None:
    embeddings = mve_model.encode_document(["one doc", "another doc"])
    assert all(isinstance(emb, torch.Tensor) and emb.device == mve_model.device for emb in embeddings)
    assert all(isinstance(emb, np.ndarray) for emb in mve_model.encode_document(["a", "b"], convert_to_numpy=True))


def test_convert_to_tensor_is_rejected_by_name(mve_model) -> None:
    # DEPARTURE: the error type and the argument's name (poolkit's own sentence).
    with pytest.raises(ValueError, match="convert_to_tensor"):
        mve_model.encode_document(["a doc"], convert_to_tensor=True)


def test_encode_empty_list(mve_model, mve_reference) -> None:
    assert mve_model.encode([]) == mve_reference.encode([]) == []


def test_encode_output_value_none_returns_feature_dicts(mve_model, mve_reference) -> None:
    outputs = mve_model.encode_query(["short", "a somewhat longer query"], output_value=None)
    assert isinstance(outputs, list) and len(outputs) == 2
    for item in outputs:
        assert isinstance(item, dict)
        assert item["token_embeddings"].ndim == 2
        assert item["attention_mask"].shape == item["token_embeddings"].shape[:1]
    # DEPARTURE: poolkit gives each input its own unpadded tensors, not rows padded to the batch's
    # longest input; the vectors the mask selects are the reference's.
    reference = mve_reference.encode_query(["short", "a somewhat longer query"], output_value=None)
    for item, ref in zip(outputs, reference):
        assert_close(item["token_embeddings"][item["attention_mask"].bool()], ref["token_embeddings"][ref["attention_mask"].bool()])
    single = mve_model.encode_document("hello world", output_value=None)
    assert isinstance(single, dict) and "token_embeddings" in single
    assert outputs[0]["modality"] == "text"  # non-tensor values carried as-is, not char-sliced


def test_encode_output_value_rejects_unknown(mve_model) -> None:
    with pytest.raises(ValueError, match="output_value"):
        mve_model.encode(["x"], output_value="sentence_embedding")


@pytest.mark.xfail(
    strict=True,
    reason="poolkit's output_value=None dicts have no 'prompt_length' (nor 'token_type_ids'); sentence-transformers "
    "adds prompt_length when a prompt is given (Transformer.preprocess, kept by MultiVectorEncoder._inference)",
)
def test_encode_output_value_none_with_prompt(mve_model) -> None:
    outputs = mve_model.encode(["Text one", "Text two"], prompt="query: ", output_value=None)
    assert len(outputs) == 2
    for item in outputs:
        assert isinstance(item, dict)
        assert item["input_ids"].shape == item["attention_mask"].shape
        assert "prompt_length" in item


def test_encode_output_value_none_ignores_convert_flags(mve_model) -> None:
    for outputs in (
        mve_model.encode(["x", "y"], output_value=None),
        mve_model.encode(["x", "y"], output_value=None, convert_to_numpy=True),
    ):
        assert isinstance(outputs, list)
        assert all(isinstance(item, dict) for item in outputs)


# -- checkpoints sentence-transformers saved or converts --------------------------------------


@pytest.mark.parametrize("stand_in", ["mve", "colbert_mve"])
def test_save_and_load_round_trip(request, stand_in: str) -> None:
    # ADAPTED: poolkit does not save; the save is sentence-transformers' (the stand-in directory) and
    # the reload is poolkit's. Upstream's module attributes (query_length, document_length,
    # query_expansion, skiplist_words) -> the widths and vectors they give, against the reference.
    model = request.getfixturevalue(f"{stand_in}_model")
    reference = request.getfixturevalue(f"{stand_in}_reference")
    assert model.prompts.get("query") == reference.prompts.get("query")
    assert model.prompts.get("document") == reference.prompts.get("document")
    texts = ["test", "paris, the capital. of france!", "a much longer document " * 12]
    _assert_same_vectors(model.encode_query(texts), reference.encode_query(texts))
    _assert_same_vectors(model.encode_document(texts), reference.encode_document(texts))


def test_user_constructed_model_with_prefix_prompts_round_trips(colbert_mve_model, colbert_mve_reference) -> None:
    # ADAPTED: sentence-transformers builds the pipeline from modules with "[unused0] " / "[unused1] "
    # text prompts and saves it (conftest.py, colbert_mve_dir); poolkit loads the save. The embeddings
    # before the save are the reference's, which loads the same save (upstream's own round trip).
    assert colbert_mve_model.prompts.get("query") == "[unused0] "
    _assert_same_vectors(colbert_mve_model.encode_query(["a short query"]), colbert_mve_reference.encode_query(["a short query"]))
    _assert_same_vectors(
        colbert_mve_model.encode_document(["a document to embed"]), colbert_mve_reference.encode_document(["a document to embed"])
    )


def test_convert_dense_sentence_transformer_resets_similarity_to_maxsim(saves, tiny_bert_dir, load_mve, load_mve_reference) -> None:
    # Stand-in: stsb-bert-tiny saved as a SentenceTransformer with similarity_fn_name "cosine" -> the
    # tiny random BERT with mean pooling, saved so.
    path = saves("st-cosine", lambda out: _st_save(out, tiny_bert_dir, similarity_fn_name="cosine"))
    model = load_mve(path)
    assert model.similarity_fn_name == "maxsim"
    # DEPARTURE: the MultiVectorMask + Normalize tail (model[-2], model[-1]) -> unit-norm token
    # vectors, as many as the reference's (sentence-transformers adds a random 128-wide projection;
    # poolkit's vectors are the encoder's, so values are not compared).
    texts = ["hello world", "what is the capital of france"]
    got = model.encode_query(texts)
    assert _rows(got) == _rows(load_mve_reference(path).encode_query(texts))
    for emb in got:
        assert torch.allclose(emb.norm(dim=-1), torch.ones(emb.shape[0]), atol=1e-4)


def test_convert_dense_st_with_dense_head_redirects_to_token_level(saves, tiny_bert_dir, load_mve, load_mve_reference) -> None:
    # Stand-in: the LaBSE-shape save (stsb-bert-tiny + mean Pooling + Dense to 64) on the tiny random BERT.
    path = saves("st-dense-head", lambda out: _st_save(out, tiny_bert_dir, dense_dim=64))
    model, reference = load_mve(path), load_mve_reference(path)
    # DEPARTURE: the converted Dense module's IO names and weight are the reference's (checked there);
    # poolkit's vectors are held to the reference's.
    converted_dense = next(module for module in reference if type(module).__name__ == "Dense")
    assert converted_dense.module_input_name == "token_embeddings"
    embeddings = model.encode_query(["hello world"])
    assert embeddings[0].shape[1] == 64
    _assert_same_vectors(embeddings, reference.encode_query(["hello world"]))


def test_io_nameless_dense_config_defaults_to_token_level(saves, tiny_bert_dir, save_native_mve_fn, load_mve, load_mve_reference) -> None:
    # ADAPTED: upstream saves its converted tiny model and deletes the Dense config's module IO names;
    # the port does so to a native save of the tiny random BERT. DEPARTURE: the Dense module's IO
    # names -> the vectors are the token-level projection's (the reference's).
    def build(out: Path) -> Path:
        save_native_mve_fn(out, tiny_bert_dir)
        dense_config_path = next(out.glob("*Dense/config.json"))
        config = json.loads(dense_config_path.read_text())
        del config["module_input_name"]
        del config["module_output_name"]
        dense_config_path.write_text(json.dumps(config))
        return out

    path = saves("nameless-dense", build)
    reference = load_mve_reference(path)
    assert next(m for m in reference if type(m).__name__ == "Dense").module_input_name == "token_embeddings"
    texts = ["hello world", "paris, the capital. of france!"]
    _assert_same_vectors(load_mve(path).encode_query(texts), reference.encode_query(texts))


def test_conversion_ignores_prompts_from_sparse_save(saves, splade_dir, load_mve) -> None:
    # Stand-in: sparse-encoder-testing/splade-bert-tiny-nq -> the real SPLADE-tiny.
    from sentence_transformers import SparseEncoder

    def build(out: Path) -> Path:
        sparse = SparseEncoder(str(splade_dir), device="cpu")
        sparse.prompts = {"query": "find: ", "document": "text: "}
        sparse.default_prompt_name = "query"
        sparse.save(str(out))
        return out

    model = load_mve(saves("sparse-save", build))
    assert model.prompts == {"query": "", "document": ""}
    assert model.default_prompt_name is None
    assert model.similarity_fn_name == "maxsim"


def test_pylate_shape_save_round_trips_to_new_query_expansion(
    saves, tiny_bert_dir, save_native_mve_fn, load_mve, load_mve_reference
) -> None:
    native = saves(
        "native-expansion-24",
        lambda out: save_native_mve_fn(out, tiny_bert_dir, query_expansion={"strategy": "fixed", "attend": True, "length": 24}),
    )
    native_model = load_mve_reference(native)
    q_native = native_model.encode_query(["some query text"])[0]

    def rewrite(out: Path) -> Path:
        shutil.copytree(native, out)
        config_path = out / "config_sentence_transformers.json"
        config = json.loads(config_path.read_text())
        config.pop("query_expansion", None)
        config["query_length"] = 24
        config["do_query_expansion"] = True
        config["attend_to_expansion_tokens"] = True
        config_path.write_text(json.dumps(config))
        # ADAPTED: sentence-transformers 6.2 saves query_expansion in the Transformer's
        # sentence_bert_config.json, not in config_sentence_transformers.json; the port drops it there
        # too, so the legacy PyLate keys alone carry the expansion, as the test means.
        module_config_path = out / "sentence_bert_config.json"
        module_config = json.loads(module_config_path.read_text())
        module_config.pop("query_expansion", None)
        module_config_path.write_text(json.dumps(module_config))
        return out

    path = saves("pylate-shape", rewrite)
    reloaded_reference = load_mve_reference(path)
    assert reloaded_reference[0].query_expansion == {"strategy": "fixed", "attend": True, "token": None, "length": 24}
    q_reloaded = load_mve(path).encode_query(["some query text"])[0]
    assert tuple(q_reloaded.shape) == tuple(q_native.shape) == (24, native_model.get_embedding_dimension())
    assert_close(q_reloaded, q_native)


def test_hierarchical_pooling_module_in_pipeline(saves, tiny_bert_dir, save_native_mve_fn, load_mve, load_mve_reference) -> None:
    # DEPARTURE: upstream appends a HierarchicalTokenPooling module to the loaded model; the port saves
    # it in the pipeline. poolkit does not run a saved token pooling and refuses the checkpoint (naming
    # the module) instead of returning unpooled vectors; sentence-transformers pools the document.
    from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling

    from poolkit import PoolkitError

    text = "a fairly long document with plenty of distinct tokens to cluster together here"
    plain = saves("pipeline-plain", lambda out: save_native_mve_fn(out, tiny_bert_dir))
    pooled = saves(
        "pipeline-pooled", lambda out: save_native_mve_fn(out, tiny_bert_dir, extra_modules=(HierarchicalTokenPooling(pool_factor=2),))
    )
    without_pool = load_mve(plain).encode_document([text])
    with_pool = load_mve_reference(pooled).encode_document([text])
    assert with_pool[0].shape[0] < without_pool[0].shape[0]
    with pytest.raises(PoolkitError, match="HierarchicalTokenPooling"):
        load_mve(pooled)


# -- per-call token pooling with output_value=None ----------------------------------------------

_RAW_NOT_POOLED = (
    "poolkit's encode applies a per-call token_pooling only when output_value is not None: the output_value=None "
    "dicts come back unpooled (core/api/st_multivector.py encode); sentence-transformers pools the raw features too, "
    "rewriting token_embeddings and attention_mask (MultiVectorEncoder._inference, output_value is None branch)"
)


@pytest.mark.xfail(strict=True, reason=_RAW_NOT_POOLED)
def test_encode_pooling_applies_to_raw_output(mve_model) -> None:
    from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling

    texts = [
        "short doc",
        "a fairly long document with plenty of distinct tokens to cluster together here",
        "medium length document with several tokens",
    ]
    pooling = HierarchicalTokenPooling(pool_factor=2)
    normal = mve_model.encode_document(texts, token_pooling=pooling)
    raw = mve_model.encode_document(texts, output_value=None, token_pooling=pooling)
    assert isinstance(raw, list)
    # DEPARTURE: upstream first checks that some raw row is batch padding; poolkit's raw tensors are
    # each input's own (unpadded), so the mask-selected rows are compared as upstream does.
    for item, pooled_reference in zip(raw, normal):
        mask = item["attention_mask"].bool()
        assert torch.equal(item["token_embeddings"][mask], pooled_reference)


@pytest.mark.xfail(strict=True, reason=_RAW_NOT_POOLED)
def test_encode_pooling_skips_queries_on_raw_output(mve_model) -> None:
    from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling

    query = "a fairly long query with plenty of distinct tokens to cluster together here"
    unpooled = mve_model.encode_query(query, output_value=None)["token_embeddings"]
    skipped = mve_model.encode_query(query, output_value=None, token_pooling=HierarchicalTokenPooling(pool_factor=2))
    opted_in = mve_model.encode_query(
        query, output_value=None, token_pooling=HierarchicalTokenPooling(pool_factor=2, tasks=["query", "document"])
    )
    assert skipped["token_embeddings"].shape == unpooled.shape
    assert opted_in["token_embeddings"].shape[0] < unpooled.shape[0]


# -- similarity ---------------------------------------------------------------------------------


def test_similarity_returns_maxsim(mve_model, mve_reference) -> None:
    q = mve_model.encode_query(["cats and dogs"])
    d = mve_model.encode_document(["cats and dogs are pets", "the weather is nice"])
    scores = mve_model.similarity(q, d)
    assert scores.shape == (1, 2)
    pair = mve_model.similarity_pairwise([q[0]], [d[0]])
    assert pair.shape == (1,)
    assert torch.allclose(scores[0, 0], pair[0], atol=1e-5)
    # POOLKIT (beyond upstream): sentence-transformers' scores on its own embeddings.
    reference = mve_reference.similarity(
        mve_reference.encode_query(["cats and dogs"]), mve_reference.encode_document(["cats and dogs are pets", "the weather is nice"])
    )
    _assert_same_scores(scores, reference)


def test_similarity_fn_name_setter_rejects_unsupported(mve_model) -> None:
    with pytest.raises(ValueError, match="only supports"):
        mve_model.similarity_fn_name = "cosine"


@pytest.mark.parametrize(("saved", "expected"), [("maxsim", "maxsim"), ("meanmaxsim", "meanmaxsim"), ("cosine", "maxsim")])
def test_parse_model_config_reads_back_supported_similarity(saves, tiny_bert_dir, load_mve, load_mve_reference, saved, expected) -> None:
    # ADAPTED: upstream feeds {"similarity_fn_name": ...} to the private _parse_model_config; the port
    # saves it in a PyLate-style checkpoint ("<s> " / "</s> " prefixes) and loads it. meanmaxsim is
    # added: a supported name other than the default.
    from tiny_models import build_pylate_colbert

    path = saves(
        f"similarity-{saved}",
        lambda out: build_pylate_colbert(out, tiny_bert_dir, query_prefix="<s> ", document_prefix="</s> ", similarity_fn_name=saved),
    )
    model, reference = load_mve(path), load_mve_reference(path)
    assert model.similarity_fn_name == reference.similarity_fn_name == expected
    # POOLKIT (beyond upstream): scored as sentence-transformers scores.
    queries, documents = CORPUS_PAIRS
    _assert_same_scores(
        model.similarity(model.encode_query(queries), model.encode_document(documents)),
        reference.similarity(reference.encode_query(queries), reference.encode_document(documents)),
    )


def test_similarity_forwards_scoring_kwargs(mve_model) -> None:
    queries = mve_model.encode_query(CORPUS_PAIRS[0])
    documents = mve_model.encode_document(CORPUS_PAIRS[1])
    plain = mve_model.similarity(queries, documents)
    assert torch.allclose(mve_model.similarity(queries, documents, chunk_elements=1_000), plain, atol=1e-5)
    plain_pairwise = mve_model.similarity_pairwise(queries, documents[:2])
    chunked_pairwise = mve_model.similarity_pairwise(queries, documents[:2], chunk_elements=1_000)
    assert torch.allclose(chunked_pairwise, plain_pairwise, atol=1e-5)
    with pytest.raises(TypeError):
        mve_model.similarity(queries, documents, chunk_size=2)
    if torch.cuda.is_available():
        cpu_queries = mve_model.encode_query(CORPUS_PAIRS[0], convert_to_numpy=True)
        cpu_documents = mve_model.encode_document(CORPUS_PAIRS[1], convert_to_numpy=True)
        scores = mve_model.similarity(cpu_queries, cpu_documents, device="cuda")
        assert scores.device.type == "cpu"
        assert torch.allclose(scores, plain.cpu(), atol=1e-4)


def test_similarity_singular_query(mve_model, mve_reference) -> None:
    documents = mve_model.encode_document(["Paris is the capital of France.", "Berlin is big."])
    single = mve_model.encode_query("What is the capital of France?")
    batched = mve_model.similarity(mve_model.encode_query(["What is the capital of France?"]), documents)

    scores = mve_model.similarity(single, documents)
    assert scores.shape == (1, 2)
    assert torch.allclose(scores, batched)
    assert mve_model.similarity(documents, single).shape == (2, 1)

    pairwise = mve_model.similarity_pairwise(single, mve_model.encode_document("Paris is the capital of France."))
    assert pairwise.shape == (1,)
    assert torch.allclose(pairwise, scores[:, 0], atol=1e-6)
    # POOLKIT (beyond upstream): sentence-transformers' scores.
    reference = mve_reference.similarity(
        mve_reference.encode_query("What is the capital of France?"),
        mve_reference.encode_document(["Paris is the capital of France.", "Berlin is big."]),
    )
    _assert_same_scores(scores, reference)


def test_maxsim_basic_shapes(mve_model, mve_reference) -> None:
    # DEPARTURE: util.maxsim(q, d) -> model.similarity(q, d) (the model's function is MaxSim).
    q = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    d = [torch.tensor([[1.0, 0.0], [0.0, 0.5]])]
    scores = mve_model.similarity(q, d)
    assert scores.shape == (1, 1)
    # MaxSim: max(1*1, 1*0) + max(0*1, 0.5) = 1 + 0.5 = 1.5
    assert torch.allclose(scores[0, 0], torch.tensor(1.5))
    _assert_same_scores(scores, mve_reference.similarity(q, d))


def test_maxsim_padded_tensor_without_mask_excludes_zero_rows(mve_model, mve_reference) -> None:
    # DEPARTURE: util.maxsim -> model.similarity.
    q_list = [torch.tensor([[1.0, 0.0]])]
    d_list = [torch.tensor([[-0.5, -0.5]])]
    d_padded = torch.zeros(1, 3, 2)
    d_padded[0, 0] = d_list[0][0]
    scores_list = mve_model.similarity(q_list, d_list)
    scores_padded = mve_model.similarity(q_list, d_padded)
    assert torch.allclose(scores_padded, scores_list), (
        f"padded-tensor scores {scores_padded.tolist()} should match list-input scores {scores_list.tolist()}"
    )
    _assert_same_scores(scores_padded, mve_reference.similarity(q_list, d_padded))


def test_maxsim_pairwise_padded_tensor_without_mask_excludes_zero_rows(mve_model, mve_reference) -> None:
    # From the 28,153 / 37,606 / 55,119 versions. DEPARTURE: util.maxsim_pairwise -> model.similarity_pairwise.
    q_list = [torch.tensor([[1.0, 0.0]])]
    d_list = [torch.tensor([[-0.5, -0.5]])]
    q_padded = torch.zeros(1, 2, 2)
    q_padded[0, 0] = q_list[0][0]
    d_padded = torch.zeros(1, 3, 2)
    d_padded[0, 0] = d_list[0][0]
    scores_list = mve_model.similarity_pairwise(q_list, d_list)
    scores_padded = mve_model.similarity_pairwise(q_padded, d_padded)
    assert torch.allclose(scores_padded, scores_list), (
        f"padded-tensor pairwise scores {scores_padded.tolist()} should match list-input scores {scores_list.tolist()}"
    )
    _assert_same_scores(scores_padded, mve_reference.similarity_pairwise(q_padded, d_padded))


def test_maxsim_document_chunking_matches_unchunked(mve_model, mve_reference) -> None:
    # DEPARTURE: util.maxsim(chunk_elements=...) -> model.similarity(chunk_elements=...).
    g = torch.Generator().manual_seed(0)
    queries = [torch.randn(n, 8, generator=g) for n in (3, 5)]
    documents = [torch.randn(n, 8, generator=g) for n in (2, 6, 4, 7, 3)]
    full = mve_model.similarity(queries, documents)
    for budget in (1, 100, 300, 10**12):
        chunked = mve_model.similarity(queries, documents, chunk_elements=budget)
        assert torch.allclose(chunked, full, atol=1e-5), f"budget={budget} diverged from single-chunk"
    _assert_same_scores(full, mve_reference.similarity(queries, documents))


# -- from the 11,043 / 13,349 / 28,153 versions --------------------------------------------------


def test_encode_query_pads_to_query_length(pylate_model, pylate_reference) -> None:
    # ADAPTED: upstream sets model[0].query_length = 16 and do_query_expansion = True (the knobs of
    # that version); the stand-in is a PyLate save with query_length 16 and do_query_expansion.
    emb = pylate_model.encode_query(["short query"])
    assert len(emb) == 1
    assert emb[0].shape[0] == 16
    assert emb[0].shape[1] == pylate_model.get_embedding_dimension()
    _assert_same_vectors(emb, pylate_reference.encode_query(["short query"]))
