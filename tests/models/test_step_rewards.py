"""STEP process rewards read off a causal LM's next-token head (math-shepherd-mistral-7b-prm style).

``pooler_config={"pooling_type": "STEP", "step_tag_id": ..., "returned_token_ids": [...]}`` on a
``*ForCausalLM`` checkpoint: ``token_classify`` (``LLM.reward``) gives, at each step-tag token,
the softmax of the LM head's logits over the ``returned_token_ids`` columns. Tiny random
Qwen2 / Qwen3 / Llama / Mistral / Gemma 2 (native; Gemma 2 soft-caps its logits) and GPT-2 /
Cohere / Granite (transformers fallback; the last two transform their logits) causal LMs are
compared with transformers' own logits in fp32.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import transformers as T

from poolkit import LLM, InvalidRequest, PoolingParams
from poolkit.builtin_models import transformers_fallback
from poolkit.builtin_poolers import heads

ATOL = 1e-4
TEXTS = [
    "paris is the capital of france. berlin is the capital of germany",
    "hello",
    "the quick brown fox jumps over the lazy dog . the dog sleeps",
    "what is the capital of germany? berlin is the capital of germany.",
]
#: Columns read off the LM head: token ids well past ``num_labels`` (2 in a causal LM's config).
COLUMNS = [7, 42]


def _randomize_vectors(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if "norm" in name.lower() else 0.0, 0.5)


def build_decoder(out: Path, family: str, seed: int = 0, **config: object) -> Path:
    """A tiny ``<family>ForCausalLM`` (Mistral, Gemma2, Cohere, Granite) with the WordPiece tokenizer."""
    from tiny_models import wordpiece_tokenizer

    tok = wordpiece_tokenizer()
    kw = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.5,
    )
    if family == "Gemma2":
        kw.update(head_dim=8, query_pre_attn_scalar=8, sliding_window=4)
    kw.update(config)
    torch.manual_seed(seed)
    model = getattr(T, f"{family}ForCausalLM")(getattr(T, f"{family}Config")(**kw))
    _randomize_vectors(model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tiny_models import build_qwen, build_transformers_model

    root = tmp_path_factory.mktemp("step")
    return {
        "qwen2": build_qwen(root / "qwen2", "qwen2", task="lm", tie_word_embeddings=False, init_range=0.5),
        "qwen3": build_qwen(root / "qwen3", "qwen3", task="lm", init_range=0.5),  # tied
        "qwen3-untied": build_qwen(root / "qwen3u", "qwen3", task="lm", tie_word_embeddings=False, init_range=0.5),
        "llama": build_transformers_model(root / "llama", "LlamaForCausalLM"),
        "mistral": build_decoder(root / "mistral", "Mistral"),
        "gpt2": build_transformers_model(root / "gpt2", "GPT2LMHeadModel"),  # tied, no pad token
        "gemma2": build_decoder(root / "gemma2", "Gemma2", final_logit_softcapping=2.0),
        "cohere": build_decoder(root / "cohere", "Cohere", logit_scale=0.25),
        "granite": build_decoder(root / "granite", "Granite", logits_scaling=4.0),
    }


NATIVE = ("qwen2", "qwen3", "qwen3-untied", "llama", "mistral", "gemma2")
FALLBACK = ("gpt2", "cohere", "granite")


def step_tag(path: Path) -> int:
    """A word token that appears twice in the first text: it stands in for a step tag."""
    tok = T.AutoTokenizer.from_pretrained(str(path))
    ids = [t for t in tok(TEXTS[0])["input_ids"] if t not in tok.all_special_ids]
    tag, count = Counter(ids).most_common(1)[0]
    assert count >= 2
    return tag


def hf_logits(path: Path) -> list[tuple[list[int], torch.Tensor]]:
    """transformers' causal-LM logits of each text (run alone), with its token ids."""
    model = T.AutoModelForCausalLM.from_pretrained(str(path)).eval()
    tok = T.AutoTokenizer.from_pretrained(str(path))
    out = []
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            out.append((ids, model(input_ids=torch.tensor([ids])).logits[0].float()))
    return out


def step_config(tag: int, columns: list[int] | None = COLUMNS, **more: object) -> str:
    config: dict[str, object] = {"pooling_type": "STEP", "step_tag_id": tag, **more}
    if columns is not None:
        config["returned_token_ids"] = columns
    return json.dumps(config)


def expected(path: Path, tag: int, columns: list[int] | None = COLUMNS, activate: bool = True) -> list[torch.Tensor]:
    rows = []
    for ids, logits in hf_logits(path):
        picked = logits[torch.tensor(ids) == tag]
        picked = picked[:, columns] if columns else picked
        rows.append(torch.softmax(picked, dim=-1) if activate else picked)
    return rows


def assert_rows(got: list[torch.Tensor], want: list[torch.Tensor], atol: float = ATOL) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g = torch.as_tensor(g)
        assert g.shape == w.shape, (g.shape, w.shape)
        assert torch.allclose(g, w, atol=atol), (g - w).abs().max()


