"""Ray Data: embed_dataset on a local Ray instance equals the Python API."""

from __future__ import annotations

import pytest
import torch

ray = pytest.importorskip("ray", reason="pip install 'poolkit[ray]'")

pytestmark = pytest.mark.ray


def test_embed_dataset_equals_the_python_api(local_ray, tiny_encoders):
    from poolkit import LLM
    from poolkit.entrypoints.integrations.ray import embed_dataset

    model = str(tiny_encoders["bert"])
    texts = [f"paris is the capital of france {i % 17} " * (1 + i % 5) for i in range(500)]
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    rows = embed_dataset(ds, model=model, batch_size=64, dtype="float32").take_all()
    assert len(rows) == 500 and {r["id"] for r in rows} == set(range(500))
    expected = LLM(model, dtype="float32").embed(texts)
    for row in rows[::37]:
        assert torch.allclose(torch.tensor(row["embedding"]), torch.tensor(expected[row["id"]].outputs.embedding), atol=1e-5)


def test_missing_ray_is_a_clear_error(monkeypatch):
    import builtins

    from poolkit import MissingDependency
    from poolkit.entrypoints.integrations import ray as integration

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(MissingDependency, match=r"pip install 'poolkit\[ray\]'"):
        integration.embed_dataset(object())


def test_cli_engine_ray(local_ray, tiny_encoders, tmp_path):
    import json

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from poolkit import LLM
    from poolkit.entrypoints.cli import app

    model = str(tiny_encoders["bert"])
    src = tmp_path / "in.jsonl"
    texts = [f"hello world {i}" for i in range(40)]
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["embed", "--model", model, "--dtype", "float32", "--engine", "ray", "-i", str(src), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    rows = pq.read_table(str(out)).to_pylist()
    assert len(rows) == 40
    expected = LLM(model, dtype="float32").embed(texts)
    for row in rows[::7]:
        assert torch.allclose(torch.tensor(row["embedding"]), torch.tensor(expected[row["id"]].outputs.embedding), atol=1e-5)


# -- every load setting reaches the actors -----------------------------------------------------------


def _setting_cases(root):
    """One case per EngineArgs field: (model dir, the setting, the task, whether it changes the output)."""
    from tiny_models import build_classifier, build_encoder, wordpiece_tokenizer

    bert = build_encoder(root / "bert", "bert")
    pickled = root / "pickled"
    import transformers

    transformers.BertModel.from_pretrained(bert).save_pretrained(pickled, safe_serialization=False)
    wordpiece_tokenizer().save_pretrained(pickled)
    cased = root / "cased-tokenizer"
    wordpiece_tokenizer(lowercase=False).save_pretrained(cased)
    classifier = build_classifier(root / "classifier", "bert", num_labels=3)
    linked = root / "linked"  # every file a symlink out of the directory
    linked.mkdir()
    for file in bert.iterdir():
        (linked / file.name).symlink_to(file.resolve())
    calibration = root / "calibration.txt"
    calibration.write_text("".join(f"A calibration sentence about topic {i}, with some words.\n" for i in range(40)))
    return {
        "model": (bert, {}, "embed", False),
        "tokenizer": (bert, {"tokenizer": str(cased)}, "embed", True),
        "runner": (bert, {"runner": "pooling"}, "embed", False),
        "convert": (classifier, {"convert": "embed"}, "embed", None),
        "pooler_config": (bert, {"pooler_config": {"pooling_type": "MEAN"}}, "embed", True),
        # a model without sides pools every input's token vectors by default
        "token_pool_factor": (bert, {"token_pool_factor": 2}, "token_embed", True),
        "hf_overrides": (bert, {"hf_overrides": {"layer_norm_eps": 0.5}}, "embed", True),
        "dtype": (bert, {"dtype": "bfloat16"}, "embed", True),
        "device": (bert, {"device": "cpu"}, "embed", False),
        "allow_pickle": (pickled, {"allow_pickle": True}, "embed", None),
        "allow_external_symlinks": (linked, {"allow_external_symlinks": True}, "embed", None),
        "trust_remote_code": (bert, {"trust_remote_code": True}, "embed", False),
        "max_model_len": (bert, {"max_model_len": 6}, "token_embed", True),
        "max_batch_tokens": (bert, {"max_batch_tokens": 64}, "embed", False),
        "io_processor_plugin": (bert, {"io_processor_plugin": "top_k"}, "embed", False),
        # the transformers fallback gives the native output (within 1e-5) on the same weights
        "model_impl": (bert, {"model_impl": "transformers"}, "embed", False),
        "quantization": (bert, {"quantization": "int8"}, "embed", True),
        "calibration": (bert, {"quantization": "int8", "calibration": str(calibration)}, "embed", True),
        "quantization_budget": (bert, {"quantization": "int8", "quantization_budget": 0.99}, "embed", True),
        # a vision-language model's limits: they travel with llm.args; a text job's output is the same
        "limit_mm_per_prompt": (bert, {"limit_mm_per_prompt": {"image": 2}}, "embed", False),
        "mm_processor_kwargs": (bert, {"mm_processor_kwargs": {"max_pixels": 50176}}, "embed", False),
        "max_image_pixels": (bert, {"max_image_pixels": 1_000_000}, "embed", False),
        "max_image_bytes": (bert, {"max_image_bytes": 1_000_000}, "embed", False),
        # LoRA: adapters are named per request; a job without one gives the base model's output
        "enable_lora": (bert, {"enable_lora": True}, "embed", False),
        "max_lora_rank": (bert, {"enable_lora": True, "max_lora_rank": 8}, "embed", False),
        "max_loras": (bert, {"enable_lora": True, "max_loras": 2}, "embed", False),
        "max_cpu_loras": (bert, {"enable_lora": True, "max_cpu_loras": 4}, "embed", False),
        # prefix sharing changes no result (and BERT shares none): the job's output is the same
        "enable_prefix_caching": (bert, {"enable_prefix_caching": False}, "embed", False),
    }


SETTING_TEXTS = [f"Hello World, paris is the capital of France {i} " * (1 + i % 4) for i in range(24)]


@pytest.fixture(scope="module")
def setting_cases(tmp_path_factory):
    return _setting_cases(tmp_path_factory.mktemp("settings"))


def test_every_load_setting_has_a_ray_case(setting_cases):
    from poolkit.config.settings import EngineArgs

    assert set(setting_cases) == set(EngineArgs.model_fields)


class _ShippedDataset:
    """A stand-in for a Ray dataset that runs ``map_batches`` as Ray does, in this process: the
    constructor's keyword arguments pickled and unpickled (what Ray ships to each actor), the actor
    built from them, numpy batches of ``batch_size`` rows. Each load setting is checked through it;
    a few go through a real Ray job (:data:`THROUGH_RAY`), whose transport is the same for all."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows, self.mapped = rows, None

    def map_batches(self, fn, *, fn_constructor_kwargs, batch_size, batch_format, **_):
        import pickle

        assert batch_format == "numpy"
        self.mapped = (fn, pickle.loads(pickle.dumps(fn_constructor_kwargs)), batch_size)
        return self

    def take_all(self) -> list[dict]:
        import numpy as np

        fn, kwargs, size = self.mapped
        actor, out = fn(**kwargs), []
        for start in range(0, len(self.rows), size):
            chunk = self.rows[start : start + size]
            batch = actor({key: np.array([row[key] for row in chunk]) for key in chunk[0]})
            out += [{key: batch[key][i] for key in batch} for i in range(len(chunk))]
        return out


#: The settings also run as a real Ray job: the model itself, a pooling choice, a quantized and a
#: length-limited engine (each changes the output); the others run through :class:`_ShippedDataset`.
THROUGH_RAY = ("model", "pooler_config", "quantization", "max_model_len")


@pytest.mark.parametrize("setting", ["model", "tokenizer", "runner", "convert", "pooler_config", "token_pool_factor", "hf_overrides", "dtype",
                                     "device", "allow_pickle", "allow_external_symlinks", "trust_remote_code",
                                     "max_model_len", "max_batch_tokens", "io_processor_plugin", "model_impl",
                                     "quantization", "calibration", "quantization_budget", "limit_mm_per_prompt", "mm_processor_kwargs",
                                     "max_image_pixels", "max_image_bytes", "enable_lora", "max_lora_rank", "max_loras",
                                     "max_cpu_loras", "enable_prefix_caching"])
def test_ray_honours_each_load_setting(request, setting_cases, setting):
    """The Ray engine loads with llm.args, so every setting gives the local engine's output."""
    from poolkit import LLM
    from poolkit.entrypoints.integrations.ray import embed_dataset

    model, values, task, changes = setting_cases[setting]
    values = {"dtype": "float32", **values}
    llm = LLM(str(model), **values)
    assert all(getattr(llm.args, k) is not None for k in values)
    truncate = {"truncate_prompt_tokens": -1}  # max_model_len's case has inputs longer than the limit
    expected = [o.outputs.data.float() for o in llm.encode(SETTING_TEXTS, truncate, pooling_task=task)]
    items = [{"id": i, "text": t} for i, t in enumerate(SETTING_TEXTS)]
    if setting in THROUGH_RAY:
        request.getfixturevalue("local_ray")
        ds = ray.data.from_items(items)
    else:
        ds = _ShippedDataset(items)
    rows = embed_dataset(ds, task=task, args=llm.args, batch_size=8, pooling_params=truncate).take_all()
    column = llm.task(task).output_field
    assert sorted(r["id"] for r in rows) == list(range(len(SETTING_TEXTS)))
    for row in rows:
        got = torch.as_tensor(row[column]).float()
        assert got.shape == expected[row["id"]].shape
        assert torch.allclose(got, expected[row["id"]], atol=1e-5), setting
    if values.get("quantization") and (llm.model.quantization or {}).get("declined"):
        changes = False  # a CPU without an int8 dot product keeps the model in float (kernels/int8.py)
    if changes:  # the setting matters here, so a Ray engine that dropped it would have been caught
        plain = LLM(str(model), dtype="float32").encode(SETTING_TEXTS, truncate, pooling_task=task)
        assert any(p.outputs.data.shape != e.shape or not torch.allclose(p.outputs.data.float(), e, atol=1e-5)
                   for p, e in zip(plain, expected))


def test_cli_engine_ray_honours_load_and_request_options(local_ray, minilm_dir, tmp_path):
    """The bug of issue 12: --engine ray dropped --pooler-config, --hf-overrides, --dimensions, --truncate-prompt-tokens."""
    import json

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from poolkit import LLM, PoolingParams
    from poolkit.entrypoints.cli import app

    texts = [f"hello world number {i}, a sentence of some length" for i in range(20)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    options = ["--pooler-config", '{"pooling_type": "CLS"}', "--hf-overrides", '{"is_matryoshka": true}',
               "--dimensions", "16", "--truncate-prompt-tokens", "5", "--dtype", "float32"]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["embed", "--model", str(minilm_dir), *options, "--engine", "ray", "-i", str(src), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    rows = pq.read_table(str(out)).to_pylist()
    llm = LLM(str(minilm_dir), pooler_config={"pooling_type": "CLS"}, hf_overrides={"is_matryoshka": True}, dtype="float32")
    expected = llm.embed(texts, PoolingParams(dimensions=16, truncate_prompt_tokens=5))
    assert len(rows) == 20
    for row in rows:
        assert len(row["embedding"]) == 16
        assert torch.allclose(torch.tensor(row["embedding"]), torch.tensor(expected[row["id"]].outputs.embedding), atol=1e-5)


# -- over-long rows: truncated, as a local job truncates them, and flagged --------------------------

LONG = " ".join(["word"] * 2000)  # far over all-MiniLM-L6-v2's 256 tokens
FITS = " ".join(["word"] * 254)  # exactly 256 tokens with [CLS] and [SEP]: at the limit, not cut


def test_a_long_row_is_truncated_and_flagged_not_fatal(local_ray, minilm_dir):
    """The bug: one text over the limit failed the whole dataset ("maximum context length")."""
    import numpy as np

    from poolkit import LLM, PoolingParams
    from poolkit.entrypoints.integrations.ray import PoolkitBatchEncoder, embed_dataset

    llm = LLM(str(minilm_dir))
    assert len(llm.embed(FITS)[0].prompt_token_ids) == 256
    texts = ["a short sentence", LONG, FITS, "another one"]
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    rows = embed_dataset(ds, args=llm.args, batch_size=len(texts)).take_all()
    assert {r["id"]: bool(r["truncated"]) for r in rows} == {0: False, 1: True, 2: False, 3: False}
    # one batch for sure: LONG and FITS have the same length, and only the engine tells them apart
    actor = PoolkitBatchEncoder(llm.args.model_dump(exclude_defaults=True), "embed", "text", None)
    assert actor({"text": np.array(texts)})["truncated"].tolist() == [False, True, False, False]
    assert actor.llm.engine.truncated_inputs == 1
    expected = llm.embed(texts, PoolingParams(truncate_prompt_tokens=-1))
    for row in rows:
        assert torch.allclose(torch.tensor(row["embedding"]), torch.tensor(expected[row["id"]].outputs.embedding), atol=1e-5)

    # the column's name, or none: the same actor, so these run through the stand-in
    shipped = _ShippedDataset([{"id": i, "text": t} for i, t in enumerate(texts)])
    named = embed_dataset(shipped, args=llm.args, batch_size=2, truncated_column="cut").take_all()
    assert {r["id"]: bool(r["cut"]) for r in named} == {0: False, 1: True, 2: False, 3: False}
    assert all("truncated" not in r for r in named)
    assert all("truncated" not in r for r in embed_dataset(shipped, args=llm.args, truncated_column=None).take_all())


def test_a_chosen_truncation_is_honoured(minilm_dir):
    """The pooling parameters travel in the actor's constructor arguments (a real Ray job carries
    them in test_cli_engine_ray_honours_load_and_request_options)."""
    from poolkit import LLM, PoolingParams
    from poolkit.entrypoints.integrations.ray import embed_dataset

    llm = LLM(str(minilm_dir))
    texts = ["hi", "one two three four five six seven", LONG]  # 3, 9 and 2002 tokens
    ds = _ShippedDataset([{"id": i, "text": t} for i, t in enumerate(texts)])
    rows = embed_dataset(ds, args=llm.args, pooling_params={"truncate_prompt_tokens": 8}).take_all()
    assert {r["id"]: bool(r["truncated"]) for r in rows} == {0: False, 1: True, 2: True}
    expected = llm.embed(texts, PoolingParams(truncate_prompt_tokens=8))
    for row in rows:
        assert torch.allclose(torch.tensor(row["embedding"]), torch.tensor(expected[row["id"]].outputs.embedding), atol=1e-5)


def test_cli_engine_ray_truncates_and_says_how_many(local_ray, minilm_dir, tmp_path):
    import json

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(["short", LONG, "also short"])))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["embed", "--model", str(minilm_dir), "--engine", "ray", "-i", str(src), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    assert "1 of 3 inputs were longer than the model's limit of 256 tokens and were truncated" in result.stderr
    rows = pq.read_table(str(out)).to_pylist()
    assert {r["id"]: r["truncated"] for r in rows} == {0: False, 1: True, 2: False}
