"""Jina's rotary XLM-RoBERTa: jina-embeddings-v3 with its five task adapters, and jina-colbert-v2.

There is no transformers class for Jina's "XLM-RoBERTa flash" (remote code), so the reference is
its published math written out here (``xlm-roberta-flash-implementation``'s embeddings, ``emb_ln``,
post-norm blocks of rotary attention and GELU MLP, ``modeling_lora.py``'s parametrized weights
``W + alpha/r * B A``, an embedding's ``W + alpha/r * A B``): one right-padded batch with an
attention mask, from the checkpoint's tensors by their published names, each task's adapter
merged into the weights, nothing shared with poolkit's packed code. The tiny checkpoints carry the
published config keys (``position_embedding_type: rotary``, ``rotary_emb_base``,
``lora_adaptations``, ``task_instructions``...), tensor names and sentence-transformers files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tiny_models import bytelevel_bpe_tokenizer

from poolkit import LLM
from poolkit.contracts.errors import InvalidRequest

ATOL = 1e-4
TASKS = ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"]
INSTRUCTIONS = {
    "retrieval.query": "Represent the query for retrieving evidence documents: ",
    "retrieval.passage": "Represent the document for retrieval: ",
    "separation": "", "classification": "", "text-matching": "",
}
TEXTS = ["paris is the capital of france", "hello", "the quick brown fox jumps over the lazy dog " * 2]
HIDDEN, HEADS, LAYERS, INNER, RANK, ALPHA = 32, 4, 2, 64, 4, 2.0


def _linear_factors(g: torch.Generator, out: int, inp: int) -> dict[str, torch.Tensor]:
    return {"0.lora_A": torch.randn(len(TASKS), RANK, inp, generator=g) * 0.3,
            "0.lora_B": torch.randn(len(TASKS), out, RANK, generator=g) * 0.3}


def build_jina(out: Path, seed: int = 0, lora: bool = True) -> Path:
    """A tiny jina-embeddings-v3: config.json as published (``XLMRobertaLoRA``, rotary), every
    linear and embedding layer parametrized with five task adapters, modules.json (Jina's custom
    Transformer, mean Pooling, Normalize) and config_sentence_transformers.json's task prompts."""
    tok = bytelevel_bpe_tokenizer(padding_side="right")
    vocab = len(tok)
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def put(name: str, shape: tuple[int, ...], scale: float = 0.2, mean: float = 0.0, adapted: str | None = None) -> None:
        weight = torch.randn(*shape, generator=g) * scale + mean
        if adapted is None or not lora:
            tensors[name] = weight
            return
        base = name.removesuffix(".weight") + ".parametrizations.weight."
        tensors[base + "original"] = weight
        if adapted == "linear":
            factors = _linear_factors(g, shape[0], shape[1])
        else:  # an embedding: lora_A [tasks, vocab, r], lora_B [tasks, r, dim]
            factors = {"0.lora_A": torch.randn(len(TASKS), shape[0], RANK, generator=g) * 0.3,
                       "0.lora_B": torch.randn(len(TASKS), RANK, shape[1], generator=g) * 0.3}
        tensors.update({base + k: v for k, v in factors.items()})

    put("roberta.embeddings.word_embeddings.weight", (vocab, HIDDEN), 0.5, adapted="embedding")
    put("roberta.embeddings.token_type_embeddings.weight", (1, HIDDEN), 0.5, adapted="embedding")
    put("roberta.emb_ln.weight", (HIDDEN,), 0.2, 1.0)
    put("roberta.emb_ln.bias", (HIDDEN,), 0.2)
    for i in range(LAYERS):
        p = f"roberta.encoder.layers.{i}."
        for name, shape in (("mixer.Wqkv", (3 * HIDDEN, HIDDEN)), ("mixer.out_proj", (HIDDEN, HIDDEN)),
                            ("mlp.fc1", (INNER, HIDDEN)), ("mlp.fc2", (HIDDEN, INNER))):
            put(p + name + ".weight", shape, 0.25, adapted="linear")
            put(p + name + ".bias", shape[:1], 0.2)
        for norm in ("norm1", "norm2"):
            put(p + norm + ".weight", (HIDDEN,), 0.2, 1.0)
            put(p + norm + ".bias", (HIDDEN,), 0.2)
    put("roberta.pooler.dense.weight", (HIDDEN, HIDDEN), adapted="linear")  # unused, as in the published checkpoint
    put("roberta.pooler.dense.bias", (HIDDEN,))
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "model.safetensors")
    tok.save_pretrained(out)
    config = {
        # as published: the config names the plain XLMRobertaModel and reaches Jina's classes through
        # auto_map (remote code); vLLM builds its JinaRobertaModel from XLMRobertaModel when
        # position_embedding_type is "rotary" (RobertaEmbeddingModel, JinaRobertaModelConfig)
        "architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta",
        "auto_map": {"AutoConfig": "jinaai/xlm-roberta-flash-implementation--configuration_xlm_roberta.XLMRobertaFlashConfig",
                     "AutoModel": "jinaai/xlm-roberta-flash-implementation--modeling_lora.XLMRobertaLoRA"},
        "vocab_size": vocab, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "intermediate_size": INNER, "hidden_act": "gelu", "max_position_embeddings": 130, "type_vocab_size": 1,
        "layer_norm_eps": 1e-5, "position_embedding_type": "rotary", "rotary_emb_base": 20000.0,
        "pad_token_id": tok.pad_token_id, "bos_token_id": 0, "eos_token_id": 2,
        "lora_adaptations": TASKS, "lora_rank": RANK, "lora_alpha": ALPHA, "lora_dropout_p": 0.0,
        "lora_main_params_trainable": False, "load_trained_adapters": True, "task_instructions": INSTRUCTIONS,
        "use_flash_attn": True, "matryoshka_dimensions": [32, 16, 8],
    }
    (out / "config.json").write_text(json.dumps(config))
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "transformer", "path": "", "type": "custom_st.Transformer"},
        {"idx": 1, "name": "pooler", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "normalizer", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": HIDDEN, "pooling_mode_mean_tokens": True}))
    (out / "2_Normalize").mkdir()
    (out / "config_sentence_transformers.json").write_text(json.dumps({"prompts": INSTRUCTIONS, "default_prompt_name": None}))
    return out


@pytest.fixture(scope="module")
def jina(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_jina(tmp_path_factory.mktemp("jina") / "jina-v3")


# -- the reference --------------------------------------------------------------------------------


def merged(w: dict[str, torch.Tensor], task: str | None) -> dict[str, torch.Tensor]:
    """The checkpoint's weights with ``task``'s adapter merged (``None``: the base weights)."""
    out = {}
    scaling = ALPHA / RANK
    for name, tensor in w.items():
        if not name.endswith(".parametrizations.weight.original"):
            if ".parametrizations." not in name:
                out[name] = tensor
            continue
        layer = name.removesuffix(".parametrizations.weight.original")
        weight = tensor.clone()
        if task is not None:
            t = TASKS.index(task)
            a, b = w[layer + ".parametrizations.weight.0.lora_A"][t], w[layer + ".parametrizations.weight.0.lora_B"][t]
            weight += scaling * ((a @ b) if ".embeddings." in layer else (b @ a))
        out[layer + ".weight"] = weight
    return out


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def reference_hidden(w: dict[str, torch.Tensor], seqs: list[list[int]], base: float = 20000.0) -> list[torch.Tensor]:
    """Jina's XLM-RoBERTa flash forward on one right-padded batch."""
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[True] * len(s) + [False] * (width - len(s)) for s in seqs])
    p = "roberta."
    x = F.embedding(ids, w[p + "embeddings.word_embeddings.weight"]) + w[p + "embeddings.token_type_embeddings.weight"][0]
    x = F.layer_norm(x, (HIDDEN,), w[p + "emb_ln.weight"], w[p + "emb_ln.bias"], 1e-5)
    head = HIDDEN // HEADS
    inv = 1.0 / base ** (torch.arange(0, head, 2).float() / head)
    angles = torch.arange(width).float()[:, None] * inv[None]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    for i in range(LAYERS):
        q = f"{p}encoder.layers.{i}."
        qkv = F.linear(x, w[q + "mixer.Wqkv.weight"], w[q + "mixer.Wqkv.bias"]).view(len(seqs), width, 3, HEADS, head)
        qh, kh, vh = (qkv[:, :, j].transpose(1, 2) for j in range(3))
        qh, kh = _rotate(qh, cos, sin), _rotate(kh, cos, sin)
        scores = (qh @ kh.transpose(-1, -2)) / head**0.5
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        attended = (scores.softmax(-1) @ vh).transpose(1, 2).reshape(len(seqs), width, HIDDEN)
        x = F.layer_norm(x + F.linear(attended, w[q + "mixer.out_proj.weight"], w[q + "mixer.out_proj.bias"]), (HIDDEN,),
                         w[q + "norm1.weight"], w[q + "norm1.bias"], 1e-5)
        h = F.gelu(F.linear(x, w[q + "mlp.fc1.weight"], w[q + "mlp.fc1.bias"]))
        x = F.layer_norm(x + F.linear(h, w[q + "mlp.fc2.weight"], w[q + "mlp.fc2.bias"]), (HIDDEN,),
                         w[q + "norm2.weight"], w[q + "norm2.bias"], 1e-5)
    return [x[i, : len(s)] for i, s in enumerate(seqs)]


