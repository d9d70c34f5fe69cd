"""classify, cross-encoder score and rerank, token_classify / reward and STEP, against transformers."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from suite_device import suite_device
from typer.testing import CliRunner

from poolkit import LLM, InvalidRequest, ModelLoadError, PoolingParams
from poolkit.entrypoints.cli import app

ATOL = 1e-4
TEXTS = [
    "paris is the capital of france",
    "hello",
    "the quick brown fox jumps over the lazy dog " * 3,
    "what is the capital of germany? berlin is the capital of germany.",
    "",
]
QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "hello world", "the quick brown fox", "berlin is the capital of germany"]


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    from tiny_models import build_classifier

    root = tmp_path_factory.mktemp("classifiers")
    dirs = {}
    for kind in ("bert", "roberta", "xlm-roberta"):
        dirs[kind, 3] = build_classifier(root / f"{kind}-3", kind, 3)
        # seed 2 for XLM-R: seed 0's random head saturates its sigmoid, and the scores could not differ
        dirs[kind, 1] = build_classifier(root / f"{kind}-1", kind, 1, seed=2 if kind == "xlm-roberta" else 0)
        dirs[kind, "ner"] = build_classifier(root / f"{kind}-ner", kind, 5, token=True)
    dirs["regression"] = build_classifier(root / "regression", "bert", 1, problem_type="regression")
    dirs["multi"] = build_classifier(root / "multi", "bert", 4, problem_type="multi_label_classification")
    return dirs


def hf_logits(path, texts, token=False, pairs=None):
    """Logits from transformers on one padded batch; per-token rows unpadded."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    auto = AutoModelForTokenClassification if token else AutoModelForSequenceClassification
    device = suite_device()  # the reference on the device poolkit runs on
    model = auto.from_pretrained(str(path)).eval().to(device)
    tok = AutoTokenizer.from_pretrained(str(path))
    enc = tok(texts, pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc.to(device)).logits.cpu()
    enc = enc.to("cpu")
    if not token:
        return logits
    return [row[mask.bool()] for row, mask in zip(logits, enc["attention_mask"])]


@pytest.mark.parametrize("kind", ["bert", "roberta", "xlm-roberta"])
@pytest.mark.parametrize("labels", [1, 3])
def test_classify_matches_transformers(classifiers, kind, labels):
    path = classifiers[kind, labels]
    ref = hf_logits(path, TEXTS)
    ref = torch.sigmoid(ref) if labels == 1 else torch.softmax(ref, dim=-1)
    outs = LLM(str(path)).classify(TEXTS)
    got = torch.tensor([o.outputs.probs for o in outs])
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=ATOL)
    if labels == 3:
        assert [o.outputs.label for o in outs] == [f"class_{i}" for i in ref.argmax(-1).tolist()]
        assert ref.std(0).max() > 0.01, "the tiny model must not be constant"


def test_use_activation_false_then_by_hand(classifiers):
    llm = LLM(str(classifiers["bert", 3]))
    raw = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS, PoolingParams(use_activation=False))])
    probs = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    assert torch.allclose(torch.softmax(raw, dim=-1), probs, atol=1e-6)
    assert torch.allclose(raw, hf_logits(classifiers["bert", 3], TEXTS), atol=ATOL)


def test_problem_type_chooses_the_activation(classifiers):
    regression = LLM(str(classifiers["regression"])).classify(TEXTS)
    assert torch.allclose(torch.tensor([o.outputs.probs for o in regression]), hf_logits(classifiers["regression"], TEXTS), atol=ATOL)
    multi = LLM(str(classifiers["multi"])).classify(TEXTS)
    ref = torch.sigmoid(hf_logits(classifiers["multi"], TEXTS))
    assert torch.allclose(torch.tensor([o.outputs.probs for o in multi]), ref, atol=ATOL)


def test_logit_calibration(classifiers):
    path = classifiers["bert", 1]
    llm = LLM(str(path), pooler_config={"logit_mean": 0.5, "logit_sigma": 2.0})
    got = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    assert torch.allclose(got, torch.sigmoid((hf_logits(path, TEXTS) - 0.5) / 2.0), atol=ATOL)


