"""The transformers fallback: families with no native code run through transformers, same tasks.

Tiny random ELECTRA, CamemBERT, Phi-3 and GPT-2 models (no native poolkit code; Llama, Mistral and
Gemma are native since the decoder family, DistilBERT since its port) are compared with
transformers (and sentence-transformers' CrossEncoder) on one batch of mixed lengths.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil

import pytest
import torch
import torch.nn.functional as F

from poolkit import LLM, ModelLoadError

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
FALLBACK = "fallback (transformers)"

MODELS = {
    "electra": ("ElectraModel", None, {}),
    "camembert": ("CamembertModel", None, {}),
    "phi3": ("Phi3Model", None, {}),
    "gpt2": ("GPT2Model", None, {}),
    "electra-3": ("ElectraForSequenceClassification", 3, {}),
    "camembert-3": ("CamembertForSequenceClassification", 3, {}),
    "phi3-3": ("Phi3ForSequenceClassification", 3, {}),
    "gpt2-3": ("GPT2ForSequenceClassification", 3, {}),  # no pad token
    "gpt2-pad-3": ("GPT2ForSequenceClassification", 3, {"pad_token_id": 0}),
    "electra-1": ("ElectraForSequenceClassification", 1, {}),
    "electra-ner": ("ElectraForTokenClassification", 5, {}),
    "camembert-ner": ("CamembertForTokenClassification", 5, {}),
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from tiny_models import build_transformers_model

    root = tmp_path_factory.mktemp("fallback")
    return {key: build_transformers_model(root / key, cls, n, **kw) for key, (cls, n, kw) in MODELS.items()}


@pytest.fixture(scope="module")
def llms(dirs):
    return {key: LLM(str(path)) for key, path in dirs.items()}


def hf_run(path, auto_name, texts, pairs=None):
    """transformers on one right-padded batch: (model output, attention mask)."""
    import transformers

    model = getattr(transformers, auto_name).from_pretrained(str(path)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    enc = tok(texts, pairs, padding=True, return_tensors="pt")
    takes = inspect.signature(model.forward).parameters
    enc = {k: v for k, v in enc.items() if k in takes}
    with torch.no_grad():
        return model(**enc), enc["attention_mask"].bool()


def assert_same_vectors(got, ref):
    assert got.shape == ref.shape
    cos = F.cosine_similarity(got, ref, dim=-1)
    assert cos.min().item() >= 0.99999, cos
    assert (got - ref).abs().max().item() <= ATOL


def test_max_positions(llms):
    """RoBERTa-style position tables lose pad_token_id + 1 rows; others keep them all."""
    assert llms["camembert"].model.architecture.max_positions == 130 - 0 - 1
    assert llms["electra"].model.architecture.max_positions == 128
    assert llms["gpt2"].model.architecture.max_positions == 128  # n_positions


def test_implementation_is_reported(llms, tiny_encoders):
    for key, llm in llms.items():
        info = llm.model.describe()
        assert info["implementation"] == FALLBACK, key
        assert info["architecture"] == MODELS[key][0]
    assert LLM(str(tiny_encoders["bert"])).model.describe()["implementation"] == "native"


@pytest.mark.parametrize("name", ["LlamaModel", "LlamaForSequenceClassification"])
def test_native_families_are_not_taken_by_the_fallback(name, tmp_path):
    """Llama-style decoders (Llama, Mistral, Gemma 1/2/3) have native code: the registry picks it
    before the fallback's resolver is asked."""
    from tiny_models import build_transformers_model

    from poolkit.plugins import registry

    path = build_transformers_model(tmp_path / "llama", "LlamaForSequenceClassification", num_labels=3)
    info = LLM(str(path), hf_overrides={"architectures": [name]}).model.describe()
    assert info["implementation"] == "native" and info["architecture"] == name
    assert info["architecture_plugin"] == "builtin_decoders"
    for family in ("Mistral", "Gemma", "Gemma2"):
        assert registry("architecture").entry(f"{family}ForCausalLM").plugin == "builtin_decoders"


