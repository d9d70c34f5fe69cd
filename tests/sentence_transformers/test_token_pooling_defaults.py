"""Token pooling a model does by default: a checkpoint's sentence-transformers
``HierarchicalTokenPooling`` module (in ``MultiVectorEncoder`` against sentence-transformers 6's own
on the same save, on ``LLM`` and on the server) and ``token_pool_factor`` (``--token-pool-factor``),
each on documents only unless a request asks."""

from __future__ import annotations

import json

import pytest
import torch

from poolkit import LLM, PoolingParams
from poolkit.contracts.errors import InvalidRequest, ModelLoadError

token_pooling = pytest.importorskip("sentence_transformers.multi_vector_encoder.modules.token_pooling")
HierarchicalTokenPooling = token_pooling.HierarchicalTokenPooling

DOCUMENTS = [
    "Late interaction keeps one vector per token, and an index of them grows with every document it holds.",
    "Clustering a document's token vectors and keeping each cluster's mean stores fewer of them.",
    "a b c d e f g h i j k l m n o p q r s t",
]
QUERIES = ["what does late interaction keep?", "token vectors"]


def _close(got, expected) -> None:
    assert [tuple(g.shape) for g in got] == [tuple(e.shape) for e in expected]
    for g, e in zip(got, expected):
        torch.testing.assert_close(torch.as_tensor(g).float(), torch.as_tensor(e).float(), atol=1e-5, rtol=0)


@pytest.fixture(scope="module", params=[(2, 1, True), (3, 0, False)], ids=["factor2", "factor3-unprotected-raw"])
def pooled_save(request, tmp_path_factory, minilm_dir, save_native_mve_fn, colbert_mve_settings):
    """The ColBERT save of ``colbert_mve_dir`` (prompts, skiplist, expansion) whose pipeline ends in a
    HierarchicalTokenPooling module, as sentence-transformers 6 writes it."""
    factor, protected, normalize = request.param
    module = HierarchicalTokenPooling(factor, num_protected_tokens=protected, normalize_embeddings=normalize)
    out = tmp_path_factory.mktemp("pooled") / "colbert"
    return save_native_mve_fn(out, minilm_dir, extra_modules=(module,), **colbert_mve_settings)


def test_the_checkpoints_module_pools_documents_as_sentence_transformers(pooled_save):
    from sentence_transformers import MultiVectorEncoder as Reference

    from poolkit import MultiVectorEncoder

    reference = Reference(str(pooled_save), device="cpu")
    model = MultiVectorEncoder(str(pooled_save), model_kwargs={"dtype": "float32"})
    docs, queries = model.encode_document(DOCUMENTS), model.encode_query(QUERIES)
    _close(docs, reference.encode_document(DOCUMENTS))
    _close(queries, reference.encode_query(QUERIES))  # queries are never pooled by a document module
    _close(model.encode(DOCUMENTS), reference.encode(DOCUMENTS))  # no task counts as a document
    assert len(docs[0]) <= 32 // 2 + 1  # a 32-token document, pooled by 2 or more


def test_llm_and_the_server_pool_the_documents_of_a_checkpoint_with_the_module(pooled_save):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    from sentence_transformers import MultiVectorEncoder as Reference

    llm = LLM(str(pooled_save), dtype="float32")
    plain = LLM(str(pooled_save), dtype="float32", pooler_config={"token_pool_factor": 1})

    def encode(model: LLM, side: str, **params) -> list[torch.Tensor]:
        pooling = PoolingParams(**params) if params else None
        outputs = model.encode(DOCUMENTS, pooling_task="token_embed", tokenization_kwargs={"input_type": side}, pooling_params=pooling)
        return [o.outputs.data for o in outputs]

    # sentence-transformers' pipeline: the skiplist (punctuation) left out, then the module's pooling
    expected = Reference(str(pooled_save), device="cpu").encode_document(DOCUMENTS)
    _close(encode(llm, "document"), expected)
    _close(encode(llm, "query"), encode(plain, "query"))  # a query is not pooled by default
    asked = encode(llm, "query", token_pool_factor=2)  # ... unless it asks
    assert sum(len(a) for a in asked) < sum(len(q) for q in encode(plain, "query"))
    with TestClient(create_app(llm, served_model_name="c")) as c:
        for path, body, key in (
            ("/pooling", {"input": DOCUMENTS, "task": "token_embed", "input_type": "document"}, "data"),
            ("/v1/multi-vector", {"input": DOCUMENTS}, "embeddings"),  # Jina's default side: document
        ):
            r = c.post(path, json=body)
            assert r.status_code == 200, r.text
            _close([torch.tensor(item[key]) for item in r.json()["data"]], expected)


def test_token_pool_factor_pools_a_model_without_sides(minilm_dir):
    # all-MiniLM-L6-v2 has no query and document sides: every input counts as a document, as
    # sentence-transformers counts an input encoded without a task.
    default = LLM(str(minilm_dir), token_pool_factor=2)
    plain = LLM(str(minilm_dir))
    assert default.args.pooler_settings().token_pool_factor == 2

    def tokens(model: LLM, **params) -> list[torch.Tensor]:
        pooling = PoolingParams(**params) if params else None
        return [o.outputs.data for o in model.encode(DOCUMENTS, pooling_task="token_embed", pooling_params=pooling)]

    _close(tokens(default), tokens(plain, token_pool_factor=2))
    _close(tokens(default, token_pool_factor=3), tokens(plain, token_pool_factor=3))  # the request's own wins
    _close(tokens(LLM(str(minilm_dir), pooler_config={"token_pool_factor": 2})), tokens(default))


def test_bad_defaults_are_refused(minilm_dir, pooled_save, tmp_path):
    import shutil

    for kwargs, message in (
        ({"token_pool_factor": 0.5}, "token_pool_factor must be >= 1, got 0.5"),
        ({"pooler_config": {"token_pool_factor": 0}}, "token_pool_factor must be >= 1, got 0.0"),
        ({"token_pool_factor": 2, "pooler_config": {"token_pool_factor": 3}}, "token_pool_factor 2.0 and pooler_config's 3.0 differ"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            LLM(str(minilm_dir), **kwargs)
    broken = tmp_path / "broken"
    shutil.copytree(pooled_save, broken)
    modules = json.loads((broken / "modules.json").read_text())
    folder = broken / next(m["path"] for m in modules if m["type"].endswith("HierarchicalTokenPooling"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "pool_factor": 0.5}))
    with pytest.raises(ModelLoadError, match="pool_factor must be >= 1, got 0.5"):
        LLM(str(broken))


def test_a_factor_every_request_would_refuse_is_refused_at_load(minilm_dir):
    """A default factor above the model's input limit (1e308 on all-MiniLM-L6-v2's 256 tokens) is
    refused when the model loads, not on every token request afterwards, blaming a factor the
    request never sent; ``poolkit serve --token-pool-factor`` exits with the same one line."""
    import re

    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    message = "token_pool_factor 1e+308 is above the model's 256 tokens"
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        LLM(str(minilm_dir), token_pool_factor=1e308)
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        LLM(str(minilm_dir), pooler_config={"token_pool_factor": 1e308})
    result = CliRunner().invoke(app, ["serve", str(minilm_dir), "--token-pool-factor", "1e308", "--port", "0"])
    assert result.exit_code == 1, result.output
    assert f"\nError: {message}" in result.stderr, result.stderr  # the server stops once the model fails to load
    assert LLM(str(minilm_dir), token_pool_factor=256).args.pooler_settings().token_pool_factor == 256  # the limit itself loads