def reference_embeddings(path: Path, texts: list[str], task: str | None) -> torch.Tensor:
    """Jina's ``encode(texts, task=task)``: the task's instruction first, its adapter merged, mean, L2."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    prefix = INSTRUCTIONS[task] if task is not None else ""
    seqs = [tok(prefix + t)["input_ids"] for t in texts]
    hidden = reference_hidden(merged(load_file(path / "model.safetensors"), task), seqs)
    return torch.stack([F.normalize(h.mean(0), dim=-1) for h in hidden])


def embed(llm: LLM, texts: list[str], **kwargs: object) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in llm.embed(texts, **kwargs)])


def with_config(checkpoint: Path, copy: Path, **changes: object) -> Path:
    """A copy of ``checkpoint`` at ``copy`` with ``changes`` in its config.json."""
    shutil.copytree(checkpoint, copy)
    raw = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**raw, **changes}))
    return copy


def all_tasks_in_one_run(llm: LLM) -> torch.Tensor:
    """``TEXTS`` for every task, prepared as the server's batcher does and run in one engine run
    (per-prompt adapters), float32, task after task."""
    prompts, params = [], []
    for task in TASKS:
        _, parsed, checked = llm.prepare(TEXTS, pooling_task="embed", prompt_name=task)
        prompts += list(parsed)
        params += checked
    return torch.stack(llm.run(llm.model.task("embed"), prompts, params).rows()).float()


# -- jina-embeddings-v3 ---------------------------------------------------------------------------


def test_loads_natively_with_its_five_adapters(jina: Path) -> None:
    llm = LLM(str(jina))
    info = llm.model.describe()
    assert info["architecture"] == "XLMRobertaModel" and info["implementation"] == "native"
    assert info["tasks"]["embed"]["pooling_type"]["value"] == "MEAN"
    adapters = llm.model.adapters
    assert [adapters.own(t).lora_name for t in TASKS] == TASKS
    assert adapters.own(None).lora_name == "text-matching"  # vLLM's merged choice for a request without a task


@pytest.mark.parametrize("task", TASKS)
def test_each_task_matches_jinas_encode(jina: Path, task: str) -> None:
    llm = LLM(str(jina))
    got = embed(llm, TEXTS, prompt_name=task)
    want = reference_embeddings(jina, TEXTS, task)
    assert (got - want).abs().max() <= ATOL, task
    others = [t for t in TASKS if t != task]
    assert min((got - reference_embeddings(jina, TEXTS, t)).abs().max() for t in others) > 1e-2  # the adapter matters


def test_no_task_is_text_matching_as_vllm_merges_it(jina: Path) -> None:
    got = embed(LLM(str(jina)), TEXTS)
    assert (got - reference_embeddings(jina, TEXTS, "text-matching")).abs().max() <= ATOL


def test_tasks_mix_in_one_batch(jina: Path) -> None:
    """Five tasks' requests through one call each, then all at once through the server's batcher
    path (one engine run with per-prompt adapters): the same vectors."""
    llm = LLM(str(jina))
    together = all_tasks_in_one_run(llm)
    one_by_one = torch.cat([embed(llm, TEXTS, prompt_name=t) for t in TASKS])
    assert (together - one_by_one).abs().max() <= 1e-5


def test_sentence_transformers_prompt_name(jina: Path) -> None:
    """sentence-transformers' ``encode(texts, task=..., prompt_name=...)`` of the model card."""
    from poolkit import SentenceTransformer

    model = SentenceTransformer(str(jina))
    got = torch.as_tensor(model.encode(TEXTS, prompt_name="retrieval.passage"))
    assert (got - reference_embeddings(jina, TEXTS, "retrieval.passage")).abs().max() <= ATOL


