"""Multi-vector retrieval on every surface: the query and document sides (``input_type``) of a
ColBERT, ColQwen2 and BGE-M3 equal to ``LLM.encode`` with the same side offline; Jina's
``/v1/multi-vector`` route (its types, widths, sides and bad inputs); compact token vectors and
their MaxSim (``poolkit.api.st_functions.maxsim_compact``) against the float MaxSim of the same vectors."""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from offline_parity import _close  # noqa: E402

from poolkit import LLM, PoolingParams  # noqa: E402
from poolkit.api.st_functions import maxsim, maxsim_compact  # noqa: E402
from poolkit.entrypoints.encodings import compact_tokens  # noqa: E402
from poolkit.entrypoints.server import ServerLimits, create_app  # noqa: E402

QUERIES = ["what is the capital of france?", "paris"]
DOCUMENTS = ["paris is the capital of france", "the quick brown fox jumps over the lazy dog"]
#: Retrieval sides in jina-colbert-v2's Matryoshka widths, as its config.json declares them.
COLBERT_META = {"query_token_id": "<s>", "doc_token_id": "</s>", "query_maxlen": 12, "doc_maxlen": 24}


@pytest.fixture(scope="module")
def colbert(tmp_path_factory):
    """A tiny HF_ColBERT with markers, query expansion and three Matryoshka widths (16, 8 and 4)."""
    from tiny_models import build_stanford_colbert

    path = build_stanford_colbert(tmp_path_factory.mktemp("colbert") / "colbert", COLBERT_META)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "matryoshka_dimensions": [16, 8]}))
    return LLM(str(path), max_model_len=128)


@pytest.fixture(scope="module")
def colqwen2(tmp_path_factory):
    from tiny_colretrieval import build_colqwen2

    return LLM(str(build_colqwen2(tmp_path_factory.mktemp("colqwen2"))), dtype="float32")


@pytest.fixture(scope="module")
def bge_m3(tmp_path_factory):
    """A tiny XLM-R with BGE-M3's companion ``colbert_linear`` and ``sparse_linear`` beside it."""
    from safetensors.torch import save_file
    from tiny_models import build_encoder

    path = build_encoder(tmp_path_factory.mktemp("bge-m3") / "m3", "xlm-roberta", init_range=0.5)
    torch.manual_seed(3)
    for stem, width in (("colbert_linear", 16), ("sparse_linear", 1)):
        save_file({"weight": torch.randn(width, 32) * 0.3, "bias": torch.zeros(width)}, str(path / f"{stem}.safetensors"))
    return LLM(str(path), hf_overrides={"architectures": ["BgeM3EmbeddingModel"]})


def _offline(llm: LLM, texts: list[str], side: str, **params) -> list[torch.Tensor]:
    outputs = llm.encode(
        texts, pooling_task="token_embed", tokenization_kwargs={"input_type": side},
        pooling_params=PoolingParams(**params) if params else None,
    )
    return [o.outputs.data for o in outputs]


@pytest.mark.parametrize("name", ["colbert", "colqwen2", "bge_m3"])
def test_each_surface_encodes_the_side_the_request_names(name, request):
    llm = request.getfixturevalue(name)
    with TestClient(create_app(llm, served_model_name=name)) as c:
        for side, texts in (("query", QUERIES), ("document", DOCUMENTS)):
            expected = _offline(llm, texts, side)
            pooling = c.post("/pooling", json={"input": texts, "task": "token_embed", "input_type": side})
            jina = c.post("/v1/multi-vector", json={"input": [{"text": t} for t in texts], "input_type": side})
            tei = c.post("/embed_all", json={"inputs": texts, "prompt_name": side})
            for r in (pooling, jina, tei):
                assert r.status_code == 200, r.text
            for i, e in enumerate(expected):
                _close(pooling.json()["data"][i]["data"], e.tolist())
                _close(jina.json()["data"][i]["embeddings"], e.tolist())
                assert len(tei.json()[i]) == len(e)  # TEI's raw vectors: the same tokens, unnormalised


