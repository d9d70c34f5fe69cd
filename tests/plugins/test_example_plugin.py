"""The example plugin in ``plugins/poolkit-example-plugin``, installed with pip as users would.

Nothing here registers the plugin: poolkit must find it through its entry point. CI installs it
non-editable (``pip install ./plugins/poolkit-example-plugin``); without it the module is
skipped.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, distribution

import pytest
import torch
from safetensors.torch import load_file

try:
    distribution("poolkit-example-plugin")
except PackageNotFoundError:
    pytest.skip("poolkit-example-plugin is not installed", allow_module_level=True)
example = pytest.importorskip("poolkit_example_plugin")

import poolkit  # noqa: E402
from poolkit.contracts.batch import PackedBatch  # noqa: E402
from poolkit.plugins import registry  # noqa: E402

WORDS = ["hello", "world", "foo", "bar", "baz"]
DIM = 16


@pytest.fixture(scope="module")
def static_model(tmp_path_factory):
    return example.build_static_model(tmp_path_factory.mktemp("static"), WORDS, dim=DIM, seed=3)


def expected_embedding(model_dir, text: str, pooling: str) -> torch.Tensor:
    """The embedding computed by hand from the saved matrix and the tokenizer's ids."""
    from tokenizers import Tokenizer

    table = load_file(str(model_dir / "model.safetensors"))["embeddings"]
    ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text).ids
    vectors = table[ids]
    pooled = (vectors[0] + vectors[-1]) / 2 if pooling == "FIRST_LAST_AVG" else vectors.mean(0)
    return torch.nn.functional.normalize(pooled, dim=0)


def test_discovered_through_its_entry_point(fresh_plugins):
    infos = fresh_plugins.infos()

    assert infos["example"].as_dict() == {
        "name": "example",
        "distribution": "poolkit-example-plugin",
        "version": distribution("poolkit-example-plugin").version,
        "entry_point": "poolkit_example_plugin",
        "builtin": False,
        "status": "ok",
        "error": None,
        "provides": {
            "architecture": ["StaticEmbeddingModel"],
            "pooler": ["FIRST_LAST_AVG"],
            "activation": ["tanh"],
            "io_processor": ["token_weights"],
        },
    }
    assert registry("pooler").entry("first_last_avg").plugin == "example"
    assert registry("activation").get("tanh")(torch.tensor([0.5])).item() == pytest.approx(0.46211716)
    assert registry("architecture").get("StaticEmbeddingModel") is example.StaticEmbeddingModel


def test_disabled_by_the_block_list(fresh_plugins, monkeypatch):
    monkeypatch.setenv("POOLKIT_DISABLE_PLUGINS", "example")

    assert fresh_plugins.infos()["example"].status == "disabled"
    assert "FIRST_LAST_AVG" not in registry("pooler")


def test_first_last_avg_pooler_skips_excluded_prompt_tokens():
    hidden = torch.arange(14, dtype=torch.float32).view(7, 2)
    batch = PackedBatch.from_sequences([[1, 2, 3, 4], [5, 6, 7]], pool_skip=[2, 0])

    pooled = example.FirstLastAvgPooler()(hidden, batch)

    # sequence 0: tokens 2 and 3 (prompt tokens 0-1 skipped); sequence 1: tokens 4 and 6
    assert pooled.tolist() == [[5.0, 6.0], [10.0, 11.0]]


def test_static_model_loads_either_weight_name(static_model):
    from transformers import PretrainedConfig

    config = PretrainedConfig.from_dict(json.loads((static_model / "config.json").read_text()))
    table = load_file(str(static_model / "model.safetensors"))["embeddings"]
    for name in ("embeddings", "embeddings.weight"):
        model = example.StaticEmbeddingModel(config)
        model.load_weights([(name, table)])
        hidden = model(PackedBatch.from_sequences([[2, 0, 5]]))
        assert torch.equal(hidden, table[[2, 0, 5]])


@pytest.mark.parametrize(
    ("pooler_config", "pooling", "text"),
    [
        ({"pooling_type": "FIRST_LAST_AVG"}, "FIRST_LAST_AVG", "hello world FOO"),
        (None, "MEAN", "Hello unseen-word bar baz"),
    ],
    ids=["first-last-avg", "architecture-default-mean"],
)
def test_llm_embeds_with_the_plugin(fresh_plugins, static_model, pooler_config, pooling, text):
    llm = poolkit.LLM(model=str(static_model), pooler_config=pooler_config)

    (out,) = llm.embed(text)

    got = torch.tensor(out.outputs.embedding)
    want = expected_embedding(static_model, text, pooling)
    assert got.shape == (DIM,)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_cli_lists_the_plugin(fresh_plugins):
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    result = CliRunner().invoke(app, ["plugins"])

    assert result.exit_code == 0, result.output
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert listed["example"]["distribution"] == "poolkit-example-plugin"
    assert listed["example"]["status"] == "ok"
    assert listed["example"]["provides"]["pooler"] == ["FIRST_LAST_AVG"]


TOKEN_TEXT = "Hello unseen bar"


def check_token_weights(model_dir, got) -> None:
    """``token_weights``' answer for ``TOKEN_TEXT``: the tokenizer's ids and token text, and each
    token's weight, the norm of its row of the saved matrix."""
    from tokenizers import Tokenizer

    table = load_file(str(model_dir / "model.safetensors"))["embeddings"]
    encoding = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(TOKEN_TEXT)
    assert encoding.tokens == ["hello", "[UNK]", "bar"]
    ((text, tokens),) = [(r["text"], r["tokens"]) for r in got]
    assert text == TOKEN_TEXT
    assert [(t["position"], t["id"], t["token"]) for t in tokens] == [(i, *t) for i, t in enumerate(zip(encoding.ids, encoding.tokens))]
    assert [t["weight"] for t in tokens] == pytest.approx(table[encoding.ids].norm(dim=-1).tolist(), rel=1e-2)


@pytest.fixture
def token_weights(fresh_plugins, static_model):
    return poolkit.LLM(model=str(static_model), io_processor_plugin="token_weights")


def test_token_weights_reads_the_tokenizer_from_its_context(token_weights, static_model):
    (out,) = token_weights.encode({"data": TOKEN_TEXT}, pooling_task="plugin")

    check_token_weights(static_model, out.outputs)
    assert registry("io_processor").get("token_weights").context is None
    with pytest.raises(poolkit.InvalidRequest, match="token_weights data must be a non-empty string"):
        token_weights.encode({"data": [""]}, pooling_task="plugin")


def test_token_weights_through_the_server(token_weights, static_model):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    with TestClient(create_app(token_weights)) as client:
        response = client.post("/pooling", json={"data": [TOKEN_TEXT]})

    assert response.status_code == 200, response.text
    check_token_weights(static_model, response.json()["data"])


def test_token_weights_through_the_cli(fresh_plugins, static_model):
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    args = ["encode", "--task", "plugin", "--model", str(static_model), "--io-processor-plugin", "token_weights", TOKEN_TEXT]
    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["index"] == 0
    check_token_weights(static_model, row["data"])
