"""Score templates for LLM rerankers: rendering, files, errors, and use by score / rerank / CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from poolkit import LLM, InvalidRequest
from poolkit.entrypoints.cli import app
from poolkit.plugins import registry

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "hello world", "berlin is the capital of germany"]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    from tiny_models import build_classifier

    return build_classifier(tmp_path_factory.mktemp("ce") / "bert-1", "bert", 1)


def test_qwen3_reranker_template_renders_the_model_card_prompt():
    (prompt,) = registry("io_processor").get("qwen3_reranker").pre_process((["Q?"], ["Doc."]))
    assert prompt.text_pair is None
    assert prompt.text == (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
        "<|im_start|>user\n<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
        "<Query>: Q?\n<Document>: Doc.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    (custom,) = registry("io_processor").get("qwen3_reranker").pre_process((["Q?"], ["Doc."], "Find code"))
    assert "<Instruct>: Find code\n" in custom.text


def test_vllm_style_messages_and_files(tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m.role }}] {{ m.content }} {% endfor %}", encoding="utf-8"
    )
    processor = registry("io_processor").get("score_template").with_template(str(template))
    (prompt,) = processor.pre_process((["q"], ["d"], "inst"))
    assert prompt.text == "[system] inst [query] q [document] d "


def test_template_errors(cross_encoder, minilm):
    with pytest.raises(InvalidRequest, match="not valid Jinja"):
        registry("io_processor").get("score_template").with_template("{{ query ")
    with pytest.raises(InvalidRequest, match="neither Jinja text nor an existing file"):
        registry("io_processor").get("score_template").with_template("/no/such/template.jinja")
    with pytest.raises(InvalidRequest, match="failed to render"):
        LLM(str(cross_encoder)).score(QUERY, DOCS, chat_template="{{ query.nope() }}")
    with pytest.raises(InvalidRequest, match="instruction needs a score template"):
        LLM(str(cross_encoder)).score(QUERY, DOCS, instruction="x")
    with pytest.raises(InvalidRequest, match="cross-encoder or listwise scoring only"):
        minilm.score(QUERY, DOCS, chat_template="{{ query }}")
    with pytest.raises(InvalidRequest, match="sandbox|unsafe|access"):
        LLM(str(cross_encoder)).score(QUERY, DOCS, chat_template="{{ query.__class__.__mro__ }}")


def test_template_prompt_is_what_gets_scored(cross_encoder):
    llm = LLM(str(cross_encoder))
    template = "{{ query }} {{ document }}"
    by_template = [s.outputs.score for s in llm.score(QUERY, DOCS, chat_template=template)]
    concatenated = [o.outputs.probs[0] for o in llm.classify([f"{QUERY} {d}" for d in DOCS])]
    assert by_template == pytest.approx(concatenated, abs=1e-6)
    assert by_template != pytest.approx([s.outputs.score for s in llm.score(QUERY, DOCS)], abs=1e-4)
    ranked = llm.rerank(QUERY, DOCS, chat_template=template)
    assert [r.relevance_score for r in ranked] == sorted(by_template, reverse=True)
    result = CliRunner().invoke(app, ["rerank", "--model", str(cross_encoder), "--query", QUERY, "--chat-template", template, *DOCS])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in rows] == [r.index for r in ranked]
    assert torch.tensor([r["relevance_score"] for r in rows]).allclose(torch.tensor([r.relevance_score for r in ranked]))


def test_qwen3_reranker_is_recognised_and_uses_its_template(tmp_path):
    """A Qwen3-Reranker checkpoint, as published: no overrides, no template given."""
    from tiny_models import build_qwen
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from poolkit.plugins import registry as plugin_registry

    path = build_qwen(tmp_path / "Qwen3-Reranker-tiny", "qwen3", task="lm", init_range=1.0, max_position_embeddings=1024)
    llm = LLM(str(path), max_model_len=1024)  # the tiny tokenizer says 128; the prompt is longer
    assert llm.score_type == "cross-encoder"
    assert llm.model.hf_config.score_template == "qwen3_reranker"
    got = [s.outputs.score for s in llm.score(QUERY, DOCS)]

    hf = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    no, yes = tok.convert_tokens_to_ids("no"), tok.convert_tokens_to_ids("yes")
    prompts = plugin_registry("io_processor").get("qwen3_reranker").pre_process(([QUERY] * len(DOCS), DOCS))
    expected = []
    for prompt in prompts:
        with torch.no_grad():
            logits = hf(**tok(prompt.text, return_tensors="pt")).logits[0, -1]
        expected.append(torch.softmax(logits[[no, yes]], dim=-1)[1].item())
    assert got == pytest.approx(expected, abs=1e-4)
    assert max(expected) - min(expected) > 1e-3, "scores must differ"
    ranked = llm.rerank(QUERY, DOCS, instruction="Find the capital")
    assert sorted(r.index for r in ranked) == [0, 1, 2]
    assert LLM(str(path), hf_overrides={"is_original_qwen3_reranker": False, "architectures": ["Qwen3Model"]}).score_type == "bi-encoder"


def test_qwen3_embedding_sentence_transformers_config_and_prompts(tmp_path):
    """lasttoken + Normalize and instruction prompts, as Qwen3-Embedding ships them."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer
    from tiny_models import build_qwen

    backbone = build_qwen(tmp_path / "qwen3", "qwen3", task="embed", init_range=1.0)
    st = SentenceTransformer(
        modules=[Transformer(str(backbone)), Pooling(32, pooling_mode="lasttoken"), Normalize()], device="cpu"
    )
    st.prompts = {"query": "Instruct: find the capital\nQuery:"}
    st.save(str(tmp_path / "st"))
    texts = ["what is the capital of france", "hello", "berlin is the capital of germany " * 3]
    llm = LLM(str(tmp_path / "st"))
    assert llm.model.describe()["tasks"]["embed"]["pooling_type"]["value"] == "LAST"
    for prompt_name in (None, "query"):
        ref = torch.tensor(st.encode(texts, prompt_name=prompt_name))
        got = torch.tensor([o.outputs.embedding for o in llm.embed(texts, prompt_name=prompt_name)])
        assert torch.nn.functional.cosine_similarity(got, ref).min() >= 0.99999
        assert (got - ref).abs().max() <= 1e-4
    result = CliRunner().invoke(app, ["embed", "--model", str(tmp_path / "st"), "--prompt-name", "query", texts[0]])
    assert result.exit_code == 0, result.stderr
    cli = torch.tensor(json.loads(result.stdout)["embedding"])
    assert torch.allclose(cli, torch.tensor(llm.embed(texts[0], prompt_name="query")[0].outputs.embedding), atol=1e-6)


