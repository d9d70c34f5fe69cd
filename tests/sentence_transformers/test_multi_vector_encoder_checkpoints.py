"""MultiVectorEncoder checkpoints: PyLate configs, colbert-ai (Stanford-NLP) checkpoints, and the
checkpoints sentence-transformers saves or converts, each against sentence-transformers' reading."""
# Port of sentence-transformers tests/multi_vector_encoder/test_model.py, continued from
# test_multi_vector_encoder.py (its header has the versions read and the stand-ins).
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from st_port_utils import _assert_same_vectors, _rows, assert_close


def _key(config: dict) -> str:
    """A directory name for one config."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


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
        assert torch.allclose(emb.norm(dim=-1).cpu(), torch.ones(emb.shape[0]), atol=1e-4)


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
    # The port saves the module in the pipeline (upstream appends it to the loaded model): both pool
    # the document, to the same vectors (tests/sentence_transformers/test_token_pooling_defaults.py
    # checks more settings, and queries).
    from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling

    text = "a fairly long document with plenty of distinct tokens to cluster together here"
    plain = saves("pipeline-plain", lambda out: save_native_mve_fn(out, tiny_bert_dir))
    pooled = saves(
        "pipeline-pooled", lambda out: save_native_mve_fn(out, tiny_bert_dir, extra_modules=(HierarchicalTokenPooling(pool_factor=2),))
    )
    without_pool = load_mve(plain).encode_document([text])
    with_pool = load_mve_reference(pooled).encode_document([text])
    assert with_pool[0].shape[0] < without_pool[0].shape[0]
    assert_close(load_mve(pooled).encode_document([text])[0], with_pool[0])
