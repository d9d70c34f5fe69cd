"""The scorer contract: how ``LLM.score`` and ``LLM.rerank`` compare a query with documents.

A scorer is registered through ``poolkit_register_scorers`` like any other plugin object. The
built-ins are a cross-encoder (a one-output classifier reads each pair together), a bi-encoder
(cosine of two embeddings) and late interaction (MaxSim of token vectors, ColBERT); a plugin adds
another kind the same way, and the API, the CLI and the server use it without edits.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar


class Scorer:
    """One way of scoring (query, document) pairs with a loaded model.

    The model's scorer is the one its architecture names in ``score_type``, else the supporting
    scorer with the highest :attr:`priority` (:func:`poolkit.lookup.select_scorer`). ``model``
    below is the loaded :class:`poolkit.model.PoolingModel`, ``llm`` the :class:`poolkit.LLM`.

    Attributes:
        name: the key users see (``llm.score_type``, the server's ``/v1/models``).
        priority: which scorer wins when several support a model; higher first.
        takes_template: whether score templates (``chat_template``, ``instruction``) apply.
    """

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    takes_template: ClassVar[bool] = False

    def supports(self, model: Any) -> bool:
        """Whether this scorer can score with ``model``."""
        raise NotImplementedError

    def refusal(self, model: Any) -> str | None:
        """Why ``model`` cannot score, when this scorer knows better than the generic message."""
        return None

    def score(
        self,
        llm: Any,
        first: list[str],
        second: list[str],
        pooling_params: Any,
        *,
        use_tqdm: bool,
        tokenization_kwargs: dict[str, Any] | None,
        chat_template: str | None,
        instruction: str | None,
    ) -> list[tuple[float, list[int]]]:
        """One ``(score, prompt token ids)`` per pair ``(first[i], second[i])``, in order.

        ``first`` and ``second`` have the same length (the API has paired them already).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<Scorer {self.name}>"


def check_scorer(name: str, obj: object) -> Scorer:
    """Registry check: a :class:`Scorer` instance or subclass (instantiated)."""
    if inspect.isclass(obj) and issubclass(obj, Scorer):
        obj = obj()
    if not isinstance(obj, Scorer):
        raise TypeError(f"scorer '{name}' must be a poolkit.Scorer, got {type(obj).__name__}")
    return obj