@pytest.mark.parametrize("kind", ["bert", "xlm-roberta"])
def test_cross_encoder_matches_sentence_transformers(classifiers, kind):
    from sentence_transformers import CrossEncoder

    path = classifiers[kind, 1]
    ce = CrossEncoder(str(path), device="cpu")
    llm = LLM(str(path))
    assert llm.score_type == "cross-encoder"
    ref = ce.predict([(QUERY, d) for d in DOCS])
    one_to_many = [s.outputs.score for s in llm.score(QUERY, DOCS)]
    assert one_to_many == pytest.approx(ref.tolist(), abs=ATOL)
    pairwise = [s.outputs.score for s in llm.score([QUERY] * len(DOCS), DOCS)]
    assert pairwise == pytest.approx(one_to_many, abs=1e-6)
    (single,) = llm.score(QUERY, DOCS[0])
    assert single.outputs.score == pytest.approx(float(ref[0]), abs=ATOL)
    assert len(set(round(float(r), 4) for r in ref)) == len(DOCS), "scores must differ"


def test_cross_encoder_activation_from_sentence_transformers_config(classifiers, tmp_path):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(classifiers["bert", 1]), device="cpu", activation_fn=torch.nn.Identity())
    ce.save(str(tmp_path / "ce"))
    ref = ce.predict([(QUERY, d) for d in DOCS])
    got = [s.outputs.score for s in LLM(str(tmp_path / "ce")).score(QUERY, DOCS)]
    assert got == pytest.approx(ref.tolist(), abs=ATOL)
    assert min(got) < 0 or max(got) > 1  # raw logits, not probabilities


def test_rerank_sorts_with_original_indices(classifiers):
    llm = LLM(str(classifiers["bert", 1]))
    scores = [s.outputs.score for s in llm.score(QUERY, DOCS)]
    ranked = llm.rerank(QUERY, DOCS)
    assert [r.index for r in ranked] == sorted(range(len(DOCS)), key=lambda i: -scores[i])
    assert [r.document for r in ranked] == [DOCS[r.index] for r in ranked]
    assert [r.relevance_score for r in ranked] == sorted(scores, reverse=True)
    assert [r.index for r in llm.rerank(QUERY, DOCS, top_n=2)] == [r.index for r in ranked[:2]]


def test_bi_encoder_rerank_with_minilm(minilm):
    ranked = minilm.rerank("capital of France", ["I like pizza", "Paris is the capital of France", "Berlin"])
    assert ranked[0].index == 1 and minilm.score_type == "bi-encoder"


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_token_classify_matches_transformers(classifiers, kind):
    path = classifiers[kind, "ner"]
    refs = hf_logits(path, TEXTS, token=True)
    llm = LLM(str(path))
    assert set(llm.supported_tasks) == {"token_classify"}
    for out, ref in zip(llm.encode(TEXTS, pooling_task="token_classify"), refs):
        assert out.outputs.data.shape == ref.shape
        assert torch.allclose(out.outputs.data, torch.softmax(ref, dim=-1), atol=ATOL)
    rewards = llm.reward(TEXTS[0])[0].outputs.data
    assert torch.allclose(rewards, torch.softmax(refs[0], dim=-1), atol=ATOL)


def test_step_pooling_selects_tagged_rows_and_columns(classifiers):
    path = classifiers["bert", "ner"]
    llm = LLM(str(path))
    tok = llm.get_tokenizer()
    step_tag = tok.convert_tokens_to_ids("the")
    text = "the quick brown fox jumps over the lazy dog"
    ids = tok(text)["input_ids"]
    (ref,) = hf_logits(path, [text], token=True)
    step = LLM(str(path), pooler_config={"pooling_type": "STEP", "step_tag_id": step_tag, "returned_token_ids": [1, 3]})
    (out,) = step.reward(text)
    rows = [i for i, t in enumerate(ids) if t == step_tag]
    assert len(rows) == 2
    expected = torch.softmax(ref[rows][:, [1, 3]], dim=-1)
    assert out.outputs.data.shape == (2, 2)
    assert torch.allclose(out.outputs.data, expected, atol=ATOL)
    (per_request,) = step.reward(text, PoolingParams(returned_token_ids=[0, 2, 4]))
    assert per_request.outputs.data.shape == (2, 3)


