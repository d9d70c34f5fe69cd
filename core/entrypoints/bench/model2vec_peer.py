"""``poolkit bench --vs model2vec``: model2vec's own ``StaticModel`` on the same folder, the library
the potion models (minishlab/potion-base-8M, ...) are published for, against poolkit's
``StaticModel`` (:mod:`poolkit.builtin_models.static`).

model2vec runs as its users call it: ``StaticModel.from_pretrained(path).encode(texts)`` with its
defaults (batches of 1024 texts, ``max_length`` 512, joblib worker processes beyond 10,000 texts),
in numpy, in its table's dtype; the bench's ``batch_size`` (sentence-transformers' 32) and
``--peer-dtype`` are not passed on. It pads nothing, and has no cross-encoder, ColBERT or SPLADE
side. Being model2vec itself, it is also the parity reference.
"""

from __future__ import annotations

import importlib.metadata
import multiprocessing
import sys
from typing import TYPE_CHECKING, Any

from ...contracts.errors import InvalidRequest
from .base import Peer, SkipWorkload
from .measure import _peak_rss_mb

if TYPE_CHECKING:
    from model2vec import StaticModel

    from ...config.settings import EngineArgs
    from ...contracts.architecture import LoadedModel

#: The architecture model2vec's folders are served by (``config.json`` ``architectures``).
MODEL2VEC_ARCHITECTURE = "StaticModel"


class Model2VecPeer(Peer):
    """model2vec's ``StaticModel`` on the same model folder (CPU only: it computes with numpy)."""

    key = "model2vec"
    name = "model2vec"
    skipped = {
        "W4": "model2vec has no cross-encoder",
        "W6": "no model runs in it (the MaxSim kernel against a padded einsum); run it without --vs model2vec",
        "W7": "model2vec has no sparse (SPLADE) encoder",
    }

    def default_dtype(self, dtype: str, device_type: str) -> str:
        """float32: model2vec computes in its table's dtype, float32 for a float32 table."""
        return "float32"

    def check_ours(self, model: LoadedModel) -> str | None:
        if model.architecture_name != MODEL2VEC_ARCHITECTURE:
            return f"model2vec loads its own folders (config.json architectures {MODEL2VEC_ARCHITECTURE}); this is {model.architecture_name}"
        return None

    def model(self, cls: str, path: str, device: str, dtype: str) -> Any:
        if cls != "SentenceTransformer":
            raise SkipWorkload(f"model2vec has no {cls}")
        if device != "cpu":
            raise InvalidRequest("--vs model2vec compares on the CPU (model2vec computes with numpy): run the bench with --device cpu")
        try:
            from model2vec import StaticModel
        except ImportError:
            return None
        return Model2VecModel(StaticModel.from_pretrained(path))

    def padding_fraction(self, lengths: list[int]) -> float:
        return 0.0  # each text's tokens, one at a time

    def cold_start(self, args: EngineArgs, model_dir: str, device: str) -> list[str]:
        code = f"from model2vec import StaticModel; StaticModel.from_pretrained({model_dir!r}).encode(['hello'])"
        return [sys.executable, "-c", code]

    def peak_rss_mb(self, args: EngineArgs, payload: Any, dtype: str, task: str = "embed") -> float:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_rss_child, args=(args.model, payload, queue))
        proc.start()
        proc.join(timeout=600)
        return float(queue.get(timeout=5)) if proc.exitcode == 0 else float("nan")

    def implementation(self, encoder: Any) -> str:
        return f"model2vec {importlib.metadata.version('model2vec')} (numpy, {encoder.model.embedding_dtype} table)"


class Model2VecModel:
    """model2vec's ``StaticModel`` with the sentence-transformers ``encode`` the workloads call."""

    def __init__(self, model: StaticModel) -> None:
        self.model = model

    def encode(self, texts: str | list[str], batch_size: int = 32, convert_to_tensor: bool = False) -> Any:
        """Embeddings of ``texts`` (one vector for one string), with model2vec's own defaults."""
        import torch

        vectors = self.model.encode(texts)
        return torch.from_numpy(vectors) if convert_to_tensor else vectors


def _rss_child(path: str, texts: list[str], queue: Any) -> None:
    from model2vec import StaticModel

    StaticModel.from_pretrained(path).encode(texts)
    queue.put(_peak_rss_mb())