def test_unknown_task_is_refused(jina: Path) -> None:
    with pytest.raises(InvalidRequest, match="retrieval.querie"):
        LLM(str(jina)).embed(TEXTS, prompt_name="retrieval.querie")


def test_without_adapters_it_is_the_base_model(tmp_path: Path) -> None:
    """A rotary Jina checkpoint saved with the adapters merged (no parametrizations): the base math."""
    path = build_jina(tmp_path / "plain", seed=3, lora=False)
    llm = LLM(str(path))
    assert llm.model.adapters is None
    assert (embed(llm, TEXTS) - reference_embeddings(path, TEXTS, None)).abs().max() <= ATOL


def test_server_task_field(jina: Path) -> None:
    """Jina's API: ``task`` in the body of ``/v1/embeddings``."""
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    with TestClient(create_app(LLM(str(jina)))) as client:
        body = client.post("/v1/embeddings", json={"input": TEXTS, "task": "retrieval.query"}).json()
        got = torch.tensor([d["embedding"] for d in body["data"]])
        assert (got - reference_embeddings(jina, TEXTS, "retrieval.query")).abs().max() <= ATOL
        bad = client.post("/v1/embeddings", json={"input": TEXTS, "task": "nope"})
        assert bad.status_code == 400 and "nope" in bad.json()["error"]["message"]