def test_convert_classify_needs_a_head(tmp_path):
    from tiny_models import build_qwen

    from poolkit import ModelLoadError

    lm = build_qwen(tmp_path / "plain-lm", "qwen3", task="lm")
    with pytest.raises(ModelLoadError, match="convert='classify' needs a checkpoint with a classification head"):
        LLM(str(lm), convert="classify")
    assert LLM(str(lm), convert="embed").supported_tasks == ["embed", "token_embed"]


def test_score_templates_render_as_transformers_chat_templates_do():
    """trim_blocks, lstrip_blocks and no final newline, as transformers' (and so vLLM's) renderer."""
    from tiny_models import wordpiece_tokenizer

    template = "{% for m in messages %}\n    {% if m.role == 'query' %}\nQ: {{ m.content }}\n{% endif %}\n{% endfor %}end\n"
    processor = registry("io_processor").get("score_template").with_template(template)
    (prompt,) = processor.pre_process((["q"], ["d"]))
    messages = [{"role": "query", "content": "q"}, {"role": "document", "content": "d"}]
    rendered = wordpiece_tokenizer().apply_chat_template(messages, chat_template=template, tokenize=False)
    assert prompt.text == rendered == "Q: q\nend"


def _st_cross_encoder(src, out, chat_template, **processing):
    """A copy of the tiny classifier ``src`` as a CrossEncoder export declaring the "message" modality."""
    import shutil

    shutil.copytree(src, out)
    (out / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    files = {
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}],
        "config_sentence_transformers.json": {"model_type": "CrossEncoder", "activation_fn": "torch.nn.modules.activation.Sigmoid"},
        "sentence_bert_config.json": {
            "transformer_task": "sequence-classification",
            "modality_config": {"message": {"method": "forward", "method_output_name": "logits", "format": "flat"}},
            "module_output_name": "scores",
            "processing_kwargs": processing,
        },
    }
    for name, content in files.items():
        (out / name).write_text(json.dumps(content), encoding="utf-8")
    return str(out)