def test_bad_task_inputs(classifiers, minilm):
    ce = LLM(str(classifiers["bert", 1]))
    with pytest.raises(InvalidRequest, match="Input lengths must be either 1:1, 1:N or N:N"):
        ce.score(["a", "b"], ["c", "d", "e"])
    with pytest.raises(InvalidRequest, match="At least one document element must be given"):
        ce.rerank(QUERY, [])
    with pytest.raises(InvalidRequest, match="At least one text_pair element must be given"):
        ce.score(QUERY, [])
    with pytest.raises(InvalidRequest, match="top_n must be a positive integer"):
        ce.rerank(QUERY, DOCS, top_n=0)
    with pytest.raises(InvalidRequest, match=r"Task 'token_classify' only supports \['use_activation'\] parameters, does not support \['step_tag_id'\]"):
        ce.reward("hello", PoolingParams(step_tag_id=3))
    with pytest.raises(InvalidRequest, match="Task embed is not supported by model '.*'; supported tasks: classify, token_classify"):
        ce.embed("hello")
    with pytest.raises(InvalidRequest, match="Task classify is not supported by model '.*'; supported tasks: embed, token_embed"):
        minilm.classify("hello")
    with pytest.raises(InvalidRequest, match="scoring needs a classifier with one output"):
        LLM(str(classifiers["bert", 3])).score(QUERY, DOCS)
    step = LLM(str(classifiers["bert", "ner"]), pooler_config={"pooling_type": "STEP"})
    with pytest.raises(InvalidRequest, match=r"returned_token_ids \[9\] are outside the model's 5 outputs"):
        step.reward("hello", PoolingParams(returned_token_ids=[9]))


def test_conversion(classifiers, minilm_dir):
    embedder = LLM(str(classifiers["bert", 1]), convert="embed")
    assert embedder.model.architecture_name == "BertModel" and "embed" in embedder.supported_tasks
    with pytest.raises(ModelLoadError, match="convert='classify' needs a checkpoint with a classification head"):
        LLM(str(minilm_dir), convert="classify")


def test_cli_classify_score_rerank(classifiers):
    runner = CliRunner()
    path = str(classifiers["bert", 3])
    result = runner.invoke(app, ["classify", "--model", path, "hello", "paris is the capital of france"])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and len(rows[0]["probs"]) == 3 and rows[0]["label"].startswith("class_")
    ce = str(classifiers["bert", 1])
    result = runner.invoke(app, ["rerank", "--model", ce, "--query", QUERY, "--top-n", "2", *DOCS])
    assert result.exit_code == 0, result.stderr
    ranked = [json.loads(line) for line in result.stdout.splitlines()]
    expected = LLM(ce).rerank(QUERY, DOCS, top_n=2)
    assert [r["index"] for r in ranked] == [r.index for r in expected]
    result = runner.invoke(app, ["score", "--model", ce, QUERY, *DOCS])
    scores = [json.loads(line)["score"] for line in result.stdout.splitlines()]
    assert scores == pytest.approx([s.outputs.score for s in LLM(ce).score(QUERY, DOCS)], abs=1e-6)
    result = runner.invoke(app, ["rerank", "--model", ce, "--query", QUERY, "-i", "/no/such/file"])
    assert result.exit_code == 1 and result.stderr.startswith("Error: ")


def test_entity_spans_from_token_classes(classifiers):
    from poolkit.api.entities import group_entities

    id2label = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
    text = "John Smith lives in New York"
    offsets = [(0, 0), (0, 4), (5, 10), (11, 16), (17, 19), (20, 23), (24, 28), (0, 0)]
    labels = [0, 1, 2, 0, 0, 3, 4, 0]
    probs = torch.nn.functional.one_hot(torch.tensor(labels), 5).float() * 0.9 + 0.02
    spans = group_entities(text, probs, offsets, id2label)
    assert [(e.label, e.start, e.end, e.text) for e in spans] == [("PER", 0, 10, "John Smith"), ("LOC", 20, 28, "New York")]
    assert spans[0].score == pytest.approx(0.92)
    # B- starts a new entity even after one of the same type; a bare label groups runs
    labels = [0, 1, 1, 0, 0, 3, 0, 0]
    spans = group_entities(text, torch.nn.functional.one_hot(torch.tensor(labels), 5).float(), offsets, id2label)
    assert [e.text for e in spans] == ["John", "Smith", "New"]
    assert [e.text for e in group_entities("a b", torch.eye(2)[[1, 1]], [(0, 1), (2, 3)], {0: "O", 1: "MISC"})] == ["a b"]

    llm = LLM(str(classifiers["bert", "ner"]))
    (found,) = llm.entities(["paris is the capital of france"])
    probs = llm.reward("paris is the capital of france")[0].outputs.data
    assert found == group_entities(
        "paris is the capital of france",
        probs,
        llm.get_tokenizer()("paris is the capital of france", return_offsets_mapping=True)["offset_mapping"],
        llm.model.id2label,
    )
    assert all(text[e.start : e.end] == e.text for e in found for text in ["paris is the capital of france"])


