"""ColBERT (HF_ColBERT layout): projected token vectors, MaxSim scoring, markers, the MaxSim kernel."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from suite_device import run_triton_script
from typer.testing import CliRunner

from poolkit import LLM
from poolkit.entrypoints.cli import app
from poolkit.kernels.maxsim import maxsim_packed, maxsim_reference
from poolkit.plugins.lookup import select_kernel

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "hello world", "the quick brown fox jumps over the lazy dog", "berlin"]


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory):
    """A tiny BERT + 16-wide linear projection saved as colbert-ai does (``bert.`` + ``linear``; the
    names vLLM's colbert.py loads, see ``tiny_models.build_stanford_colbert``)."""
    from tiny_models import build_stanford_colbert

    return build_stanford_colbert(tmp_path_factory.mktemp("colbert") / "tiny-colbert")


def reference_vectors(path, ids_list):
    """transformers BertModel hidden states, projected by ``linear`` and normalised, per sequence."""
    from transformers import BertModel

    hf = BertModel.from_pretrained(str(path), add_pooling_layer=False).eval()
    weight = load_file(str(path / "model.safetensors"))["linear.weight"]
    out = []
    for ids in ids_list:
        with torch.no_grad():
            hidden = hf(input_ids=torch.tensor([ids])).last_hidden_state[0]
        out.append(torch.nn.functional.normalize(hidden @ weight.T, dim=-1))
    return out


def test_token_vectors_match_transformers_plus_projection(colbert_dir):
    llm = LLM(str(colbert_dir))
    assert llm.supported_tasks == ["token_embed"] and llm.score_type == "late-interaction"
    outs = llm.encode(DOCS, pooling_task="token_embed")
    refs = reference_vectors(colbert_dir, [o.prompt_token_ids for o in outs])
    for out, ref in zip(outs, refs):
        assert out.outputs.data.shape == ref.shape == (len(out.prompt_token_ids), 16)
        assert torch.allclose(out.outputs.data, ref, atol=1e-4)


def test_maxsim_scores_equal_the_reference(colbert_dir):
    llm = LLM(str(colbert_dir))
    tok = llm.get_tokenizer()
    q_ref, *d_refs = reference_vectors(colbert_dir, [tok(t)["input_ids"] for t in [QUERY, *DOCS]])
    expected = [(q_ref @ d.T).max(dim=1).values.sum().item() for d in d_refs]
    got = [s.outputs.score for s in llm.score(QUERY, DOCS)]
    assert got == pytest.approx(expected, abs=1e-4)
    ranked = llm.rerank(QUERY, DOCS)
    assert [r.index for r in ranked] == sorted(range(len(DOCS)), key=lambda i: -expected[i])
    pairwise = [s.outputs.score for s in llm.score([QUERY, DOCS[0]], [DOCS[1], DOCS[2]])]
    assert pairwise[0] == pytest.approx(expected[1], abs=1e-4)


def st_maxsim(path, query, docs):
    """sentence-transformers' MultiVectorEncoder (the colbert-ai / PyLate reference) scores."""
    from sentence_transformers import MultiVectorEncoder

    model = MultiVectorEncoder(str(path), device="cpu")
    return model.similarity(model.encode_query([query]), model.encode_document(docs))[0].tolist()


PUNCTUATED = [*DOCS, "paris, the capital; of france!", "(berlin) - germany's capital."]


@pytest.mark.parametrize("attend", [None, False, True], ids=["default", "unattended", "attended"])
def test_markers_query_expansion_and_skiplist(colbert_dir, tmp_path, attend):
    """colbert-ai's artifact.metadata: markers, [MASK] expansion (not attended to unless
    attend_to_mask_tokens), punctuation left out of documents; sentence-transformers is the reference."""
    import shutil

    path = tmp_path / "with-markers"
    shutil.copytree(colbert_dir, path)
    meta = {"query_token_id": "<s>", "doc_token_id": "</s>", "query_maxlen": 12, "doc_maxlen": 9}
    if attend is not None:
        meta["attend_to_mask_tokens"] = attend
    (path / "artifact.metadata").write_text(json.dumps(meta))
    llm = LLM(str(path))
    got = [s.outputs.score for s in llm.score(QUERY, PUNCTUATED)]
    assert got == pytest.approx(st_maxsim(path, QUERY, PUNCTUATED), abs=1e-4)
    assert got != pytest.approx([s.outputs.score for s in LLM(str(colbert_dir)).score(QUERY, PUNCTUATED)], abs=1e-3)
    (query,) = llm.encode({"prompt_token_ids": llm.get_tokenizer()(QUERY)["input_ids"]}, pooling_task="token_embed")
    assert torch.allclose(query.outputs.data, reference_vectors(path, [query.prompt_token_ids])[0], atol=1e-4)


def test_unattended_expansion_in_bfloat16(colbert_dir, tmp_path):
    """The [MASK] tokens nobody attends to: the same hiding in bf16 (the reference attention path)."""
    import shutil

    path = tmp_path / "with-markers"
    shutil.copytree(colbert_dir, path)
    (path / "artifact.metadata").write_text(json.dumps({"query_token_id": "<s>", "doc_token_id": "</s>", "query_maxlen": 16}))
    full = [s.outputs.score for s in LLM(str(path), dtype="float32").score(QUERY, DOCS)]
    low = [s.outputs.score for s in LLM(str(path), dtype="bfloat16").score(QUERY, DOCS)]
    assert low == pytest.approx(full, rel=0.02)


@pytest.mark.parametrize("kernel", [maxsim_reference, maxsim_packed], ids=["reference", "packed"])
def test_maxsim_cpu_kernels(kernel):
    torch.manual_seed(0)
    query = torch.randn(5, 8)
    docs = [torch.randn(n, 8) for n in (3, 1, 7, 0, 2)]
    cu = torch.tensor([0, 3, 4, 11, 11, 13])
    got = kernel(query, torch.cat(docs), cu)
    expected = torch.stack([(query @ d.T).max(dim=1).values.sum() if len(d) else torch.tensor(0.0) for d in docs])
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-5)
    # A window of a larger packed tensor (offsets not starting at 0), bf16 inputs, no documents.
    wide = torch.cat([torch.randn(4, 8), *docs])
    assert torch.allclose(kernel(query, wide, cu + 4), expected, atol=1e-5)
    low = kernel(query.bfloat16(), torch.cat(docs).bfloat16(), cu)
    assert torch.allclose(low, maxsim_reference(query.bfloat16(), torch.cat(docs).bfloat16(), cu), atol=1e-3)
    assert kernel(query, torch.cat(docs), cu[:1]).shape == (0,)


