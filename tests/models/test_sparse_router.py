"""Inference-free sparse encoders (a sentence-transformers ``Router``: a ``SparseStaticEmbedding``
query route, an ``MLMTransformer`` + ``SpladePooling`` document route), laid out as
opensearch-neural-sparse-encoding-doc-v2/v3 publish them (tests/support/tiny_sparse.py; doc-v3-distill
itself: a ``DistilBertForMaskedLM`` body and ``log1p_relu``), against
sentence-transformers 6.2's ``SparseEncoder.encode_query`` / ``encode_document`` on the same folder
and against both routes written out here:

- queries: ``SparseStaticEmbedding.preprocess`` (the query folder's tokenizer, no special tokens)
  then ``forward`` (each token present once, times its ``weight``), sentence_transformers/
  sparse_encoder/modules/sparse_static_embedding.py;
- documents: transformers' ``BertForMaskedLM`` / ``DistilBertForMaskedLM`` logits, then ``SpladePooling.forward``
  (``relu``, ``log1p``, a second ``log1p`` for ``log1p_relu``, max over the unpadded tokens),
  sentence_transformers/sparse_encoder/modules/splade_pooling.py.

fp32: the query vectors are the table's own values (exact); the documents' within DESIGN.md §7's
``atol=1e-4``, with the same non-zero indices.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_sparse import build_router_splade

from poolkit import LLM, ModelLoadError, PoolingParams, SparseEncoder
from poolkit.contracts.batch import PackedBatch
from poolkit.plugins import registry

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support:UserWarning")  # SparseEncoder's

ATOL = 1e-4
TEXTS = ["what is the capital of france?", "paris is the capital of france", "hello", "the quick brown fox jumps over the lazy dog"]
LAYOUT = "sentence-transformers Router (query: SparseStaticEmbedding, document: MLMTransformer + SpladePooling)"
QUERY = "query_0_SparseStaticEmbedding"


@pytest.fixture(scope="module")
def routers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("router")
    return {
        # opensearch's layout (masked LM at the top) with doc-v3-distill's pooling
        "published": build_router_splade(root / "published", activation="log1p_relu"),
        # sentence-transformers' own save (masked LM in document_0_MLMTransformer/), doc-v2's pooling
        "saved": build_router_splade(root / "saved", activation="relu", seed=1, document_in_root=False),
        # opensearch-neural-sparse-encoding-doc-v3-distill as published: DistilBERT body, log1p_relu
        "distill": build_router_splade(root / "distill", activation="log1p_relu", seed=2, body="distilbert"),
    }


def query_reference(path: Path, texts: list[str]) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path / QUERY))
    weight = load_file(str(path / QUERY / "model.safetensors"))["weight"]
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt", add_special_tokens=False)
    presence = torch.zeros(len(texts), weight.numel(), dtype=torch.int64)
    presence.scatter_(1, enc["input_ids"], enc["attention_mask"])
    return presence * weight


def document_reference(path: Path, texts: list[str]) -> torch.Tensor:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    router = json.loads((path / "router_config.json").read_text())
    body = path / router["structure"]["document"][0]
    pooling = json.loads((path / router["structure"]["document"][1] / "config.json").read_text())
    model = AutoModelForMaskedLM.from_pretrained(str(body)).eval()
    enc = AutoTokenizer.from_pretrained(str(body))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    x = torch.log1p(torch.relu(logits * enc["attention_mask"].unsqueeze(-1)))
    if pooling["activation_function"] == "log1p_relu":
        x = torch.log1p(x)
    return x.amax(dim=1)


def rows(outputs) -> torch.Tensor:
    return torch.stack([torch.as_tensor(o.outputs.embedding if hasattr(o.outputs, "embedding") else o.outputs.data) for o in outputs])


def assert_same_sparse(got: torch.Tensor, ref: torch.Tensor, exact: bool = False) -> None:
    assert got.shape == ref.shape
    if exact:
        assert torch.equal(got, ref.float())
    assert (got - ref).abs().max().item() <= ATOL
    for row_got, row_ref in zip(got, ref):
        assert torch.equal(row_got.nonzero().flatten(), row_ref.nonzero().flatten())
        assert int((row_ref != 0).sum()) > 0


@pytest.mark.parametrize("layout", ["published", "saved", "distill"])
def test_each_side_matches_sparse_encoder(routers, layout):
    from sentence_transformers import SparseEncoder as STSparseEncoder

    path = routers[layout]
    st = STSparseEncoder(str(path), device="cpu")
    st_queries = st.encode_query(TEXTS, convert_to_tensor=True).to_dense().float()
    st_documents = st.encode_document(TEXTS, convert_to_tensor=True).to_dense().float()
    queries, documents = query_reference(path, TEXTS), document_reference(path, TEXTS)
    assert_same_sparse(st_queries, queries, exact=True)
    assert_same_sparse(st_documents, documents)

    llm = LLM(str(path))
    assert llm.model.architecture_name == "InferenceFreeSpladeModel"
    assert set(llm.supported_tasks) == {"embed", "sparse_embed"}
    body = "DistilBertForMaskedLM" if layout == "distill" else "BertForMaskedLM"
    assert type(llm.model.architecture.document).__name__ == body
    for side, ref in (("query", st_queries), ("document", st_documents)):
        kwargs = {"tokenization_kwargs": {"input_type": side}}
        embedded = rows(llm.embed(TEXTS, **kwargs))
        assert_same_sparse(embedded, ref, exact=side == "query")
        assert torch.equal(rows(llm.encode(TEXTS, pooling_task="sparse_embed", **kwargs)), embedded)
    # No side: the Router's default_route, "document".
    assert llm.model.st.router.default_route == "document"
    assert torch.equal(rows(llm.embed(TEXTS)), rows(llm.embed(TEXTS, tokenization_kwargs={"input_type": "document"})))
    # poolkit's sentence-transformers classes: encode_query / encode_document take the routes.
    ours = SparseEncoder(str(path))
    assert_same_sparse(ours.encode_query(TEXTS).to_dense(), st_queries, exact=True)
    assert_same_sparse(ours.encode_document(TEXTS).to_dense(), st_documents)


def test_layout_and_settings_are_shown(routers):
    llm = LLM(str(routers["published"]))
    info = llm.model.describe()
    assert info["layout"] == {"value": LAYOUT, "source": "modules.json (Router) and router_config.json"}
    assert info["document_architecture"]["value"] == "BertForMaskedLM"
    assert llm.model.st.splade == {"strategy": "max", "activation": "log1p_relu", "path": "document_1_SpladePooling/config.json"}
    assert llm.model.st.router.document == "" and llm.model.st.router.query == QUERY
    saved = LLM(str(routers["saved"]))
    assert saved.model.st.router.document == "document_0_MLMTransformer"
    assert saved.model.layout.weights == routers["saved"] / "document_0_MLMTransformer"


def test_doc_v3_distill_layout(routers):
    """The published folder: the DistilBERT masked LM and idf.json at the top, beside the Router's files;
    idf.json holds the query table the Router's SparseStaticEmbedding saves (not read by poolkit)."""
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding
    from transformers import AutoTokenizer

    path = routers["distill"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "idf.json", "router_config.json", QUERY, "document_1_SpladePooling"} <= {
        f.name for f in path.iterdir()
    }
    assert not (path / "document_0_MLMTransformer").exists()
    assert json.loads((path / "config.json").read_text())["architectures"] == ["DistilBertForMaskedLM"]
    table = SparseStaticEmbedding.from_json(str(path / "idf.json"), tokenizer=AutoTokenizer.from_pretrained(str(path))).weight
    assert torch.equal(table.detach(), load_file(str(path / QUERY / "model.safetensors"))["weight"])
    info = LLM(str(path)).model.describe()
    assert info["layout"] == {"value": LAYOUT, "source": "modules.json (Router) and router_config.json"}
    assert info["document_architecture"]["value"] == "DistilBertForMaskedLM"


