"""Every built-in model and task in bf16 (what dtype="auto" picks on bf16 hardware) follows fp32.

The BERT family keeps an fp32 residual stream around bf16 matmuls (mixed precision), so each
head must accept fp32 hidden states from a bf16 model; this runs every task of every kind of
model once in both dtypes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from poolkit import LLM

TEXTS = ["The capital of France is Paris.", "hello", "Neural sparse retrieval with SPLADE and friends."]
TASKS = ("embed", "classify", "token_embed", "token_classify", "sparse_embed")


def _colbert(root: Path) -> Path:
    from safetensors.torch import load_file, save_file
    from tiny_models import build_encoder

    path = build_encoder(root / "colbert", "bert", init_range=0.5)
    state = {f"bert.{k}": v for k, v in load_file(str(path / "model.safetensors")).items()}
    state["linear.weight"] = torch.randn(16, 32, generator=torch.Generator().manual_seed(5)) * 0.3
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config.update(architectures=["HF_ColBERT"], dim=16)
    (path / "config.json").write_text(json.dumps(config))
    return path


BUILDERS = {
    "bert": lambda root: __import__("tiny_models").build_encoder(root / "bert", "bert", init_range=0.1),
    "roberta-classifier": lambda root: __import__("tiny_models").build_classifier(root / "rc", "roberta", 3, init_range=0.1),
    "bert-token-classifier": lambda root: __import__("tiny_models").build_classifier(
        root / "tc", "bert", 4, token=True, init_range=0.1
    ),
    "splade": lambda root: __import__("tiny_models").build_masked_lm(root / "mlm", init_range=0.1),
    "modernbert": lambda root: __import__("tiny_models").build_modernbert(root / "mb", "classify", init_range=0.05),
    "nomic": lambda root: __import__("tiny_rotary_encoders").build_nomic(root / "nomic", gain=0.5),
    "gte-reranker": lambda root: __import__("tiny_rotary_encoders").build_gte(root / "gte", gain=0.5, num_labels=3),
    "mpnet": lambda root: __import__("tiny_models").build_mpnet(root / "mpnet", "classify", 3, init_range=0.05),
    "qwen3": lambda root: __import__("tiny_models").build_qwen(root / "qwen", "qwen3", init_range=0.05),
    "clip": lambda root: __import__("tiny_models").build_clip(root / "clip", gain=0.5),
    "colbert": _colbert,
    "llama-classifier": lambda root: __import__("tiny_models").build_decoder(
        root / "llama", "llama", "classify", num_labels=2, init_range=0.05
    ),
    "gemma3": lambda root: __import__("tiny_models").build_decoder(root / "gemma3", "gemma3", init_range=0.05),
    "fallback-phi3-classifier": lambda root: __import__("tiny_models").build_transformers_model(
        root / "phi3", "Phi3ForSequenceClassification", num_labels=2, init_range=0.05
    ),
    "fallback-electra-ner": lambda root: __import__("tiny_models").build_transformers_model(
        root / "electra", "ElectraForTokenClassification", num_labels=3, init_range=0.05
    ),
}


def _vectors(outputs) -> list[torch.Tensor]:
    return [torch.as_tensor(o.outputs.data).float().flatten() for o in outputs]


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_every_task_runs_in_bfloat16_and_follows_float32(kind: str, tmp_path: Path) -> None:
    path = str(BUILDERS[kind](tmp_path))
    full, half = LLM(path, dtype="float32"), LLM(path, dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16
    for head in (half.model.architecture.sequence_classifier(), half.model.architecture.token_classifier()):
        assert head is None or all(p.dtype == torch.float32 for p in head.parameters())
    tasks = [t for t in TASKS if t in full.supported_tasks]
    assert tasks
    for task in tasks:
        want, got = _vectors(full.encode(TEXTS, pooling_task=task)), _vectors(half.encode(TEXTS, pooling_task=task))
        for w, g in zip(want, got):
            assert g.shape == w.shape and torch.isfinite(g).all(), (kind, task)
            cosine = torch.nn.functional.cosine_similarity(w, g, dim=0).item()
            assert cosine > 0.99, (kind, task, cosine)
