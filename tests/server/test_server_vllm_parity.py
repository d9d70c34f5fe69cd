"""``poolkit serve`` answers vLLM's clients and takes ``vllm serve`` flags (issue 13, server part).

Each test names the vLLM test or source whose behaviour it holds the server to:

- ``/tokenize`` and ``/detokenize``: ``tests/entrypoints/openai/test_tokenization.py``,
  ``vllm/entrypoints/serve/tokenize/protocol.py``;
- ``/invocations``: ``vllm/entrypoints/sagemaker/api_router.py`` with the pooling invocation types
  of ``vllm/entrypoints/pooling/factories.py``; the ``test_invocations*`` tests of
  ``tests/entrypoints/pooling/{embed,classify,pooling,scoring}``;
- ``add_special_tokens`` with ``input``: ``test_chat_request`` of
  ``tests/entrypoints/pooling/embed/test_online.py`` and ``test_conversation_pooling`` of
  ``tests/entrypoints/pooling/pooling/test_online.py`` ("To be consistent with chat");
- Cohere ``meta.tokens``: ``test_response_structure`` of
  ``tests/entrypoints/pooling/embed/test_cohere_online.py``;
- scoring on a classifier with several labels: ``test_score`` / ``test_rerank`` of
  ``tests/entrypoints/pooling/classify/test_online.py`` and ``enable_scoring_api``;
  ``use_activation`` on a bi-encoder: ``test_use_activation`` of
  ``tests/entrypoints/pooling/scoring/test_online_score.py``;
- ``vllm serve`` flags: the server fixtures of those tests (``--max-model-len``,
  ``--trust-remote-code``, ``--chat-template``, ``--hf_overrides``, ``--enforce-eager``, ...).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from poolkit import LLM, PoolingParams  # noqa: E402
from poolkit.contracts.errors import InvalidRequest  # noqa: E402
from poolkit.contracts.io import Prompt  # noqa: E402
from poolkit.entrypoints.server import create_app  # noqa: E402

ATOL = 1e-5
TEXT = "The best thing about vLLM is that it supports many different models"
TEXTS = ["Hello, my name is", "The capital of France is Paris.", "A man is eating food."]
#: vLLM's tests' template (``DUMMY_CHAT_TEMPLATE``).
DUMMY_CHAT_TEMPLATE = """{% for message in messages %}{{message['role'] + ': ' + message['content'] + '\\n'}}{% endfor %}"""
MESSAGES = [
    {"role": "user", "content": "The cat sat on the mat."},
    {"role": "assistant", "content": "A feline was resting on a rug."},
    {"role": "user", "content": "Stars twinkle brightly in the night sky."},
]
QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "berlin is in germany", "the sky is blue"]


def _close(a, b, atol: float = ATOL) -> None:
    diff = float((torch.tensor(a, dtype=torch.float32) - torch.tensor(b, dtype=torch.float32)).abs().max())
    assert diff <= atol, diff


def error_of(response, status: int, startswith: str | None = None, contains: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and set(error) == {"message", "type", "param", "code"}
    if startswith is not None:
        assert error["message"].startswith(startswith), error["message"]
    if contains is not None:
        assert contains in error["message"], error["message"]
    return error


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(minilm):
    with TestClient(create_app(minilm, served_model_name="minilm", chat_template=DUMMY_CHAT_TEMPLATE)) as c:
        yield c


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny_models import build_classifier

    root = tmp_path_factory.mktemp("parity")
    return {
        "ce": LLM(str(build_classifier(root / "ce", "bert", 1))),
        "c3": LLM(str(build_classifier(root / "c3", "bert", 3))),
        "ner": LLM(str(build_classifier(root / "ner", "bert", 3, token=True))),
    }


@pytest.fixture(scope="module")
def ce_client(models):
    with TestClient(create_app(models["ce"], served_model_name="ce")) as c:
        yield c


@pytest.fixture(scope="module")
def c3_client(models):
    with TestClient(create_app(models["c3"], served_model_name="c3")) as c:
        yield c


@pytest.fixture(scope="module")
def ner_client(models):
    with TestClient(create_app(models["ner"], served_model_name="ner")) as c:
        yield c


# -- 1. /tokenize and /detokenize ------------------------------------------------------------------


def test_tokenize_a_prompt_as_vllm_does(client, minilm):
    tok = minilm.get_tokenizer()
    for add_special in (False, True):
        r = client.post("/tokenize", json={"model": "minilm", "prompt": TEXT, "add_special_tokens": add_special})
        assert r.status_code == 200, r.text
        tokens = tok.encode(TEXT, add_special_tokens=add_special)
        assert r.json() == {"count": len(tokens), "max_model_len": 256, "tokens": tokens, "token_strs": None}
    default = client.post("/tokenize", json={"prompt": TEXT, "return_token_strs": True}).json()
    assert default["tokens"] == tok.encode(TEXT) and default["token_strs"] == tok.convert_ids_to_tokens(default["tokens"])
    # The ids /tokenize gives are the ones the model reads: usage agrees.
    usage = client.post("/v1/embeddings", json={"input": TEXT}).json()["usage"]["prompt_tokens"]
    assert usage == default["count"]


def test_tokenize_chat_messages_with_the_chat_template(client, minilm):
    tok = minilm.get_tokenizer()
    for add_generation in (False, True):
        for add_special in (False, True):
            prompt = tok.apply_chat_template(
                MESSAGES, chat_template=DUMMY_CHAT_TEMPLATE, add_generation_prompt=add_generation, tokenize=False
            )
            r = client.post(
                "/tokenize",
                json={"messages": MESSAGES, "add_generation_prompt": add_generation, "add_special_tokens": add_special},
            )
            assert r.status_code == 200, r.text
            tokens = tok.encode(prompt, add_special_tokens=add_special)
            assert r.json()["tokens"] == tokens and r.json()["count"] == len(tokens)
    continued = client.post("/tokenize", json={"messages": MESSAGES, "continue_final_message": True})
    assert continued.status_code == 200, continued.text  # add_generation_prompt defaults to true, not with continuing
    both = client.post("/tokenize", json={"messages": MESSAGES, "continue_final_message": True, "add_generation_prompt": True})
    error_of(both, 400, contains="Cannot set both `continue_final_message` and `add_generation_prompt` to True.")


def test_detokenize_round_trips(client, minilm):
    tok = minilm.get_tokenizer()
    tokens = tok.encode("this is a test prompt. vllm1", add_special_tokens=False)
    r = client.post("/detokenize", json={"model": "minilm", "tokens": tokens})
    assert r.status_code == 200 and r.json() == {"prompt": tok.decode(tokens)}
    assert client.post("/detokenize", json={"tokens": []}).json() == {"prompt": ""}


def test_tokenize_errors_have_the_usual_shape(client, minilm):
    error_of(client.post("/tokenize", json={"model": "other", "prompt": "a"}), 404, contains="does not exist")
    error_of(client.post("/tokenize", json={"prompt": "a", "messages": MESSAGES}), 400)
    error_of(client.post("/tokenize", json={}), 400, contains="'prompt' or 'messages'")
    error_of(client.post("/tokenize", json={"prompt": ""}), 400, contains="empty string")
    error_of(client.post("/tokenize", json={"prompt": 5}), 400)
    vocab = minilm.model.hf_config.vocab_size
    error = error_of(client.post("/detokenize", json={"tokens": [1, vocab]}), 400, contains="out of vocabulary")
    assert error["param"] == "tokens"
    error_of(client.post("/detokenize", json={"tokens": [-1]}), 400)
    error_of(client.post("/detokenize", json={"tokens": ["a"]}), 400)
    error_of(client.post("/tokenize", content=b"prompt=a", headers={"content-type": "text/plain"}), 415)


def test_tokenize_messages_without_a_chat_template(minilm):
    with TestClient(create_app(minilm, served_model_name="m")) as c:
        error_of(c.post("/tokenize", json={"messages": MESSAGES}), 400, contains="no chat template")
        assert c.post("/tokenize", json={"prompt": "hi"}).status_code == 200


def test_tokenize_detokenize_and_invocations_need_the_key(minilm):
    with TestClient(create_app(minilm, served_model_name="m", api_key="k")) as c:
        for route, body in (("/tokenize", {"prompt": "a"}), ("/detokenize", {"tokens": [1]}), ("/invocations", {"input": "a"})):
            error_of(c.post(route, json=body), 401)
            assert c.post(route, json=body, headers={"Authorization": "Bearer k"}).status_code == 200


# -- 1. /invocations -------------------------------------------------------------------------------


def _same_keys(a: dict, b: dict, items: str) -> None:
    assert a.keys() == b.keys()
    for x, y in zip(a[items], b[items]):
        assert x.keys() == y.keys()


def test_invocations_on_an_embedding_model(client):
    for body in ({"model": "minilm", "input": TEXT, "encoding_format": "float"}, {"messages": MESSAGES}):
        direct = client.post("/v1/embeddings", json=body).json()
        invoked = client.post("/invocations", json=body)
        assert invoked.status_code == 200, invoked.text
        _same_keys(direct, invoked.json(), "data")
        _close(direct["data"][0]["embedding"], invoked.json()["data"][0]["embedding"])
    rerank = {"query": QUERY, "documents": DOCS}
    direct, invoked = client.post("/rerank", json=rerank).json(), client.post("/invocations", json=rerank).json()
    _same_keys(direct, invoked, "results")
    assert [x["index"] for x in direct["results"]] == [x["index"] for x in invoked["results"]]
    for pair in ({"text_1": QUERY, "text_2": DOCS}, {"queries": QUERY, "documents": DOCS}, {"data_1": QUERY, "data_2": DOCS}):
        direct, invoked = client.post("/score", json=pair).json(), client.post("/invocations", json=pair).json()
        _same_keys(direct, invoked, "data")
        assert [d["score"] for d in direct["data"]] == pytest.approx([d["score"] for d in invoked["data"]], abs=ATOL)
    # vLLM tries the embeddings request type first: an 'input' body is an embeddings request.
    assert client.post("/invocations", json={"input": "a", "task": "token_embed"}).json()["data"][0]["object"] == "embedding"
    plugin = client.post("/invocations", json={"data": {"x": 1}})
    assert plugin.json() == client.post("/pooling", json={"data": {"x": 1}}).json()


def test_invocations_errors(client):
    error_of(
        client.post("/invocations", json={"nothing": 1}),
        400,
        startswith="Cannot find suitable handler for request. Expected one of: "
        "['EmbeddingRequest', 'RerankRequest', 'ScoreRequest', 'PoolingRequest']",
    )
    bad = error_of(client.post("/invocations", json={"input": 5}), 400)
    assert bad["param"] == "input"
    error_of(client.post("/invocations", json=[1, 2]), 400, contains="JSON object")
    error_of(client.post("/invocations", content=b"{nope", headers={"content-type": "application/json"}), 400, contains="invalid JSON")
    error_of(client.post("/invocations", json={"model": "other", "input": "a"}), 404)
    error_of(client.post("/invocations", json={"input": ""}), 400, contains="empty string")
    assert client.post("/invocations", json={"input": "a"}).status_code == 200
    metrics = client.get("/metrics").text
    assert 'poolkit_requests_total{route="/invocations",status="200"}' in metrics
    assert 'poolkit_requests_total{route="/invocations",status="400"}' in metrics


def test_invocations_on_a_cross_encoder(ce_client, models):
    classify = ce_client.post("/classify", json={"input": TEXTS}).json()
    invoked = ce_client.post("/invocations", json={"input": TEXTS}).json()
    _same_keys(classify, invoked, "data")
    for x, y in zip(classify["data"], invoked["data"]):
        _close(x["probs"], y["probs"])
    ranked = ce_client.post("/invocations", json={"query": QUERY, "documents": DOCS}).json()["results"]
    assert [x["index"] for x in ranked] == [r.index for r in models["ce"].rerank(QUERY, DOCS)]


def test_invocations_on_a_classifier_with_several_labels_has_no_scoring(c3_client):
    error_of(
        c3_client.post("/invocations", json={"query": QUERY, "documents": DOCS}),
        400,
        startswith="Cannot find suitable handler for request. Expected one of: ['ClassificationRequest', 'PoolingRequest']",
    )
    assert c3_client.post("/invocations", json={"input": "a"}).json()["data"][0]["num_classes"] == 3


# -- 2. add_special_tokens with input --------------------------------------------------------------


@pytest.mark.parametrize("route, field", [("/v1/embeddings", "embedding"), ("/pooling", "data")])
def test_add_special_tokens_false_with_input(client, minilm, route, field):
    tok = minilm.get_tokenizer()
    r = client.post(route, json={"input": TEXTS, "add_special_tokens": False})
    assert r.status_code == 200, r.text
    ids = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
    assert r.json()["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
    expected = minilm.embed([{"prompt_token_ids": i} for i in ids])
    for item, e in zip(r.json()["data"], expected):
        _close(item[field], e.outputs.embedding)
    with_special = client.post(route, json={"input": TEXTS, "add_special_tokens": True}).json()
    for item, e in zip(with_special["data"], minilm.embed(TEXTS)):
        _close(item[field], e.outputs.embedding)
    tokens = client.post(route, json={"input": ids[0], "add_special_tokens": False}).json()  # token ids stay as given
    _close(tokens["data"][0][field], expected[0].outputs.embedding)


def test_add_special_tokens_false_on_classify(ce_client, models):
    tok = models["ce"].get_tokenizer()
    r = ce_client.post("/classify", json={"input": TEXTS, "add_special_tokens": False})
    assert r.status_code == 200, r.text
    expected = models["ce"].classify([{"prompt_token_ids": tok.encode(t, add_special_tokens=False)} for t in TEXTS])
    for item, e in zip(r.json()["data"], expected):
        _close(item["probs"], e.outputs.probs)


@pytest.mark.parametrize("route, field", [("/v1/embeddings", "embedding"), ("/pooling", "data")])
def test_chat_equals_its_rendered_prompt_without_special_tokens(client, minilm, route, field):
    """vLLM's test_chat_request / test_conversation_pooling: the chat, and its prompt as 'input'."""
    chat = client.post(route, json={"messages": MESSAGES})
    assert chat.status_code == 200, chat.text
    prompt = minilm.get_tokenizer().apply_chat_template(MESSAGES, chat_template=DUMMY_CHAT_TEMPLATE, tokenize=False)
    plain = client.post(route, json={"input": prompt, "add_special_tokens": False}).json()
    _close(chat.json()["data"][0][field], plain["data"][0][field])
    assert chat.json()["usage"] == plain["usage"]


