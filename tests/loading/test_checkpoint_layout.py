"""The ``poolkit_checkpoint_layout`` seam: a plugin says where a folder keeps its parts, and the
load reads them there (config, weights, tokenizer; a config given for a folder without
``config.json``; a merge run on the loaded weights), ``poolkit info`` says which layout it read."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from poolkit import LLM
from poolkit.contracts.errors import PluginError

TEXTS = ["a layout names the folders", "hello"]

SOURCE = textwrap.dedent(
    """
    from pathlib import Path

    import torch

    from poolkit import hookimpl
    from poolkit.contracts.checkpoint import Layout


    def doubled_embeddings(architecture):
        with torch.no_grad():
            for name, param in architecture.named_parameters():
                if name.endswith("word_embeddings.weight"):
                    param.mul_(2)


    @hookimpl
    def poolkit_checkpoint_layout(path):
        path = Path(path)
        if (path / "model").is_dir():
            return Layout("model/ subfolder", "model/config.json", path / "model", path / "model")
        if (path / "weights").is_dir():
            config = {**__import__("json").loads((path / "config.txt").read_text()), "architectures": ["BertModel"]}
            return Layout("weights/ with config.txt", "config.txt", path / "weights", path / "vocab",
                          config=config, merge=doubled_embeddings)
        if (path / "odd").is_dir():
            return "not a layout"
        return None
    """
)


@pytest.fixture
def layouts(fresh_plugins):
    fresh_plugins.install("poolkit-layouts", "0.1", {"layouts": "poolkit_fake_layouts"}, {"poolkit_fake_layouts": SOURCE})
    return fresh_plugins


def _embed(path: Path) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in LLM(str(path)).embed(TEXTS)])


def test_a_layout_reads_the_folders_it_names(layouts, tiny_encoders, tmp_path: Path) -> None:
    shutil.copytree(tiny_encoders["bert"], tmp_path / "nested" / "model")
    llm = LLM(str(tmp_path / "nested"))
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    torch.testing.assert_close(got, _embed(tiny_encoders["bert"]), atol=0, rtol=0)
    assert llm.model.describe()["layout"] == {"value": "model/ subfolder", "source": "model/config.json"}
    assert layouts.manager().infos["layouts"].provides["layouts"] == ["poolkit_checkpoint_layout"]


def test_a_layout_gives_the_config_and_changes_the_loaded_weights(layouts, tiny_encoders, tmp_path: Path) -> None:
    """A folder without config.json: the layout's config stands for it, and its merge runs on the weights."""
    source = tiny_encoders["bert"]
    folder = tmp_path / "split"
    (folder / "weights").mkdir(parents=True)
    shutil.copy(source / "model.safetensors", folder / "weights")
    shutil.copytree(source, folder / "vocab", ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    (folder / "config.txt").write_text((source / "config.json").read_text())
    llm = LLM(str(folder))
    assert llm.model.describe()["layout"]["value"] == "weights/ with config.txt"
    doubled = tmp_path / "doubled"
    shutil.copytree(source, doubled)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(doubled / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("word_embeddings.weight"))
    tensors[name] = tensors[name] * 2
    save_file(tensors, str(doubled / "model.safetensors"))
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    torch.testing.assert_close(got, _embed(doubled), atol=1e-5, rtol=1e-5)


def test_a_plain_folder_is_shown_as_one(tiny_encoders) -> None:
    assert LLM(str(tiny_encoders["bert"])).model.describe()["layout"] == {"value": "Hugging Face folder", "source": "config.json"}


def test_a_layout_hook_answering_something_else_is_named(layouts, tmp_path: Path) -> None:
    (tmp_path / "odd").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({}))
    with pytest.raises(PluginError, match="poolkit_checkpoint_layout hook answered str, not a Layout"):
        LLM(str(tmp_path))
