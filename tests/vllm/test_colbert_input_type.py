# Port of vllm tests/entrypoints/pooling/test_colbert_input_type.py
# vLLM unit-tests PoolingIOProcessor._colbert_token_ids on a fake Jina-ColBERT tokenizer
# ([QueryMarker] / [DocumentMarker], query expansion to 32 with [MASK], max_model_len 4). The port
# runs the same requests through LLM.encode(..., tokenization_kwargs={"input_type": ...}) on the
# tiny HF_ColBERT of conftest (``colbert_dir``) given colbert-ai metadata with the same settings:
# markers "<s>" / "</s>" (tokens of the tiny vocabulary), query_maxlen 32, doc_maxlen 4. The
# embed-task and non-ColBERT refusals run on all-MiniLM-L6-v2 (vLLM: the same processor renamed).
import json
import shutil

import pytest

from poolkit import LLM


@pytest.fixture(scope="module")
def colbert(colbert_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("colbert-input-type") / "colbert"
    shutil.copytree(colbert_dir, path)
    meta = {"query_token_id": "<s>", "doc_token_id": "</s>", "query_maxlen": 32, "doc_maxlen": 4}
    (path / "artifact.metadata").write_text(json.dumps(meta))
    return LLM(str(path), max_model_len=128)


def _ids(llm, text, input_type):
    (out,) = llm.encode(text, pooling_task="token_embed", tokenization_kwargs={"input_type": input_type})
    assert out.outputs.data.shape[0] == len(out.prompt_token_ids)
    return out.prompt_token_ids


def test_colbert_query_input_type_inserts_marker_and_expands_to_32(colbert):
    tok = colbert.get_tokenizer()
    marker = tok.convert_tokens_to_ids("<s>")
    text_ids = tok("the capital", add_special_tokens=False)["input_ids"]

    token_ids = _ids(colbert, "the capital", "query")

    assert token_ids[:5] == [tok.cls_token_id, marker, *text_ids, tok.sep_token_id]
    assert len(token_ids) == 32
    assert token_ids[5:] == [tok.mask_token_id] * 27


def test_colbert_query_input_type_truncates_before_marker_insert(colbert):
    tok = colbert.get_tokenizer()

    token_ids = _ids(colbert, " ".join(["paris"] * 50), "query")

    assert len(token_ids) == 32
    assert token_ids[0] == tok.cls_token_id
    assert token_ids[1] == tok.convert_tokens_to_ids("<s>")
    assert token_ids[-1] == tok.sep_token_id


def test_colbert_document_input_type_inserts_marker_without_query_expansion(colbert):
    tok = colbert.get_tokenizer()
    first = tok("the capital", add_special_tokens=False)["input_ids"][0]

    token_ids = _ids(colbert, "the capital", "document")

    assert token_ids == [tok.cls_token_id, tok.convert_tokens_to_ids("</s>"), first, tok.sep_token_id]


def test_colbert_input_type_requires_token_embed_offline(minilm):
    with pytest.raises(ValueError) as e:
        minilm.encode("test", pooling_task="embed", tokenization_kwargs={"input_type": "query"})
    assert str(e.value) == "input_type is only supported with task 'token_embed'."


def test_colbert_input_type_rejects_non_colbert_models(minilm):
    with pytest.raises(ValueError) as e:
        minilm.encode("test", pooling_task="token_embed", tokenization_kwargs={"input_type": "query"})
    assert str(e.value) == "input_type is only supported for ColBERT models."


def test_colbert_input_type_matches_what_score_encodes(colbert):
    # POOLKIT (beyond vLLM's test): the typed prompts are the ones LLM.score builds, so MaxSim over
    # them is the late-interaction score; an unknown input_type is refused.
    q = colbert.encode("the capital", pooling_task="token_embed", tokenization_kwargs={"input_type": "query"})[0]
    d = colbert.encode("paris is the capital", pooling_task="token_embed", tokenization_kwargs={"input_type": "document"})[0]
    (score,) = colbert.score("the capital", "paris is the capital")
    maxsim = (q.outputs.data.float() @ d.outputs.data.float().T).amax(-1).sum()
    assert score.outputs.score == pytest.approx(float(maxsim), rel=1e-4)
    pad = colbert.get_tokenizer().pad_token_id  # vLLM's scoring output joins the sides with the pad token
    assert score.prompt_token_ids == q.prompt_token_ids + [pad] + d.prompt_token_ids
    with pytest.raises(ValueError, match="input_type must be 'query' or 'document'"):
        colbert.encode("x", pooling_task="token_embed", tokenization_kwargs={"input_type": "passage"})