def test_prompt_add_special_tokens_in_the_engine(minilm):
    encoded = minilm.engine.tokenize(
        [Prompt(text="hello world"), Prompt(text="hello world", add_special_tokens=False)],
        minilm.check_params(None, 2, "embed"),
    )
    assert encoded[0].token_ids == minilm.get_tokenizer().encode("hello world")
    assert encoded[1].token_ids == minilm.get_tokenizer().encode("hello world", add_special_tokens=False)


# -- 3. Cohere meta.tokens -------------------------------------------------------------------------


def test_cohere_meta_has_tokens_and_billed_units(client, minilm):
    r = client.post("/v2/embed", json={"texts": ["test", "hello world"], "embedding_types": ["float"]})
    assert r.status_code == 200, r.text
    meta = r.json()["meta"]
    n = sum(len(e.prompt_token_ids) for e in minilm.embed(["test", "hello world"]))
    assert meta["api_version"] == {"version": "2"}
    assert meta["tokens"] == {"input_tokens": n} and meta["billed_units"] == {"input_tokens": n, "image_tokens": 0}


# -- 4. /pooling without task, scoring on classifiers, use_activation ------------------------------


def test_pooling_without_task_runs_the_models_default_task(client, c3_client, ner_client, minilm, models):
    embed = client.post("/pooling", json={"input": TEXT}).json()
    _close(embed["data"][0]["data"], minilm.embed(TEXT)[0].outputs.embedding)
    assert models["c3"].default_task == "classify"  # vLLM: classify before token_classify
    classify = c3_client.post("/pooling", json={"input": TEXT}).json()
    _close(classify["data"][0]["data"], models["c3"].classify(TEXT)[0].outputs.probs)
    assert models["ner"].default_task == "token_classify"  # vLLM: a ForTokenClassification model
    tokens = ner_client.post("/pooling", json={"input": TEXT}).json()
    expected = models["ner"].encode(TEXT, pooling_task="token_classify")[0]
    assert len(tokens["data"][0]["data"]) == len(expected.prompt_token_ids) == tokens["usage"]["prompt_tokens"]
    _close(tokens["data"][0]["data"], expected.outputs.data.tolist())
    error_of(
        client.post("/pooling", json={"input": "test", "task": "classify"}),
        400,
        startswith="Unsupported task: 'classify' Supported tasks: ",
    )


