"""Causal LMs published as rerankers, laid out as their publishers ship them, scored as the publishers do.

Each checkpoint is a tiny random ``*ForCausalLM`` with nothing in ``config.json`` that says "reranker"
(mxbai-rerank-v2, Qwen3-Reranker), or only remote code poolkit never runs (zerank's ``auto_map``). Each
reference below is the publisher's scoring written out: its prompt, tokenized its way, run through
transformers' own ``*ForCausalLM`` on the same weights, and its formula at the last token.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
import transformers as T

from poolkit import LLM, PoolingParams

ATOL = 1e-4
QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "hello world", "the quick brown fox", "berlin is the capital of germany"]

#: What Qwen3's chat template renders for system and user messages and the generation prompt
#: (zerank-1-small ships Qwen3's template); the reference renders zerank's messages through it.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_causal_lm(out: Path, family: str, *, extra_tokens: tuple[str, ...] = (), card: str | None = None,
                    seed: int = 0, **config: object) -> Path:
    """A tiny ``Qwen2ForCausalLM`` / ``Qwen3ForCausalLM`` (``family``) saved as a hub repository holds
    it: weights, ``config.json`` (plus ``config``), the tokenizer (with ``extra_tokens`` and Qwen3's
    chat template), and ``card`` as its ``README.md``."""
    from tiny_models import build_qwen, bytelevel_bpe_tokenizer

    tok = bytelevel_bpe_tokenizer()
    tok.add_tokens(list(extra_tokens))
    tok.chat_template = CHATML
    tok.model_max_length = 1024
    build_qwen(out, family, task="lm", seed=seed, init_range=1.0, tokenizer=tok, max_position_embeddings=1024)
    if config:
        raw = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**raw, **config}, indent=2))
    if card is not None:
        (out / "README.md").write_text(card)
    return out


def hub_snapshot(tmp_path: Path, source: Path, hub_id: str) -> Path:
    """``source`` copied where a hub download of ``hub_id`` puts it (``models--org--name/snapshots/<rev>``)."""
    org, name = hub_id.split("/")
    snapshot = tmp_path / "hub" / f"models--{org}--{name}" / "snapshots" / "0123abcd"
    shutil.copytree(source, snapshot)
    return snapshot


def run_lm(path: Path, ids: list[int]) -> torch.Tensor:
    """transformers' own causal LM: the next-token logits after ``ids``."""
    lm = T.AutoModelForCausalLM.from_pretrained(str(path)).eval()
    with torch.no_grad():
        return lm(torch.tensor([ids])).logits[0, -1].float()


def scores(llm: LLM, **kwargs: object) -> list[float]:
    return [s.outputs.score for s in llm.score(QUERY, DOCS, **kwargs)]


def assert_differ(values: list[float]) -> None:
    assert max(values) - min(values) > 1e-3, "the tiny reranker must not be constant"


# -- mxbai-rerank-v2 ------------------------------------------------------------------------------------

#: mixedbread's model card front matter and name (huggingface.co/mixedbread-ai/mxbai-rerank-base-v2).
MXBAI_CARD = "---\nlibrary_name: transformers\nlicense: apache-2.0\npipeline_tag: text-ranking\n---\n# mxbai-rerank-base-v2\n"
#: github.com/mixedbread-ai/mxbai-rerank, mxbai_rerank/mxbai_rerank_v2.py, MxbaiRerankV2's class attributes.
MXBAI_PREFIX = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)


def mxbai_reference(path: Path, query: str, documents: list[str], instruction: str | None = None) -> list[float]:
    """``MxbaiRerankV2.prepare_inputs`` / ``concat_input_ids`` / ``forward``: each piece tokenized on its
    own, ``sigmoid(logit("1") - logit("0"))`` at the last token."""
    tok = T.AutoTokenizer.from_pretrained(str(path))

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    yes, no = ids("1")[0], ids("0")[0]
    out = []
    for document in documents:
        query_prompt = f"query: {query}"
        if instruction:
            query_prompt = "".join([f"instruction: {instruction}", "\n", query_prompt])
        input_ids = ids(MXBAI_PREFIX) + ids(query_prompt) + ids("\n") + ids(f"document: {document}") + ids("\n") + ids(MXBAI_TASK) + ids(MXBAI_SUFFIX)
        logits = run_lm(path, input_ids)
        out.append(torch.sigmoid(logits[yes] - logits[no]).item())
    return out