def test_bge_m3_takes_a_side_on_the_dense_routes_too(bge_m3):
    # BGE-M3 writes its sides itself (the same text both ways), so its dense vectors take them on
    # every surface: as they are, equal to no side at all.
    expected = [o.outputs.embedding for o in bge_m3.embed(DOCUMENTS)]
    assert [o.outputs.embedding for o in bge_m3.embed(DOCUMENTS, tokenization_kwargs={"input_type": "query"})] == expected
    with TestClient(create_app(bge_m3, served_model_name="m3")) as c:
        for side, cohere in (("query", "search_query"), ("document", "search_document")):
            openai = c.post("/v1/embeddings", json={"input": DOCUMENTS, "input_type": side})
            cohere_r = c.post("/v2/embed", json={"texts": DOCUMENTS, "input_type": cohere, "embedding_types": ["float"]})
            assert openai.status_code == cohere_r.status_code == 200, (openai.text, cohere_r.text)
            for i, e in enumerate(expected):
                _close(openai.json()["data"][i]["embedding"], e)
                _close(cohere_r.json()["embeddings"]["float"][i], e)
        r = c.post("/v2/embed", json={"texts": DOCUMENTS, "input_type": "classification", "embedding_types": ["float"]})
        assert r.status_code == 400 and "Unsupported input_type 'classification'" in r.json()["error"]["message"]


def test_sides_are_the_models_own(colbert, colqwen2, bge_m3):
    tok = colbert.get_tokenizer()
    (q,) = colbert.encode(["paris"], pooling_task="token_embed", tokenization_kwargs={"input_type": "query"})
    assert len(q.prompt_token_ids) == COLBERT_META["query_maxlen"]  # the query expanded with [MASK]
    assert q.prompt_token_ids[1] == tok.convert_tokens_to_ids("<s>")
    qwen = colqwen2.get_tokenizer()
    (query,) = colqwen2.encode(["paris"], pooling_task="token_embed", tokenization_kwargs={"input_type": "query"})
    (doc,) = colqwen2.encode(["paris"], pooling_task="token_embed", tokenization_kwargs={"input_type": "document"})
    assert query.prompt_token_ids == qwen("Query: paris" + "<|endoftext|>" * 10 + "\n")["input_ids"]  # transformers' query
    assert doc.prompt_token_ids == qwen("paris")["input_ids"]  # colpali-engine's process_texts: the text alone
    both = [_offline(bge_m3, DOCUMENTS, side) for side in ("query", "document")]
    for a, b in zip(*both):
        assert torch.equal(a, b)  # BGE-M3 encodes queries and documents alike


def test_side_bad_inputs(colbert, minilm):
    with TestClient(create_app(colbert, served_model_name="c")) as c:
        for path, body in (
            ("/pooling", {"input": "x", "task": "token_embed", "input_type": "question"}),
            ("/v1/multi-vector", {"input": "x", "input_type": "question"}),
        ):
            r = c.post(path, json=body)
            assert r.status_code == 400 and "input_type" in r.json()["error"]["message"], r.text
    with TestClient(create_app(minilm, served_model_name="m")) as c:
        r = c.post("/pooling", json={"input": "x", "task": "token_embed", "input_type": "query"})
        assert r.status_code == 400 and r.json()["error"]["message"] == "input_type is only supported for ColBERT models."
        r = c.post("/v1/embeddings", json={"input": "x", "input_type": "query"})
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "Unsupported input_type 'query'. This model does not define any input_type task instructions."


def test_input_type_names_a_prompt_on_the_embedding_routes(tmp_path, minilm_dir):
    path = tmp_path / "minilm"
    shutil.copytree(minilm_dir, path)
    config = json.loads((path / "config_sentence_transformers.json").read_text())
    prompts = {"query": "query: ", "document": "passage: "}
    (path / "config_sentence_transformers.json").write_text(json.dumps({**config, "prompts": prompts}))
    llm = LLM(str(path))
    with TestClient(create_app(llm, served_model_name="m")) as c:
        for side, cohere in (("query", "search_query"), ("document", "search_document")):
            expected = llm.embed(DOCUMENTS, prompt_name=side)
            openai = c.post("/v1/embeddings", json={"input": DOCUMENTS, "input_type": side}).json()
            pooling = c.post("/pooling", json={"input": DOCUMENTS, "task": "embed", "input_type": side}).json()
            cohere_r = c.post("/v2/embed", json={"texts": DOCUMENTS, "input_type": cohere, "embedding_types": ["float"]}).json()
            for i, e in enumerate(expected):
                _close(openai["data"][i]["embedding"], e.outputs.embedding)
                _close(pooling["data"][i]["data"], e.outputs.embedding)
                _close(cohere_r["embeddings"]["float"][i], e.outputs.embedding)
        r = c.post("/v1/embeddings", json={"input": "x", "input_type": "query", "task": "document"})
        assert r.status_code == 400 and r.json()["error"]["message"] == "input_type and task both name a prompt: send one"


