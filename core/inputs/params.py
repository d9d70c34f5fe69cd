"""Per-request parameters: what ``pooling_params`` and ``tokenization_kwargs`` a caller gave, turned
into one verified :class:`~poolkit.contracts.params.PoolingParams` per prompt (``LLM.check_params``),
the one rule both the renderer's door (:meth:`poolkit.inputs.Renderer.render`) and
``LLM.check_params`` apply."""

from __future__ import annotations

from typing import Any

from ..contracts.errors import InvalidRequest
from ..contracts.params import LateChunkingParams, PoolingParams
from ..loading.model import PoolingModel
from ..plugins.manager import registry
from ..runtime.engine import Engine

_TOKENIZATION_KWARGS = ("truncate_prompt_tokens", "truncation_side")


def _late_chunked(params: Any) -> bool:
    """Whether one caller-given pooling parameter (object, dict or ``None``) asks for late chunking."""
    if isinstance(params, dict):
        return params.get("late_chunking_params") is not None
    return getattr(params, "late_chunking_params", None) is not None


def _truncation_switch(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``tokenization_kwargs`` with vLLM's ``truncation`` read into ``truncate_prompt_tokens``:
    ``True`` / ``"longest_first"`` truncates to the model's limit (unless a number is given),
    ``False`` / ``"do_not_truncate"`` sets it to ``None`` explicitly (a model that truncates by
    default, a CrossEncoder export, then refuses over-long inputs).

    Raises:
        InvalidRequest: another value, or truncation off with a number of tokens to keep.
    """
    out = dict(kwargs)
    switch = out.pop("truncation")
    if switch is True or switch == "longest_first":
        out.setdefault("truncate_prompt_tokens", -1)
    elif switch is False or switch == "do_not_truncate":
        if out.get("truncate_prompt_tokens") is not None:
            raise InvalidRequest("tokenization_kwargs truncation turns truncation off; drop truncate_prompt_tokens or the switch")
        out["truncate_prompt_tokens"] = None
    else:
        raise InvalidRequest(
            f"tokenization_kwargs truncation must be true, false, 'longest_first' or 'do_not_truncate', got {switch!r}"
        )
    return out


def check_params(
    model: PoolingModel,
    engine: Engine,
    pooling_params: Any,
    count: int,
    task_name: str,
    tokenization_kwargs: dict[str, Any] | None = None,
    side: str | None = None,
) -> list[PoolingParams]:
    """One verified :class:`PoolingParams` per prompt, the task's defaults filled in (:meth:`LLM.check_params`)
    for the retrieval ``side`` the prompts are encoded in."""
    if pooling_params is None or isinstance(pooling_params, (PoolingParams, dict)):
        given = [pooling_params] * count
    elif isinstance(pooling_params, (list, tuple)):
        if len(pooling_params) != count:
            raise InvalidRequest(f"The lengths of prompts ({count}) and params ({len(pooling_params)}) must be the same.")
        given = list(pooling_params)
    else:
        raise InvalidRequest(f"pooling_params must be PoolingParams or a list of them, got {type(pooling_params).__name__}")
    extra = dict(tokenization_kwargs or {})
    unknown = set(extra) - set(_TOKENIZATION_KWARGS)
    if unknown & LateChunkingParams.TEXT_CHANGING_KWARGS and any(map(_late_chunked, given)):
        raise InvalidRequest(LateChunkingParams.TEXT_CHANGES)
    if "truncation" in extra:  # vLLM's switch: on (to the model's limit) or off (over-long is an error)
        extra = _truncation_switch(extra)
        unknown.discard("truncation")
    if unknown:
        raise InvalidRequest(f"unsupported tokenization_kwargs: {', '.join(sorted(unknown))}")
    task = registry("task").get(task_name)
    if count > 1 and all(g is given[0] for g in given):  # one object for every prompt: verified once
        return check_params(model, engine, given[0], 1, task_name, tokenization_kwargs, side) * count
    out = []
    verified: dict[int, PoolingParams] = {}  # one object given for many prompts is verified once
    for given_p in given:
        p = given_p
        if id(given_p) in verified:
            out.append(verified[id(given_p)])
            continue
        if p is None:
            p = PoolingParams()
        elif isinstance(p, dict):
            p = PoolingParams(**p)
        elif not isinstance(p, PoolingParams):
            raise InvalidRequest(f"pooling_params items must be PoolingParams, got {type(p).__name__}")
        if p.task is not None and p.task != task_name:
            raise InvalidRequest(f"You cannot overwrite param.task={p.task!r} with pooling_task={task_name!r}!")
        update = {k: v for k, v in extra.items() if getattr(p, k) is None}
        for name, default in task.param_defaults(model, side).items():
            if getattr(p, name) is None:
                update[name] = default
        p = p.model_copy(update={"task": task_name, **update}).on_side(side)
        task.verify(p, model)
        engine.check_truncation(p.truncate_prompt_tokens)
        verified[id(given_p)] = p
        out.append(p)
    return out