def test_hf_overrides_reach_the_heads(classifiers):
    path = classifiers["bert", 3]
    raw = LLM(str(path), hf_overrides={"problem_type": "regression"}).classify(TEXTS)
    assert torch.allclose(torch.tensor([o.outputs.probs for o in raw]), hf_logits(path, TEXTS), atol=ATOL)
    renamed = LLM(str(path), hf_overrides={"id2label": {"0": "neg", "1": "neu", "2": "pos"}})
    assert renamed.classify(TEXTS[0])[0].outputs.label in {"neg", "neu", "pos"}


# -- issue 17: the Task contract as documented (pooling through the model, params), per-token pooling_type --


def test_a_plugin_task_pools_through_the_documented_model_api(fresh_plugins, tiny_encoders):
    """``model.poolers(task)`` gives the poolers ``model.pooling_type(task)`` names; ``params`` is
    enforced by ``Task.verify``; a task with no ``default_pooling_type`` shows no pooling in ``info``."""
    from poolkit import Task, hookimpl
    from poolkit.plugins.testing import plugin_registered

    class MaxEmbed(Task):
        name = "max_embed"
        default_pooling_type = "MAX"

        def build(self, model):
            poolers = model.poolers(self)

            def head(hidden, batch, params):
                return list(torch.cat([p(hidden, batch) for p in poolers], dim=-1).float().unbind(0))

            return head

    class TokenCount(Task):
        name = "token_count"

        def build(self, model):
            return lambda hidden, batch, params: [torch.tensor(float(n)) for n in batch.seq_lens]

    class Plugin:
        @hookimpl
        def poolkit_register_tasks(self, register):
            register("max_embed", MaxEmbed)
            register("token_count", TokenCount)

    with plugin_registered(Plugin(), "tasks17"):
        llm = LLM(str(tiny_encoders["bert"]), pooler_config={"seq_pooling_type": "MAX"}, dtype="float32")
        (out,) = llm.encode("hello there", pooling_task="max_embed")
        rows = llm.encode("hello there", PoolingParams(use_activation=False), pooling_task="token_embed")[0].outputs.data
        assert torch.allclose(out.outputs.data, rows.max(0).values, atol=1e-5)
        with pytest.raises(InvalidRequest, match=r"only supports \['use_activation'\] parameters, does not support \['dimensions'\]"):
            llm.encode("hello", PoolingParams(dimensions=4), pooling_task="max_embed")
        llm.encode("hello", PoolingParams(truncate_prompt_tokens=2), pooling_task="max_embed")  # tokenization params: every task
        tasks = llm.model.describe()["tasks"]
        assert tasks["max_embed"] == {"pooling_type": {"value": "MAX", "source": "pooler_config"}}
        assert tasks["token_count"] == {}


def test_a_per_token_pooling_type_is_explained_where_it_does_not_apply(minilm_dir, caplog):
    """vLLM's rule: a per-token ``pooling_type`` (ALL, STEP) is for token tasks; ``embed`` keeps its
    own pooler, and says so once, in the log and in ``poolkit info``, instead of silently."""
    llm = LLM(str(minilm_dir), pooler_config={"pooling_type": "ALL"})
    note = "pooling_type 'ALL' pools tokens, so it applies to token tasks only; set seq_pooling_type or tok_pooling_type to choose each"
    with caplog.at_level(logging.WARNING, logger="poolkit.loading.model"):
        llm.embed("hello")
        llm.embed(["again", "and again"])
        llm.encode("hello", pooling_task="token_embed")
    said = [r.getMessage() for r in caplog.records if r.name == "poolkit.loading.model"]
    assert said == [f"task embed pools with MEAN: sentence-transformers 1_Pooling/config.json; {note}"]
    tasks = llm.model.describe()["tasks"]
    assert tasks["embed"]["pooling_type"] == {"value": "MEAN", "source": f"sentence-transformers 1_Pooling/config.json; {note}"}
    assert tasks["token_embed"]["pooling_type"] == {"value": "ALL", "source": "pooler_config"}