def test_queries_run_no_forward_pass(routers, monkeypatch):
    llm = LLM(str(routers["published"]))
    document = llm.model.architecture.document
    calls: list[int] = []
    forward = type(document).forward
    monkeypatch.setattr(type(document), "forward", lambda self, batch: calls.append(batch.num_seqs) or forward(self, batch))
    llm.embed(TEXTS, tokenization_kwargs={"input_type": "query"})
    assert calls == []
    llm.embed(TEXTS, tokenization_kwargs={"input_type": "document"})
    assert calls == [len(TEXTS)]


def test_one_batch_of_both_sides_routes_each_input(routers):
    """The server merges requests of both sides into one batch: each input keeps its own route."""
    path = routers["published"]
    llm = LLM(str(path))
    tok = llm.get_tokenizer()
    sides = ["query", "document", "document", "query"]
    ids = [tok(t, add_special_tokens=side == "document")["input_ids"] for t, side in zip(TEXTS, sides)]
    batch = PackedBatch.from_sequences(ids)
    head = llm.model.head(registry("task").get("sparse_embed"))
    params = [PoolingParams(task="sparse_embed").on_side(side) for side in sides]
    with torch.inference_mode():
        got = torch.stack(head(llm.model.architecture(batch), batch, params))
    queries, documents = query_reference(path, TEXTS), document_reference(path, TEXTS)
    want = torch.stack([queries[i].float() if side == "query" else documents[i] for i, side in enumerate(sides)])
    assert_same_sparse(got, want)


