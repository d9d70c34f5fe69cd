"""pplx-embed-v1 (Perplexity): a Qwen3 body attending both ways, mean pooling, the publisher's int8
quantizer; served natively from the files as published (``tiny_pplx.build_pplx``, the source of every
key there), none of the checkpoint's code run.

The reference is the publisher's computation written out here on transformers' ``Qwen3Model``:
``modeling.py``'s ``PPLXQwen3Model`` (``post_init``: every layer's ``is_causal`` off; ``forward``: the
mask of ``create_causal_mask`` with ``or_mask_function=bidirectional_mask_function(attention_mask)``,
so only padding is hidden), then the sentence-transformers pipeline of ``modules.json``: one padded
batch, ``Pooling`` (the mean over the attention mask), ``st_quantize.py``'s
``FlexibleQuantizer.forward`` at its default ``quantization="int8"`` (``Int8TanhQuantizer``:
``clamp(round(tanh(x) * 127), -128, 127)``). vLLM has no architecture of that name to compare with.

Tolerances (fp32): the pooled float vectors within 1e-4 (DESIGN §7); the quantized ones (integers)
equal, but for a step of 1 where the float tolerance allows it: where the reference's
``tanh(x) * 127`` lies within ``127 * 1e-4 * (1 - tanh(x)**2)`` (how far a move of 1e-4 in ``x`` carries
it) of a rounding step (:func:`assert_quantized_close`).
"""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from tiny_pplx import REMOTE_CODE, build_pplx

from poolkit import LLM, PoolingParams
from poolkit.contracts.errors import InvalidRequest, ModelLoadError

ATOL = 1e-4
TEXTS = ["paris is the capital of france", "hello", "the quick brown fox jumps over the lazy dog " * 2]


@pytest.fixture(scope="module")
def pplx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pplx(tmp_path_factory.mktemp("pplx") / "pplx-embed-v1-0.6b")


def variant(path: Path, tmp_path: Path, drop: tuple[str, ...] = (), **edits: Callable[[Any], Any]) -> Path:
    """A copy of the checkpoint at ``path`` without the files ``drop`` names, each JSON file that
    ``edits`` names (``"1_Pooling/config.json"`` as ``1_Pooling__config_json``) rewritten by its function."""
    other = tmp_path / "variant"
    shutil.copytree(path, other)
    for name in drop:
        target = other / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    for key, edit in edits.items():
        target = other / key.replace("__", "/").replace("_json", ".json")
        target.write_text(json.dumps(edit(json.loads(target.read_text()))))
    return other


# -- the reference: the publisher's modeling.py and sentence-transformers pipeline ---------------


@lru_cache(maxsize=2)
def publisher_model(path: str, bidirectional: bool = True) -> tuple[Any, Any]:
    """``modeling.py``'s ``PPLXQwen3Model`` on transformers' ``Qwen3Model`` (its config a
    ``Qwen3Config``, as ``configuration.py``'s ``PPLXQwen3Config`` is), and the tokenizer.
    ``bidirectional=False`` is the plain causal ``Qwen3Model``, to show the difference."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model
    from transformers.masking_utils import create_causal_mask

    def bidirectional_mask_function(attention_mask: torch.Tensor | None) -> Callable:
        def inner_mask(batch_idx: int, head_idx: int, q_idx: int, kv_idx: int) -> torch.Tensor:
            if attention_mask is None:
                return torch.ones((), dtype=torch.bool)
            return attention_mask[batch_idx, kv_idx].to(torch.bool)

        return inner_mask

    class PPLXQwen3Model(Qwen3Model):
        def post_init(self) -> None:
            super().post_init()
            for layer in self.layers:
                layer.self_attn.is_causal = False

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
            inputs_embeds = self.embed_tokens(input_ids)
            mask = create_causal_mask(
                config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=None,
                position_ids=None, or_mask_function=bidirectional_mask_function(attention_mask),
            )
            return super().forward(inputs_embeds=inputs_embeds, attention_mask={"full_attention": mask})

    raw = json.loads((Path(path) / "config.json").read_text())
    for key in ("architectures", "auto_map", "model_type"):
        raw.pop(key)
    cls = PPLXQwen3Model if bidirectional else Qwen3Model
    model = cls.from_pretrained(path, config=Qwen3Config(**raw), dtype=torch.float32, attn_implementation="eager")
    return model.eval(), AutoTokenizer.from_pretrained(path)


def publisher_pooled(path: Path, texts: list[str], bidirectional: bool = True) -> torch.Tensor:
    """sentence-transformers' ``Transformer`` then ``Pooling`` (``pooling_mode_mean_tokens``): one
    padded batch, the mean of each text's hidden states over its attention mask."""
    model, tok = publisher_model(str(path), bidirectional)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def flexible_quantizer(pooled: torch.Tensor) -> torch.Tensor:
    """``st_quantize.py``: ``FlexibleQuantizer.forward(features)`` with ``quantization="int8"``, its
    ``Int8TanhQuantizer`` (``hard=True``: the rounded values, the straight-through term adding zero)."""
    return torch.clamp(torch.round(torch.tanh(pooled) * 127), -128, 127)