@pytest.mark.parametrize("key, default", [("electra", "CLS"), ("camembert", "CLS"), ("phi3", "LAST"), ("gpt2", "LAST")])
@pytest.mark.parametrize("pooling", [None, "MEAN"])
def test_embed_matches_transformers(dirs, llms, key, default, pooling):
    out, mask = hf_run(dirs[key], "AutoModel", TEXTS)
    hidden = out.last_hidden_state
    if pooling == "MEAN":
        ref = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        llm = LLM(str(dirs[key]), pooler_config={"pooling_type": "MEAN"})
    else:
        last = mask.sum(1) - 1
        ref = hidden[:, 0] if default == "CLS" else hidden[torch.arange(len(TEXTS)), last]
        llm = llms[key]
        assert llm.model.describe()["tasks"]["embed"]["pooling_type"]["value"] == default
    ref = F.normalize(ref, dim=-1)
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    assert_same_vectors(got, ref)
    assert ref.std(0).max() > 0.01, "the tiny model must not be constant"
    alone = torch.tensor(llm.embed(TEXTS[2])[0].outputs.embedding)
    assert F.cosine_similarity(alone, got[2], dim=0) >= 0.99999  # batch invariance


@pytest.mark.parametrize("key", ["electra", "phi3"])
def test_token_embed_matches_transformers(dirs, llms, key):
    out, mask = hf_run(dirs[key], "AutoModel", TEXTS)
    for got, hidden, m in zip(llms[key].encode(TEXTS, pooling_task="token_embed"), out.last_hidden_state, mask):
        assert_same_vectors(got.outputs.data, F.normalize(hidden[m], dim=-1))


def test_tokens_nobody_attends_to(dirs, llms):
    """A prompt's ``attended``: the fallback hides the tokens past it from attention, as
    transformers does with a 0 in the attention mask (they still get vectors)."""
    import transformers

    from poolkit.contracts.io import Prompt

    ids = transformers.AutoTokenizer.from_pretrained(str(dirs["electra"]))(TEXTS[0])["input_ids"] + [4, 4, 4]
    (got,) = llms["electra"].encode([Prompt(token_ids=ids, attended=len(ids) - 3)], pooling_task="token_embed")
    model = transformers.AutoModel.from_pretrained(str(dirs["electra"])).eval()
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([[1] * (len(ids) - 3) + [0] * 3]))
    assert_same_vectors(got.outputs.data, F.normalize(hidden.last_hidden_state[0], dim=-1))


@pytest.mark.parametrize("key", ["camembert-3", "phi3-3", "gpt2-pad-3"])
def test_classify_matches_transformers(dirs, llms, key):
    out, _ = hf_run(dirs[key], "AutoModelForSequenceClassification", TEXTS)
    ref = torch.softmax(out.logits, dim=-1)
    outs = llms[key].classify(TEXTS)
    got = torch.tensor([o.outputs.probs for o in outs])
    assert got.shape == ref.shape == (len(TEXTS), 3)
    assert torch.allclose(got, ref, atol=ATOL), (got - ref).abs().max()
    assert [o.outputs.label for o in outs] == [f"class_{i}" for i in ref.argmax(-1).tolist()]
    assert ref.std(0).max() > 0.01, "the tiny model must not be constant"
    assert "embed" not in llms[key].supported_tasks


def test_cross_encoder_score_matches_transformers_and_sentence_transformers(dirs, llms):
    from sentence_transformers import CrossEncoder

    path = dirs["electra-1"]
    llm = llms["electra-1"]
    assert llm.score_type == "cross-encoder"
    got = [s.outputs.score for s in llm.score(QUERY, DOCS)]
    out, _ = hf_run(path, "AutoModelForSequenceClassification", [QUERY] * len(DOCS), DOCS)
    assert got == pytest.approx(torch.sigmoid(out.logits[:, 0]).tolist(), abs=ATOL)
    ce = CrossEncoder(str(path), device="cpu").predict([(QUERY, d) for d in DOCS])
    assert got == pytest.approx(ce.tolist(), abs=ATOL)
    assert len({round(s, 4) for s in got}) == len(DOCS), "scores must differ"


def test_classifier_without_pad_token(dirs, llms):
    """transformers pools batches of one when there is no pad token (GPT-2); the fallback runs them one by one."""
    llm = llms["gpt2-3"]
    assert llm.model.hf_config.pad_token_id is None
    got = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS)])
    ref = torch.cat([torch.softmax(hf_run(dirs["gpt2-3"], "AutoModelForSequenceClassification", [t])[0].logits, dim=-1) for t in TEXTS])
    assert torch.allclose(got, ref, atol=ATOL), (got - ref).abs().max()
    assert ref.std(0).max() > 0.01, "the tiny model must not be constant"