@pytest.mark.parametrize("name", NATIVE + FALLBACK)
def test_step_rewards_match_transformers(models: dict[str, Path], name: str) -> None:
    path = models[name]
    tag = step_tag(path)
    llm = LLM(str(path), pooler_config=step_config(tag))
    assert llm.model.architecture.implementation == ("native" if name in NATIVE else "fallback (transformers)")
    assert "token_classify" in llm.supported_tasks and "sparse_embed" not in llm.supported_tasks
    want = expected(path, tag)
    assert [w.shape[0] for w in want][:2] == [2, 0]  # two steps; none in "hello"
    assert max(w.max() - w.min() for w in want if w.numel()) > 0.01, "the tiny model must not be constant"
    assert_rows([o.outputs.data for o in llm.reward(TEXTS)], want)
    assert_rows([o.outputs.data for o in llm.encode(TEXTS, pooling_task="token_classify")], want)


def test_gemma2_logits_are_soft_capped_as_transformers_does(models: dict[str, Path]) -> None:
    path = models["gemma2"]
    tag = step_tag(path)
    raw = LLM(str(path), pooler_config=step_config(tag, columns=None, use_activation=False))
    got = torch.cat([torch.as_tensor(o.outputs.data) for o in raw.reward(TEXTS)])
    assert got.abs().max() <= 2.0 and got.abs().max() > 1.5  # near the cap: the capping matters
    assert_rows([o.outputs.data for o in raw.reward(TEXTS)], expected(path, tag, columns=None, activate=False))


@pytest.mark.parametrize("name", ["qwen2", "llama", "granite"])
def test_request_parameters_and_raw_logits(models: dict[str, Path], name: str) -> None:
    path = models[name]
    tag = step_tag(path)
    llm = LLM(str(path), pooler_config=step_config(tag))
    # Per-request columns (two groups in one batch), raw logits, and every column.
    other = [3, 11, 29]
    params = [PoolingParams(returned_token_ids=other), PoolingParams(), PoolingParams(use_activation=False), PoolingParams()]
    got = [o.outputs.data for o in llm.reward(TEXTS, params)]
    soft, raw, wide = expected(path, tag), expected(path, tag, activate=False), expected(path, tag, columns=other)
    assert_rows(got, [wide[0], soft[1], raw[2], soft[3]])
    # No returned_token_ids: the whole vocabulary, softmaxed.
    vocab = LLM(str(path), pooler_config=step_config(tag, columns=None))
    assert_rows([o.outputs.data for o in vocab.reward(TEXTS)], expected(path, tag, columns=None))
    # Another step tag per request.
    first = T.AutoTokenizer.from_pretrained(str(path))(TEXTS[2])["input_ids"][1]
    (out,) = llm.reward(TEXTS[2], PoolingParams(step_tag_id=first))
    ids, logits = hf_logits(path)[2]
    assert_rows([out.outputs.data], [torch.softmax(logits[torch.tensor(ids) == first][:, COLUMNS], dim=-1)])


@pytest.mark.parametrize("name", ["qwen3-untied", "mistral"])
def test_returned_token_ids_are_checked_against_the_vocabulary(models: dict[str, Path], name: str) -> None:
    path = models[name]
    llm = LLM(str(path), pooler_config=step_config(step_tag(path)))
    vocab = int(T.AutoConfig.from_pretrained(str(path)).vocab_size)
    assert llm.model.architecture.num_labels < COLUMNS[-1] < vocab
    with pytest.raises(InvalidRequest, match=rf"returned_token_ids \[{vocab}\] are outside the vocabulary's {vocab} outputs"):
        llm.reward(TEXTS[0], PoolingParams(returned_token_ids=[0, vocab]))
    (out,) = llm.reward(TEXTS[0], PoolingParams(returned_token_ids=[vocab - 1]))
    assert out.outputs.data.shape == (2, 1)


@pytest.mark.parametrize("name", NATIVE + FALLBACK)
def test_causal_lms_claim_token_classify_only_with_step(models: dict[str, Path], name: str) -> None:
    """As before: a causal LM embeds. ALL pooling does not make its LM head a token classifier
    (vLLM reads hidden states under ``--convert reward``, which poolkit has not), nor does the
    next-token head make it a SPLADE model."""
    path = str(models[name])
    for config in (None, {"pooling_type": "ALL"}, {"pooling_type": "LAST"}):
        llm = LLM(path, pooler_config=config)
        assert llm.supported_tasks == ["embed", "token_embed"], (config, llm.supported_tasks)
        with pytest.raises(InvalidRequest, match="Task token_classify is not supported by model"):
            llm.reward(TEXTS[0])
    with pytest.raises(InvalidRequest, match="Task sparse_embed is not supported by model"):
        LLM(path, pooler_config=step_config(1)).encode(TEXTS[0], pooling_task="sparse_embed")