@pytest.fixture(scope="module")
def mxbai(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_causal_lm(tmp_path_factory.mktemp("mxbai") / "checkpoint", "qwen2", card=MXBAI_CARD)


def test_mxbai_rerank_v2_recognised_from_its_model_card(mxbai: Path) -> None:
    llm = LLM(str(mxbai))
    assert llm.score_type == "cross-encoder"
    described = llm.model.describe()
    assert described["llm_reranker"]["value"] == "mxbai-rerank-v2"
    assert described["llm_reranker"]["source"].startswith("model card")
    assert described["warnings"] == []
    expected = mxbai_reference(mxbai, QUERY, DOCS)
    assert_differ(expected)
    assert scores(llm) == pytest.approx(expected, abs=ATOL)
    instructed = mxbai_reference(mxbai, QUERY, DOCS, instruction="find the capital")
    assert scores(llm, instruction="find the capital") == pytest.approx(instructed, abs=ATOL)
    ranked = llm.rerank(QUERY, DOCS)
    assert [r.relevance_score for r in ranked] == pytest.approx(sorted(expected, reverse=True), abs=ATOL)


def test_mxbai_rerank_v2_recognised_from_its_hub_id(mxbai: Path, tmp_path: Path) -> None:
    snapshot = hub_snapshot(tmp_path, mxbai, "mixedbread-ai/mxbai-rerank-base-v2")
    (snapshot / "README.md").unlink()  # a hub download fetches no model card
    llm = LLM(str(snapshot))
    assert llm.model.describe()["llm_reranker"]["source"] == "hub id mixedbread-ai/mxbai-rerank-base-v2"
    assert scores(llm) == pytest.approx(mxbai_reference(mxbai, QUERY, DOCS), abs=ATOL)


def test_mxbai_rerank_v2_the_vllm_way(mxbai: Path) -> None:
    """vLLM's spelling (hf_overrides and the prompt as a score template) scores the same."""
    from poolkit.builtin_models.decoders.rerankers import MXBAI_RERANK_V2_TEMPLATE

    overrides = {"architectures": ["Qwen2ForSequenceClassification"], "classifier_from_token": ["0", "1"], "method": "from_2_way_softmax"}
    llm = LLM(str(mxbai), hf_overrides=overrides)
    assert llm.model.describe()["llm_reranker"]["value"] == "classifier_from_token"
    got = scores(llm, chat_template=MXBAI_RERANK_V2_TEMPLATE + "\n")  # vLLM drops a template's final newline
    assert got == pytest.approx(mxbai_reference(mxbai, QUERY, DOCS), abs=ATOL)


# -- zerank ---------------------------------------------------------------------------------------------

#: zerank-1-small's config.json names its remote config (an alias of Qwen3Config) in auto_map.
ZERANK_AUTO_MAP = {"auto_map": {"AutoConfig": "modeling_zeranker.ZEConfig"}}


def zerank_reference(path: Path, query: str, documents: list[str]) -> list[float]:
    """huggingface.co/zeroentropy/zerank-1-small, modeling_zeranker.py: ``format_pointwise_datapoints``
    (the query as the system message, the document as the user message, the chat template with the
    generation prompt) and ``predict`` (``sigmoid(logit("Yes") / 5)`` at the last token)."""
    tok = T.AutoTokenizer.from_pretrained(str(path))
    yes = tok.encode("Yes", add_special_tokens=False)[0]
    out = []
    for q, d in [(query[:2_000], document[:10_000]) for document in documents]:
        system_prompt = f"""
{q}
""".strip()
        user_message = f"""
{d}
""".strip()
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": user_message}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        logits = run_lm(path, tok(text)["input_ids"])
        out.append(1 / (1 + math.exp(-(float(logits[yes]) / 5.0))))
    return out


def test_zerank_recognised_from_its_config(tmp_path: Path) -> None:
    path = build_causal_lm(tmp_path / "checkpoint", "qwen3", extra_tokens=("Yes",), **ZERANK_AUTO_MAP)
    llm = LLM(str(path))
    described = llm.model.describe()
    assert described["llm_reranker"]["value"] == "zerank"
    assert described["llm_reranker"]["source"] == "config.json auto_map (modeling_zeranker.)"
    assert described["llm_reranker"]["pooler_defaults"] == {"logit_sigma": 5.0}
    assert llm.model.config_value("logit_sigma").source == "architecture default (Qwen3ForCausalLM)"
    docs = [" " + DOCS[0] + "\n", *DOCS[1:]]  # the publisher strips both sides
    expected = zerank_reference(path, QUERY, docs)
    assert_differ(expected)
    got = [s.outputs.score for s in llm.score(QUERY, docs)]
    assert got == pytest.approx(expected, abs=ATOL)
    # Without the activation: the calibrated logit, "Yes" / 5.
    (raw,) = llm.classify(_zerank_prompt(QUERY, DOCS[1]), PoolingParams(use_activation=False))
    assert raw.outputs.probs[0] == pytest.approx(math.log(expected[1] / (1 - expected[1])), abs=1e-3)


def _zerank_prompt(query: str, document: str) -> str:
    from poolkit.plugins import registry

    (prompt,) = registry("io_processor").get("zerank").pre_process(([query], [document]))
    return prompt.text


# -- Qwen3-Reranker -------------------------------------------------------------------------------------

#: Qwen3-Reranker's model card front matter and title (huggingface.co/Qwen/Qwen3-Reranker-0.6B).
QWEN3_RERANKER_CARD = (
    "---\nlicense: apache-2.0\nbase_model:\n- Qwen/Qwen3-0.6B-Base\nlibrary_name: transformers\n"
    "pipeline_tag: text-ranking\n---\n# Qwen3-Reranker-0.6B\n"
)


def qwen3_reranker_reference(path: Path, query: str, documents: list[str]) -> list[float]:
    """The model card's script (and vLLM's examples/offline_inference/qwen3_reranker.py): its prefix,
    ``<Instruct>``, ``<Query>``, ``<Document>``, suffix, then the softmax of the "no" / "yes" logits."""
    prefix = '<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    instruction = "Given a web search query, retrieve relevant passages that answer the query"
    tok = T.AutoTokenizer.from_pretrained(str(path))
    no, yes = tok.convert_tokens_to_ids("no"), tok.convert_tokens_to_ids("yes")
    out = []
    for document in documents:
        text = f"{prefix}<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}{suffix}"
        logits = run_lm(path, tok(text)["input_ids"])
        out.append(torch.softmax(logits[[no, yes]], dim=-1)[1].item())
    return out


@pytest.mark.parametrize("shipped", ["model card", "hub id"])
def test_qwen3_reranker_recognised_from_what_it_ships(tmp_path: Path, shipped: str) -> None:
    path = build_causal_lm(tmp_path / "checkpoint", "qwen3", card=QWEN3_RERANKER_CARD)
    if shipped == "hub id":
        (path / "README.md").unlink()
        path = hub_snapshot(tmp_path, path, "Qwen/Qwen3-Reranker-0.6B")
    llm = LLM(str(path))
    assert llm.model.describe()["llm_reranker"]["value"] == "Qwen3-Reranker"
    assert llm.model.hf_config.score_template == "qwen3_reranker"
    expected = qwen3_reranker_reference(path, QUERY, DOCS)
    assert_differ(expected)
    assert scores(llm) == pytest.approx(expected, abs=ATOL)


# -- a causal LM that is no reranker poolkit knows ---------------------------------------------------------


def test_plain_causal_lm_is_an_embedder_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = build_causal_lm(tmp_path / "checkpoint", "qwen2")
    with caplog.at_level(logging.WARNING, logger="poolkit"):
        llm = LLM(str(path))
    assert llm.score_type == "bi-encoder"
    (warning,) = llm.model.describe()["warnings"]
    assert "served as an embedder of its last token" in warning and 'hf_overrides={"classifier_from_token"' in warning
    assert warning in caplog.text
    assert "llm_reranker" not in llm.model.describe()
    # Told it is no reranker, it is an embedder without a warning; the spelling the warning gives makes it one.
    assert LLM(str(path), hf_overrides={"llm_reranker": False}).model.describe()["warnings"] == []
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["warnings"] == [warning]
    assert "served as an embedder of its last token" in result.stderr
    asked = LLM(str(path), hf_overrides={"classifier_from_token": ["no", "yes"], "method": "from_2_way_softmax"})
    assert asked.score_type == "cross-encoder" and asked.model.describe()["warnings"] == []


def test_a_card_of_another_kind_recognises_nothing(tmp_path: Path) -> None:
    """A model card that names a reranker but is no reranker's (an embedder's card comparing itself with one)."""
    card = "---\npipeline_tag: feature-extraction\n---\nBetter than Qwen3-Reranker and mxbai-rerank-base-v2.\n"
    path = build_causal_lm(tmp_path / "checkpoint", "qwen3", card=card)
    llm = LLM(str(path))
    assert llm.score_type == "bi-encoder" and len(llm.model.describe()["warnings"]) == 1