def test_pooling_reward_is_token_classify(ner_client, models):
    from poolkit.plugins import registry

    if "reward" not in registry("task"):
        pytest.skip("no 'reward' task alias registered")
    with pytest.warns(DeprecationWarning):
        reward = ner_client.post("/pooling", json={"input": TEXT, "task": "reward"})
    assert reward.status_code == 200, reward.text
    _close(reward.json()["data"][0]["data"], models["ner"].encode(TEXT, pooling_task="token_classify")[0].outputs.data.tolist())


@pytest.mark.parametrize("route, body", [("/score", {"queries": "ping", "documents": "pong"}), ("/rerank", {"query": "ping", "documents": ["pong"]})])
def test_scoring_on_a_classifier_with_several_labels_is_not_found(c3_client, models, route, body):
    """vLLM mounts no scoring routes for it: 404, with vLLM's reason."""
    error_of(c3_client.post(route, json=body), 404, startswith="Scoring API is only enabled for num_labels == 1.")
    with pytest.raises(InvalidRequest, match=r"^Scoring API is only enabled for num_labels == 1\."):
        models["c3"].score("ping", "pong")
    with pytest.raises(InvalidRequest, match=r"^Scoring API is only enabled for num_labels == 1\."):
        models["c3"].rerank("ping", ["pong"])
    assert c3_client.get("/v1/models").json()["data"][0]["score_type"] is None


