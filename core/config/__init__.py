"""Configuration: the load settings (``EngineArgs``) and what they select.

``settings`` validates every load setting once; ``conversion`` says what ``convert`` does and
which headless architecture serves a checkpoint; ``model_impl`` what ``model_impl`` allows;
``devices`` resolves ``dtype`` and ``device``; ``cpu`` says what the CPU can do, for that policy
and the kernels. The pooling configuration and the per-request
parameters are contracts (:mod:`poolkit.contracts.params`), named here too because
``from poolkit.config import PoolerConfig, PoolingParams, Setting`` is their documented path.

May import: ``contracts/``, ``plugins/``.
"""

from __future__ import annotations

from ..contracts.params import LateChunkingParams, PoolerConfig, PoolingParams, Setting

__all__ = ["LateChunkingParams", "PoolerConfig", "PoolingParams", "Setting"]
