"""An absurd or inconsistent config.json is refused in one line, before the model is built.

Each case is a tiny model whose config.json is edited afterwards: a million layers over two layers
of weights, a hidden size of ten million, no attention heads, a negative size. The loader must
answer from the config and the safetensors header alone: building the architecture is made to
fail in these tests, so a check that came too late (after gigabytes were allocated) fails them
instead of hanging them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from poolkit import LLM, ModelLoadError
from poolkit.contracts.architecture import Architecture
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.entrypoints.cli import app
from poolkit.loading.weights import checkpoint_shapes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    from tiny_models import build_clip, build_encoder, build_modernbert, build_qwen, build_transformers_model

    root = tmp_path_factory.mktemp("config-checks")
    return {
        "bert": build_encoder(root / "bert", "bert"),
        "qwen3": build_qwen(root / "qwen3", "qwen3"),
        "qwen2": build_qwen(root / "qwen2", "qwen2"),
        "modernbert": build_modernbert(root / "modernbert", "embed"),
        "clip": build_clip(root / "clip"),
        "distilbert": build_transformers_model(root / "distilbert", "DistilBertModel"),
        "llama": build_transformers_model(root / "llama", "LlamaModel"),  # native (the decoder family)
        "phi3": build_transformers_model(root / "phi3", "Phi3Model"),
    }


def edited(source: Path, target: Path, **changes: object) -> Path:
    """A copy of the model ``source`` whose config.json has ``changes`` (``text_config__x`` for sub-configs)."""
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    for key, value in changes.items():
        sub, _, name = key.rpartition("__")
        (config[sub] if sub else config)[name] = value
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.fixture
def nothing_built(monkeypatch):
    """Building any architecture fails the test: the config must be refused before."""

    def built(self, config):
        raise AssertionError(f"{type(self).__name__} was built from a config that should have been refused")

    monkeypatch.setattr(Architecture, "__init__", built)


CASES = {
    # model, config.json changes, the one-line message
    "bert-million-layers": ("bert", {"num_hidden_layers": 1_000_000},
                            "config.json num_hidden_layers is 1000000, but the weights hold 2 layers"),
    "bert-huge-hidden": ("bert", {"hidden_size": 10_000_000},
                         "config.json hidden_size is 10000000, but the weights hold 32 "
                         "('embeddings.word_embeddings.weight' has shape (112, 32))"),
    "bert-no-heads": ("bert", {"num_attention_heads": 0},
                      "config.json num_attention_heads is 0; it must be a positive integer"),
    "bert-negative-size": ("bert", {"intermediate_size": -64},
                           "config.json intermediate_size is -64; it must be a positive integer"),
    "bert-float-size": ("bert", {"hidden_size": 32.5}, "config.json hidden_size is 32.5; it must be a positive integer"),
    "bert-heads-do-not-divide": ("bert", {"num_attention_heads": 3},
                                 "config.json hidden_size 32 is not a multiple of num_attention_heads 3"),
    "bert-huge-vocab": ("bert", {"vocab_size": 10**9},
                        "config.json vocab_size is 1000000000, but the weights hold 112 "
                        "('embeddings.word_embeddings.weight' has shape (112, 32))"),
    "bert-fewer-layers": ("bert", {"num_hidden_layers": 1},
                          "config.json num_hidden_layers is 1, but the weights hold 2 layers; "
                          "to run only the first 1, set num_hidden_layers with hf_overrides"),
    "qwen3-million-layers": ("qwen3", {"num_hidden_layers": 1_000_000, "layer_types": None},
                             "config.json num_hidden_layers is 1000000, but the weights hold 2 layers"),
    "qwen3-million-heads": ("qwen3", {"num_attention_heads": 1_000_000, "num_key_value_heads": 1_000_000},
                            "config.json num_attention_heads * head_dim is 1000000 * 8 = 8000000, but the weights hold 32 "
                            "('layers.0.self_attn.q_proj.weight' has shape (32, 32))"),
    "qwen3-kv-heads": ("qwen3", {"num_key_value_heads": 3},
                       "config.json num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    "qwen2-heads-do-not-divide": ("qwen2", {"num_attention_heads": 5, "num_key_value_heads": 5},
                                  "config.json hidden_size 32 is not a multiple of num_attention_heads 5"),
    "llama-no-heads": ("llama", {"num_attention_heads": 0},
                       "config.json num_attention_heads is 0; it must be a positive integer"),
    "llama-huge-vocab": ("llama", {"vocab_size": 10**9},
                         "config.json vocab_size is 1000000000, but the weights hold 112 "
                         "('embed_tokens.weight' has shape (112, 32))"),
    "qwen2-huge-intermediate": ("qwen2", {"intermediate_size": 10**8},
                                "config.json intermediate_size is 100000000, but the weights hold 64 "
                                "('layers.0.mlp.gate_proj.weight' has shape (64, 32))"),
    "modernbert-million-layers": ("modernbert", {"num_hidden_layers": 1_000_000, "layer_types": None},
                                  "config.json num_hidden_layers is 1000000, but the weights hold 4 layers"),
    "modernbert-no-global-layers": ("modernbert", {"global_attn_every_n_layers": 0},
                                    "config.json global_attn_every_n_layers is 0; it must be a positive integer"),
    "modernbert-huge-hidden": ("modernbert", {"hidden_size": 10_000_000},
                               "config.json hidden_size is 10000000, but the weights hold 32 "
                               "('embeddings.tok_embeddings.weight' has shape (112, 32))"),
    "clip-million-text-layers": ("clip", {"text_config__num_hidden_layers": 1_000_000},
                                 "config.json text_config.num_hidden_layers is 1000000, but the weights hold 2 layers"),
    "clip-no-vision-heads": ("clip", {"vision_config__num_attention_heads": 0},
                             "config.json vision_config.num_attention_heads is 0; it must be a positive integer"),
    "clip-huge-images": ("clip", {"vision_config__image_size": 100_000},
                         "config.json vision_config.image_size 100000 and patch_size 8 make 156250001 positions, but the "
                         "weights hold 17 ('vision_model.embeddings.position_embedding.weight' has shape (17, 32))"),
    "clip-huge-projection": ("clip", {"projection_dim": 10_000_000},
                             "config.json projection_dim is 10000000, but the weights hold 16 "
                             "('text_projection.weight' has shape (16, 32))"),
    # the transformers fallback, where config.json names the fields its own way
    "fallback-million-layers": ("distilbert", {"n_layers": 1_000_000},
                                "config.json n_layers is 1000000, but the weights hold 2 layers"),
    "fallback-huge-hidden": ("distilbert", {"dim": 10_000_000},
                             "config.json dim is 10000000, but the weights hold 32 "
                             "('embeddings.word_embeddings.weight' has shape (112, 32))"),
    "fallback-huge-ffn": ("distilbert", {"hidden_dim": 10**8},
                          "config.json hidden_dim is 100000000, but the weights hold 64 "
                          "('transformer.layer.0.ffn.lin1.weight' has shape (64, 32))"),
    "fallback-no-heads": ("distilbert", {"n_heads": 0}, "config.json n_heads is 0; it must be a positive integer"),
    "fallback-config-divides-by-heads": ("phi3", {"num_attention_heads": 0},
                                         "config.json num_attention_heads is 0; it must be a positive integer"),
    "fallback-negative-size": ("phi3", {"hidden_size": -32},
                               "config.json hidden_size is -32; it must be a positive integer"),
}


@pytest.mark.parametrize(("model", "changes", "message"), CASES.values(), ids=CASES.keys())
def test_an_absurd_config_is_one_line_naming_the_field(tiny, tmp_path, nothing_built, model, changes, message):
    path = edited(tiny[model], tmp_path / "model", **changes)

    with pytest.raises(ModelLoadError) as info:
        LLM(str(path), dtype="float32")

    assert str(info.value) == message


def test_the_cli_prints_one_error_line(tiny, tmp_path, nothing_built):
    path = edited(tiny["bert"], tmp_path / "model", num_hidden_layers=1_000_000)

    result = CliRunner().invoke(app, ["embed", "--model", str(path), "hello"])

    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "Error: config.json num_hidden_layers is 1000000, but the weights hold 2 layers"
    assert "Traceback" not in result.stderr


def test_a_config_set_by_hf_overrides_is_named_so(tiny, nothing_built):
    with pytest.raises(ModelLoadError, match=r"^hf_overrides num_hidden_layers is 1000000, but the weights hold 2 layers$"):
        LLM(str(tiny["bert"]), hf_overrides={"num_hidden_layers": 1_000_000})
    with pytest.raises(ModelLoadError, match=r"^hf_overrides text_config\.hidden_size is 10000000, but the weights hold 32"):
        LLM(str(tiny["clip"]), hf_overrides={"text_config": {"hidden_size": 10_000_000}})


@pytest.mark.parametrize("model", ["bert", "qwen3", "modernbert"])
def test_fewer_layers_on_purpose_through_hf_overrides(tiny, model):
    full = LLM(str(tiny[model]), dtype="float32")
    first = LLM(str(tiny[model]), dtype="float32", hf_overrides={"num_hidden_layers": 1, "layer_types": None})

    assert full.model.hf_config.num_hidden_layers > 1 and first.model.hf_config.num_hidden_layers == 1
    a, b = (torch.tensor(llm.embed("hello world")[0].outputs.embedding) for llm in (full, first))
    assert a.shape == b.shape and not torch.allclose(a, b)


@pytest.mark.parametrize("model", sorted({"bert", "qwen3", "qwen2", "modernbert", "clip", "distilbert", "llama", "phi3"}))
def test_the_unedited_models_load(tiny, model):
    assert LLM(str(tiny[model]), dtype="float32").embed("hello world")[0].outputs.embedding


def test_shapes_come_from_the_header_without_loading_a_tensor(tiny, monkeypatch):
    from safetensors import safe_open

    def no_tensor(*args, **kwargs):
        raise AssertionError("a tensor was loaded")

    with safe_open(str(tiny["bert"] / "model.safetensors"), framework="pt") as f:
        monkeypatch.setattr(type(f), "get_tensor", no_tensor)
    shapes = checkpoint_shapes([tiny["bert"] / "model.safetensors"])

    assert shapes["embeddings.word_embeddings.weight"] == (112, 32)
    assert shapes["encoder.layer.1.output.dense.weight"] == (32, 64)


def test_pickle_checkpoint_shapes(tiny, tmp_path):
    state = {"embed.weight": torch.zeros(7, 3), "layers.0.w": torch.zeros(2)}
    torch.save(state, tmp_path / "pytorch_model.bin")

    assert checkpoint_shapes([tmp_path / "pytorch_model.bin"]) == {"embed.weight": (7, 3), "layers.0.w": (2,)}


def test_a_corrupt_safetensors_header_is_one_line(tiny, tmp_path):
    path = edited(tiny["bert"], tmp_path / "model")
    (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")

    with pytest.raises(ModelLoadError, match=r"^cannot read the safetensors file .*model\.safetensors: ") as info:
        LLM(str(path))
    assert "\n" not in str(info.value)


# -- the declarations, as a plugin's architecture uses them ---------------------------------------


class Declared(Architecture):
    config_checks = ConfigChecks(
        sizes=("hidden_size", "num_hidden_layers", "sub.width"),
        multiples=(("hidden_size", "num_heads"),),
        layers={"num_hidden_layers": r"(?:^|\.)blocks\.(\d+)\."},
        shapes={"embed.weight": ("vocab_size", "hidden_size"), "blocks.0.up.weight": ((4, "hidden_size"), None)},
    )


SHAPES = {"model.embed.weight": (10, 8), "model.blocks.0.up.weight": (32, 8), "model.blocks.2.up.weight": (32, 8)}


def config(**values):
    base = {"hidden_size": 8, "num_hidden_layers": 3, "num_heads": 2, "vocab_size": 10, "sub": {"width": 4}}
    return type("Config", (), {**base, **values})()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, None),
        ({"num_heads": None, "vocab_size": None}, None),  # fields a config lacks are not checked
        ({"sub": {"width": 0}}, "config.json sub.width is 0; it must be a positive integer"),
        ({"num_heads": 3}, "config.json hidden_size 8 is not a multiple of num_heads 3"),
        ({"num_hidden_layers": 4}, "config.json num_hidden_layers is 4, but the weights hold 3 layers"),
        ({"vocab_size": 11}, "config.json vocab_size is 11, but the weights hold 10 ('model.embed.weight' has shape (10, 8))"),
        ({"hidden_size": 16, "num_heads": 1},
         "config.json hidden_size is 16, but the weights hold 8 ('model.embed.weight' has shape (10, 8))"),
    ],
)
def test_config_checks_declarations(values, message):
    if message is None:
        Declared.check_config(config(**values), SHAPES)
    else:
        with pytest.raises(ModelLoadError) as info:
            Declared.check_config(config(**values), SHAPES)
        assert str(info.value) == message


def test_config_checks_products_and_unknown_shapes():
    checks = ConfigChecks(shapes={"blocks.0.up.weight": ((4, "hidden_size"), None)})
    with pytest.raises(ModelLoadError, match=r"^config.json 4 \* hidden_size is 4 \* 9 = 36, but the weights hold 32 "):
        checks.check(config(hidden_size=9), SHAPES)
    Declared.check_config(config(num_hidden_layers=400), None)  # no shapes known: sizes and multiples only
    with pytest.raises(ModelLoadError, match="hf_overrides num_hidden_layers is 4"):
        Declared.check_config(config(num_hidden_layers=4), SHAPES, {"num_hidden_layers"})
    Declared.check_config(config(num_hidden_layers=2), SHAPES, {"num_hidden_layers"})  # fewer, on purpose