def test_cross_encoder_chat_template_must_render_both_roles(cross_encoder, tmp_path):
    query_only = "{% for m in messages %}{% if m.role == 'query' %}{{ m.content }}{% endif %}{% endfor %}"
    llm = LLM(_st_cross_encoder(cross_encoder, tmp_path / "ce", query_only))
    with pytest.raises(InvalidRequest, match="does not render the document message"):
        llm.score(QUERY, DOCS)


def test_cross_encoder_export_truncation_follows_its_processing_kwargs(cross_encoder, tmp_path):
    template = "{% for m in messages %}{{ m.role }} {{ m.content }} {% endfor %}[SEP]"
    long_doc = "paris is the capital of france " * 40
    truncating = LLM(_st_cross_encoder(cross_encoder, tmp_path / "on", template))
    (out,) = truncating.score(QUERY, long_doc)
    sep = truncating.get_tokenizer().sep_token_id
    assert len(out.prompt_token_ids) == truncating.model_config.max_model_len and out.prompt_token_ids[-1] == sep
    refusing = LLM(_st_cross_encoder(cross_encoder, tmp_path / "off", template, text={"truncation": False}))
    with pytest.raises(InvalidRequest, match="maximum context length"):
        refusing.score(QUERY, long_doc)


def test_score_chat_template_kwargs(cross_encoder, minilm, tmp_path):
    """A score call's ``chat_template_kwargs`` (vLLM's; ``PoolingParams.extra_kwargs`` offline, a
    field of /score and /rerank): score-template variables, a CrossEncoder export's prompt keys,
    and their errors."""
    from fastapi.testclient import TestClient

    from poolkit import PoolingParams
    from poolkit.entrypoints.server import create_app

    def kw(kwargs):
        return PoolingParams(extra_kwargs={"chat_template_kwargs": kwargs})

    plain = LLM(str(cross_encoder))
    by_variable = plain.score(QUERY, DOCS, kw({"task": "judge"}), chat_template="{{ task }}: {{ query }} {{ document }}")
    concatenated = plain.classify([f"judge: {QUERY} {d}" for d in DOCS])
    assert [s.outputs.score for s in by_variable] == pytest.approx([o.outputs.probs[0] for o in concatenated], abs=1e-6)
    template = "{{ instruction }} {{ query }} {{ document }}"
    by_key = plain.score(QUERY, DOCS, kw({"instruction": "judge"}), chat_template=template)
    assert [s.prompt_token_ids for s in by_key] == [s.prompt_token_ids for s in plain.score(QUERY, DOCS, chat_template=template, instruction="judge")]

    chat = "{% for m in messages %}{{ m.role }} {{ m.content }} {% endfor %}[SEP]"
    export = _st_cross_encoder(cross_encoder, tmp_path / "ce", chat)
    config = tmp_path / "ce" / "config_sentence_transformers.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prompts": {"query": "query", "hello": "hello world"},
                                  "default_prompt_name": "query"}))
    llm = LLM(export)
    tok = llm.get_tokenizer()

    def expected_ids(prompt):
        messages = [{"role": "system", "content": prompt}] if prompt else []
        messages += [{"role": "query", "content": QUERY}, {"role": "document", "content": DOCS[0]}]
        return tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]

    for kwargs, prompt in [({}, "query"), ({"prompt_name": "hello"}, "hello world"), ({"prompt": "hello"}, "hello"), ({"prompt": ""}, None)]:
        assert llm.score(QUERY, DOCS[0], kw(kwargs))[0].prompt_token_ids == expected_ids(prompt), kwargs

    errors = [
        (plain, kw({"task": "judge"}), {}, "chat_template_kwargs task need a chat template"),
        (plain, kw({"prompt": "x"}), {"chat_template": template}, "a score template takes instruction"),
        (llm, kw({"prompt_name": "nope"}), {}, "Unknown saved CrossEncoder prompt 'nope'.*prompts: hello, query"),
        (llm, kw({"prompt": "x"}), {"instruction": "y"}, "either instruction or chat_template_kwargs prompt"),
        (llm, kw({"prompt": 1}), {}, "CrossEncoder prompt must be a string, got int"),
        (llm, kw({"prompt_name": 1}), {}, "CrossEncoder prompt_name must be a string, got int"),
        (llm, kw({"restore_suffix": "no"}), {}, "restore_suffix must be true or false, got 'no'"),
        (llm, kw({"tokenize": True, "max_length": 3}), {}, "chat_template_kwargs may not set max_length, tokenize"),
        (llm, kw(["prompt"]), {}, "chat_template_kwargs must be an object with string keys, got list"),
        (minilm, kw({}), {}, "chat_template_kwargs apply to cross-encoder or listwise scoring only"),
    ]
    for model, params, extra, match in errors:
        with pytest.raises(InvalidRequest, match=match):
            model.score(QUERY, DOCS, params, **extra)

    with TestClient(create_app(llm, served_model_name="ce")) as client:
        response = client.post("/score", json={"queries": QUERY, "documents": DOCS, "chat_template_kwargs": {"prompt_name": "hello"}})
        assert response.status_code == 200, response.text
        offline = [s.outputs.score for s in llm.score(QUERY, DOCS, kw({"prompt_name": "hello"}))]
        assert [d["score"] for d in response.json()["data"]] == pytest.approx(offline, abs=1e-6)
        response = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "chat_template_kwargs": {"prompt": ""}})
        assert response.status_code == 200, response.text
        ranked = llm.rerank(QUERY, DOCS, pooling_params=kw({"prompt": ""}))
        assert [r["index"] for r in response.json()["results"]] == [r.index for r in ranked]
        for bad in ({"prompt": 1}, {"restore_suffix": "no"}, {"tokenize": True}):
            response = client.post("/score", json={"queries": QUERY, "documents": DOCS, "chat_template_kwargs": bad})
            assert response.status_code == 400 and response.json()["error"]["param"] == "chat_template_kwargs", response.text
        response = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "chat_template_kwargs": {"prompt_name": "nope"}})
        assert response.status_code == 400 and "Unknown saved CrossEncoder prompt 'nope'" in response.json()["error"]["message"]
        assert client.post("/score", json={"queries": QUERY, "documents": DOCS, "chat_template_kwargs": "x"}).status_code == 400


