"""NV-Embed (nvidia/NV-Embed-v2): published as ``NVEmbedModel`` behind remote code, run natively
(``builtin_models/nv_embed.py``) on a tiny checkpoint laid out as the publisher's (:mod:`tiny_nv_embed`).

The reference is the publisher's computation written out below, from ``modeling_nvembed.py`` of
nvidia/NV-Embed-v2: ``NVEmbedModel.encode`` (``input_transform_func`` with ``always_add_eos``: the
instruction, the text and ``</s>``, padded on the right; ``instruction_lens = len(tokenizer.tokenize(instruction))``),
``prepare_kwargs_from_batch`` (``pool_mask``: the attention mask with its first ``instruction_lens``
columns zeroed), ``BidirectionalMistralModel.forward`` (transformers' ``MistralModel`` under
``_prepare_4d_attention_mask``: padding only, neither causal nor windowed) and
``LatentAttentionModel.forward`` with ``PreNorm``, ``Attention`` and ``FeedForward`` / ``GEGLU`` (in
plain torch below), the masked mean and ``output_normalize``. fp32 on CPU, where the publisher's
``torch.autocast("cuda")`` is off: max |diff| <= 1e-4 and cosine >= 0.99999 (DESIGN §7).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from safetensors.torch import load_file
from tiny_nv_embed import build_nv_embed

from poolkit import LLM, PoolingParams
from poolkit.contracts.capabilities import SkipsInstruction
from poolkit.contracts.errors import ModelLoadError
from poolkit.plugins import registry

ATOL = 1e-4
RAW = PoolingParams(use_activation=False)
#: The model card's query instruction and its example texts (shortened).
INSTRUCTION = "Instruct: Given a question, retrieve passages that answer the question\nQuery: "
QUERIES = ["are judo throws allowed in wrestling?", "how to become a radiology technician in michigan?"]
PASSAGES = [
    "judo throws are allowed in freestyle and folkstyle wrestling. mind the slam rules.",
    "earn a high school diploma, then an associate degree, then get licensed in michigan.",
    "hello",
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_nv_embed(tmp_path_factory.mktemp("nv-embed") / "NV-Embed-v2")


@pytest.fixture(scope="module")
def llm(ckpt: Path) -> LLM:
    return LLM(str(ckpt), dtype="float32")


# -- the publisher's computation (modeling_nvembed.py) -------------------------------------------------


def publisher_tokenizer(path: Path) -> T.PreTrainedTokenizerBase:
    """The checkpoint's tokenizer as ``NVEmbedModel.__init__`` sets it up (``add_pad_token``: pad with
    the EOS token, on the right); read directly, since ``AutoTokenizer`` would ask to run the
    ``auto_map`` code of ``config.json``."""
    tok = T.PreTrainedTokenizerFast.from_pretrained(str(path))
    tok.pad_token, tok.padding_side = tok.eos_token, "right"
    return tok


def publisher_forward(path: Path, texts: list[str], instruction: str = "") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``NVEmbedModel.encode(texts, instruction=instruction)``: the embeddings ``[B, H]``, the latent
    attention's token states ``[B, T, H]`` (what its ``forward`` gives without a mask) and the batch."""
    config = json.loads((path / "config.json").read_text())
    tensors = {}
    for shard in sorted(path.glob("model-*.safetensors")):
        tensors.update(load_file(str(shard)))
    tok = publisher_tokenizer(path)
    # input_transform_func(always_add_eos=True) and prepare_kwargs_from_batch
    batch = tok([instruction + t + tok.eos_token for t in texts], max_length=4096, padding=True, return_token_type_ids=False,
                return_tensors="pt", truncation=True)
    instruction_lens = len(tok.tokenize(instruction)) if instruction else 0
    pool_mask = batch["attention_mask"].clone()
    pool_mask[:, :instruction_lens] = 0
    # BidirectionalMistralModel.forward: MistralModel's layers under _prepare_4d_attention_mask (eager)
    text_config = T.MistralConfig(**{k: v for k, v in config["text_config"].items() if k != "model_type"}, attn_implementation="eager")
    mistral = T.MistralModel(text_config).eval()
    mistral.load_state_dict({k.removeprefix("embedding_model."): v for k, v in tensors.items() if k.startswith("embedding_model.")})
    mask = batch["attention_mask"][:, None, None, :].float().expand(-1, 1, batch["input_ids"].shape[1], -1)
    inverted = 1.0 - mask
    mask4d = inverted.masked_fill(inverted.bool(), torch.finfo(torch.float32).min)
    with torch.inference_mode():
        hiddens = mistral(input_ids=batch["input_ids"], attention_mask=mask4d).last_hidden_state
        states = latent_attention(tensors, config["latent_attention_config"], hiddens)
    # LatentAttentionModel.forward with pool_mask: the masked mean, then output_normalize
    s = torch.sum(states * pool_mask.unsqueeze(-1).float(), dim=1)
    d = pool_mask.sum(dim=1, keepdim=True).float()
    embeds = F.normalize(s / d, p=2, dim=-1) if config["latent_attention_config"].get("output_normalize", True) else s / d
    return embeds, states, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "pool_mask": pool_mask}