# -- jina-colbert-v2 ------------------------------------------------------------------------------


def test_jina_colbert_v2(tmp_path: Path) -> None:
    """jina-colbert-v2: the rotary body (its adapters merged at save), ``linear`` to 16 dims, every
    token L2-normalised, MaxSim scores, as vLLM's ColBERTJinaRobertaModel."""
    path = build_jina(tmp_path / "colbert", seed=5, lora=False)
    (path / "modules.json").unlink()
    weights = load_file(path / "model.safetensors")
    weights["linear.weight"] = torch.randn(16, HIDDEN, generator=torch.Generator().manual_seed(1)) * 0.3
    save_file(weights, path / "model.safetensors")
    llm = LLM(str(path), hf_overrides={"architectures": ["ColBERTJinaRobertaModel"]})
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    seqs = [tok(t)["input_ids"] for t in TEXTS]
    want = [F.normalize(h @ weights["linear.weight"].T, dim=-1) for h in reference_hidden(weights, seqs)]
    outs = llm.encode(TEXTS, pooling_task="token_embed")
    for out, ref in zip(outs, want):
        assert (torch.as_tensor(out.outputs.data).float() - ref).abs().max() <= ATOL
    (score,) = llm.score(TEXTS[0], TEXTS[2])
    assert abs(score.outputs.score - float((want[0] @ want[2].T).max(-1).values.sum())) <= 1e-3


def test_refuses_absolute_positions(jina: Path, tmp_path: Path) -> None:
    from poolkit.contracts.errors import ModelLoadError

    # Jina's own name: XLMRobertaModel with absolute positions is XLM-R's
    other = with_config(jina, tmp_path / "absolute", position_embedding_type="absolute", architectures=["XLMRobertaLoRA"])
    with pytest.raises(ModelLoadError, match="position_embedding_type 'absolute' is not Jina's rotary XLM-RoBERTa"):
        LLM(str(other))


def test_adapter_of_another_task_count_is_named(jina: Path, tmp_path: Path) -> None:
    from poolkit.contracts.errors import ModelLoadError

    other = with_config(jina, tmp_path / "fewer", lora_adaptations=TASKS[:3])
    with pytest.raises(ModelLoadError, match="does not hold lora_A and lora_B for the 3 lora_adaptations"):
        LLM(str(other))


def test_the_published_name_and_jinas_own_give_the_same_vectors(jina: Path) -> None:
    """The published ``XLMRobertaModel`` with rotary positions is Jina's model (vLLM's reading): the
    same vectors, every task, as its remote code's ``XLMRobertaLoRA`` and vLLM's ``JinaRobertaModel``."""
    published = LLM(str(jina))
    for name in ("XLMRobertaLoRA", "JinaRobertaModel"):
        named = LLM(str(jina), hf_overrides={"architectures": [name]})
        for task in TASKS:
            assert torch.equal(embed(published, TEXTS, prompt_name=task), embed(named, TEXTS, prompt_name=task)), (name, task)


