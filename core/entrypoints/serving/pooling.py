"""vLLM's ``/pooling`` work, whatever door asks for it: the task a request names (or the model's
default), its output options checked against that task, and the plugin task that takes ``data``
instead of inputs. vLLM's HTTP route (:mod:`poolkit.entrypoints.server.routes_vllm`) parses its JSON
into a :class:`Pooling`, asks :func:`plan` what runs, runs the inputs
(:func:`~poolkit.entrypoints.serving.inputs.run_inputs`) or :func:`run_plugin`, and writes the answer.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, NamedTuple

from ...contracts.errors import InvalidRequest, UnknownName, short
from ...contracts.tasks import Task, stray_options
from ...plugins.lookup import option_owners
from ...runtime.estimates import tokens_of_text
from .call import Call
from .errors import ApiError
from .state import ModelState
from .work import check_tokens, until_done

if TYPE_CHECKING:
    from ...api.llm import LLM


@dataclasses.dataclass(frozen=True)
class Pooling:
    """``/pooling``: the task (``None``: the model's default, or the plugin task for ``data``), the
    plugin task's ``data``, the task's output options and the encoding of tensor results."""

    task: str | None = None
    data: Any = None
    top_k: int | None = None
    threshold: float | None = None
    return_tokens: bool | None = None
    encoding_format: str = "float"

    @classmethod
    def of(cls, body: Any) -> Pooling:
        """The request of a body with the same fields (an HTTP route's parsed JSON)."""
        return cls(**{f.name: getattr(body, f.name) for f in dataclasses.fields(cls)})

    @property
    def options(self) -> dict[str, Any]:
        """The output options as sent (``None``: not sent)."""
        return {"top_k": self.top_k, "threshold": self.threshold, "return_tokens": self.return_tokens}


class Plan(NamedTuple):
    """What a ``/pooling`` request runs: its task and the output options it set, or (``task`` is
    ``None``) the plugin task named ``name`` over the request's ``data``."""

    task: Task | None
    name: str
    options: dict[str, Any]


def plan(req: Pooling, llm: LLM) -> Plan:
    """The task ``req`` runs, checked: a task the model serves (vLLM's words otherwise), output options
    that task takes, and an ``encoding_format`` its results can be written in."""
    plugin_task = llm.plugin_task
    name = req.task or (plugin_task if req.data is not None else llm.default_task)
    # Without an IO processor plugin the plugin task is just unsupported, as vLLM answers it.
    if req.data is not None or (name is not None and name == plugin_task and plugin_task in llm.supported_tasks):
        if name is None or name != plugin_task:
            raise ApiError(400, f"The 'data' field is only supported for the '{plugin_task}' pooling task.", param="data")
        if req.data is None:
            raise ApiError(400, f"task '{name}' takes its input in 'data'", param="data")
        return Plan(None, name, {})
    try:
        task = llm.task(name) if name is not None else None
    except (InvalidRequest, UnknownName):
        task = None
    if task is None:  # vLLM's words
        tasks = tuple(llm.supported_tasks)
        raise ApiError(400, f"Unsupported task: {short(name, 40)!r} Supported tasks: {tasks}", param="task")
    options = req.options
    if stray_options(task, options):
        owners = option_owners(options)
        where = f"task {' or '.join(repr(owner) for owner in owners)} only" if owners else "no task"
        raise ApiError(400, f"{_listed(list(options))} apply to {where}", param="task")
    options = {k: v for k, v in options.items() if v is not None}
    task.check_options(options)
    if not task.tensor_output and req.encoding_format != "float":
        raise ApiError(
            400, f"task '{task.name}' returns structured data, not tensors: use encoding_format 'float'", param="encoding_format"
        )
    return Plan(task, task.name, options)


def _listed(names: list[str]) -> str:
    """``a, b and c``."""
    return f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]


class PluginResult(NamedTuple):
    """What the plugin task made of ``data`` (its IO processor's own result), and the size of the
    ``data`` it read, in characters of JSON."""

    result: Any
    size: int


async def run_plugin(req: Pooling, name: str, call: Call, st: ModelState, llm: LLM) -> PluginResult:
    """The plugin task ``name`` over ``req.data``: the model's IO processor plugin makes the prompts
    and its own result."""
    data, batcher = req.data, st.batcher
    assert batcher is not None  # set when the model loads, before any request
    size = len(json.dumps(data))
    tokens = tokens_of_text(size)
    check_tokens(st, tokens, "data")
    outputs = await until_done(call, st, batcher.call(lambda: llm.encode({"data": data}, pooling_task=name), tokens))
    return PluginResult(outputs[0].outputs if outputs else None, size)