def test_cpu_picks_the_packed_maxsim():
    assert select_kernel("maxsim", "cpu") is maxsim_packed


def test_maxsim_triton_kernel():
    pytest.importorskip("triton", reason="pip install triton to test the Triton kernels")
    script = textwrap.dedent(
        """
        import torch
        from poolkit.kernels.maxsim import maxsim_reference, maxsim_triton
        torch.manual_seed(1)
        query = torch.randn(7, 24)
        lens = [5, 1, 33, 16]
        docs = torch.randn(sum(lens), 24)
        cu = torch.tensor([0] + lens).cumsum(0)
        got, ref = maxsim_triton(query, docs, cu), maxsim_reference(query, docs, cu)
        assert torch.allclose(got, ref, atol=1e-4), (got, ref)
        print("ok", got.tolist())
        """
    )
    result = run_triton_script(script)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-2000:]


def test_cli_rerank_with_colbert(colbert_dir):
    result = CliRunner().invoke(app, ["rerank", "--model", str(colbert_dir), "--query", QUERY, *DOCS])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in rows] == [r.index for r in LLM(str(colbert_dir)).rerank(QUERY, DOCS)]


def test_pylate_layout_with_dense_and_prefixes(tmp_path):
    """A sentence-transformers / PyLate ColBERT: BertModel + Dense, markers in its config."""
    from tiny_models import build_encoder, build_pylate_colbert

    backbone = build_encoder(tmp_path / "backbone", "bert", init_range=0.5)
    config = dict(query_prefix="<s> ", document_prefix="</s> ", query_length=12, document_length=9, do_query_expansion=True)
    path = build_pylate_colbert(tmp_path / "pylate", backbone, **config)
    dense = load_file(str(path / "1_Dense" / "model.safetensors"))
    llm = LLM(str(path))
    assert llm.score_type == "late-interaction"
    tok = llm.get_tokenizer()
    marker = tok.convert_tokens_to_ids("<s>")
    q = tok(QUERY, truncation=True, max_length=11)["input_ids"]
    q = q[:1] + [marker] + q[1:]
    q += [tok.mask_token_id] * (12 - len(q))
    (query,) = llm.encode({"prompt_token_ids": q}, pooling_task="token_embed")
    from transformers import BertModel

    hf = BertModel.from_pretrained(str(backbone), add_pooling_layer=False).eval()
    with torch.no_grad():
        hidden = hf(input_ids=torch.tensor([q])).last_hidden_state[0]
    expected = torch.nn.functional.normalize(hidden @ dense["linear.weight"].T, dim=-1)
    assert torch.allclose(query.outputs.data, expected, atol=1e-4)
    got = [s.outputs.score for s in llm.score(QUERY, PUNCTUATED)]
    assert got == pytest.approx(st_maxsim(path, QUERY, PUNCTUATED), abs=1e-4)


