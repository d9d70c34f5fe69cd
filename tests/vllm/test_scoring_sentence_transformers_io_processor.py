# Port of vllm tests/entrypoints/pooling/scoring/test_sentence_transformers_io_processor.py
# vLLM unit-tests its private CrossEncoderIOProcessor (get_score_prompt / render) on a hand-made
# processor around a BertTokenizer, with sentence-transformers' Transformer module as the reference.
# The port runs the same pairs through LLM.score (and /score) on real sentence-transformers exports
# with the same tokenizer, template and settings: vLLM's tiny modular BERT CrossEncoder and its tiny
# LogitScore CrossEncoder (port_utils.build_modular_bert_cross_encoder / build_logit_score_cross_encoder,
# shared with test_models_sentence_transformers_cross_encoder.py), and for a model without a
# sentence-transformers config the tiny XLM-R reranker (conftest bge_reranker). vLLM's "full prompt"
# (the rendered text, which LLM.score does not return) is checked through its token ids; its
# processor's `compressed_token_type_ids` (an engine detail of vLLM's) is left out.
# Request-level chat_template_kwargs reach LLM.score as in vLLM: PoolingParams.extra_kwargs.
# test_logit_score_truncation_preserves_saved_template_settings renders with the LogitScore export's
# own template: vLLM's, less the "[SEP]" it writes after a system message, which the export's
# word-level vocabulary has no token for.
# Not ported (vLLM internals or features poolkit does not have):
# - test_structured_cross_encoder_matches_saved_pair_template, test_structured_pair_shares_text_limits_
#   without_reordering_media, test_media_rows_do_not_restore_text_suffix: image parts in score inputs
#   (multimodal scoring is not served: docs/server.md);
# - test_effective_left_padding_is_rejected: vLLM's private tokenizer validator (a CLS-pooled export
#   with a left-padding tokenizer); poolkit packs inputs without padding, so the padding side never
#   reaches a pooler;
# - test_suffix_restore_preserves_padding: vLLM's pad_prompt_tokens tokenization kwarg (padding a
#   prompt with pad tokens up to N); poolkit packs without padding and has no such option.
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from port_utils import build_logit_score_cross_encoder, build_modular_bert_cross_encoder

from poolkit import LLM, PoolingParams
from poolkit.entrypoints.server import create_app

_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}:"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}[IMG]"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %};{% endfor %}"
)


def _reference(model_path: str):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(model_path, device="cpu")


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory) -> str:
    """vLLM's ``processor`` + ``st_transformer``: a structured BERT CrossEncoder whose chat template is
    ``_CHAT_TEMPLATE + "[SEP]"``, 16 tokens of context."""
    pytest.importorskip("sentence_transformers", minversion="5.7.0")
    path, _, _ = build_modular_bert_cross_encoder(
        tmp_path_factory.mktemp("st-io-bert"), structured=True, chat_template=_CHAT_TEMPLATE + "[SEP]"
    )
    return path


@pytest.fixture(scope="module")
def bert_llm(bert_export) -> LLM:
    return LLM(bert_export, dtype="float32", max_model_len=None)


@pytest.fixture(scope="module")
def st_transformer(bert_export):
    return _reference(bert_export)[0]


@pytest.fixture(scope="module")
def logit_export(tmp_path_factory) -> str:
    """vLLM's ``logit_processor``: a LogitScore CrossEncoder with two saved prompts, the default one
    named, and ``add_generation_prompt`` saved in its chat-template settings."""
    pytest.importorskip("sentence_transformers", minversion="5.7.0")
    path, *_ = build_logit_score_cross_encoder(
        tmp_path_factory.mktemp("st-io-logit"),
        5,
        False,
        prompts={"default": "default instruction", "other": "other instruction"},
        default_prompt_name="default",
        words=["default", "instruction", "other", "override"],
    )
    return path


@pytest.fixture(scope="module")
def logit_llm(logit_export) -> LLM:
    return LLM(logit_export, dtype="float32", max_model_len=None)


def _template_kwargs(kwargs) -> PoolingParams:
    return PoolingParams(extra_kwargs={"chat_template_kwargs": kwargs})