def latent_attention(tensors: dict[str, torch.Tensor], settings: dict, hiddens: torch.Tensor) -> torch.Tensor:
    """``LatentAttentionModel.forward``'s cross-attention and feed-forward blocks on ``[B, T, H]`` states."""
    w = {k.removeprefix("latent_attention_model."): v for k, v in tensors.items() if k.startswith("latent_attention_model.")}
    heads = settings["num_cross_heads"]

    def layer_norm(x: torch.Tensor, name: str) -> torch.Tensor:  # torch.nn.LayerNorm(dim): eps 1e-5
        return F.layer_norm(x, x.shape[-1:], w[name + ".weight"], w[name + ".bias"], 1e-5)

    def split_heads(t: torch.Tensor) -> torch.Tensor:  # rearrange 'b n (h d) -> (b h) n d'
        b, n, _ = t.shape
        return t.view(b, n, heads, -1).permute(0, 2, 1, 3).reshape(b * heads, n, -1)

    b = hiddens.shape[0]
    x = w["latents"].unsqueeze(0).repeat(b, 1, 1)  # repeat(self.latents, 'n d -> b n d', b=b)
    # PreNorm(latent_dim, Attention(latent_dim, dim, ...), context_dim=dim): cross_attn(hiddens, context=x)
    q = layer_norm(hiddens, "cross_attend_blocks.0.norm") @ w["cross_attend_blocks.0.fn.to_q.weight"].T
    k, v = (layer_norm(x, "cross_attend_blocks.0.norm_context") @ w["cross_attend_blocks.0.fn.to_kv.weight"].T).chunk(2, dim=-1)
    out = F.scaled_dot_product_attention(split_heads(q), split_heads(k), split_heads(v))
    n = out.shape[1]
    out = out.view(b, heads, n, -1).permute(0, 2, 1, 3).reshape(b, n, -1)  # '(b h) n d -> b n (h d)'
    hiddens = out @ w["cross_attend_blocks.0.fn.to_out.weight"].T + hiddens
    # PreNorm(latent_dim, FeedForward(latent_dim)): Linear, GEGLU (x * gelu(gates)), Linear
    y = F.linear(layer_norm(hiddens, "cross_attend_blocks.1.norm"), w["cross_attend_blocks.1.fn.net.0.weight"], w["cross_attend_blocks.1.fn.net.0.bias"])
    a, gates = y.chunk(2, dim=-1)
    y = F.linear(a * F.gelu(gates), w["cross_attend_blocks.1.fn.net.2.weight"], w["cross_attend_blocks.1.fn.net.2.bias"])
    return y + hiddens


def embeddings(llm: LLM, prompts: list[str]) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in llm.embed(prompts)])