def test_scoring_on_a_model_without_scoring_is_not_found(ner_client, models):
    error_of(ner_client.post("/score", json={"text_1": "a", "text_2": "b"}), 404, startswith="This model does not support the Scoring API.")
    with pytest.raises(InvalidRequest, match=r"^This model does not support the Scoring API\."):
        models["ner"].score("a", "b")


def test_use_activation_on_a_bi_encoder_score(client, minilm):
    """vLLM's test_use_activation (scoring): accepted for every model; a cosine does not change."""
    body = {"queries": "What is the capital of France?", "documents": "The capital of France is Paris."}
    scores = {}
    for value in (None, True, False):
        r = client.post("/score", json={**body, "use_activation": value})
        assert r.status_code == 200, r.text
        scores[value] = r.json()["data"][0]["score"]
    assert scores[True] == pytest.approx(scores[None], abs=1e-6) and scores[False] == pytest.approx(scores[None], abs=1e-5)
    offline = minilm.score(body["queries"], body["documents"], PoolingParams(use_activation=False))[0].outputs.score
    assert offline == pytest.approx(scores[False], abs=ATOL)


def test_use_activation_on_a_cross_encoder_score_and_its_vllm_aliases(ce_client, client):
    body = {"queries": QUERY, "documents": DOCS[0]}
    default = ce_client.post("/score", json=body).json()["data"][0]["score"]
    raw = ce_client.post("/score", json={**body, "use_activation": False}).json()["data"][0]["score"]
    assert default == pytest.approx(torch.sigmoid(torch.tensor(raw)).item(), abs=ATOL)
    assert ce_client.post("/score", json={**body, "activation": False}).json()["data"][0]["score"] == raw
    logits = ce_client.post("/classify", json={"input": "a", "use_activation": False}).json()["data"][0]["probs"]
    assert ce_client.post("/classify", json={"input": "a", "softmax": False}).json()["data"][0]["probs"] == logits
    unnormalized = client.post("/v1/embeddings", json={"input": TEXT, "normalize": False}).json()["data"][0]["embedding"]
    expected = client.post("/v1/embeddings", json={"input": TEXT, "use_activation": False}).json()["data"][0]["embedding"]
    _close(unnormalized, expected)


