# Port of sentence-transformers tests/multi_vector_encoder/test_backends.py
# One stored version was read (4,828 characters). Its ONNX / OpenVINO export, save and quantization
# tests are out of scope (INVENTORY.md); test_incorrect_backend checks a bad constructor argument.
# Stand-in: upstream's saved tiny MultiVectorEncoder (stsb-bert-tiny converted, queries expanded to 16)
# -> the ColBERT pipeline sentence-transformers built on all-MiniLM-L6-v2 and saved (``colbert_mve_dir``).
from __future__ import annotations

import pytest


def test_incorrect_backend(colbert_mve_dir, load_mve, load_mve_reference) -> None:
    with pytest.raises(ValueError):
        load_mve(colbert_mve_dir, backend="incorrect_backend")
    # POOLKIT (beyond upstream): sentence-transformers refuses it the same way.
    with pytest.raises(ValueError):
        load_mve_reference(colbert_mve_dir, backend="incorrect_backend")