@pytest.mark.parametrize("key", ["electra-ner", "camembert-ner"])
def test_token_classify_matches_transformers(dirs, llms, key):
    out, mask = hf_run(dirs[key], "AutoModelForTokenClassification", TEXTS)
    llm = llms[key]
    assert set(llm.supported_tasks) == {"token_classify"}
    for got, logits, m in zip(llm.encode(TEXTS, pooling_task="token_classify"), out.logits, mask):
        ref = torch.softmax(logits[m], dim=-1)
        assert got.outputs.data.shape == ref.shape
        assert torch.allclose(got.outputs.data, ref, atol=ATOL)


def test_decoder_token_classifier_is_score(dirs, llms):
    """Generic decoder classifiers keep hidden states: token_classify applies ``score`` per token."""
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(dirs["phi3-3"])).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(dirs["phi3-3"]))
    ids = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = torch.softmax(model.score(model.model(input_ids=ids).last_hidden_state[0]), dim=-1)
    (got,) = llms["phi3-3"].encode(TEXTS[0], pooling_task="token_classify")
    assert torch.allclose(got.outputs.data, ref, atol=ATOL)


def test_classifier_checkpoint_as_base_model(dirs):
    """A classifier checkpoint loads into the base model: transformers strips ``electra.``."""
    import transformers

    llm = LLM(str(dirs["electra-3"]), hf_overrides={"architectures": ["ElectraModel"]})
    assert llm.model.describe()["implementation"] == FALLBACK
    base = transformers.ElectraModel.from_pretrained(str(dirs["electra-3"])).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(dirs["electra-3"]))
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = F.normalize(base(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state[:, 0], dim=-1)
    assert_same_vectors(torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)]), ref)