def embeddings(llm: LLM, texts: list[str], **kwargs: Any) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in llm.embed(texts, **kwargs)])


def assert_quantized_close(got: torch.Tensor, pooled: torch.Tensor) -> None:
    """``got`` is the quantizer's output of the reference's ``pooled`` vectors: equal, or 1 apart where
    a move of :data:`ATOL` in ``pooled`` could carry ``tanh(x) * 127`` across a rounding step (``k + 0.5``);
    such places are few, so the comparison is not vacuous."""
    t = torch.tanh(pooled.double())
    scaled, slack = t * 127, 127 * ATOL * (1 - t**2)
    near_step = (scaled - scaled.floor() - 0.5).abs() <= slack
    diff = (got.double() - flexible_quantizer(pooled).double()).abs()
    assert near_step.double().mean() < 0.1
    assert torch.all(diff[~near_step] == 0) and torch.all(diff[near_step] <= 1), diff.max()


# -- the tests ------------------------------------------------------------------------------------


def test_loads_natively_and_names_its_layout(pplx: Path) -> None:
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    llm = LLM(str(pplx))
    info = llm.model.describe()
    assert info["architecture"] == "PPLXQwen3Model" and info["implementation"] == "native"
    assert info["layout"] == {
        "value": "pplx-embed-v1 (bidirectional Qwen3, mean pooling, FlexibleQuantizer int8)",
        "source": "config.json architectures PPLXQwen3Model; modules.json st_quantize.FlexibleQuantizer",
    }
    assert info["use_activation"]["value"] is False  # modules.json has no Normalize: unnormalised, as published
    assert not llm.model.architecture.causal
    result = CliRunner().invoke(app, ["info", str(pplx)])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["layout"] == info["layout"]


def test_embed_is_the_publishers_int8_pipeline(pplx: Path) -> None:
    want_pooled = publisher_pooled(pplx, TEXTS)
    llm = LLM(str(pplx))
    got = embeddings(llm, TEXTS)
    assert_quantized_close(got, want_pooled)
    assert got.abs().max() <= 127 and torch.equal(got, got.round())
    # before the quantizer: the mean of the bidirectional body's hidden states
    tokens = llm.encode(TEXTS, pooling_task="token_embed", pooling_params=PoolingParams(use_activation=False))
    pooled = torch.stack([torch.as_tensor(o.outputs.data).float().mean(0) for o in tokens])
    assert (pooled - want_pooled).abs().max() <= ATOL


def test_attention_is_bidirectional(pplx: Path) -> None:
    """A token's state depends on the tokens after it: the causal body's mean is far off."""
    tokens = LLM(str(pplx)).encode(TEXTS[:1], pooling_task="token_embed", pooling_params=PoolingParams(use_activation=False))
    pooled = torch.as_tensor(tokens[0].outputs.data).float().mean(0)
    assert (pooled - publisher_pooled(pplx, TEXTS[:1], bidirectional=False)[0]).abs().max() > 1e-2


def test_use_activation_normalises_the_quantized_vector(pplx: Path) -> None:
    """sentence-transformers' ``normalize_embeddings=True`` after the modules; ``dimensions`` is
    refused, as the checkpoint declares no matryoshka widths."""
    llm = LLM(str(pplx))
    raw = embeddings(llm, TEXTS)
    assert_quantized_close(raw, publisher_pooled(pplx, TEXTS))
    want = F.normalize(raw, dim=-1)  # L2 of the quantized vector (not the quantized L2 of the mean)
    assert (embeddings(llm, TEXTS, pooling_params=PoolingParams(use_activation=True)) - want).abs().max() <= ATOL
    with_default = LLM(str(pplx), pooler_config={"use_activation": True})
    assert (embeddings(with_default, TEXTS) - want).abs().max() <= ATOL
    with pytest.raises(InvalidRequest, match="does not support matryoshka representation"):
        embeddings(llm, TEXTS, pooling_params=PoolingParams(dimensions=8))