def test_the_seed_documents_line_loads_it(jina: Path) -> None:
    """vLLM's ``LLM(model="jinaai/jina-embeddings-v3", runner="pooling", trust_remote_code=True)``:
    the same native model (the remote code is never run), the same vectors."""
    seed = LLM(str(jina), runner="pooling", trust_remote_code=True)
    assert seed.model.describe()["implementation"] == "native"
    assert torch.equal(embed(seed, TEXTS, prompt_name="retrieval.query"), embed(LLM(str(jina)), TEXTS, prompt_name="retrieval.query"))


def test_another_encoder_with_rotary_positions_names_jinas(jina: Path) -> None:
    """A RoBERTa name other than the one Jina publishes under, with rotary positions, is refused
    with the architecture to use."""
    from poolkit.contracts.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"position_embedding_type 'rotary' is Jina's rotary XLM-RoBERTa .*XLMRobertaLoRA"):
        LLM(str(jina), hf_overrides={"architectures": ["RobertaModel"]})


def test_bfloat16_follows_float32_with_every_task(jina: Path) -> None:
    """In bf16 (the adapters' products in bf16 too) each task's embedding stays within cosine
    0.999 of fp32's reference: the tiny model's random weights are far from a trained model's scale."""
    llm = LLM(str(jina), dtype="bfloat16")
    for task in TASKS:
        got = embed(llm, TEXTS, prompt_name=task)
        want = reference_embeddings(jina, TEXTS, task)
        assert torch.isfinite(got).all()
        assert F.cosine_similarity(got, want).min() >= 0.999, task


def test_batch_invariance(jina: Path) -> None:
    """A text's vector does not depend on what else runs in its batch, or its task's neighbours'."""
    llm = LLM(str(jina))
    alone = [embed(llm, [t], prompt_name="retrieval.query")[0] for t in TEXTS]
    together = embed(llm, TEXTS, prompt_name="retrieval.query")
    assert (torch.stack(alone) - together).abs().max() <= 1e-5


# -- jina-embeddings-v3 as transformers ships it (jinaai/jina-embeddings-v3-hf) ----------------------
#
# The reference is transformers' own JinaEmbeddingsV3Model (AutoModel, loading the tensors saved
# under Jina's names through its conversion mapping) with each task's PEFT adapter applied by PEFT,
# then mean pooling and L2 normalisation, as transformers' documentation of the model embeds a
# sentence. The checkpoint is laid out as the -hf repository (tests/support/tiny_rotary_encoders.py,
# build_jina_v3_hf, says where each part of the layout comes from).


@pytest.fixture(scope="module")
def jina_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_rotary_encoders import build_jina_v3_hf

    return build_jina_v3_hf(tmp_path_factory.mktemp("jina") / "jina-v3-hf")


@pytest.fixture(scope="module")
def hf_reference(jina_hf: Path) -> dict[str | None, torch.Tensor]:
    """transformers' and PEFT's embeddings of ``TEXTS``, per Jina task name (``None``: no adapter)."""
    from peft import PeftModel
    from tiny_rotary_encoders import JINA_V3_HF_TASKS
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(jina_hf))
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].unsqueeze(-1).float()
    folders = list(JINA_V3_HF_TASKS.items())
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(jina_hf), dtype=torch.float32), str(jina_hf / folders[0][1]), adapter_name=folders[0][1])
    for _, folder in folders[1:]:
        model.load_adapter(str(jina_hf / folder), adapter_name=folder)
    model.eval()

    def mean_normalized() -> torch.Tensor:
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    out: dict[str | None, torch.Tensor] = {}
    for task, folder in folders:
        model.set_adapter(folder)
        out[task] = mean_normalized()
    with model.disable_adapter():
        out[None] = mean_normalized()
    return out


def test_hf_layout_loads_natively_with_its_five_adapters(jina_hf: Path) -> None:
    llm = LLM(str(jina_hf))
    info = llm.model.describe()
    assert info["architecture"] == "JinaEmbeddingsV3Model" and info["implementation"] == "native"
    assert [llm.model.adapters.own(t).lora_name for t in TASKS] == TASKS
    assert llm.model.adapters.own(None).lora_name == "text-matching"
    assert set(info["prompts"]) == set(TASKS)  # the tasks are its prompt names, with no instruction