def test_truncation_switch_in_tokenization_kwargs(cross_encoder):
    """vLLM's ``truncation`` tokenization kwarg: on (the model's limit) or off."""
    llm = LLM(str(cross_encoder))
    long_doc = "paris is the capital of france " * 40
    (cut,) = llm.score(QUERY, long_doc, tokenization_kwargs={"truncation": True})
    assert len(cut.prompt_token_ids) == llm.model_config.max_model_len
    with pytest.raises(InvalidRequest, match="maximum context length"):
        llm.score(QUERY, long_doc, tokenization_kwargs={"truncation": "do_not_truncate"})
    with pytest.raises(InvalidRequest, match="truncation must be true, false, 'longest_first' or 'do_not_truncate', got 'only_first'"):
        llm.score(QUERY, long_doc, tokenization_kwargs={"truncation": "only_first"})
    with pytest.raises(InvalidRequest, match="turns truncation off"):
        llm.score(QUERY, long_doc, tokenization_kwargs={"truncation": False, "truncate_prompt_tokens": 5})


def test_string_content_reaches_a_template_that_loops_over_parts():
    """vLLM's "openai" content format: a template that loops over ``message['content']`` (VLM2Vec's
    vlm2vec_phi3v.jinja) gets a string content as one text part; other templates get the string."""
    from poolkit.inputs.chat import content_as_parts

    loops = "{%- for message in messages -%}{%- for part in message['content'] -%}{{ part['text'] }}{%- endfor -%}{%- endfor -%}"
    dotted = "{% for m in messages %}{% for p in m.content %}{{ p.text }}{% endfor %}{% endfor %}"
    plain = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    messages = [{"role": "user", "content": "hello"}, {"role": "user", "content": [{"type": "text", "text": "x"}]}]
    for template in (loops, dotted):
        assert content_as_parts(template, messages) == [
            {"role": "user", "content": [{"type": "text", "text": "hello"}]}, messages[1]]
    assert content_as_parts(plain, messages) == messages
