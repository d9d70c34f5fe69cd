"""Multi-vector output as the references compute it, on a PyLate save and a sentence-transformers 6
ColBERT save of all-MiniLM-L6-v2 (both with a punctuation skiplist), against sentence-transformers'
own ``MultiVectorEncoder`` and ``HierarchicalTokenPooling`` on the same save:

- a pooled document is pooled without its skiplist tokens, on ``LLM``, ``/pooling``,
  ``/v1/multi-vector`` and TEI's ``/embed_all`` (queries keep theirs, as the skiplist is a document's);
- TEI's ``/embed_all`` with ``prompt_name`` ``query`` / ``document`` encodes that side (marker,
  length, query expansion), though these saves carry prompts of those names;
- such a save serves ``token_embed`` only, as PyLate and vLLM serve a ColBERT: no ``embed``.
"""

from __future__ import annotations

import string

import pytest
import torch

from poolkit import LLM, PoolingParams
from poolkit.contracts.errors import InvalidRequest

token_pooling = pytest.importorskip("sentence_transformers.multi_vector_encoder.modules.token_pooling")
HierarchicalTokenPooling = token_pooling.HierarchicalTokenPooling

DOCUMENTS = [
    "Paris is the capital of France, and a city.",
    "Late interaction keeps one vector per token; an index of them grows (with every document).",
    "What? No punctuation-free text here: none!",
    "a plain document without any punctuation at all",
]
QUERIES = ["what is the capital of france?", "late interaction, token vectors"]


def _close(got, expected, atol: float = 1e-5) -> None:
    got = [torch.as_tensor(g) for g in got]
    assert [tuple(g.shape) for g in got] == [tuple(e.shape) for e in expected]
    for g, e in zip(got, expected):
        torch.testing.assert_close(torch.as_tensor(g).float(), torch.as_tensor(e).float(), atol=atol, rtol=0)


@pytest.fixture(scope="module", params=["pylate", "colbert_mve"])
def save(request):
    return request.getfixturevalue(f"{request.param}_dir")


@pytest.fixture(scope="module")
def reference(save, load_mve_reference):
    return load_mve_reference(save)


@pytest.fixture(scope="module")
def llm(save):
    return LLM(str(save), dtype="float32")


def _encode(llm: LLM, texts: list[str], side: str, **params) -> list[torch.Tensor]:
    pooling = PoolingParams(**params) if params else None
    outputs = llm.encode(texts, pooling_task="token_embed", tokenization_kwargs={"input_type": side}, pooling_params=pooling)
    return [o.outputs.data for o in outputs]


def test_pooled_documents_leave_their_skiplist_out_as_the_references_do(llm, reference):
    expected = HierarchicalTokenPooling(2).pool(reference.encode_document(DOCUMENTS))
    got = _encode(llm, DOCUMENTS, "document", token_pool_factor=2)
    _close(got, expected)
    if llm.model.st.model_type != "MultiVectorEncoder":  # PyLate's marker is one token
        # the document: [CLS] [D] paris is the capital of france and a city [SEP], 11 of them clustered into 5
        assert len(got[0]) == 6
    # a query's tokens are all scored: pooled as they are
    _close(_encode(llm, QUERIES, "query", token_pool_factor=2), HierarchicalTokenPooling(2).pool(reference.encode_query(QUERIES)))
    # unpooled, every token keeps its vector (vLLM's token_embed); the skiplist is MaxSim's to apply
    (full,) = llm.encode(DOCUMENTS[:1], pooling_task="token_embed", tokenization_kwargs={"input_type": "document"})
    skip = set(llm.get_tokenizer().convert_tokens_to_ids(list(string.punctuation)))
    scored = [t for t in full.prompt_token_ids if t not in skip]
    assert len(full.outputs.data) == len(full.prompt_token_ids) > len(scored) == len(reference.encode_document(DOCUMENTS[:1])[0])


def test_the_servers_pool_documents_as_llm_does(llm):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    expected = _encode(llm, DOCUMENTS, "document", token_pool_factor=2)
    with TestClient(create_app(llm, served_model_name="c")) as c:
        pooling = c.post("/pooling", json={"input": DOCUMENTS, "task": "token_embed", "input_type": "document", "token_pool_factor": 2})
        jina = c.post("/v1/multi-vector", json={"input": DOCUMENTS, "token_pool_factor": 2})  # Jina's default side
        tei = c.post("/embed_all", json={"inputs": DOCUMENTS, "prompt_name": "document", "token_pool_factor": 2})
        for r in (pooling, jina, tei):
            assert r.status_code == 200, r.text
        _close([item["data"] for item in pooling.json()["data"]], expected)
        _close([item["embeddings"] for item in jina.json()["data"]], expected)
        assert [len(rows) for rows in tei.json()] == [len(e) for e in expected]  # raw vectors: the same clusters' count


def test_embed_all_names_the_side_of_a_save_with_prompts_of_that_name(llm, reference):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    assert set(llm.model.st.prompts) >= {"query", "document"}  # what made the route take the prompt, not the side
    with TestClient(create_app(llm, served_model_name="c")) as c:
        for side, expected in (("query", reference.encode_query(QUERIES)), ("document", reference.encode_document(QUERIES))):
            r = c.post("/embed_all", json={"inputs": QUERIES, "prompt_name": side})
            assert r.status_code == 200, r.text
            raw = [torch.tensor(rows) for rows in r.json()]
            if side == "query":
                assert [len(rows) for rows in raw] == [16, 16]  # the marker and the [MASK] expansion
            # TEI's vectors are raw; normalised, the tokens' vectors are the reference's (the skiplist
            # aside: /embed_all returns every token, as it does unpooled)
            if side == "query":
                _close([torch.nn.functional.normalize(v, dim=-1) for v in raw], expected, atol=1e-4)
            else:
                assert all(len(v) >= len(e) for v, e in zip(raw, expected))
                _close([torch.nn.functional.normalize(v, dim=-1) for v in raw], _encode(llm, QUERIES, "document"), atol=1e-4)


def test_a_late_interaction_save_serves_token_vectors_only(llm):
    # PyLate's ColBERT encodes token vectors only, and vLLM's ColBERT pooler serves token_embed only:
    # no sentence embedding of the projected tokens (docs/colbert.md).
    assert llm.model.supported_tasks() == ["token_embed"] and llm.score_type == "late-interaction"
    with pytest.raises(InvalidRequest, match="embed"):
        llm.embed(DOCUMENTS[:1])
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    with TestClient(create_app(llm, served_model_name="c")) as c:
        (model,) = c.get("/v1/models").json()["data"]
        assert model["tasks"] == ["token_embed"] and model["score_type"] == "late-interaction"
        r = c.post("/v1/embeddings", json={"input": DOCUMENTS[:1]})
        assert r.status_code == 400 and "supported tasks: token_embed" in r.json()["error"]["message"], r.text
        assert c.post("/v1/multi-vector", json={"input": DOCUMENTS[:1]}).status_code == 200
