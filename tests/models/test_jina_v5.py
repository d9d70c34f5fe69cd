"""jina-embeddings-v5-text-small and -nano: a Qwen3 or a bidirectional EuroBERT body with four task
adapters, every task from one model.

The reference is the publisher's code written out (``modeling_jina_embeddings_v5.py``'s
``from_pretrained`` and ``encode``, ``custom_st.py``'s ``forward``; the nano model's files in the
mirror ``oaustegard/jina-v5-nano-mirror``): the body loaded by transformers (``Qwen3Model`` for the
small model, whose config is a ``Qwen3Config``; ``EuroBertModel`` for the nano, whose config is an
``EuroBertConfig`` and whose ``modeling_eurobert.py`` is generated from the same
``modular_eurobert.py`` as transformers', its rotary ``linear`` with factor 1.0 being the default
one), every task's adapter loaded by PEFT into one ``PeftMixedModel`` and set per call,
``"Query: "`` or ``"Document: "`` first, one right-padded batch, the last real token, L2. The
checkpoints (``tiny_jina_v5.build_jina_v5``, ``build_jina_v5_nano``) are laid out as published,
with the source of every key. Every test runs on both sizes, but the one that swaps their ``is_decoder``.
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
from safetensors.torch import save_file
from tiny_jina_v5 import TASKS, build_jina_v5, build_jina_v5_nano
from tolerances import assert_bf16_as_close_as_the_reference

from poolkit import LLM, PoolingParams
from poolkit.contracts.errors import InvalidRequest, ModelLoadError

ATOL = 1e-4
TEXTS = ["paris is the capital of france", "hello", "the quick brown fox jumps over the lazy dog " * 2]
#: The prompt names a request may give, and the (task, publisher's ``prompt_name``) each stands for.
PROMPT_NAMES = {
    **{task: (task, "document") for task in TASKS},
    "retrieval.query": ("retrieval", "query"),
    "retrieval.passage": ("retrieval", "document"),
    "query": ("retrieval", "query"),
    "document": ("retrieval", "document"),
}


#: The two published sizes and their builders.
BUILDERS = {"small": build_jina_v5, "nano": build_jina_v5_nano}
#: What ``poolkit info`` says each is (:meth:`JinaV5Tasks.describe`).
LAYOUTS = {
    "small": {
        "value": "jina-embeddings-v5-text-small (Qwen3 body, task adapters retrieval, text-matching, clustering, classification)",
        "source": "config.json architectures JinaEmbeddingsV5Model, no is_decoder: false; adapters/<task>/adapter_config.json",
    },
    "nano": {
        "value": "jina-embeddings-v5-text-nano (bidirectional EuroBERT body, task adapters retrieval, text-matching, clustering, classification)",
        "source": "config.json architectures JinaEmbeddingsV5Model, is_decoder: false; adapters/<task>/adapter_config.json",
    },
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def jina(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    size = request.param
    return BUILDERS[size](tmp_path_factory.mktemp(f"jina-v5-{size}") / f"jina-embeddings-v5-text-{size}")


def size_of(path: Path) -> str:
    return path.name.rpartition("-")[2]


# -- the reference: the publisher's modeling code ------------------------------------------------


@lru_cache(maxsize=4)
def publisher_model(path: str, dtype: str = "float32") -> tuple[Any, Any]:
    """``JinaEmbeddingsV5Model.from_pretrained``: the body, then every task's adapter by name (in
    ``dtype`` too, as poolkit runs them, where PEFT would keep them in float32). The body is the
    nano's EuroBERT where its config says ``is_decoder: false``, else the small model's Qwen3."""
    from peft import PeftConfig, PeftMixedModel
    from transformers import AutoTokenizer, EuroBertConfig, EuroBertModel, Qwen3Config, Qwen3Model

    raw = json.loads((Path(path) / "config.json").read_text())
    task_names = raw["task_names"]
    for key in ("auto_map", "model_type", "architectures", "task_names"):  # JinaEmbeddingsV5Config is the body's config
        raw.pop(key)
    config_class, body = (EuroBertConfig, EuroBertModel) if raw.get("is_decoder") is False else (Qwen3Config, Qwen3Model)
    base = body.from_pretrained(path, config=config_class(**raw), dtype=getattr(torch, dtype), attn_implementation="eager")
    adapters = {name: str(Path(path) / "adapters" / name) for name in task_names}
    model = PeftMixedModel(base, PeftConfig.from_pretrained(adapters["retrieval"]), adapter_name="retrieval")
    for name in task_names:
        model.load_adapter(adapters[name], adapter_name=name, autocast_adapter_dtype=False)
    return model.eval(), AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def reference_embeddings(
    path: Path, texts: list[str], task: str, prompt_name: str = "document", truncate_dim: int | None = None, dtype: str = "float32"
) -> torch.Tensor:
    """``encode(texts, task, prompt_name, truncate_dim)``: the prefix, the task's adapter, the last
    real token of a right-padded batch, cut to ``truncate_dim``, L2."""
    model, tok = publisher_model(str(path), dtype)
    prefix = "Query: " if prompt_name == "query" else "Document: "
    batch = tok([prefix + t for t in texts], return_tensors="pt", padding=True)
    model.set_adapter([task])
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    lengths = batch["attention_mask"].sum(dim=1) - 1
    pooled = hidden[torch.arange(hidden.shape[0]), lengths]
    if truncate_dim is not None:
        pooled = pooled[:, :truncate_dim]
    return F.normalize(pooled.float(), p=2, dim=-1)


def embed(llm: LLM, texts: list[str], **kwargs: object) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in llm.embed(texts, **kwargs)])


# -- the tests ------------------------------------------------------------------------------------


def test_loads_natively_with_its_four_adapters(jina: Path) -> None:
    llm = LLM(str(jina))
    info = llm.model.describe()
    assert info["architecture"] == "JinaEmbeddingsV5Model" and info["implementation"] == "native"
    assert info["layout"] == LAYOUTS[size_of(jina)]  # poolkit info: which body was recognised, from what
    assert llm.model.architecture.causal is (size_of(jina) == "small")  # the nano's EuroBERT attends both ways
    assert info["tasks"]["embed"]["pooling_type"]["value"] == "LAST"
    # modules.json has only Jina's custom module, which normalises in code: not read as "no Normalize"
    assert info["tasks"]["embed"]["use_activation"]["value"] is True
    adapters = llm.model.adapters
    assert [adapters.own(t).lora_name for t in TASKS] == TASKS
    assert adapters.own(None).lora_name == "retrieval"  # vLLM's task when none is named
    assert {name: adapters.own(name).lora_name for name in PROMPT_NAMES} == {n: t for n, (t, _) in PROMPT_NAMES.items()}


@pytest.mark.parametrize("name", list(PROMPT_NAMES))
def test_each_prompt_name_matches_the_publishers_encode(jina: Path, name: str) -> None:
    task, prompt_name = PROMPT_NAMES[name]
    got = embed(LLM(str(jina)), TEXTS, prompt_name=name)
    assert (got - reference_embeddings(jina, TEXTS, task, prompt_name)).abs().max() <= ATOL, name
    others = [t for t in TASKS if t != task]
    assert min((got - reference_embeddings(jina, TEXTS, t, prompt_name)).abs().max() for t in others) > 1e-2  # the adapter matters


def test_no_prompt_name_is_a_retrieval_document(jina: Path) -> None:
    """The published default prompt (``document``) with vLLM's default task (``retrieval``)."""
    got = embed(LLM(str(jina)), TEXTS)
    assert (got - reference_embeddings(jina, TEXTS, "retrieval", "document")).abs().max() <= ATOL