@pytest.mark.parametrize(
    "kwargs,expected_prompt,expected_generation",
    [
        ({}, "default instruction", True),
        ({"prompt_name": None}, "default instruction", True),
        ({"prompt_name": "other"}, "other instruction", True),
        ({"prompt": "override", "add_generation_prompt": False}, "override", False),
        ({"prompt": "override", "prompt_name": "unknown"}, "override", True),
        ({"prompt": ""}, None, True),
    ],
)
def test_logit_score_preserves_saved_and_request_prompt_semantics(logit_llm, kwargs, expected_prompt, expected_generation):
    tokenizer = logit_llm.get_tokenizer()
    original_kwargs = dict(kwargs)
    (output,) = logit_llm.score("query", "document", _template_kwargs(kwargs))
    messages = [
        {"role": "query", "content": [{"type": "text", "text": "query"}]},
        {"role": "document", "content": [{"type": "text", "text": "document"}]},
    ]
    if expected_prompt:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": expected_prompt}]})
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=expected_generation)
    assert output.prompt_token_ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert logit_llm.model.st.chat_template_kwargs == {"add_generation_prompt": True}
    assert kwargs == original_kwargs


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"prompt_name": "unknown"}, "Unknown saved CrossEncoder prompt"),
        ({"prompt": 1}, "CrossEncoder prompt must be a string"),
    ],
)
def test_logit_score_rejects_invalid_request_prompt(logit_llm, kwargs, error):
    with pytest.raises(ValueError, match=error):
        logit_llm.score("query", "document", _template_kwargs(kwargs))


def test_text_pair_uses_saved_message_template(tmp_path: Path):
    pytest.importorskip("sentence_transformers", minversion="5.7.0")
    path, _, _ = build_modular_bert_cross_encoder(tmp_path, structured=True, chat_template=_CHAT_TEMPLATE)
    llm = LLM(path, dtype="float32", max_model_len=None)
    tokenizer = llm.get_tokenizer()
    expected_messages = [
        {"role": "query", "content": [{"type": "text", "text": "query"}]},
        {"role": "document", "content": [{"type": "text", "text": "document"}]},
    ]

    (output,) = llm.score("query", "document")

    expected_token_ids = tokenizer.apply_chat_template(
        expected_messages, chat_template=_CHAT_TEMPLATE, tokenize=True, return_dict=False
    )
    # vLLM's full_prompt: what the saved template renders for the pair.
    assert tokenizer.apply_chat_template(expected_messages, tokenize=False) == "query:query;document:document;"
    assert output.prompt_token_ids == expected_token_ids


def test_explicit_template_preserves_special_token_setting(bge_reranker):
    # vLLM's processor with no sentence-transformers config: the tiny XLM-R reranker.
    template = "{{ messages[0]['content'] }} {{ messages[1]['content'] }}"
    (output,) = bge_reranker.score("query", "document", chat_template=template)

    full_prompt = "query document"
    expected = bge_reranker.get_tokenizer()(full_prompt, add_special_tokens=True)
    assert output.prompt_token_ids == expected["input_ids"]


@pytest.mark.parametrize("document_tokens", [3, 4, 5])
@pytest.mark.parametrize("truncation_side", ["left", "right"])
def test_structured_truncation_matches_sentence_transformers(bert_llm, st_transformer, document_tokens, truncation_side):
    """Both LAST and MEAN readouts must see the same boundary-length inputs."""
    pair = ("query", " ".join(["document"] * document_tokens))
    previous = st_transformer.tokenizer.truncation_side
    st_transformer.tokenizer.truncation_side = truncation_side
    try:
        expected = st_transformer.preprocess([pair], processing_kwargs={"text": {"max_length": 12}})
    finally:
        st_transformer.tokenizer.truncation_side = previous

    (result,) = bert_llm.score(*pair, tokenization_kwargs={"truncate_prompt_tokens": 12, "truncation_side": truncation_side})

    assert result.prompt_token_ids == expected["input_ids"][0].tolist()


