"""Every sparse surface picks a sparse ``Router``'s route per request (issue 82): the query side
runs the inference-free ``SparseStaticEmbedding``, the document side the masked LM + SPLADE, each
equal to sentence-transformers' ``SparseEncoder.encode_query`` / ``encode_document`` on the same
folder (the builder: tests/support/tiny_sparse.py). The wire names the side as each API does:
``input_type`` (OpenAI's route, vLLM's ``/pooling``), Cohere's ``search_query`` / ``search_document``,
TEI's ``prompt_name`` (``/embed``, ``/embed_sparse``)."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from tiny_sparse import build_router_splade

from poolkit import LLM
from poolkit.entrypoints.server import create_app

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support:UserWarning")  # SparseEncoder's

ATOL = 1e-4
TEXTS = ["what is the capital of france?", "paris is the capital of france"]


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    return build_router_splade(tmp_path_factory.mktemp("router") / "published", activation="log1p_relu")


@pytest.fixture(scope="module")
def reference(router) -> dict[str, torch.Tensor]:
    from sentence_transformers import SparseEncoder

    st = SparseEncoder(str(router), device="cpu")
    return {
        "query": st.encode_query(TEXTS, convert_to_sparse_tensor=False).float(),
        "document": st.encode_document(TEXTS, convert_to_sparse_tensor=False).float(),
    }


@pytest.fixture(scope="module")
def client(router):
    with TestClient(create_app(LLM(str(router)), served_model_name="router")) as c:
        yield c


def _dense_of_tei(rows: list[list[dict]], width: int) -> torch.Tensor:
    """Rows of ``{"index", "value"}`` entries as dense ``[n, width]`` rows."""
    out = torch.zeros(len(rows), width)
    for i, row in enumerate(rows):
        for entry in row:
            out[i, entry["index"]] = entry["value"]
    return out


def _check(got: torch.Tensor, want: torch.Tensor) -> None:
    assert torch.equal(got != 0, want != 0)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("side", ["query", "document"])
def test_tei_prompt_name_picks_the_route(client, reference, side):
    want = reference[side]
    r = client.post("/embed_sparse", json={"inputs": TEXTS, "prompt_name": side})
    assert r.status_code == 200, r.text
    _check(_dense_of_tei(r.json(), want.shape[1]), want)
    r = client.post("/embed", json={"inputs": TEXTS, "prompt_name": side, "normalize": False})
    assert r.status_code == 200, r.text
    _check(torch.tensor(r.json()), want)


@pytest.mark.parametrize("side", ["query", "document"])
def test_input_type_picks_the_route(client, reference, side):
    want = reference[side]
    r = client.post("/v1/embeddings", json={"model": "router", "input": TEXTS, "input_type": side})
    assert r.status_code == 200, r.text
    _check(torch.tensor([d["embedding"] for d in r.json()["data"]]), want)
    r = client.post("/pooling", json={"model": "router", "input": TEXTS, "task": "sparse_embed", "input_type": side})
    assert r.status_code == 200, r.text
    rows = [[{"index": i, "value": v} for i, v in zip(d["data"]["indices"], d["data"]["values"])] for d in r.json()["data"]]
    _check(_dense_of_tei(rows, want.shape[1]), want)


@pytest.mark.parametrize(("input_type", "side"), [("search_query", "query"), ("search_document", "document")])
def test_cohere_input_type_picks_the_route(client, reference, input_type, side):
    r = client.post("/v2/embed", json={"model": "router", "texts": TEXTS, "input_type": input_type, "embedding_types": ["float"]})
    assert r.status_code == 200, r.text
    _check(torch.tensor(r.json()["embeddings"]["float"]), reference[side])


def test_no_side_is_the_routers_default_route(client, reference):
    r = client.post("/embed_sparse", json={"inputs": TEXTS})
    assert r.status_code == 200, r.text
    _check(_dense_of_tei(r.json(), reference["document"].shape[1]), reference["document"])
