"""jina-embeddings-v5-text (``JinaEmbeddingsV5Model``): one LoRA adapter per task over a Qwen3 body
(-small, :mod:`.qwen`) or a bidirectional EuroBERT body (-nano, :mod:`.eurobert`), every task
served from one loaded model.

As published (jinaai/jina-embeddings-v5-text-small and -nano): ``config.json`` names
``JinaEmbeddingsV5Model`` with ``model_type: "jina_embeddings_v5"`` and the tasks in ``task_names``,
over the body's own keys: Qwen3's for the small model, EuroBERT's with ``is_decoder: false`` for the
nano (each repository's ``configuration_jina_embeddings_v5.py`` subclasses ``Qwen3Config``
or ``EuroBertConfig`` under Jina's name; ``is_decoder`` is the one key that tells them apart, as
vLLM's ``JinaEmbeddingsV5Model`` reads it). transformers knows neither name, so the keys load as
they are written and the body's config class reads them here (:func:`read_body_config`), as
Jina's config class does. ``model.safetensors`` holds the bare body (``embed_tokens``,
``layers.*``, ``norm``, no prefix: vLLM's weights mapper adds ``model.`` for either body); each
task's adapter is a PEFT LoRA checkpoint of its own, ``adapters/<task>/adapter_config.json`` and
``adapter_model.safetensors`` (``base_model.model.layers.0.self_attn.q_proj.lora_A.weight``, ...,
on the seven projections of the body's layers). The publisher's code
(``modeling_jina_embeddings_v5.py``, ``custom_st.py``, the same for both bodies) sets the task's
adapter, puts ``"Query: "`` or ``"Document: "`` before each text (its sentence-transformers prompts
``query`` and ``document``, ``document`` unless a query is named), pools the last token (the nano's
too, bidirectional as it is) and L2-normalises.

vLLM (its ``JinaEmbeddingsV5Model``, which builds ``JinaEmbeddingsV5EncoderModel``, a bidirectional
Llama, for ``is_decoder: false``) merges one task's adapter into the weights at load
(``hf_overrides={"jina_task": ...}``, ``retrieval`` when none is named). Here the base weights load
as they are and the adapters are the checkpoint's own LoRA adapters (:meth:`task_adapters`,
:mod:`poolkit.lora`), kept in memory once and mixed in one batch: a request picks its task by prompt
name (``prompt_name``, the ``task`` of Jina's API; :meth:`task_prompts`): a task of ``task_names``
(``"Document: "`` first, as the publisher's ``encode(task=...)``), Jina's ``retrieval.query`` and
``retrieval.passage``, or the sentence-transformers ``query`` / ``document`` with the default
adapter (``retrieval``, vLLM's, or vLLM's ``jina_task`` override). The nano's body is
:class:`JinaEmbeddingsV5EncoderModel` (vLLM's name), which claims the published name for
``is_decoder: false``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Collection, Mapping

import torch

from poolkit.contracts.capabilities import ClaimsNames, TaskAdapters, TaskPrompt
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.loading.hf_config import one_line

from .blocks.adapters import peft_task_adapter
from .eurobert import EuroBertModel
from .qwen import Qwen3Model

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import Tokenizer

#: The texts the publisher's ``encode`` puts first (``modeling_jina_embeddings_v5.py``; the same as
#: the prompts of its ``config_sentence_transformers.json``): a query's, and anything else's.
QUERY_PREFIX = "Query: "
DOCUMENT_PREFIX = "Document: "
#: The task a request naming none runs: vLLM's ``_DEFAULT_TASK``, the adapter the publisher's code loads first.
DEFAULT_TASK = "retrieval"
#: Jina's API names of the retrieval task's two sides (its ``task`` field), and their prefixes.
RETRIEVAL_ROLES = {"retrieval.query": QUERY_PREFIX, "retrieval.passage": DOCUMENT_PREFIX}
#: The folder of the task adapters, one PEFT checkpoint per task (vLLM reads the same paths).
ADAPTERS_FOLDER = "adapters"
ADAPTER_CONFIG = "adapter_config.json"
#: The modules a task adapter may target: the projections of a Llama-style layer, Qwen3's and
#: EuroBERT's alike (the published adapters' ``target_modules`` name all seven).
ADAPTER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Qwen3's per-head query and key norms, which a EuroBERT body has none of.
_QK_NORM = re.compile(r"(?:^|\.)self_attn\.[qk]_norm\.")


def read_body_config(config: PretrainedConfig, model_type: str) -> None:
    """Read ``config`` (``config.json``'s keys as written, with ``hf_overrides``) as the body's
    transformers config class ``model_type`` reads them, in place: its defaults and what it derives
    (EuroBERT's ``head_dim``, ``hidden_size // num_attention_heads``) join them, as they do in the
    publisher's ``JinaEmbeddingsV5Config``, a subclass of that class.

    Raises:
        ModelLoadError: the class refuses the keys.
    """
    from transformers import AutoConfig

    keys = {key: value for key, value in config.to_dict().items() if key != "model_type"}
    try:
        body = AutoConfig.for_model(model_type, **keys)
    except Exception as exc:  # a config class that validates, or computes with a value it cannot use
        raise ModelLoadError(f"config.json of this JinaEmbeddingsV5Model does not make a valid '{model_type}' config: {one_line(exc)}") from None
    vars(config).update({key: value for key, value in vars(body).items() if key != "transformers_version"})


class JinaV5Tasks:
    """What both bodies of jina-embeddings-v5-text share: the body's config read from Jina's,
    the tasks of ``task_names`` as the checkpoint's own adapters, Jina's prompts, the last token
    L2-normalised. Mixed in before the body's class."""

    #: The transformers ``model_type`` of the body, whose config class reads ``config.json``.
    body_model_type: ClassVar[str]
    #: The body in words, for messages.
    body_name: ClassVar[str]
    #: The published model this body is, and what recognises it, for ``poolkit info``.
    published_as: ClassVar[str]
    recognised_by: ClassVar[str]
    default_pooling_type: ClassVar[str | None] = "LAST"
    config: PretrainedConfig

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """Read the body's config, refuse a config without tasks, and let requests ask for any
        width (the publisher's ``truncate_dim`` cuts to any)."""
        read_body_config(config, cls.body_model_type)
        tasks = getattr(config, "task_names", None)
        if not isinstance(tasks, (list, tuple)) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ModelLoadError(f"config.json of a JinaEmbeddingsV5Model must list its tasks in task_names, got {tasks!r}")
        chosen = getattr(config, "jina_task", None)
        if chosen is not None and chosen not in tasks:
            raise ModelLoadError(f"jina_task {chosen!r} is not one of the checkpoint's task_names {list(tasks)}")
        if getattr(config, "matryoshka_dimensions", None) is None:
            config.is_matryoshka = True
        super().configure(config, tokenizer)  # type: ignore[misc]

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)  # type: ignore[call-arg]
        self._tasks = list(config.task_names)
        # vLLM's hf_overrides={"jina_task": ...} names the task it merges: here, the one a request naming none runs
        chosen = getattr(config, "jina_task", None)
        self.default_task_adapter = chosen or (DEFAULT_TASK if DEFAULT_TASK in self._tasks else self._tasks[0])
        self._adapters: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._prompts = self._prompt_table()

    def _prompt_table(self) -> dict[str, TaskPrompt]:
        """Each prompt name a request may give: every task with the document prefix, Jina's two
        retrieval roles, and the sentence-transformers prompts with the default task."""
        prompts = {task: TaskPrompt(task, DOCUMENT_PREFIX) for task in self._tasks}
        if DEFAULT_TASK in self._tasks:
            prompts.update({role: TaskPrompt(DEFAULT_TASK, prefix) for role, prefix in RETRIEVAL_ROLES.items()})
        prompts["query"] = TaskPrompt(self.default_task_adapter, QUERY_PREFIX)
        prompts["document"] = TaskPrompt(self.default_task_adapter, DOCUMENT_PREFIX)
        return prompts

    def load_companion_files(self, model_dir: Path, allow_pickle: bool) -> None:
        """Read every task's adapter from ``adapters/<task>/``, a PEFT LoRA folder each, as the
        PEFT folders of jina-embeddings-v3-hf are read.

        Raises:
            ModelLoadError: a task's folder is missing, holds no plain LoRA adapter, or one that
                targets a module the body lacks.
        """
        folders = {task: Path(model_dir) / ADAPTERS_FOLDER / task for task in self._tasks}
        for task, folder in folders.items():
            if not (folder / ADAPTER_CONFIG).is_file():
                raise ModelLoadError(f"the adapter of task '{task}' is missing: no {ADAPTERS_FOLDER}/{task}/{ADAPTER_CONFIG} in the checkpoint")
        self._adapters = {task: peft_task_adapter(folder, task, allow_pickle) for task, folder in folders.items()}
        for task, factors in self._adapters.items():
            foreign = [layer for layer in factors if layer.rpartition(".")[2] not in ADAPTER_TARGETS]
            if foreign:
                raise ModelLoadError(
                    f"the {task} adapter targets {foreign[0]}, which the {self.body_name} body of this JinaEmbeddingsV5Model lacks "
                    f"(its adapters target {', '.join(ADAPTER_TARGETS)})"
                )

    def task_adapters(self) -> Mapping[str, Mapping[str, tuple[torch.Tensor, torch.Tensor]]]:
        """The tasks' adapters, as :meth:`load_companion_files` reads them."""
        return self._adapters

    def task_prompts(self) -> Mapping[str, TaskPrompt]:
        """The prompt names of :meth:`_prompt_table`."""
        return self._prompts

    def describe(self) -> dict[str, Any]:
        """``layout``: the published model the body is, and the config values it was recognised by."""
        return {"layout": {
            "value": f"{self.published_as} ({self.body_name} body, task adapters {', '.join(self._tasks)})",
            "source": f"config.json architectures JinaEmbeddingsV5Model, {self.recognised_by}; {ADAPTERS_FOLDER}/<task>/{ADAPTER_CONFIG}",
        }}


class JinaEmbeddingsV5Model(JinaV5Tasks, Qwen3Model, TaskAdapters):
    """jina-embeddings-v5-text-small: Qwen3, its task adapters mixed per request, the last token
    L2-normalised.

    Example:
        >>> llm = LLM("jinaai/jina-embeddings-v5-text-small")
        >>> llm.embed(["how do task adapters work?"], prompt_name="retrieval.query")
    """

    body_model_type: ClassVar[str] = "qwen3"
    body_name: ClassVar[str] = "Qwen3"
    published_as: ClassVar[str] = "jina-embeddings-v5-text-small"
    recognised_by: ClassVar[str] = "no is_decoder: false"


class JinaEmbeddingsV5EncoderModel(JinaV5Tasks, EuroBertModel, TaskAdapters, ClaimsNames):
    """jina-embeddings-v5-text-nano: EuroBERT (every token attending to its whole sequence), its
    task adapters mixed per request, the last token L2-normalised.

    Example:
        >>> llm = LLM("jinaai/jina-embeddings-v5-text-nano")
        >>> llm.embed(["how do task adapters work?"], prompt_name="retrieval.query")
    """

    #: Published as ``JinaEmbeddingsV5Model`` with ``is_decoder: false`` (vLLM's dispatch on that value).
    claims: ClassVar[Mapping[str, Mapping[str, Any]]] = {"JinaEmbeddingsV5Model": {"is_decoder": False}}
    body_model_type: ClassVar[str] = "eurobert"
    body_name: ClassVar[str] = "bidirectional EuroBERT"
    published_as: ClassVar[str] = "jina-embeddings-v5-text-nano"
    recognised_by: ClassVar[str] = "is_decoder: false"

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """Also refuse Qwen3 weights (its per-head ``q_norm`` / ``k_norm``) under ``is_decoder: false``."""
        qwen3 = sorted(name for name in shapes or {} if _QK_NORM.search(name))
        if qwen3:
            raise ModelLoadError(
                f"config.json says is_decoder: false (jina-embeddings-v5-text-nano's EuroBERT body), but the weights hold {qwen3[0]}, "
                "a Qwen3 body's (jina-embeddings-v5-text-small's config has no is_decoder: false)"
            )
        super().check_config(config, shapes, overridden)


@hookimpl
def poolkit_register_architectures(register):
    register("JinaEmbeddingsV5Model", JinaEmbeddingsV5Model)
    register("JinaEmbeddingsV5EncoderModel", JinaEmbeddingsV5EncoderModel)
