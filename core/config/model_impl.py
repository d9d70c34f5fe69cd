"""The ``model_impl`` setting (vLLM's ``--model-impl``): which implementation may run a model.

Every architecture says how it runs (:attr:`poolkit.Architecture.implementation`); the setting
restricts the loader's choice to some of them, so that, for instance, a family poolkit runs
natively can be run through the transformers fallback to measure what its native code gains
(``poolkit bench --vs fallback``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..contracts.architecture import Architecture

#: The :attr:`Architecture.implementation <poolkit.Architecture.implementation>` of the transformers
#: fallback (``builtin_models/transformers_fallback.py``), which ``model_impl="transformers"`` asks for.
TRANSFORMERS_IMPLEMENTATION = "fallback (transformers)"


@dataclass(frozen=True)
class ModelImpl:
    """Which implementations a ``model_impl`` setting lets run a model.

    Attributes:
        only: the :attr:`Architecture.implementation` the serving architecture must declare;
            ``None`` for any.
        never: an implementation it must not declare, or ``None``.
    """

    only: str | None = None
    never: str | None = None

    def allows(self, cls: type[Architecture]) -> bool:
        return (self.only is None or cls.implementation == self.only) and cls.implementation != self.never


#: The ``model_impl`` settings, vLLM's spellings: ``auto`` prefers poolkit's own (native) code and
#: falls back to transformers; ``vllm``, vLLM's own code, is poolkit's here.
MODEL_IMPLS = {
    "auto": ModelImpl(),
    "poolkit": ModelImpl(never=TRANSFORMERS_IMPLEMENTATION),
    "vllm": ModelImpl(never=TRANSFORMERS_IMPLEMENTATION),
    "transformers": ModelImpl(only=TRANSFORMERS_IMPLEMENTATION),
}