@pytest.mark.parametrize("task", TASKS)
def test_hf_layout_each_task_matches_transformers_and_peft(jina_hf: Path, hf_reference: dict, task: str) -> None:
    got = embed(LLM(str(jina_hf)), TEXTS, prompt_name=task)
    assert (got - hf_reference[task]).abs().max() <= ATOL, task
    assert min((got - hf_reference[t]).abs().max() for t in [*TASKS, None] if t != task) > 1e-2  # the adapter matters


def test_hf_layout_no_task_is_text_matching(jina_hf: Path, hf_reference: dict) -> None:
    assert (embed(LLM(str(jina_hf)), TEXTS) - hf_reference["text-matching"]).abs().max() <= ATOL


def test_hf_layout_sentence_transformers_prompt_name(jina_hf: Path, hf_reference: dict) -> None:
    """The sentence-transformers drop-in names the -hf checkpoint's tasks by prompt name (or Jina's
    ``task``), though it ships no prompts: each runs its adapter, with no text before the input."""
    from poolkit import SentenceTransformer

    model = SentenceTransformer(str(jina_hf))
    for task in TASKS:
        got = torch.as_tensor(model.encode(TEXTS, prompt_name=task))
        assert (got - hf_reference[task]).abs().max() <= ATOL, task
    by_task = torch.as_tensor(model.encode(TEXTS, task="retrieval.query"))
    assert (by_task - hf_reference["retrieval.query"]).abs().max() <= ATOL


def test_hf_layout_tasks_mix_in_one_batch(jina_hf: Path, hf_reference: dict) -> None:
    """All five tasks' requests in one engine run (per-prompt adapters): each as transformers gives it."""
    together = all_tasks_in_one_run(LLM(str(jina_hf)))
    want = torch.cat([hf_reference[t] for t in TASKS])
    assert (together - want).abs().max() <= ATOL


def test_hf_layout_server_task_field(jina_hf: Path, hf_reference: dict) -> None:
    """Jina's API ``task`` on ``/v1/embeddings`` picks the -hf checkpoint's adapter too."""
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    with TestClient(create_app(LLM(str(jina_hf)))) as client:
        body = client.post("/v1/embeddings", json={"input": TEXTS, "task": "retrieval.passage"}).json()
        got = torch.tensor([d["embedding"] for d in body["data"]])
        assert (got - hf_reference["retrieval.passage"]).abs().max() <= ATOL
        bad = client.post("/v1/embeddings", json={"input": TEXTS, "task": "retrieval_passage"})
        assert bad.status_code == 400 and "retrieval_passage" in bad.json()["error"]["message"]


def test_hf_layout_without_adapters_is_transformers_base_model(tmp_path: Path, jina_hf: Path, hf_reference: dict) -> None:
    """The body alone (no adapter folders): transformers' model without an adapter, no task to name."""
    from tiny_rotary_encoders import JINA_V3_HF_TASKS

    plain = tmp_path / "plain"
    shutil.copytree(jina_hf, plain, ignore=shutil.ignore_patterns(*JINA_V3_HF_TASKS.values()))
    llm = LLM(str(plain))
    assert llm.model.adapters is None and llm.model.describe()["prompts"] == {}
    assert (embed(llm, TEXTS) - hf_reference[None]).abs().max() <= ATOL
    with pytest.raises(InvalidRequest, match="retrieval.query"):
        llm.embed(TEXTS, prompt_name="retrieval.query")


def test_hf_layout_refuses_a_scaled_rotary(jina_hf: Path, tmp_path: Path) -> None:
    from poolkit.contracts.errors import ModelLoadError

    other = with_config(jina_hf, tmp_path / "scaled", rope_parameters={"rope_type": "linear", "rope_theta": 20000.0, "factor": 2.0})
    with pytest.raises(ModelLoadError, match="rope_type 'linear' is not Jina's rotary XLM-RoBERTa"):
        LLM(str(other))


def test_hf_layout_refuses_an_adapter_that_is_not_plain_lora(jina_hf: Path, tmp_path: Path) -> None:
    from poolkit.contracts.errors import ModelLoadError

    other = tmp_path / "dora"
    shutil.copytree(jina_hf, other)
    config_file = other / "separation" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "use_dora": True}))
    with pytest.raises(ModelLoadError, match=r"^the separation adapter in separation/ is not a plain LoRA adapter"):
        LLM(str(other))