def assert_parity(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert (got - want).abs().max() <= ATOL
    assert F.cosine_similarity(got, want, dim=-1).min() >= 0.99999


# -- parity ------------------------------------------------------------------------------------------


def test_registered_and_native(llm: LLM) -> None:
    assert registry("architecture").get("NVEmbedModel") is type(llm.model.architecture)
    info = llm.model.describe()
    assert info["architecture"] == "NVEmbedModel" and info["implementation"] == "native"
    assert isinstance(llm.model.architecture, SkipsInstruction)


def test_passages_without_an_instruction_match_the_publisher(llm: LLM, ckpt: Path) -> None:
    """No instruction: every token is pooled, BOS and the appended ``</s>`` included."""
    want, _, batch = publisher_forward(ckpt, PASSAGES)
    outputs = llm.embed(PASSAGES)
    for out, ids, mask in zip(outputs, batch["input_ids"], batch["attention_mask"]):
        assert out.prompt_token_ids == ids[mask.bool()].tolist()  # <s> ... </s>, as the publisher tokenizes
    assert outputs[0].prompt_token_ids[-1] == llm.get_tokenizer().eos_token_id
    assert_parity(torch.tensor([o.outputs.embedding for o in outputs]), want)


def test_queries_with_the_instruction_match_the_publisher(llm: LLM, ckpt: Path) -> None:
    """The instruction before each query: its tokens are left out of pooling as the publisher's
    ``instruction_lens`` leaves them out, whatever else is in the batch."""
    want, _, batch = publisher_forward(ckpt, QUERIES, INSTRUCTION)
    prompts = [INSTRUCTION + q for q in QUERIES]
    for prompt, mask in zip(prompts, batch["pool_mask"]):
        ids = llm.embed([prompt])[0].prompt_token_ids
        assert llm.model.architecture.pool_start(ids) == int(mask.argmax())  # the first pooled token, as pool_mask says
    assert_parity(embeddings(llm, prompts), want)
    mixed = embeddings(llm, [PASSAGES[0], prompts[0], PASSAGES[2], prompts[1]])
    assert_parity(mixed[[1, 3]], want)
    # the instruction is really left out: pooling every token differs
    states = llm.encode(prompts[:1], RAW, pooling_task="token_embed")[0].outputs.data
    everything = F.normalize(torch.as_tensor(states).float().mean(0), dim=0)
    assert (everything - want[0]).abs().max() > 1e-3


def test_token_states_are_the_latent_attentions(llm: LLM, ckpt: Path) -> None:
    """``token_embed``: every token's state after the latent attention (what the publisher's
    ``LatentAttentionModel`` gives without a mask, sentence-transformers' token embeddings)."""
    _, states, batch = publisher_forward(ckpt, PASSAGES)
    outputs = llm.encode(PASSAGES, RAW, pooling_task="token_embed")
    for out, row, mask in zip(outputs, states, batch["attention_mask"]):
        data = torch.as_tensor(out.outputs.data).float()
        assert data.shape == (int(mask.sum()), 32)
        assert (data - row[mask.bool()]).abs().max() <= ATOL


def test_info_names_the_layout(llm: LLM, ckpt: Path) -> None:
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    layout = llm.model.describe()["layout"]
    assert layout["value"] == (
        "NV-Embed (bidirectional Mistral, latent attention: 16 latents, 4 heads; "
        "'Instruct: ...\\nQuery:' left out of pooling; </s> after every prompt)"
    )
    assert "NVEmbedModel" in layout["source"] and "latent_attention_config" in layout["source"]
    result = CliRunner().invoke(app, ["info", str(ckpt)])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["layout"] == layout


def test_an_unmasked_instruction_is_pooled(ckpt: Path, tmp_path: Path) -> None:
    """``is_mask_instruction: false``: the publisher pools the instruction's tokens too."""
    llm = LLM(str(ckpt), dtype="float32", hf_overrides={"is_mask_instruction": False})
    prompt = INSTRUCTION + QUERIES[0]
    assert llm.model.architecture.pool_start(llm.embed([prompt])[0].prompt_token_ids) == 0
    want, _, _ = publisher_forward(ckpt, [prompt])
    assert_parity(embeddings(llm, [prompt]), want)
    assert "instructions pooled" in llm.model.describe()["layout"]["value"]


def test_bf16_and_int8_stay_close_to_the_publishers_fp32(ckpt: Path) -> None:
    """The latent attention keeps its norms and residual sums in fp32 under a bf16 model, and its
    linear layers run int8 as the decoder's do (cosine to the fp32 reference: 0.999, bf16's and int8's bar)."""
    prompts = [INSTRUCTION + QUERIES[0], PASSAGES[0]]
    want = torch.cat([publisher_forward(ckpt, [QUERIES[0]], INSTRUCTION)[0], publisher_forward(ckpt, PASSAGES[:1])[0]])
    for kwargs in ({"dtype": "bfloat16"}, {"dtype": "float32", "quantization": "int8"}):
        got = embeddings(LLM(str(ckpt), **kwargs), prompts)
        assert F.cosine_similarity(got, want, dim=-1).min() >= 0.999, kwargs


# -- bad input ---------------------------------------------------------------------------------------


def _rewritten(ckpt: Path, tmp_path: Path, change) -> Path:
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    config = json.loads((other / "config.json").read_text())
    change(config)
    (other / "config.json").write_text(json.dumps(config))
    return other


def _one_line_error(path: Path, **kwargs) -> str:
    with pytest.raises(ModelLoadError) as caught:
        LLM(str(path), **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_latent_config_that_disagrees_with_the_tensors_fails_in_one_line(ckpt: Path, tmp_path: Path) -> None:
    other = _rewritten(ckpt, tmp_path, lambda c: c["latent_attention_config"].update(num_latents_value=8))
    message = _one_line_error(other)
    assert "latent_attention_config.num_latents_value is 8, but the weights hold 16" in message
    assert "'latent_attention_model.latents' has shape (16, 32)" in message


def test_published_latent_config_on_other_tensors_fails_in_one_line(ckpt: Path, tmp_path: Path) -> None:
    """The published ``latent_attention_config`` names only its type: its sizes are
    ``LatentAttentionConfig``'s defaults (4096 wide), which the tiny tensors do not fit."""
    other = _rewritten(ckpt, tmp_path, lambda c: c.update(latent_attention_config={"model_type": "latent_attention"}))
    message = _one_line_error(other)
    assert "latent_dim 4096 and hidden_dim 4096 must both be text_config.hidden_size 32" in message


def test_latent_heads_that_disagree_with_the_tensors_fail_in_one_line(ckpt: Path) -> None:
    message = _one_line_error(ckpt, hf_overrides={"latent_attention_config": {"cross_dim_head": 8}})
    assert "hf_overrides latent_attention_config.num_cross_heads * latent_attention_config.cross_dim_head is 4 * 8 = 32" in message
    assert "cross_attend_blocks.0.fn.to_q.weight" in message


def test_latent_widths_other_than_the_text_models_fail_in_one_line(ckpt: Path) -> None:
    message = _one_line_error(ckpt, hf_overrides={"latent_attention_config": {"latent_dim": 48, "hidden_dim": 48}})
    assert message.startswith("hf_overrides latent_attention_config latent_dim 48 and hidden_dim 48 must both be text_config.hidden_size 32")


def test_text_config_that_disagrees_with_the_tensors_fails_in_one_line(ckpt: Path, tmp_path: Path) -> None:
    other = _rewritten(ckpt, tmp_path, lambda c: c["text_config"].update(num_hidden_layers=3))
    assert _one_line_error(other) == "text_config: config.json num_hidden_layers is 3, but the weights hold 2 layers"


def test_another_text_model_is_refused(ckpt: Path, tmp_path: Path) -> None:
    other = _rewritten(ckpt, tmp_path, lambda c: c["text_config"].update(model_type="qwen2"))
    assert "a 'qwen2' text_config is not supported" in _one_line_error(other)


def test_a_tokenizer_without_an_eos_token_is_refused(ckpt: Path, tmp_path: Path) -> None:
    """The publisher ends every prompt with ``</s>``: a tokenizer that has no EOS token cannot."""
    other = tmp_path / "no-eos"
    shutil.copytree(ckpt, other)
    settings = json.loads((other / "tokenizer_config.json").read_text())
    settings.pop("eos_token", None)
    settings["pad_token"] = "<unk>"
    (other / "tokenizer_config.json").write_text(json.dumps(settings))
    (other / "special_tokens_map.json").unlink(missing_ok=True)
    assert _one_line_error(other) == "NV-Embed ends every prompt with the tokenizer's EOS token (</s>), and this tokenizer has none"