# -- 5. --chat-template and --score-template ---------------------------------------------------------


def test_chat_template_renders_messages_instead_of_the_tokenizers(minilm):
    tok = minilm.get_tokenizer()
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    try:
        with TestClient(create_app(minilm, served_model_name="m", chat_template=template)) as c:
            r = c.post("/v1/embeddings", json={"messages": MESSAGES})
            ids = tok.encode(tok.apply_chat_template(MESSAGES, chat_template=template, tokenize=False), add_special_tokens=False)
            _close(r.json()["data"][0]["embedding"], minilm.embed({"prompt_token_ids": ids})[0].outputs.embedding)
        with TestClient(create_app(minilm, served_model_name="m")) as c:  # without the flag: the tokenizer's
            r = c.post("/tokenize", json={"messages": MESSAGES})
            assert r.json()["tokens"] == tok.encode("".join(m["content"] for m in MESSAGES), add_special_tokens=False)
    finally:
        tok.chat_template = None


def test_score_template_and_chat_template_on_a_cross_encoder(models):
    ce = models["ce"]
    score_template = "query: {{ query }} document: {{ document }}"
    chat = "{% for m in messages %}{{ m['role'] }} says {{ m['content'] }} {% endfor %}"
    by_score = [s.outputs.score for s in ce.score(QUERY, DOCS, chat_template=score_template)]
    by_chat = [s.outputs.score for s in ce.score(QUERY, DOCS, chat_template=chat)]
    with TestClient(create_app(ce, served_model_name="ce", score_template=score_template, chat_template=chat)) as c:
        got = [d["score"] for d in c.post("/score", json={"text_1": QUERY, "text_2": DOCS}).json()["data"]]
        assert got == pytest.approx(by_score, abs=ATOL)
        messages = c.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()["tokens"]
        assert messages == ce.get_tokenizer().encode("user says hi ", add_special_tokens=False)
    # As in vLLM, --chat-template alone is also the cross-encoder's score template.
    with TestClient(create_app(ce, served_model_name="ce", chat_template=chat)) as c:
        got = [d["score"] for d in c.post("/score", json={"text_1": QUERY, "text_2": DOCS}).json()["data"]]
        assert got == pytest.approx(by_chat, abs=ATOL)


