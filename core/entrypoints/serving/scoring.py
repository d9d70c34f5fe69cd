"""The Scoring API's steps that vLLM's and TEI's routes share: the model's scorer, and scoring pairs.

vLLM's ``/score`` and ``/rerank`` and TEI's ``/rerank`` score the pairs ``LLM.pair`` makes of a
request the same way; each route keeps its own request checks and answer shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...contracts.errors import InvalidRequest, UnknownName
from ...contracts.params import PoolingParams
from .call import Call
from .errors import ApiError
from .state import ModelState
from .work import check_tokens, until_done

if TYPE_CHECKING:
    from starlette.requests import Request

    from ...api.llm import LLM


def scorer_of(llm: LLM) -> Any:
    """The model's scorer (``LLM.scorer``); a 404 with the LLM's reason when the model cannot score.

    vLLM mounts ``/score`` and ``/rerank`` only for a model with a Scoring API (an embedding
    model, late interaction, or a classifier with one label): for any other model they are not
    found. The ``LLM`` says why (``Scoring API is only enabled for num_labels == 1.``).
    """
    try:
        return llm.scorer
    except (InvalidRequest, UnknownName) as exc:
        raise ApiError(404, str(exc)) from None


def has_scorer(llm: LLM) -> bool:
    """Whether the model has a Scoring API (``/score``, ``/rerank``)."""
    try:
        llm.scorer
    except (InvalidRequest, UnknownName):
        return False
    return True


async def score_pairs(
    call: Call | Request, st: ModelState, llm: LLM, pairs: tuple[list[str], list[str]], params: PoolingParams, instruction: str | None
) -> list[Any]:
    """Score the sides ``LLM.pair`` made of a request with ``LLM.score``, on the worker thread.

    The model's scorer decides whether a score template applies (``--score-template``, else
    ``--chat-template``, as in vLLM).
    """
    first, second = pairs
    scorer = scorer_of(llm)
    tokens = llm.estimate_pair_tokens(first, second)
    check_tokens(st, tokens)
    template = st.score_template_for(scorer)
    outputs = await until_done(
        call, st, st.batcher.call(lambda: llm.score(first, second, params, chat_template=template, instruction=instruction, lora_request=st.lora), tokens)
    )
    st.metrics.answered(len(outputs), sum(len(o.prompt_token_ids) for o in outputs))
    return outputs