def test_wire_input_type_names_the_side(routers):
    """``input_type`` ``"query"`` is the route, though the save carries an empty ``query`` prompt."""
    llm = LLM(str(routers["published"]))
    assert llm.model.prompts.get("query") == ""
    assert llm.renderer.side("embed", "query").side == "query"
    assert llm.renderer.side("sparse_embed", "document").side == "document"


# -- checkpoints that contradict themselves ---------------------------------------------------------


def copy_of(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / src.name
    shutil.copytree(src, out)
    return out


def edit_router(path: Path, edit) -> None:
    config = json.loads((path / "router_config.json").read_text())
    edit(config)
    (path / "router_config.json").write_text(json.dumps(config))


def assert_refused(path: Path, match: str) -> None:
    with pytest.raises(ModelLoadError, match=match) as caught:
        LLM(str(path))
    assert "\n" not in str(caught.value)


def test_a_route_of_an_unknown_module_is_refused(routers, tmp_path):
    path = copy_of(routers["published"], tmp_path)
    edit_router(path, lambda c: c["types"].update({QUERY: "sentence_transformers.sparse_encoder.models.SparseAutoEncoder"}))
    assert_refused(path, r"routes are query: SparseAutoEncoder; document: MLMTransformer \+ SpladePooling; poolkit serves")


def test_a_route_naming_a_missing_module_is_refused(routers, tmp_path):
    path = copy_of(routers["published"], tmp_path)
    edit_router(path, lambda c: c["structure"]["document"].append("document_2_Normalize"))
    assert_refused(path, "routes module 'document_2_Normalize', which its types do not name")
    path = copy_of(routers["saved"], tmp_path / "saved")
    shutil.rmtree(path / QUERY)
    assert_refused(path, f"names module '{QUERY}', whose folder .* is missing")


def test_a_query_table_of_another_size_is_refused(routers, tmp_path):
    path = copy_of(routers["published"], tmp_path)
    file = path / QUERY / "model.safetensors"
    weight = load_file(str(file))["weight"]
    save_file({"weight": weight[:-5].contiguous()}, str(file))
    assert_refused(path, f"SparseStaticEmbedding weighs {weight.numel() - 5} tokens, its document route's vocabulary has {weight.numel()}")


def test_a_document_route_without_a_masked_lm_port_is_refused(routers, tmp_path):
    """A document route whose architecture poolkit runs without an MLM head (a bare encoder)."""
    path = copy_of(routers["distill"], tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "architectures": ["DistilBertModel"]}))
    assert_refused(path, "the Router's document route is DistilBertModel .* no masked-LM head")


def test_a_distilbert_body_contradicting_its_weights_is_refused(routers, tmp_path):
    path = copy_of(routers["distill"], tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "n_layers": 3}))
    assert_refused(path, "config.json n_layers is 3, but the weights hold 2 layers")
