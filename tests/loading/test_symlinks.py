"""A model directory's symlinks that lead outside it are refused unless the user opts in.

Links inside the directory stay fine, and so does a Hugging Face hub cache snapshot, whose files
are links into the repository's own ``blobs/`` folder; the hub cache is faked here with tiny
models laid out as ``huggingface_hub`` lays them out.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poolkit import LLM, ModelLoadError
from poolkit.config.settings import EngineArgs
from poolkit.entrypoints.cli import app


def linked_copy(source: Path, target: Path, only: tuple[str, ...] | None = None) -> Path:
    """``target`` holding ``source``'s files, those named in ``only`` (default: all) as absolute symlinks."""
    target.mkdir()
    for file in sorted(source.iterdir()):
        if only is None or file.name in only:
            (target / file.name).symlink_to(file.resolve())
        elif file.is_dir():
            shutil.copytree(file, target / file.name)
        else:
            shutil.copy(file, target / file.name)
    return target


def hub_cache(cache: Path, repo_id: str, model: Path, revision: str = "0" * 40) -> Path:
    """Lay ``model`` out as huggingface_hub caches a download; returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for file in sorted(p for p in model.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / file.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))  # ../../blobs/<sha>, as the hub writes it
    return snapshot


@pytest.fixture(scope="module")
def bert(tiny_encoders) -> Path:
    return tiny_encoders["bert"]


@pytest.fixture(scope="module")
def reference(bert) -> list[float]:
    return LLM(str(bert), dtype="float32").embed("hello world")[0].outputs.embedding


def embedding(path: Path | str, **settings) -> list[float]:
    return LLM(str(path), dtype="float32", **settings).embed("hello world")[0].outputs.embedding


@pytest.mark.parametrize(
    ("only", "named"),
    [(None, "config.json"), (("model.safetensors",), "model.safetensors"), (("tokenizer.json",), "tokenizer.json")],
    ids=["every-file", "weights", "tokenizer"],
)
def test_a_symlink_out_of_the_model_directory_is_refused(bert, tmp_path, only, named):
    model = linked_copy(bert, tmp_path / "model", only)

    with pytest.raises(ModelLoadError) as info:
        LLM(str(model))

    message = str(info.value)
    assert message == (
        f"{named} in the model directory {model} is a symlink to {(bert / named).resolve()}, outside the directory; "
        "poolkit does not follow it unless you allow it with allow_external_symlinks=True (--allow-external-symlinks)"
    )


def test_allow_external_symlinks_follows_them(bert, tmp_path, reference):
    model = linked_copy(bert, tmp_path / "model")

    assert embedding(model, allow_external_symlinks=True) == pytest.approx(reference)


def test_the_cli_refuses_in_one_line_and_has_the_option(bert, tmp_path):
    model = linked_copy(bert, tmp_path / "model")

    refused = CliRunner().invoke(app, ["embed", "--model", str(model), "hello world"])
    allowed = CliRunner().invoke(app, ["embed", "--model", str(model), "--allow-external-symlinks", "hello world"])

    assert refused.exit_code == 1 and refused.stdout == ""
    assert refused.stderr.startswith("Error: config.json in the model directory ") and "Traceback" not in refused.stderr
    assert allowed.exit_code == 0, allowed.stderr
    assert "embedding" in allowed.stdout


def test_the_setting_is_declared_once_with_help():
    field = EngineArgs.model_fields["allow_external_symlinks"]
    assert field.default is False and "outside" in field.description
    assert EngineArgs(allow_external_symlinks=True).identity() == {"allow_external_symlinks": True}


def test_symlinks_inside_the_directory_are_fine(bert, tmp_path, reference):
    model = tmp_path / "model"
    shutil.copytree(bert, model / "files")
    for file in (model / "files").iterdir():
        (model / file.name).symlink_to(Path("files") / file.name)  # relative, inside
    (model / "weights").symlink_to("files", target_is_directory=True)

    assert embedding(model) == pytest.approx(reference)


def test_a_linked_model_directory_itself_is_fine(bert, tmp_path, reference):
    (tmp_path / "alias").symlink_to(bert, target_is_directory=True)

    assert embedding(tmp_path / "alias") == pytest.approx(reference)


def test_links_out_of_a_subfolder_and_dangling_or_looping_links_are_refused(bert, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(bert, model)
    (model / "1_Pooling").mkdir()
    (model / "1_Pooling" / "config.json").symlink_to(tmp_path / "elsewhere.json")  # dangling, outside
    with pytest.raises(ModelLoadError, match=r"^1_Pooling/config\.json in the model directory .* is a symlink to "):
        LLM(str(model))

    shutil.rmtree(model / "1_Pooling")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (model / "extra.json").symlink_to(tmp_path / "loop")
    with pytest.raises(ModelLoadError, match=r"^extra\.json in the model directory .* outside the directory"):
        LLM(str(model))


def test_hidden_folders_are_not_looked_into(bert, tmp_path, reference):
    model = tmp_path / "model"
    shutil.copytree(bert, model)
    (model / ".git").mkdir()
    (model / ".git" / "hooks").symlink_to("/etc")

    assert embedding(model) == pytest.approx(reference)


def test_a_tokenizer_directory_is_checked_too(bert, tmp_path, reference):
    tokenizer = linked_copy(bert, tmp_path / "tokenizer", ("tokenizer.json",))

    with pytest.raises(ModelLoadError, match=r"^tokenizer\.json in the tokenizer directory "):
        LLM(str(bert), tokenizer=str(tokenizer))
    assert embedding(bert, tokenizer=str(tokenizer), allow_external_symlinks=True) == pytest.approx(reference)


# -- the Hugging Face hub cache ------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    root = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def test_a_hub_cache_snapshot_loads_by_path_and_by_id(bert, cache, reference):
    snapshot = hub_cache(cache, "tiny-org/tiny-bert", bert)
    assert (snapshot / "config.json").is_symlink()
    assert os.readlink(snapshot / "config.json").startswith("../../blobs/")

    assert embedding(snapshot) == pytest.approx(reference)
    assert embedding("tiny-org/tiny-bert") == pytest.approx(reference)


def test_a_hub_snapshot_subfolder_links_into_its_blobs(bert, cache, tmp_path, reference):
    model = tmp_path / "with-st"
    shutil.copytree(bert, model)
    (model / "1_Pooling").mkdir()
    (model / "1_Pooling" / "config.json").write_text('{"word_embedding_dimension": 32, "pooling_mode_cls_token": true}')
    (model / "modules.json").write_text(
        '[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},'
        ' {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},'
        ' {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]'
    )
    snapshot = hub_cache(cache, "tiny-org/tiny-st", model)
    assert os.readlink(snapshot / "1_Pooling" / "config.json").startswith("../../../blobs/")

    assert embedding(snapshot) == pytest.approx(reference)  # CLS, normalised: BERT's defaults


def test_a_hub_snapshot_linking_into_another_repository_is_refused(bert, cache, tmp_path):
    snapshot = hub_cache(cache, "tiny-org/tiny-bert", bert)
    other = hub_cache(cache, "tiny-org/other", bert)
    (snapshot / "config.json").unlink()
    (snapshot / "config.json").symlink_to(os.path.relpath((other / "config.json").resolve(), snapshot))

    refused = r"^config\.json in the model directory .*snapshots.* is a symlink to .*models--tiny-org--other"
    with pytest.raises(ModelLoadError, match=refused):
        LLM(str(snapshot))
