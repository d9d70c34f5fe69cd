"""Rows of vLLM's pooling-model tables built on the decoder family: GritLM and voyage-4-nano,
each against transformers' own classes on the same tiny random weights, laid out as the
published checkpoints are (config keys, tensor names, tokenizer), with the pooling written out
here from the model's published description (fp32: max |diff| <= 1e-4).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from safetensors.torch import load_file, save_file
from tiny_models import build_qwen
from tiny_published import build_gritlm

from poolkit import LLM
from poolkit.contracts.errors import ModelLoadError

ATOL = 1e-4
TEXTS = ["paris is the capital of france", "hello", "the quick brown fox jumps over the lazy dog " * 3]
#: Short enough for a character-level vocabulary.
GRIT_TEXTS = ["paris is the capital of france", "hello", "the quick brown fox"]


def embeddings(llm: LLM, prompts: list) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in llm.embed(prompts)])


# -- GritLM ----------------------------------------------------------------------------------------

#: GritLM's prompt format (the model card's ``gritlm_instruction``).
def grit_prompt(text: str, instruction: str = "") -> str:
    return (f"<|user|>\n{instruction}\n<|embed|>\n" if instruction else "<|embed|>\n") + text


@pytest.fixture(scope="module")
def gritlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gritlm(tmp_path_factory.mktemp("gritlm") / "gritlm")


def grit_reference(path: Path, prompt: str) -> tuple[torch.Tensor, list[int]]:
    """transformers' MistralModel run bidirectionally with no sliding window (as vLLM runs GritLM
    for pooling), the mean over the tokens after ``<|embed|>\\n`` (GritLM's pooling), L2-normalised."""
    config = T.AutoConfig.from_pretrained(str(path))
    config.is_causal, config.sliding_window = False, None
    model = T.MistralModel.from_pretrained(str(path), config=config).eval()
    tok = T.AutoTokenizer.from_pretrained(str(path))
    ids = tok(prompt)["input_ids"]
    marker = "\n<|embed|>\n" if prompt.startswith("<|user|>") else "<|embed|>\n"
    instruction = len(tok(prompt[: prompt.index(marker) + len(marker)])["input_ids"])
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return F.normalize(hidden[instruction:].mean(0), dim=-1), ids


def test_gritlm_tokens_are_mistrals(gritlm: Path) -> None:
    tok = T.AutoTokenizer.from_pretrained(str(gritlm))
    pieces = tok.convert_ids_to_tokens(tok(grit_prompt("hi", "find it"))["input_ids"])
    assert pieces[:7] == ["<s>", "▁<", "|", "user", "|", ">", "<0x0A>"]
    assert pieces[-9:-2] == ["<0x0A>", "<", "|", "embed", "|", ">", "<0x0A>"]


def test_gritlm_pools_after_the_instruction(gritlm: Path) -> None:
    llm = LLM(str(gritlm))
    info = llm.model.describe()
    assert info["architecture"] == "GritLM" and info["implementation"] == "native"
    assert not llm.model.architecture.causal
    prompts = [grit_prompt(GRIT_TEXTS[0], "Given a claim, find what refutes it"), grit_prompt(GRIT_TEXTS[1]),
               grit_prompt(GRIT_TEXTS[2], "Retrieve passages")]
    got = embeddings(llm, prompts)
    for row, prompt in zip(got, prompts):
        want, ids = grit_reference(gritlm, prompt)
        assert (row - want).abs().max() <= ATOL, prompt
    # the instruction is left out: the same text under another instruction pools other states only through attention
    whole = F.normalize(torch.stack([torch.as_tensor(o.outputs.data).float().mean(0) for o in llm.encode(prompts[:1], pooling_task="token_embed")]), dim=-1)
    assert (whole[0] - got[0]).abs().max() > 1e-3


def test_gritlm_without_marker_or_bos_pools_as_vllm_does(gritlm: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No ``<|embed|>``: everything but ``<s>`` is pooled; no ``<s>``: everything, each with a warning."""
    llm = LLM(str(gritlm))
    config = T.AutoConfig.from_pretrained(str(gritlm))
    config.is_causal, config.sliding_window = False, None
    model = T.MistralModel.from_pretrained(str(gritlm), config=config).eval()
    ids = T.AutoTokenizer.from_pretrained(str(gritlm))(GRIT_TEXTS[0])["input_ids"]
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        no_bos = model(input_ids=torch.tensor([ids[1:]])).last_hidden_state[0]
    with caplog.at_level(logging.WARNING):
        got = embeddings(llm, [GRIT_TEXTS[0], {"prompt_token_ids": ids[1:]}])
    assert (got[0] - F.normalize(hidden[1:].mean(0), dim=-1)).abs().max() <= ATOL
    assert (got[1] - F.normalize(no_bos.mean(0), dim=-1)).abs().max() <= ATOL
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "no <|embed|> marker" in messages and "no BOS token" in messages


def test_gritlm_needs_mistrals_pieces(gritlm: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(gritlm, other)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (other / name).unlink(missing_ok=True)
    from tiny_models import bytelevel_bpe_tokenizer

    tok = bytelevel_bpe_tokenizer()
    tok.save_pretrained(other)
    raw = json.loads((other / "config.json").read_text())
    tensors = load_file(other / "model.safetensors")
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][: len(tok)].contiguous()
    save_file(tensors, other / "model.safetensors")
    raw.update(vocab_size=len(tok))
    (other / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match=r"GritLM finds its <\|embed\|> marker .* this tokenizer lacks"):
        LLM(str(other))


# -- voyage-4-nano ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voyage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3 saved as voyage-4-nano is: ``architectures: ["VoyageQwen3BidirectionalEmbedModel"]``,
    the body under ``model.``, ``linear.weight`` (96 x hidden, no bias), and a config whose
    ``num_labels`` does not say the width (transformers' default, 2). Layout source: vLLM's voyage.py
    ("Linear head: linear.weight", "Weights prefixed with model.", the head ``hidden -> num_labels``)."""
    path = build_qwen(tmp_path_factory.mktemp("voyage") / "voyage", "qwen3", "lm", seed=4, tie_word_embeddings=False)
    tensors = load_file(path / "model.safetensors")
    tensors.pop("lm_head.weight")
    hidden = tensors["model.embed_tokens.weight"].shape[1]
    tensors["linear.weight"] = torch.randn(96, hidden, generator=torch.Generator().manual_seed(9)) * 0.2
    save_file(tensors, path / "model.safetensors")
    raw = json.loads((path / "config.json").read_text())
    raw.update(architectures=["VoyageQwen3BidirectionalEmbedModel"])
    (path / "config.json").write_text(json.dumps(raw))
    return path


def voyage_reference(path: Path, texts: list[str]) -> torch.Tensor:
    """transformers' Qwen3Model, bidirectional, then ``linear`` per token, the mean, L2."""
    config = T.AutoConfig.from_pretrained(str(path))
    config.is_causal = False
    model = T.Qwen3Model.from_pretrained(str(path), config=config).eval()
    linear = load_file(path / "model.safetensors")["linear.weight"]
    tok = T.AutoTokenizer.from_pretrained(str(path))
    rows = []
    with torch.inference_mode():
        for text in texts:
            hidden = model(input_ids=torch.tensor([tok(text)["input_ids"]])).last_hidden_state[0]
            rows.append(F.normalize((hidden @ linear.T).mean(0), dim=-1))
    return torch.stack(rows)


def test_voyage_matches_its_published_math(voyage: Path) -> None:
    llm = LLM(str(voyage))
    info = llm.model.describe()
    assert info["architecture"] == "VoyageQwen3BidirectionalEmbedModel" and info["implementation"] == "native"
    got = embeddings(llm, TEXTS)
    assert got.shape == (3, 96)
    assert (got - voyage_reference(voyage, TEXTS)).abs().max() <= ATOL


def test_voyage_width_is_the_checkpoints(voyage: Path) -> None:
    """``num_labels`` comes from ``linear.weight``; an override that disagrees is refused."""
    assert LLM(str(voyage)).model.embedding_size == 96
    with pytest.raises(ModelLoadError, match=r"num_labels 64 does not match the checkpoint's linear.weight \(96, 32\)"):
        LLM(str(voyage), hf_overrides={"num_labels": 64})


def test_voyage_as_plain_qwen3_warns_about_the_projection(voyage: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Read as a bare Qwen3Model (what a user tried before), the dropped projection is named."""
    with caplog.at_level(logging.WARNING):
        LLM(str(voyage), hf_overrides={"architectures": ["Qwen3Model"], "is_causal": False})
    assert any("linear.weight" in r.getMessage() and "unused by" in r.getMessage() for r in caplog.records)


# -- ERNIE (transformers fallback) -----------------------------------------------------------------


def test_ernie_model_pools_the_mean_as_vllm(tmp_path: Path) -> None:
    """vLLM's ``ErnieModel`` row (``@default_pooling_type("MEAN")``): the fallback runs transformers'
    ErnieModel and pools the mean of the last hidden states, then L2."""
    from tiny_models import give_segment_ids, wordpiece_tokenizer

    tok = wordpiece_tokenizer()
    config = T.ErnieConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id, initializer_range=0.5)
    torch.manual_seed(0)
    T.ErnieModel(config).save_pretrained(tmp_path / "ernie")
    tok.save_pretrained(tmp_path / "ernie")
    give_segment_ids(tmp_path / "ernie")
    llm = LLM(str(tmp_path / "ernie"))
    info = llm.model.describe()
    assert info["architecture"] == "ErnieModel" and info["tasks"]["embed"]["pooling_type"]["value"] == "MEAN"
    model = T.ErnieModel.from_pretrained(str(tmp_path / "ernie")).eval()
    enc = T.AutoTokenizer.from_pretrained(str(tmp_path / "ernie"))(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1)
    want = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert (embeddings(llm, TEXTS[:2]) - want).abs().max() <= ATOL


# -- RoBERTa MLM checkpoints ------------------------------------------------------------------------


def test_roberta_for_masked_lm_checkpoint_embeds_with_the_encoder(tmp_path: Path) -> None:
    """vLLM's ``RobertaForMaskedLM`` row: the checkpoint's encoder (under ``roberta.``) serves
    embeddings, CLS pooled, as transformers' RobertaModel computes them; its ``lm_head`` is read too
    (``RobertaForMaskedLM``: ``sparse_embed``, SPLADE on the MLM logits) and changes no embedding."""
    from tiny_models import wordpiece_tokenizer

    tok = wordpiece_tokenizer()
    config = T.RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id, type_vocab_size=1)
    torch.manual_seed(2)
    model = T.RobertaForMaskedLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if "LayerNorm.weight" in name else 0.0, 0.5)
    model.save_pretrained(tmp_path / "roberta-mlm")
    tok.save_pretrained(tmp_path / "roberta-mlm")
    llm = LLM(str(tmp_path / "roberta-mlm"))
    info = llm.model.describe()
    assert info["implementation"] == "native" and info["architecture"] == "RobertaForMaskedLM"
    encoder = model.roberta.eval()
    enc = T.AutoTokenizer.from_pretrained(str(tmp_path / "roberta-mlm"))(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    assert (embeddings(llm, TEXTS[:2]) - F.normalize(hidden[:, 0], dim=-1)).abs().max() <= ATOL