# -- Jina's route ----------------------------------------------------------------------------------


def test_multi_vector_route_types_widths_and_pooling(colbert):
    with TestClient(create_app(colbert, served_model_name="jina-colbert")) as c:
        types = ["float", "base64", "binary", "ubinary", "int8", "uint8"]
        r = c.post("/v1/multi-vector", json={"model": "jina-colbert", "input": DOCUMENTS, "embedding_type": types, "dimensions": 8})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["model"] == "jina-colbert"
        expected = _offline(colbert, DOCUMENTS, "document", dimensions=8)
        assert body["usage"]["total_tokens"] == sum(len(e) for e in expected)
        for item, e in zip(body["data"], expected):
            assert item["object"] == "embeddings" and set(item["embeddings"]) == set(types)
            got = item["embeddings"]
            assert np.asarray(got["float"]).shape == (len(e), 8)
            _close(got["float"], e.tolist())
            decoded = [np.frombuffer(base64.b64decode(s), dtype="<f4") for s in got["base64"]]
            np.testing.assert_array_equal(np.stack(decoded), e.float().numpy())
            for kind in ("binary", "ubinary", "int8", "uint8"):
                assert got[kind] == compact_tokens(e, kind).tolist()
        one = c.post("/v1/multi-vector", json={"input": "paris", "embedding_type": "ubinary"}).json()
        assert isinstance(one["data"][0]["embeddings"], list) and len(one["data"][0]["embeddings"][0]) == 2  # 16 bits
        pooled = c.post("/v1/multi-vector", json={"input": DOCUMENTS[1], "token_pool_factor": 2}).json()
        (e,) = _offline(colbert, DOCUMENTS[1:], "document", token_pool_factor=2)
        _close(pooled["data"][0]["embeddings"], e.tolist())


@pytest.mark.parametrize("name", ["colbert", "colqwen2", "bge_m3"])
def test_compact_and_pooled_token_vectors_on_each_retriever(name, request):
    llm = request.getfixturevalue(name)
    with TestClient(create_app(llm, served_model_name=name)) as c:
        body = {"input": DOCUMENTS, "embedding_type": ["ubinary", "int8"], "token_pool_factor": 2}
        r = c.post("/v1/multi-vector", json=body)
        assert r.status_code == 200, r.text
        pooled = _offline(llm, DOCUMENTS, "document", token_pool_factor=2)
        for item, e in zip(r.json()["data"], pooled):
            assert item["embeddings"]["ubinary"] == compact_tokens(e, "ubinary").tolist()
            assert item["embeddings"]["int8"] == compact_tokens(e, "int8").tolist()
        tei = c.post("/embed_all", json={"inputs": DOCUMENTS, "prompt_name": "document", "token_pool_factor": 2})
        assert tei.status_code == 200 and [len(v) for v in tei.json()] == [len(e) for e in pooled], tei.text
    # the pooling is sentence-transformers 6's HierarchicalTokenPooling on each retriever's own vectors
    reference = pytest.importorskip("sentence_transformers.multi_vector_encoder.modules.token_pooling")
    expected = reference.HierarchicalTokenPooling(2).pool(_offline(llm, DOCUMENTS, "document"))
    for got, e in zip(pooled, expected):
        torch.testing.assert_close(got.float(), e.float(), atol=1e-5, rtol=0)


def test_the_response_limit_counts_every_type_sent(colbert):
    # Six types answer each vector six times: the limit counts them all, not the widest alone, and
    # what is answered under a limit fits in it, one type or several.
    types = ["float", "base64", "binary", "ubinary", "int8", "uint8"]
    body = {"input": [f"{DOCUMENTS[i % 2]} {i}" for i in range(32)], "embedding_type": types}
    with TestClient(create_app(colbert, served_model_name="c")) as c:
        full = c.post("/v1/multi-vector", json=body)
        assert full.status_code == 200, full.text
    floats = 24 * 16 * full.json()["usage"]["total_tokens"]  # 16 JSON numbers a token: the widest type's estimate
    assert len(full.content) > 1.2 * floats
    for limit in (int(1.2 * floats), int(1.25 * len(full.content))):
        with TestClient(create_app(colbert, served_model_name="c", limits=ServerLimits(max_response_bytes=limit))) as c:
            for kind in [types, *types]:
                r = c.post("/v1/multi-vector", json={**body, "embedding_type": kind})
                assert r.status_code in (200, 413), r.text
                assert r.status_code == 413 or len(r.content) <= limit, (kind, limit, len(r.content))
                if kind == types:
                    assert r.status_code == (413 if limit < len(full.content) else 200), r.text
                    if r.status_code == 413:
                        assert "--max-response-bytes" in r.json()["error"]["message"]
                elif kind == "float":
                    assert r.status_code == 200, r.text