def test_embeddings_are_unchanged_and_the_head_is_read_only_when_used(models: dict[str, Path]) -> None:
    """An untied head stays the checkpoint's tensor (no parameter, no copy) until a head runs, and
    embeddings are what they were."""
    path = models["qwen2"]
    tag = step_tag(path)
    llm = LLM(str(path), pooler_config=step_config(tag))
    arch = llm.model.architecture
    assert not any(n.startswith("lm_head") for n in arch.state_dict())
    plain = LLM(str(path))
    embedded = [o.outputs.embedding for o in llm.embed(TEXTS)]
    assert embedded == [o.outputs.embedding for o in plain.embed(TEXTS)]
    assert arch._lm_copies == {} and plain.model.architecture._lm_copies == {}
    llm.reward(TEXTS)
    assert len(arch._lm_copies) == 1
    # The fallback's causal LMs embed as their base model did.
    path = models["granite"]
    as_lm = LLM(str(path), pooler_config=step_config(step_tag(path)))
    as_base = LLM(str(path), hf_overrides={"architectures": ["GraniteModel"]})
    assert type(as_lm.model.architecture).__name__ == "TransformersGraniteForCausalLM"
    assert [o.outputs.embedding for o in as_lm.embed(TEXTS)] == [o.outputs.embedding for o in as_base.embed(TEXTS)]
    assert as_lm.model.architecture._lm_copies == {}


def test_the_head_runs_in_chunks(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path = models["qwen3"]
    tag = step_tag(path)
    whole = [o.outputs.data for o in LLM(str(path), pooler_config=step_config(tag)).reward(TEXTS)]
    calls: list[int] = []
    monkeypatch.setattr(heads, "LOGITS_BUDGET", 1)  # one row per LM-head call
    llm = LLM(str(path), pooler_config=step_config(tag))
    lm_head = llm.model.architecture.lm_head
    monkeypatch.setattr(llm.model.architecture, "lm_head", lambda: (lambda h: calls.append(h.shape[0]) or lm_head()(h)))
    assert_rows([o.outputs.data for o in llm.reward(TEXTS)], whole, atol=1e-6)
    assert calls and max(calls) == 1 and sum(calls) == sum(w.shape[0] for w in whole)


@pytest.mark.parametrize("name", ["qwen2", "llama", "gemma2", "granite"])
def test_bfloat16_follows_float32(models: dict[str, Path], name: str) -> None:
    path = models[name]
    tag = step_tag(path)
    full = LLM(str(path), pooler_config=step_config(tag), dtype="float32").reward(TEXTS)
    half = LLM(str(path), pooler_config=step_config(tag), dtype="bfloat16").reward(TEXTS)
    assert_rows([o.outputs.data for o in half], [torch.as_tensor(o.outputs.data) for o in full], atol=0.05)


def test_a_class_that_computes_its_logits_otherwise_has_no_lm_head(models: dict[str, Path]) -> None:
    """The fallback follows a causal LM's forward from the base model's hidden states to its logits;
    anything it does not know there means no ``lm_head()``, rather than wrong rewards."""

    class ShiftedLlamaForCausalLM(T.LlamaForCausalLM):
        def forward(self, input_ids=None, **kwargs):
            outputs = self.model(input_ids=input_ids, **kwargs)
            hidden_states = outputs.last_hidden_state
            logits = self.lm_head(hidden_states)
            logits = logits + 1.0
            return T.modeling_outputs.CausalLMOutputWithPast(logits=logits)

    class ScaledLlamaForCausalLM(T.LlamaForCausalLM):
        def forward(self, input_ids=None, **kwargs):
            outputs = self.model(input_ids=input_ids, **kwargs)
            hidden_states = outputs.last_hidden_state
            hidden_states = hidden_states / 2.0
            logits = self.lm_head(hidden_states)
            return T.modeling_outputs.CausalLMOutputWithPast(logits=logits)

    path = models["llama"]
    config = T.AutoConfig.from_pretrained(str(path))
    for cls, statement in ((ShiftedLlamaForCausalLM, "logits = logits + 1.0"), (ScaledLlamaForCausalLM, "hidden_states = hidden_states / 2.0")):
        arch = transformers_fallback._causal_lm_class(T.LlamaModel, cls)(config)
        assert arch.no_lm_head_reason.endswith(statement)
        assert arch.lm_head() is None
    plain = transformers_fallback._causal_lm_class(T.LlamaModel, T.LlamaForCausalLM)(config)
    assert plain.no_lm_head_reason is None and plain.lm_head_tensors == {"weight": "lm_head.weight"}
    transforms = {name: transformers_fallback._logit_transforms(getattr(T, name), "lm_head") for name in
                  ("LlamaForCausalLM", "Gemma2ForCausalLM", "CohereForCausalLM", "GraniteForCausalLM")}
    assert transforms == {
        "LlamaForCausalLM": ((), None),
        "Gemma2ForCausalLM": (("final_logit_softcapping",), None),
        "CohereForCausalLM": (("logit_scale",), None),
        "GraniteForCausalLM": (("logits_scaling",), None),
    }