def test_sentence_transformers_model_on_a_fallback_backbone(dirs, tmp_path):
    """modules.json (MEAN pooling, Normalize) applies to fallback hidden states as to native ones."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    st = SentenceTransformer(modules=[Transformer(str(dirs["electra"])), Pooling(32, "mean"), Normalize()], device="cpu")
    st.save(str(tmp_path / "st"))
    llm = LLM(str(tmp_path / "st"))
    assert llm.model.describe()["tasks"]["embed"]["pooling_type"]["value"] == "MEAN"
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    assert_same_vectors(got, torch.tensor(st.encode(TEXTS)))


def test_convert_embed_on_a_fallback_classifier(dirs):
    llm = LLM(str(dirs["electra-3"]), convert="embed")
    assert llm.model.architecture.hidden_size == 32
    assert len(llm.embed("hello")[0].outputs.embedding) == 32


def test_missing_weights_are_an_error(dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "broken"
    shutil.copytree(dirs["electra-3"], path)
    state = load_file(str(path / "model.safetensors"))
    del state["classifier.dense.weight"]
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"checkpoint lacks weights for classifier\.dense\.weight"):
        LLM(str(path))
    state["classifier.out_proj.weight"] = torch.zeros(4, 32)
    state["classifier.dense.weight"] = torch.zeros(32, 32)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"wrong shape .*'classifier\.out_proj\.weight' is \(4, 32\) in the checkpoint, \(3, 32\)"):
        LLM(str(path))


def test_unknown_architecture_lists_native_ones(dirs):
    with pytest.raises(ModelLoadError) as err:
        LLM(str(dirs["electra"]), hf_overrides={"architectures": ["NoSuchModel"]})
    message = str(err.value)
    assert message.startswith("no poolkit architecture for NoSuchModel, and no architecture resolver (such as the transformers fallback) accepted it; native: ")
    assert "BertModel" in message and "ModernBertModel" in message
    assert "ElectraModel" not in message  # fallback names are not "available" natively
    assert "\n" not in message


@pytest.mark.parametrize("name", ["MyRemoteModel", "ElectraModel"])
def test_remote_code_is_refused(dirs, tmp_path, name):
    path = tmp_path / "remote"
    shutil.copytree(dirs["electra"], path)
    marker = tmp_path / "remote-code-ran"
    (path / "modeling_my.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((path / "config.json").read_text())
    config.update(architectures=[name], auto_map={"AutoModel": "modeling_my.MyRemoteModel"})
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="needs remote code"):
        LLM(str(path), trust_remote_code=True)
    assert not marker.exists()


@pytest.mark.parametrize(
    "name, match",
    [
        ("ElectraForQuestionAnswering", r"cannot pool.*hf_overrides=\{'architectures': \['ElectraModel'\]\}"),
        ("CamembertModel", r"CamembertModel is transformers' class for model_type 'camembert', but config.json has model_type 'electra'"),
        ("T5Model", r"T5Model is transformers' class for model_type 't5'"),
    ],
)
def test_classes_the_fallback_cannot_serve(dirs, name, match):
    with pytest.raises(ModelLoadError, match=match):
        LLM(str(dirs["electra"]), hf_overrides={"architectures": [name]})


def test_plugin_is_listed(llms):
    from poolkit.plugins import get_manager

    infos = {i.name: i for i in get_manager().plugin_infos()}
    assert infos["builtin_transformers"].provides["architecture_resolver"] == ["poolkit_resolve_architecture"]


# -- the fallback says what it does -----------------------------------------------------------------

LOADER = "poolkit.loading.load"


def _fallback_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOADER and "transformers fallback" in r.getMessage()]


def test_info_and_load_log_say_transformers_fallback_no_native_port(dirs, caplog):
    """``poolkit info`` and the load log name the fallback and why: ELECTRA has no native port."""
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    with caplog.at_level(logging.INFO, logger=LOADER):
        LLM(str(dirs["electra"]))
    (record,) = _fallback_records(caplog)
    assert record.levelno == logging.WARNING  # not asked for: said by default
    assert record.getMessage() == "ElectraModel runs on the transformers fallback: no native port of ElectraModel"
    result = CliRunner().invoke(app, ["info", str(dirs["electra"])])  # last: the command sets up logging its own way
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["implementation"] == FALLBACK
    assert info["fallback"] == "transformers fallback: no native port of ElectraModel"
    assert "runs on the transformers fallback: no native port of ElectraModel" in result.stderr


def test_native_models_have_no_fallback(tiny_encoders, caplog):
    with caplog.at_level(logging.INFO, logger=LOADER):
        assert LLM(str(tiny_encoders["bert"])).model.describe()["fallback"] is None
    assert not _fallback_records(caplog)


def test_fallback_asked_for_with_model_impl_says_the_native_port_was_passed_over(tiny_encoders, caplog):
    with caplog.at_level(logging.INFO, logger=LOADER):
        info = LLM(str(tiny_encoders["bert"]), model_impl="transformers").model.describe()
    assert info["fallback"] == "transformers fallback: model_impl='transformers' asks for it (poolkit has a native port of BertModel)"
    (record,) = _fallback_records(caplog)
    assert record.levelno == logging.INFO


def test_remote_tokenizer_is_refused_and_transformers_runs_the_model(dirs, tmp_path, caplog):
    """A config whose ``auto_map`` holds remote code for the config and tokenizer only: the code is
    never run, transformers' own class runs the model (the same vectors), and the fallback says so."""
    path = tmp_path / "remote-tokenizer"
    shutil.copytree(dirs["electra"], path)
    marker = tmp_path / "remote-code-ran"
    (path / "tokenization_my.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_my.MyConfig", "AutoTokenizer": ["tokenization_my.MyTokenizer", None]}
    (path / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.INFO, logger=LOADER):
        llm = LLM(str(path), trust_remote_code=True)
    assert llm.model.describe()["fallback"] == (
        "transformers fallback: no native port of ElectraModel; remote code refused: config.json's auto_map "
        "(AutoConfig, AutoTokenizer) is never run, transformers' own ElectraModel runs the model"
    )
    assert len(_fallback_records(caplog)) == 1 and not marker.exists()
    plain = LLM(str(dirs["electra"]))
    assert llm.embed(TEXTS[:2])[0].outputs.embedding == plain.embed(TEXTS[:2])[0].outputs.embedding


def test_trust_remote_code_without_remote_code_is_said_refused(dirs):
    info = LLM(str(dirs["electra"]), trust_remote_code=True).model.describe()
    assert info["fallback"] == (
        "transformers fallback: no native port of ElectraModel; remote code refused: trust_remote_code is ignored, "
        "transformers' own ElectraModel runs the model"
    )