def test_chat_template_does_not_touch_bi_encoder_scores(client, minilm):
    got = [d["score"] for d in client.post("/score", json={"text_1": QUERY, "text_2": DOCS}).json()["data"]]
    assert got == pytest.approx([s.outputs.score for s in minilm.score(QUERY, DOCS)], abs=ATOL)


# -- 5. vllm serve flags -----------------------------------------------------------------------------


@pytest.fixture
def captured_serve(monkeypatch):
    """``poolkit serve`` with ``poolkit.entrypoints.server.run`` replaced: what it would serve, nothing started.

    Each call records run()'s keyword arguments and, as ``args``, the settings its loader loads.
    """
    import poolkit.entrypoints.server

    calls: list[dict] = []

    def fake_run(loader, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(LLM, "from_args", classmethod(lambda cls, args: args))
            calls.append({"args": loader(), **kwargs})

    monkeypatch.setattr(poolkit.entrypoints.server, "run", fake_run)
    return calls


def _serve(*argv: str):
    from poolkit.entrypoints.cli import app

    return CliRunner().invoke(app, ["serve", *argv])


def _settings(call: dict):
    return call["args"]


def test_vllm_serve_spellings(captured_serve, tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text(DUMMY_CHAT_TEMPLATE)
    result = _serve(
        "./model", "--max_model_len", "128", "--trust_remote_code", "--hf_overrides", '{"matryoshka_dimensions": [256]}',
        "--served_model_name", "m", "--chat-template", str(template), "--score_template", "{{ query }} {{ document }}",
        "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.02", "--max-num-seqs", "8", "--runner", "pooling",
    )
    assert result.exit_code == 0, result.output
    (call,) = captured_serve
    args = _settings(call)
    assert args.max_model_len == 128 and args.trust_remote_code and args.hf_overrides == {"matryoshka_dimensions": [256]}
    assert args.dtype == "float32" and args.runner == "pooling"
    assert call["served_model_name"] == "m" and call["chat_template"] == DUMMY_CHAT_TEMPLATE
    assert call["score_template"] == "{{ query }} {{ document }}"
    assert "--enforce-eager" in result.stderr and "ignored" in result.stderr


def test_vllm_serve_deprecated_options(captured_serve):
    result = _serve("./model", "--override-pooler-config", '{"pooling_type": "CLS"}', "--task", "embed")
    assert result.exit_code == 0, result.output
    args = _settings(captured_serve[-1])
    assert args.pooler_config.pooling_type == "CLS" and args.convert == "embed"
    assert "--override-pooler-config is deprecated (vLLM); use --pooler-config" in result.stderr
    assert "use --convert embed instead of --task embed" in result.stderr
    result = _serve("./model", "--task", "score", "--override_pooler_config", "{}")
    assert result.exit_code == 0 and _settings(captured_serve[-1]).convert == "auto"
    assert "remove --task score" in result.stderr
    result = _serve("./model", "--task", "classify", "--convert", "none")
    assert result.exit_code == 0 and _settings(captured_serve[-1]).convert == "none"
    for bad, message in (
        (["--task", "generate"], "Error: --task generate: poolkit runs pooling models only"),
        (["--task", "nope"], "Error: --task 'nope' is not one of"),
        (["--max-model-len", "3", "--max_model_len", "4"], "are the same option with two values"),
        (["--override-pooler-config", "{}", "--pooler-config", "{}"], "give only --pooler-config"),
        (["--chat-template", "no-such-file.jinja"], "Error: --chat-template 'no-such-file.jinja' is neither"),
    ):
        result = _serve("./model", *bad)
        assert result.exit_code == 1 and message in result.output, result.output


def test_underscore_spellings_reach_every_command(minilm_dir):
    from poolkit.entrypoints.cli import app

    result = CliRunner().invoke(app, ["info", str(minilm_dir), "--max_model_len", "100", "--pooler_config", '{"use_activation": false}'])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["max_model_len"]["value"] == 100 and info["use_activation"]["value"] is False
    # A command with a --task of its own keeps it (``poolkit encode --task token_embed``).
    result = CliRunner().invoke(app, ["encode", "--task", "token_embed", "--model", str(minilm_dir), "hello world"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout.splitlines()[0])["data"]) == 4


# -- a real `poolkit serve` process with vLLM's flags ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_vllm_command_line_serves(minilm_dir, tmp_path, minilm):
    port = _free_port()
    log = tmp_path / "serve.log"
    cmd = [
        sys.executable, "-m", "poolkit", "serve", str(minilm_dir), "--port", str(port), "--served_model_name", "minilm",
        "--runner", "pooling", "--dtype", "float32", "--enforce-eager", "--max-model-len", "128",
        "--chat-template", DUMMY_CHAT_TEMPLATE, "--trust-remote-code", "--task", "embed",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    # No answer is timed: a first batch on a GPU compiles its Triton kernels, seconds on a busy machine.
    client = httpx.Client(base_url=url, timeout=120)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        model = client.get("/v1/models").json()["data"][0]
        assert model["id"] == "minilm" and model["max_model_len"] == 128
        tokens = client.post("/tokenize", json={"model": "minilm", "prompt": TEXT}).json()
        assert tokens["tokens"] == minilm.get_tokenizer().encode(TEXT) and tokens["max_model_len"] == 128
        chat = client.post("/invocations", json={"model": "minilm", "messages": MESSAGES})
        assert chat.status_code == 200, chat.text
        prompt = minilm.get_tokenizer().apply_chat_template(MESSAGES, chat_template=DUMMY_CHAT_TEMPLATE, tokenize=False)
        plain = client.post("/v1/embeddings", json={"input": prompt, "add_special_tokens": False}).json()
        _close(chat.json()["data"][0]["embedding"], plain["data"][0]["embedding"])
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text
    assert "poolkit never runs code shipped with a model" in text
    assert "--task is deprecated" in text and "--enforce-eager" in text