@pytest.mark.parametrize("chat_template_kwargs", [None, {"add_generation_prompt": False}])
def test_logit_score_truncation_preserves_saved_template_settings(tmp_path: Path, chat_template_kwargs):
    """Truncated LogitScore inputs retain the saved generation and system suffix."""
    pytest.importorskip("sentence_transformers", minversion="5.7.0")
    # vLLM's export: saved prompt "match" (the default), add_generation_prompt saved as True.
    path, *_ = build_logit_score_cross_encoder(tmp_path, 5, False)
    st_transformer = _reference(path)[0]
    pair = ("query", " ".join(["document"] * 10))
    expected = st_transformer.preprocess(
        [pair], prompt="match", processing_kwargs={"text": {"max_length": 12}, "chat_template": chat_template_kwargs or {}}
    )

    llm = LLM(path, dtype="float32", max_model_len=None)
    (result,) = llm.score(*pair, _template_kwargs(chat_template_kwargs), tokenization_kwargs={"truncate_prompt_tokens": 12})

    assert result.prompt_token_ids == expected["input_ids"][0].tolist()


def test_explicit_suffix_restore_opt_out(bert_llm, st_transformer):
    pair = ("query", " ".join(["document"] * 10))
    chat_kwargs = {"restore_suffix": False}
    expected = st_transformer.preprocess(
        [pair], processing_kwargs={"text": {"max_length": 12}, "chat_template": chat_kwargs}
    )["input_ids"][0].tolist()

    (result,) = bert_llm.score(*pair, _template_kwargs(chat_kwargs), tokenization_kwargs={"truncate_prompt_tokens": 12})

    assert result.prompt_token_ids == expected
    assert expected[-1] == bert_llm.get_tokenizer().convert_tokens_to_ids("document")
    assert chat_kwargs == {"restore_suffix": False}


@pytest.mark.parametrize(
    "template",
    [
        "{% for message in messages %}{% for part in message.content %}"
        "{{ part.text }} {% endfor %}{% endfor %}",
        "{% for message in messages %}{% for part in message.content %}"
        "{% if part.text == '0' %}{{ raise_exception('No zero filler') }}{% endif %}"
        "{{ part.text }} {% endfor %}{% endfor %}[SEP]",
    ],
    ids=["no-fixed-suffix", "suffix-probe-fails"],
)
def test_unavailable_suffix_matches_sentence_transformers(tmp_path: Path, template):
    pytest.importorskip("sentence_transformers", minversion="5.7.0")
    path, _, _ = build_modular_bert_cross_encoder(tmp_path, structured=True, chat_template=template)
    st_transformer = _reference(path)[0]
    pair = ("query", " ".join(["document"] * 16))
    expected = st_transformer.preprocess([pair], processing_kwargs={"text": {"max_length": 12}})["input_ids"][0].tolist()

    llm = LLM(path, dtype="float32", max_model_len=None)
    (result,) = llm.score(*pair, tokenization_kwargs={"truncate_prompt_tokens": 12})

    assert result.prompt_token_ids == expected


@pytest.mark.parametrize(
    "tokenization_kwargs",
    [
        {"truncation": "do_not_truncate"},
        {"truncation": False},
        {"truncate_prompt_tokens": None},
    ],
)
def test_explicit_offline_truncation_opt_out(bert_llm, tokenization_kwargs):
    pair = ("query", " ".join(["document"] * 21))

    with pytest.raises(ValueError, match="maximum context length"):
        bert_llm.score(*pair, tokenization_kwargs=tokenization_kwargs)

    (result,) = bert_llm.score(*pair)
    assert len(result.prompt_token_ids) == 16


@pytest.mark.parametrize("explicit_opt_out", [False, True])
def test_online_default_preserves_explicit_truncation_opt_out(bert_llm, explicit_opt_out):
    kwargs = {"truncate_prompt_tokens": None} if explicit_opt_out else {}
    request = {"queries": "query", "documents": " ".join(["document"] * 21), **kwargs}
    with TestClient(create_app(bert_llm, served_model_name="local-model")) as client:
        response = client.post("/score", json=request)

    if explicit_opt_out:
        assert response.status_code == 400, response.text
        assert "maximum context length" in response.json()["error"]["message"]
    else:
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["prompt_tokens"] == 16