def test_requests_of_both_kinds_in_one_batch(pplx: Path) -> None:
    """Raw and normalised requests run in one engine batch (the server batcher's path) give what
    each gives alone."""
    llm = LLM(str(pplx))
    prepared = [llm.prepare(TEXTS, PoolingParams(use_activation=on), pooling_task="embed") for on in (False, True)]
    prompts = [prompt for _, parsed, _ in prepared for prompt in parsed]
    params = [param for _, _, checked in prepared for param in checked]
    together = torch.stack([row.float() for row in llm.run(llm.model.task("embed"), prompts, params).rows()])
    alone = torch.cat([embeddings(llm, TEXTS, pooling_params=PoolingParams(use_activation=on)) for on in (False, True)])
    assert (together - alone).abs().max() <= 1e-5


def test_sentence_transformers_encode(pplx: Path) -> None:
    """The model card's call, ``SentenceTransformer(...).encode(texts)``, and its ``normalize_embeddings``
    and ``truncate_dim`` (after the modules, as sentence-transformers applies them)."""
    from poolkit import SentenceTransformer

    pooled = publisher_pooled(pplx, TEXTS)
    model = SentenceTransformer(str(pplx))
    got = torch.as_tensor(model.encode(TEXTS))
    assert_quantized_close(got, pooled)
    normalised = torch.as_tensor(model.encode(TEXTS, normalize_embeddings=True))
    assert (normalised - F.normalize(got, dim=-1)).abs().max() <= ATOL
    assert_quantized_close(torch.as_tensor(model.encode(TEXTS, truncate_dim=8)), pooled[:, :8])
    assert model.get_embedding_dimension() == 32


def test_without_sentence_transformers_files_the_mean_is_normalised(pplx: Path, tmp_path: Path) -> None:
    """Only the transformers files (config.json, the weights, the tokenizer): no quantizer, the
    ``embed`` task's defaults over the body's mean."""
    bare = variant(pplx, tmp_path, drop=("modules.json", "1_Pooling", "st_quantize.py"))
    llm = LLM(str(bare))
    assert llm.model.describe()["layout"]["value"] == "pplx-embed-v1 (bidirectional Qwen3, mean pooling; no quantizer in modules.json)"
    want = F.normalize(publisher_pooled(pplx, TEXTS), dim=-1)
    assert (embeddings(llm, TEXTS) - want).abs().max() <= ATOL


def test_the_publishers_code_files_are_never_run(pplx: Path) -> None:
    """Each stand-in raises when run, and the model loads and embeds all the same."""
    for name in REMOTE_CODE:
        assert "raise RuntimeError" in (pplx / name).read_text()
    assert len(LLM(str(pplx)).embed(TEXTS[:1])) == 1


@pytest.mark.parametrize(
    "edits, message",
    [
        ({"config_json": lambda c: {k: v for k, v in c.items() if k != "head_dim"}},
         r"^config.json gives no head_dim, so heads are hidden_size / num_attention_heads = 8 wide, but the checkpoint's "
         r"layers.0.self_attn.q_norm.weight is \(16,\)$"),
        ({"config_json": lambda c: {**c, "use_bidirectional_attention": False}},
         r"^PPLXQwen3Model attends both ways \(the publisher's modeling.py\), but the config says use_bidirectional_attention: false$"),
        ({"1_Pooling__config_json": lambda c: {**c, "word_embedding_dimension": 64}},
         r"^1_Pooling/config.json says word_embedding_dimension 64, but config.json's hidden_size is 32$"),
        ({"modules_json": lambda m: [m[0], m[2], m[1]]},
         r"^modules.json runs st_quantize.FlexibleQuantizer before any Pooling module; it quantizes the pooled vector$"),
    ],
    ids=["head_dim-vs-tensors", "causal-config", "pooling-width", "quantizer-before-pooling"],
)
def test_a_checkpoint_that_contradicts_itself_fails_in_one_line(pplx: Path, tmp_path: Path, edits: dict, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message) as caught:
        LLM(str(variant(pplx, tmp_path, **edits)))
    assert "\n" not in str(caught.value)