def test_multi_vector_route_bad_inputs(colbert, minilm, tmp_path):
    from tiny_models import build_classifier

    with TestClient(create_app(colbert, served_model_name="c")) as c:
        for body, words in (
            ({"input": "x", "embedding_type": "int4"}, "embedding_type"),
            ({"input": "x", "embedding_type": []}, "embedding_type must not be empty"),
            ({"input": "x", "dimensions": 12}, "only supports [16, 8] matryoshka dimensions"),
            ({"input": "x", "dimensions": 4, "embedding_type": "binary"}, "multiple of 8"),
            ({"input": "x", "token_pool_factor": 0}, "token_pool_factor must be >= 1"),
            ({"input": ""}, "input"),
            ({"input": []}, "input"),
            ({"texts": ["x"]}, "input"),
        ):
            r = c.post("/v1/multi-vector", json=body)
            assert r.status_code == 400, (body, r.text)
            assert words in r.json()["error"]["message"], (body, r.text)
    with TestClient(create_app(minilm, served_model_name="m")) as c:
        r = c.post("/v1/multi-vector", json={"input": "x", "dimensions": 8})
        assert r.status_code == 400 and "does not support matryoshka" in r.json()["error"]["message"]
    classifier = LLM(str(build_classifier(tmp_path / "cls", "bert", num_labels=2)))
    with TestClient(create_app(classifier, served_model_name="cls")) as c:
        r = c.post("/v1/multi-vector", json={"input": "x"})
        assert r.status_code == 400 and "has no token vectors" in r.json()["error"]["message"]


# -- compact token vectors and their MaxSim ---------------------------------------------------------


def _signs(m: torch.Tensor) -> torch.Tensor:
    return torch.where(m >= 0, 1.0, -1.0)


def test_binary_maxsim_is_the_float_maxsim_of_the_signs():
    g = torch.Generator().manual_seed(0)
    queries = [torch.randn(n, 64, generator=g) for n in (3, 7)]
    docs = [torch.randn(n, 64, generator=g) for n in (5, 1, 0, 12)]  # an empty document scores as maxsim scores it
    expected = maxsim([_signs(q) for q in queries], [_signs(d) for d in docs])
    for kind in ("binary", "ubinary"):
        got = maxsim_compact([compact_tokens(q, kind) for q in queries], [compact_tokens(d, kind) for d in docs], kind)
        assert torch.equal(got, expected)  # Hamming counts are integers: exact


def test_int8_maxsim_is_the_float_maxsim_within_the_rounding():
    g = torch.Generator().manual_seed(1)
    queries = [torch.nn.functional.normalize(torch.randn(n, 32, generator=g), dim=-1) for n in (4, 6)]
    docs = [torch.nn.functional.normalize(torch.randn(n, 32, generator=g), dim=-1) for n in (9, 3)]
    expected = maxsim(queries, docs)
    for kind in ("int8", "uint8"):
        got = maxsim_compact([compact_tokens(q, kind) for q in queries], [compact_tokens(d, kind) for d in docs], kind)
        # each component is off by at most half a step of the row's peak / 127: a cosine by about
        # 2 * sqrt(dim) * 0.5 / 127 at worst, per query token
        bound = torch.tensor([len(q) for q in queries], dtype=torch.float32)[:, None] * 2 * 32**0.5 * 0.5 / 127
        assert ((got - expected).abs() <= bound).all()
        assert (got - expected).abs().max() < 0.05


def test_maxsim_compact_refuses_what_it_cannot_score():
    from poolkit import InvalidRequest

    with pytest.raises(InvalidRequest, match="compact MaxSim takes one of"):
        maxsim_compact([np.zeros((1, 2), np.int8)], [np.zeros((1, 2), np.int8)], "float32")
    with pytest.raises(InvalidRequest, match="different widths"):
        maxsim_compact([np.zeros((1, 2), np.uint8)], [np.zeros((1, 4), np.uint8)], "ubinary")
    with pytest.raises(InvalidRequest, match="multiple of 8"):
        compact_tokens(torch.ones(2, 12), "binary")
