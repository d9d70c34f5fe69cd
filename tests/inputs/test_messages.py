"""Messages a user reads when an input or a checkpoint is not what poolkit takes (issue 52, item 9):
a score input in ``LLM.embed``'s prompt shape, an image for a text-only model over HTTP (the served
name, never the directory), checkpoint tensors the architecture does not use (a warning), and a
config's ``use_activation`` (raw classifier logits, as vLLM gives for Jamba's reward model)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import build_classifier, build_encoder, build_qwen, build_transformers_model

from poolkit import LLM, PoolingParams
from poolkit.contracts.errors import InvalidRequest, ModelLoadError

PIXEL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
EMBED_PROMPT = {"prompt": "", "multi_modal_data": {"image": "cat.png"}}


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> LLM:
    return LLM(str(build_encoder(tmp_path_factory.mktemp("bert") / "model", "bert")))


# -- score inputs in LLM.embed's prompt shape ----------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda llm: llm.score("a cat", [EMBED_PROMPT]),
        lambda llm: llm.score("a cat", EMBED_PROMPT),
        lambda llm: llm.score(EMBED_PROMPT, "a cat"),
        lambda llm: llm.rerank("a cat", ["a dog", EMBED_PROMPT]),
    ],
    ids=["in-a-list", "a-side", "the-first-side", "rerank"],
)
def test_score_with_an_embed_prompt_shows_the_content_shape(bert, call):
    with pytest.raises(InvalidRequest) as caught:
        call(bert)
    message = str(caught.value)
    assert "must be a string, got dict" not in message
    assert "{'content': [{'type': 'image_url'" in message and "ScoreMultiModalParam" in message
    assert "multi_modal_data" in message  # names what was sent


def test_score_with_a_text_prompt_dict_says_texts_are_strings(bert):
    with pytest.raises(InvalidRequest, match=r"text_pair 0: scoring takes texts as strings.*\{'content': \["):
        bert.score("a cat", [{"prompt": "a dog"}])
    with pytest.raises(InvalidRequest, match="scoring takes texts as strings"):
        bert.score("a cat", [{"prompt_token_ids": [1, 2]}])


def test_score_other_shapes_keep_their_messages(bert):
    with pytest.raises(InvalidRequest, match="text_pair 0 must be a string, got int"):
        bert.score("a cat", [3])
    with pytest.raises(InvalidRequest, match="text_pair 0 must be a string, got dict"):
        bert.score("a cat", [{"text": "a dog"}])
    assert len(bert.score("a cat", ["a dog", "a cat"])) == 2


# -- an image for a text-only model over HTTP: the served name, not the directory ----------------


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_image_for_a_text_only_model_names_the_served_model(tmp_path, monkeypatch, relative):
    httpx = pytest.importorskip("httpx")
    from served import served

    # a long directory name: the message once cut the name short, so the error handler's
    # replacement of the directory (ModelState.scrub) no longer matched it
    path = build_encoder(tmp_path / ("a-model-directory-with-a-rather-long-name-" + "x" * 40), "bert")
    if relative:
        monkeypatch.chdir(tmp_path)
    llm = LLM(path.name if relative else str(path))
    image = {"type": "image_url", "image_url": {"url": PIXEL}}
    requests = [
        ("/v1/embeddings", {"model": "tiny", "messages": [{"role": "user", "content": [image]}]}),
        ("/v1/embeddings", {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]}),
        ("/pooling", {"model": "tiny", "task": "embed", "messages": [{"role": "user", "content": [image]}]}),
        ("/v2/embed", {"model": "tiny", "embedding_types": ["float"], "images": [PIXEL]}),
    ]
    with served(llm, served_model_name="tiny", log_level="warning") as port:
        for route, body in requests:
            answer = httpx.post(f"http://127.0.0.1:{port}{route}", json=body, timeout=60)
            assert answer.status_code == 400, (route, answer.text)
            assert "model 'tiny'" in answer.text and "text only" in answer.text, (route, answer.text)
            for leaked in (str(tmp_path), path.name, path.name[:20], tmp_path.name):
                assert leaked not in answer.text, (route, answer.text)


# -- checkpoint tensors the architecture does not use -----------------------------------------------


def _add_tensors(path, extra: dict[str, torch.Tensor]) -> None:
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    state.update(extra)
    save_file(state, str(weights), metadata={"format": "pt"})


def _unused_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "unused by" in r.getMessage()]


def test_an_unused_projection_beside_a_qwen3_model_warns(tmp_path, caplog):
    # voyage-4-nano's shape: a Qwen3Model's weights and a `linear.weight` the architecture has no place for
    path = build_qwen(tmp_path / "qwen3", "qwen3")
    _add_tensors(path, {"linear.weight": torch.randn(16, 32), **{f"other.{i}": torch.zeros(2) for i in range(6)}})
    with caplog.at_level(logging.WARNING, logger="poolkit"):
        LLM(str(path))
    (message,) = _unused_warnings(caplog)
    assert message.startswith("7 checkpoint tensor(s) unused by Qwen3Model were dropped: ")
    assert "linear.weight" in message and "and 2 more" in message  # a few names and the count


@pytest.mark.parametrize("kind", ["qwen3", "bert", "distilbert"])
def test_a_clean_checkpoint_warns_nothing(tmp_path, caplog, kind):
    if kind == "qwen3":
        path = build_qwen(tmp_path / kind, "qwen3")
    elif kind == "bert":
        path = build_encoder(tmp_path / kind, "bert")
    else:  # run by transformers (the fallback)
        path = build_transformers_model(tmp_path / kind, "DistilBertModel")
    with caplog.at_level(logging.WARNING, logger="poolkit"):
        LLM(str(path))
    assert _unused_warnings(caplog) == []


def test_tensors_skipped_on_purpose_stay_quiet(tmp_path, caplog):
    """A classifier's checkpoint embedded by its base model, with the buffers older exports carry:
    the heads and buffers are left on purpose, by the native families and the fallback alike."""
    bert = build_classifier(tmp_path / "bert", "bert", num_labels=2)
    _add_tensors(bert, {"bert.embeddings.position_ids": torch.arange(128)[None], "bert.pooler.dense.weight": torch.zeros(32, 32)})
    qwen = build_qwen(tmp_path / "qwen", "qwen3", task="classify")
    _add_tensors(qwen, {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)})
    distil = build_transformers_model(tmp_path / "distil", "DistilBertForSequenceClassification", num_labels=2)
    with caplog.at_level(logging.WARNING, logger="poolkit"):
        LLM(str(bert), convert="embed")
        LLM(str(qwen), convert="embed")
        LLM(str(distil), hf_overrides={"architectures": ["DistilBertModel"]})
    assert _unused_warnings(caplog) == []


def test_an_unused_tensor_in_a_transformers_checkpoint_warns(tmp_path, caplog):
    path = build_transformers_model(tmp_path / "distil", "DistilBertModel")
    _add_tensors(path, {"linear.weight": torch.randn(8, 32)})
    with caplog.at_level(logging.WARNING, logger="poolkit"):
        LLM(str(path))
    (message,) = _unused_warnings(caplog)
    assert "unused by DistilBertModel" in message and "linear.weight" in message


# -- use_activation from the config: raw classifier logits ---------------------------------------------


def _set_config(path, **values) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(values)
    (path / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    """A one-output classifier: sigmoid by default."""
    return build_classifier(tmp_path_factory.mktemp("reward") / "model", "bert", num_labels=1)


def test_config_use_activation_false_gives_raw_logits(tmp_path, reward_dir):
    default = LLM(str(reward_dir))
    logit = default.classify("a cat", PoolingParams(use_activation=False))[0].outputs.probs[0]
    assert default.classify("a cat")[0].outputs.probs[0] == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-6)
    assert default.model.describe()["use_activation"]["source"] == "default"

    raw = tmp_path / "raw"
    raw.mkdir()
    for f in reward_dir.iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    _set_config(raw, use_activation=False)
    llm = LLM(str(raw))
    assert llm.classify("a cat")[0].outputs.probs[0] == pytest.approx(logit, abs=1e-6)
    raw_score = default.score("a cat", "a dog", PoolingParams(use_activation=False))[0].outputs.score
    assert llm.score("a cat", "a dog")[0].outputs.score == pytest.approx(raw_score, abs=1e-6)
    assert llm.model.describe()["use_activation"] == {"value": False, "source": "config.json use_activation"}
    # a request, and the user's pooler_config, still decide over the config
    sigmoid = 1 / (1 + math.exp(-logit))
    assert llm.classify("a cat", PoolingParams(use_activation=True))[0].outputs.probs[0] == pytest.approx(sigmoid, abs=1e-6)
    chosen = LLM(str(raw), pooler_config={"use_activation": True})
    assert chosen.classify("a cat")[0].outputs.probs[0] == pytest.approx(sigmoid, abs=1e-6)


def test_hf_overrides_use_activation(reward_dir):
    llm = LLM(str(reward_dir), hf_overrides={"use_activation": False})
    assert llm.model.describe()["use_activation"] == {"value": False, "source": "hf_overrides"}
    logit = llm.classify("a cat", PoolingParams(use_activation=False))[0].outputs.probs[0]
    assert llm.classify("a cat")[0].outputs.probs[0] == pytest.approx(logit, abs=1e-6)


def test_config_use_activation_must_be_a_bool(reward_dir):
    with pytest.raises(ModelLoadError, match=r"use_activation in config.json \(or hf_overrides\) must be true or false, got 'no'"):
        LLM(str(reward_dir), hf_overrides={"use_activation": "no"})


def test_jamba_reward_model_gives_its_raw_logit(tmp_path):
    """vLLM gives JambaForSequenceClassification (Jamba-tiny-reward-dev) raw logits by default."""
    transformers = pytest.importorskip("transformers")
    tok = build_encoder(tmp_path / "tok", "bert")
    config = transformers.JambaConfig(
        vocab_size=112, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_experts=1, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=4,
        mamba_d_conv=2, mamba_expand=1, mamba_dt_rank=4, use_mamba_kernels=False, num_labels=1, pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.JambaForSequenceClassification(config)
    path = tmp_path / "jamba"
    model.save_pretrained(path)
    for f in tok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab")):
            (path / f.name).write_bytes(f.read_bytes())
    llm = LLM(str(path))
    source = "architecture default (JambaForSequenceClassification)"
    assert llm.model.describe()["use_activation"] == {"value": False, "source": source}
    raw = llm.classify("a cat", PoolingParams(use_activation=False))[0].outputs.probs[0]
    assert llm.classify("a cat")[0].outputs.probs[0] == pytest.approx(raw, abs=1e-6)
    with torch.no_grad():
        ids = llm.model.tokenizer("a cat", return_tensors="pt")
        expected = model.eval()(input_ids=ids["input_ids"]).logits[0, 0].item()
    assert raw == pytest.approx(expected, abs=1e-4)