def test_modernbert_colbert_by_override(tmp_path):
    from tiny_models import build_modernbert

    path = build_modernbert(tmp_path / "mb", "embed")
    state = load_file(str(path / "model.safetensors"))
    torch.manual_seed(3)
    state["linear.weight"] = torch.randn(8, 32)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    llm = LLM(str(path), hf_overrides={"architectures": ["ColBERTModernBertModel"]})
    plain = LLM(str(path), pooler_config={"use_activation": False})
    assert llm.score_type == "late-interaction"
    (vectors,) = llm.encode("hello world", pooling_task="token_embed")
    (hidden,) = plain.encode("hello world", pooling_task="token_embed")
    expected = torch.nn.functional.normalize(hidden.outputs.data @ state["linear.weight"].T, dim=-1)
    assert torch.allclose(vectors.outputs.data, expected, atol=1e-5)


def test_modernbert_colbert_folder_without_pylate_config_is_normalised(tmp_path):
    """GTE-ModernColBERT saved with modules.json (Transformer, PyLate's Dense) but no
    config_sentence_transformers.json, served as ColBERTModernBertModel: unit token vectors, as vLLM.
    Layout source: vLLM's sentence-transformers Dense reader (module types ``pylate.models.Dense.Dense``
    and ``sentence_transformers.models.Dense``, ``<path>/config.json`` and ``model.safetensors``)."""
    from tiny_models import build_modernbert

    path = build_modernbert(tmp_path / "mb", "embed")
    (path / "1_Dense").mkdir()
    torch.manual_seed(4)
    weight = torch.randn(8, 32)
    save_file({"linear.weight": weight}, str(path / "1_Dense" / "model.safetensors"))
    (path / "1_Dense" / "config.json").write_text(json.dumps(
        {"in_features": 32, "out_features": 8, "bias": False, "activation_function": "torch.nn.modules.linear.Identity"}))
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ]))
    llm = LLM(str(path), hf_overrides={"architectures": ["ColBERTModernBertModel"]})
    plain = LLM(str(path), hf_overrides={"architectures": ["ModernBertModel"]}, pooler_config={"use_activation": False})
    (vectors,) = llm.encode("hello world", pooling_task="token_embed")
    (hidden,) = plain.encode("hello world", pooling_task="token_embed")
    expected = torch.nn.functional.normalize(hidden.outputs.data, dim=-1)
    assert hidden.outputs.data.shape[-1] == 8  # the Dense projects in both; only the normalisation differs
    assert torch.allclose(vectors.outputs.data, expected, atol=1e-5)
    assert llm.model.describe()["tasks"]["token_embed"]["use_activation"]["value"] is True
