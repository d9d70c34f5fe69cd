"""Adapters reloaded under their name, bad adapter folders and adapters from several threads
(issue 63, items 1-5): every cached result is keyed by the load of the adapter that computed it,
never by its name; a refused load changes nothing; the prefix cache counts what a client sends;
batches on several threads never run with another thread's adapter.

Each server answer is checked against a model that never saw the adapter loaded before it.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import tracemalloc
from pathlib import Path

import pytest
import torch
import transformers as T

from poolkit import LLM, LoRARequest
from poolkit.contracts.errors import InvalidRequest
from tiny_models import build_encoder, build_qwen

peft = pytest.importorskip("peft")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from poolkit.entrypoints.server import create_app  # noqa: E402

TEXTS = ["hello world", "a much longer sentence about many things and more"]
PREFIX = "Instruct: given a web search query, retrieve relevant passages that answer the query. Query: "
CLS = {"pooling_type": "CLS", "use_activation": False}
#: Both load switches: vLLM's and poolkit's.
RUNTIME = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


def _adapter(base: Path, out: Path, seed: int, targets: list[str], auto: type = T.AutoModel) -> Path:
    torch.manual_seed(seed)
    model = auto.from_pretrained(base)
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets)
    peft.get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reload")
    bert = build_encoder(root / "bert", "bert")
    qwen = build_qwen(root / "qwen3", "qwen3", max_position_embeddings=512, head_dim=16)
    return {
        "bert": bert,
        "bert_a": _adapter(bert, root / "bert_a", 1, ["query", "value"]),
        "bert_b": _adapter(bert, root / "bert_b", 2, ["query", "value"]),
        "bert_c": _adapter(bert, root / "bert_c", 3, ["key", "dense"]),
        "qwen3": qwen,
        "qwen3_a": _adapter(qwen, root / "qwen3_a", 4, ["q_proj", "v_proj"]),
        "qwen3_b": _adapter(qwen, root / "qwen3_b", 5, ["q_proj", "v_proj"]),
    }


def _rows(outputs) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in outputs])


def _alone(base: Path, adapter: Path, texts: list[str], **kwargs) -> torch.Tensor:
    """The embeddings of a model that never saw another adapter under the name."""
    llm = LLM(str(base), enable_lora=True, pooler_config=CLS, **kwargs)
    return _rows(llm.embed(texts, lora_request=LoRARequest("s", 1, str(adapter))))


def _embedded(client: TestClient, model: str, texts: list[str]) -> torch.Tensor:
    response = client.post("/v1/embeddings", json={"model": model, "input": texts})
    assert response.status_code == 200, response.text
    return torch.tensor([d["embedding"] for d in response.json()["data"]])


def _load(client: TestClient, name: str, path: Path | str, inplace: bool = False):
    return client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path), "load_inplace": inplace})


def _listed(client: TestClient) -> set[str]:
    return {m["id"] for m in client.get("/v1/models").json()["data"]}


# -- 1. caches keyed by the adapter's load, not its name ------------------------------------------


@pytest.mark.parametrize("reload", ["unload and load", "load_inplace"])
def test_the_embedding_cache_answers_with_the_adapter_loaded_now(models, monkeypatch, reload):
    monkeypatch.setenv(RUNTIME, "True")
    want_a = _alone(models["bert"], models["bert_a"], TEXTS)
    want_b = _alone(models["bert"], models["bert_b"], TEXTS)
    assert (want_a - want_b).abs().max() > 0.05  # the two adapters differ
    llm = LLM(str(models["bert"]), enable_lora=True, pooler_config=CLS)
    with TestClient(create_app(llm, served_model_name="base", cache_size=64)) as client:
        assert _load(client, "s", models["bert_a"]).status_code == 200
        torch.testing.assert_close(_embedded(client, "s", TEXTS), want_a, atol=1e-5, rtol=0)
        torch.testing.assert_close(_embedded(client, "s", TEXTS), want_a, atol=1e-5, rtol=0)  # from the cache
        if reload == "unload and load":
            assert client.post("/v1/unload_lora_adapter", json={"lora_name": "s"}).status_code == 200
            assert _load(client, "s", models["bert_b"]).status_code == 200
        else:
            assert _load(client, "s", models["bert_b"], inplace=True).status_code == 200
        torch.testing.assert_close(_embedded(client, "s", TEXTS), want_b, atol=1e-5, rtol=0)
        cache = client.app.state.poolkit.first.cache
        assert len(cache) == len(TEXTS)  # what the first load computed left with it


def test_load_inplace_from_the_same_path_reads_the_new_files(models, monkeypatch, tmp_path):
    monkeypatch.setenv(RUNTIME, "True")
    folder = tmp_path / "s"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes((models["bert_a"] / name).read_bytes())
    llm = LLM(str(models["bert"]), enable_lora=True, pooler_config=CLS)
    with TestClient(create_app(llm, served_model_name="base", cache_size=64)) as client:
        assert _load(client, "s", folder).status_code == 200
        torch.testing.assert_close(_embedded(client, "s", TEXTS), _alone(models["bert"], models["bert_a"], TEXTS), atol=1e-5, rtol=0)
        (folder / "adapter_model.safetensors").write_bytes((models["bert_b"] / "adapter_model.safetensors").read_bytes())
        assert _load(client, "s", folder, inplace=True).status_code == 200
        torch.testing.assert_close(_embedded(client, "s", TEXTS), _alone(models["bert"], models["bert_b"], TEXTS), atol=1e-5, rtol=0)


def test_prefix_states_of_an_unloaded_adapter_are_not_read_by_the_next(models, monkeypatch):
    """A decoder's prefix states cached under adapter A are never read by adapter B loaded under
    the same name; unloading A drops them."""
    monkeypatch.setenv(RUNTIME, "True")
    long = [PREFIX + "what is the capital of france", PREFIX + "hello"]
    mean = {"pooling_type": "MEAN", "use_activation": False}
    fresh = LLM(str(models["qwen3"]), enable_lora=True, pooler_config=mean, enable_prefix_caching=False)
    want_b = _rows(fresh.embed(long, lora_request=LoRARequest("s", 1, str(models["qwen3_b"]))))
    llm = LLM(str(models["qwen3"]), enable_lora=True, pooler_config=mean)
    cache = llm.engine.prefixes.cache
    with TestClient(create_app(llm, served_model_name="base")) as client:
        assert _load(client, "s", models["qwen3_a"]).status_code == 200
        for text in long:
            _embedded(client, "s", [text])
        assert len(cache) > 0
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "s"}).status_code == 200
        assert len(cache) == 0  # what adapter A computed left with it
        assert _load(client, "s", models["qwen3_b"]).status_code == 200
        got = torch.cat([_embedded(client, "s", [text]) for text in long])
        assert cache.hits > 0  # the second prompt read the first's prefix, computed with B
    torch.testing.assert_close(got, want_b, atol=1e-5, rtol=0)


def test_offline_a_name_loaded_again_is_a_new_identity(models):
    llm = LLM(str(models["qwen3"]), enable_lora=True, pooler_config={"pooling_type": "MEAN", "use_activation": False})
    adapters = llm.model.adapters
    a = LoRARequest("s", 1, str(models["qwen3_a"]))
    first = adapters.identity(a)
    assert adapters.identity(LoRARequest("s", 7, str(models["qwen3_a"]))) == first  # the same load
    llm.embed([PREFIX + "hello"], lora_request=a)
    assert adapters.remove("s")
    assert adapters.identity(a) != first


# -- 2. a bad adapter folder is a 400 and changes nothing -----------------------------------------


def _bad_folders(source: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """Adapter folders damaged one way each, with what the refusal names."""
    config = json.loads((source / "adapter_config.json").read_text())
    tensors = load_file(str(source / "adapter_model.safetensors"))
    raw = (source / "adapter_model.safetensors").read_bytes()
    lora_a = next(k for k in tensors if "lora_A" in k)

    def folder(name: str, config_text: str | None = None, weights: bytes | dict | None = None) -> Path:
        path = root / name
        path.mkdir()
        (path / "adapter_config.json").write_text(config_text if config_text is not None else json.dumps(config))
        if isinstance(weights, dict):
            save_file(weights, str(path / "adapter_model.safetensors"))
        else:
            (path / "adapter_model.safetensors").write_bytes(weights if weights is not None else raw)
        return path

    rank0 = dict(tensors)
    rank0[lora_a] = torch.zeros(0, tensors[lora_a].shape[1])
    rank0[lora_a.replace("lora_A", "lora_B")] = torch.zeros(tensors[lora_a.replace("lora_A", "lora_B")].shape[0], 0)
    scalar = dict(tensors)
    scalar[lora_a] = torch.tensor(1.0)
    nan = dict(tensors)
    nan[lora_a] = tensors[lora_a].clone()
    nan[lora_a][0, 0] = float("nan")
    inf = dict(tensors)
    inf[lora_a] = tensors[lora_a].clone()
    inf[lora_a][0, 0] = float("inf")
    return {
        "a JSON list": (folder("list", "[1, 2]"), "adapter_config.json holds a JSON list"),
        "alpha 'abc'": (folder("alpha", json.dumps({**config, "lora_alpha": "abc"})), "lora_alpha must be a number"),
        "alpha_pattern a list": (folder("pattern", json.dumps({**config, "alpha_pattern": ["x"]})), "alpha_pattern must map"),
        "random bytes": (folder("random", weights=bytes(range(256)) * 8), "adapter_model.safetensors cannot be read"),
        "truncated": (folder("cut", weights=raw[: len(raw) // 2]), "adapter_model.safetensors cannot be read"),
        "rank 0": (folder("rank0", weights=rank0), "rank 0"),
        "0-d lora_A": (folder("scalar", weights=scalar), "do not chain"),
        "a NaN factor": (folder("nan", weights=nan), "NaN or infinite"),
        "an inf factor": (folder("inf", weights=inf), "NaN or infinite"),
    }


@pytest.fixture(scope="module")
def bad(models, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return _bad_folders(models["bert_a"], tmp_path_factory.mktemp("bad"))


def test_bad_adapter_folders_are_a_400_that_registers_nothing(models, bad, monkeypatch):
    monkeypatch.setenv(RUNTIME, "True")
    llm = LLM(str(models["bert"]), enable_lora=True, pooler_config=CLS)
    with TestClient(create_app(llm, served_model_name="base")) as client:
        before = _listed(client)
        for case, (path, says) in bad.items():
            response = _load(client, f"bad-{path.name}", path)
            assert response.status_code == 400, (case, response.text)
            message = response.json()["error"]["message"]
            assert says in message and "\n" not in message, (case, message)
            assert _listed(client) == before, case
            assert client.post("/v1/embeddings", json={"model": f"bad-{path.name}", "input": "x"}).status_code == 404


def test_bad_adapter_folders_are_refused_offline(models, bad):
    llm = LLM(str(models["bert"]), enable_lora=True, pooler_config=CLS)
    for case, (path, says) in bad.items():
        with pytest.raises(InvalidRequest, match=says.replace("(", r"\(")):
            llm.embed(TEXTS, lora_request=LoRARequest("bad", 1, str(path)))
    assert llm.model.adapters.loaded == []


def test_bad_lora_modules_at_start_up_exit_1(models, bad):
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    runner = CliRunner()
    for case in ("a JSON list", "truncated", "rank 0"):
        path, says = bad[case]
        result = runner.invoke(app, ["serve", str(models["bert"]), "--enable-lora", "--lora-modules", f"bad={path}"])
        errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert result.exit_code == 1 and len(errors) == 1 and says in errors[0], (case, result.output)


# -- 3. a refused request changes nothing ----------------------------------------------------------


def test_a_refused_load_inplace_keeps_the_adapter_that_works(models, bad, monkeypatch):
    monkeypatch.setenv(RUNTIME, "True")
    want_a = _alone(models["bert"], models["bert_a"], TEXTS)
    llm = LLM(str(models["bert"]), enable_lora=True, pooler_config=CLS)
    with TestClient(create_app(llm, served_model_name="base")) as client:
        assert _load(client, "s", models["bert_a"]).status_code == 200
        missing = _load(client, "s", "/no/such/adapter", inplace=True)
        assert missing.status_code == 404
        damaged = _load(client, "s", bad["truncated"][0], inplace=True)
        assert damaged.status_code == 400
        assert "s" in _listed(client)
        torch.testing.assert_close(_embedded(client, "s", TEXTS), want_a, atol=1e-5, rtol=0)


def test_concurrent_in_place_reloads_leave_one_of_their_outcomes(models, bad, monkeypatch):
    """Many load_inplace requests for one name at once, good and bad: each bad one is a 400 and
    changes nothing, the good ones take turns, and the name serves the last good one."""
    monkeypatch.setenv(RUNTIME, "True")
    wants = {p: _alone(models["bert"], models[p], TEXTS) for p in ("bert_b", "bert_c")}
    llm = LLM(str(models["bert"]), enable_lora=True, pooler_config=CLS)
    with TestClient(create_app(llm, served_model_name="base", cache_size=64)) as client:
        assert _load(client, "s", models["bert_a"]).status_code == 200
        paths = [models["bert_b"], bad["rank 0"][0], models["bert_c"], bad["a JSON list"][0]] * 3
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda path: _load(client, "s", path, inplace=True).status_code, paths))
        assert statuses == [200, 400, 200, 400] * 3
        assert _listed(client) == {"base", "s"}
        got = _embedded(client, "s", TEXTS)
        assert any(torch.allclose(got, wants[name], atol=1e-5, rtol=0) for name in ("bert_b", "bert_c")), "not one good reload's adapter"


# -- 4. bounds count everything a client sends ---------------------------------------------------


def test_distinct_large_salts_stay_within_the_prefix_cache_budget(models, monkeypatch):
    """80 prompts under distinct 1 MB salts: the cache keeps a digest of each scope, so the Python
    memory the calls leave behind stays within the budget (tracemalloc: what is still allocated,
    not a timing)."""
    budget = 2 << 20
    monkeypatch.setenv("POOLKIT_PREFIX_CACHE_BYTES", str(budget))
    llm = LLM(str(models["qwen3"]), pooler_config={"pooling_type": "MEAN", "use_activation": False})
    prompt = PREFIX + "what is the capital of france"
    llm.embed([{"prompt": prompt, "cache_salt": "warm-up"}])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(80):
            llm.embed([{"prompt": prompt, "cache_salt": f"{i:04d}" + "x" * (1 << 20)}])
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    cache = llm.engine.prefixes.cache
    assert len(cache) > 1 and cache.bytes <= budget
    assert grown <= budget, f"{grown / (1 << 20):.1f} MiB kept for a {budget >> 20} MiB budget"


# -- 5. LoRA from several threads ------------------------------------------------------------------


def test_threads_with_more_adapters_than_slots_get_their_own_vectors(models):
    """One LLM with one adapter slot, four threads each embedding with its own adapter (and the
    base model) over and over: every answer is the one a single thread gets."""
    llm = LLM(str(models["bert"]), enable_lora=True, max_loras=1, max_cpu_loras=1, pooler_config=CLS)
    requests = [None] + [LoRARequest(name, i + 1, str(models[name])) for i, name in enumerate(("bert_a", "bert_b", "bert_c"))]
    texts = TEXTS * 4
    wants = [_rows(llm.embed(texts, lora_request=r)) for r in requests]
    barrier = threading.Barrier(len(requests))

    def work(k: int) -> float:
        barrier.wait()
        worst = 0.0
        for _ in range(6):
            got = _rows(llm.embed(texts, lora_request=requests[k]))
            worst = max(worst, (got - wants[k]).abs().max().item())
        return worst

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        worst = list(pool.map(work, range(len(requests))))
    assert max(worst) <= 1e-5, worst