def test_tasks_mix_in_one_batch(jina: Path) -> None:
    """Every prompt name's requests through one call each, then all at once through the server's
    batcher path (one engine run with per-prompt adapters, shared "Document: " prefixes): the same vectors."""
    llm = LLM(str(jina))
    prepared = [llm.prepare(TEXTS, pooling_task="embed", prompt_name=name) for name in PROMPT_NAMES]
    prompts = [prompt for _, parsed, _ in prepared for prompt in parsed]
    params = [param for _, _, checked in prepared for param in checked]
    together = torch.stack(llm.run(llm.model.task("embed"), prompts, params).rows())
    one_by_one = torch.cat([embed(llm, TEXTS, prompt_name=name) for name in PROMPT_NAMES])
    assert (together.float() - one_by_one).abs().max() <= 1e-5


def test_truncate_dim_is_a_matryoshka_width(jina: Path) -> None:
    """The publisher's ``truncate_dim``: cut, then normalised; poolkit's ``dimensions``."""
    got = embed(LLM(str(jina)), TEXTS, prompt_name="retrieval.query", pooling_params=PoolingParams(dimensions=8))
    assert (got - reference_embeddings(jina, TEXTS, "retrieval", "query", truncate_dim=8)).abs().max() <= ATOL


def test_sentence_transformers_task_and_prompt_name(jina: Path) -> None:
    """The model card's sentence-transformers call, ``encode(texts, task=..., prompt_name=...)``:
    ``task`` picks the adapter (Jina's module's argument), the published prompts the prefix
    (``document`` by default); without a task, the default one (retrieval)."""
    from poolkit import SentenceTransformer

    model = SentenceTransformer(str(jina))
    for kwargs, task, prompt_name in (
        ({"task": "text-matching", "prompt_name": "query"}, "text-matching", "query"),
        ({"task": "clustering"}, "clustering", "document"),
        ({"prompt_name": "query"}, "retrieval", "query"),
    ):
        got = torch.as_tensor(model.encode(TEXTS, **kwargs))
        assert (got - reference_embeddings(jina, TEXTS, task, prompt_name)).abs().max() <= ATOL, kwargs
    with pytest.raises(InvalidRequest, match=r"Invalid task: nope\. Must be one of \['retrieval', 'text-matching'"):
        model.encode(TEXTS, task="nope")


