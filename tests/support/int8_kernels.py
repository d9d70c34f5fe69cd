"""What the int8 kernel tests share: the one-pass kernels this machine builds, int8 weights, and a tiny
model of each native family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import build_clip, build_decoder, build_encoder, build_modernbert, build_mpnet, build_qwen

from poolkit.kernels import int8

#: The one-pass kernels of int8.c, each where this machine builds it: AMX-INT8 tiles, AVX512-VNNI
#: (a machine with AMX runs both; test_cpu_tiers runs the VNNI one again built for a CPU without AMX).
ONE_PASS = [
    pytest.param("amx", marks=pytest.mark.skipif(int8._amx_library() is None, reason="no AMX-INT8 here (or no compiler)")),
    pytest.param("vnni", marks=pytest.mark.skipif(int8._vnni_library() is None, reason="no AVX512-VNNI here (or no compiler)")),
]


def int8_weights(n: int, k: int, levels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An int8 weight ``[n, k]`` within ``[-levels, levels]`` (each row with both extremes, where a
    saturating int16 sum would overflow), its rows' scales and a bias."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-levels, levels + 1, (n, k), generator=g, dtype=torch.int8)
    q[:, 0], q[:, 1] = levels, -levels
    return q, torch.rand(n, generator=g) / 100 + 1e-3, torch.randn(n, generator=g)


def int8_family(kind: str, root: Path) -> Path:
    """A tiny random model of each native family the int8 tests run, built under ``root``."""
    if kind in ("bert", "roberta", "xlm-roberta"):
        return build_encoder(root, kind)
    return {
        "modernbert": lambda: build_modernbert(root, "embed"),
        "qwen3": lambda: build_qwen(root, "qwen3"),
        "llama": lambda: build_decoder(root, "llama"),
        "mpnet": lambda: build_mpnet(root),
        "clip": lambda: build_clip(root),
    }[kind]()