def test_unknown_task_is_refused(jina: Path) -> None:
    with pytest.raises(InvalidRequest, match="unknown prompt_name 'retrieval.querie'"):
        LLM(str(jina)).embed(TEXTS, prompt_name="retrieval.querie")


def test_server_task_field(jina: Path) -> None:
    """Jina's API: ``task`` in the body of ``/v1/embeddings``; an unknown one is a 400."""
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    with TestClient(create_app(LLM(str(jina)))) as client:
        for task, (adapter, prompt_name) in (("retrieval.query", ("retrieval", "query")), ("text-matching", ("text-matching", "document"))):
            body = client.post("/v1/embeddings", json={"input": TEXTS, "task": task}).json()
            got = torch.tensor([d["embedding"] for d in body["data"]])
            assert (got - reference_embeddings(jina, TEXTS, adapter, prompt_name)).abs().max() <= ATOL, task
        bad = client.post("/v1/embeddings", json={"input": TEXTS, "task": "nope"})
        assert bad.status_code == 400 and "unknown prompt_name 'nope'" in bad.json()["error"]["message"]


def test_a_missing_adapter_is_named(jina: Path, tmp_path: Path) -> None:
    other = tmp_path / "no-clustering"
    shutil.copytree(jina, other)
    shutil.rmtree(other / "adapters" / "clustering")
    with pytest.raises(ModelLoadError, match=r"the adapter of task 'clustering' is missing: no adapters/clustering/adapter_config.json"):
        LLM(str(other))


def test_an_adapter_for_another_body_is_named(jina: Path, tmp_path: Path) -> None:
    """A task adapter whose factors sit on a module the body lacks (jina-embeddings-v3's flash
    ``mixer.Wqkv``, say) is a one-line load error naming the task, the module and the body."""
    other = tmp_path / "foreign-adapter"
    shutil.copytree(jina, other)
    folder = other / "adapters" / "text-matching"
    (folder / "adapter_config.json").write_text(json.dumps({**json.loads((folder / "adapter_config.json").read_text()), "target_modules": ["Wqkv"]}))
    layer = "base_model.model.layers.0.mixer.Wqkv"
    save_file({f"{layer}.lora_A.weight": torch.zeros(4, 32), f"{layer}.lora_B.weight": torch.zeros(96, 4)}, folder / "adapter_model.safetensors")
    body = {"small": "Qwen3", "nano": "bidirectional EuroBERT"}[size_of(jina)]
    with pytest.raises(ModelLoadError, match=rf"^the text-matching adapter targets layers\.0\.mixer\.Wqkv, which the {body} body of this JinaEmbeddingsV5Model lacks"):
        LLM(str(other))


@pytest.mark.parametrize(
    "size, is_decoder, message",
    [
        # the small model's Qwen3 weights under the nano's is_decoder: false
        ("small", False, r"config\.json says is_decoder: false .* the weights hold layers\.0\.self_attn\.k_norm\.weight, a Qwen3 body's"),
        # the nano without it: its keys read as Qwen3's, whose head_dim (128) the weights contradict
        ("nano", None, r"num_attention_heads \* head_dim is 4 \* 128 = 512, but the weights hold 32"),
    ],
)
def test_a_body_that_contradicts_is_decoder_is_named(tmp_path: Path, size: str, is_decoder: bool | None, message: str) -> None:
    """``is_decoder`` tells the two bodies apart; weights of the other body are a one-line load error."""
    path = BUILDERS[size](tmp_path / f"jina-embeddings-v5-text-{size}")
    raw = {k: v for k, v in json.loads((path / "config.json").read_text()).items() if k != "is_decoder"}
    (path / "config.json").write_text(json.dumps(raw if is_decoder is None else {**raw, "is_decoder": is_decoder}))
    with pytest.raises(ModelLoadError, match=message):
        LLM(str(path))


def test_bfloat16_follows_float32_with_every_task(jina: Path) -> None:
    """In bf16 (the adapters' products in bf16 too) the vectors of every task stay as close to the
    fp32 reference as the publisher's code run in bf16 does."""
    llm = LLM(str(jina), dtype="bfloat16")
    ours, theirs, want = [], [], []
    for task in TASKS:
        ours += list(embed(llm, TEXTS, prompt_name=task))
        theirs += list(reference_embeddings(jina, TEXTS, task, dtype="bfloat16"))
        want += list(reference_embeddings(jina, TEXTS, task))
    assert all(torch.isfinite(row).all() for row in ours)
    assert_bf16_as_close_as_the_reference(ours, theirs, want)


def test_vllms_jina_task_override_is_the_default_task(jina: Path) -> None:
    """vLLM's ``hf_overrides={"jina_task": ...}`` (the task it merges): a request naming none runs
    it; the other tasks stay a prompt name away. A task the checkpoint lacks is refused."""
    llm = LLM(str(jina), hf_overrides={"jina_task": "clustering"})
    assert (embed(llm, TEXTS) - reference_embeddings(jina, TEXTS, "clustering")).abs().max() <= ATOL
    assert (embed(llm, TEXTS, prompt_name="retrieval.query") - reference_embeddings(jina, TEXTS, "retrieval", "query")).abs().max() <= ATOL
    with pytest.raises(ModelLoadError, match=r"jina_task 'separation' is not one of the checkpoint's task_names"):
        LLM(str(jina), hf_overrides={"jina_task": "separation"})


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda folder: (folder / "adapter_config.json").write_text("{"), r"text-matching.*adapter_config\.json is not valid JSON"),
        (lambda folder: (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "use_dora": True})),
         r"text-matching.* is not a plain LoRA adapter"),
        (lambda folder: save_file({"base_model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(4, 32)}, folder / "adapter_model.safetensors"),
         r"text-matching.*layers\.0\.mlp\.up_proj do not pair"),
        (lambda folder: save_file({"base_model.model.layers.0.mlp.up_proj.weight": torch.zeros(64, 32)}, folder / "adapter_model.safetensors"),
         r"text-matching.*base_model\.model\.layers\.0\.mlp\.up_proj\.weight is no LoRA factor"),
    ],
)
def test_a_damaged_adapter_is_named(jina: Path, tmp_path: Path, damage: Callable[[Path], object], message: str) -> None:
    """What a task's adapter holds that a plain LoRA adapter does not is a one-line load error naming it."""
    other = tmp_path / "damaged"
    shutil.copytree(jina, other)
    damage(other / "adapters" / "text-matching")
    with pytest.raises(ModelLoadError, match=message):
        LLM(str(other))
