"""jina-embeddings-v5-text (``JinaEmbeddingsV5Model``): the Qwen3 body of :mod:`.qwen` with one LoRA
adapter per task, every task served from one loaded model.

As published (jinaai/jina-embeddings-v5-text-small): ``config.json`` names ``JinaEmbeddingsV5Model``
with ``model_type: "jina_embeddings_v5"`` (a Qwen3 config under Jina's name, read here as
``qwen3``) and the tasks in ``task_names``; ``model.safetensors`` holds the bare Qwen3 body
(``embed_tokens``, ``layers.*``, ``norm``, no prefix); each task's adapter is a PEFT LoRA
checkpoint of its own, ``adapters/<task>/adapter_config.json`` and ``adapter_model.safetensors``
(``base_model.model.layers.0.self_attn.q_proj.lora_A.weight``, ...). The publisher's code
(``modeling_jina_embeddings_v5.py``, ``custom_st.py``) sets the task's adapter, puts ``"Query: "``
or ``"Document: "`` before each text (its sentence-transformers prompts ``query`` and ``document``,
``document`` unless a query is named), pools the last token and L2-normalises.

vLLM (its ``JinaEmbeddingsV5Model``) merges one task's adapter into the weights at load
(``hf_overrides={"jina_task": ...}``, ``retrieval`` when none is named). Here the base weights load
as they are and the adapters are the checkpoint's own LoRA adapters (:meth:`task_adapters`,
:mod:`poolkit.lora`), kept in memory once and mixed in one batch: a request picks its task by prompt
name (``prompt_name``, the ``task`` of Jina's API; :meth:`task_prompts`): a task of ``task_names``
(``"Document: "`` first, as the publisher's ``encode(task=...)``), Jina's ``retrieval.query`` and
``retrieval.passage``, or the sentence-transformers ``query`` / ``document`` with the default
adapter (``retrieval``, vLLM's, or vLLM's ``jina_task`` override). jina-embeddings-v5-text-nano,
published under the same name with a bidirectional EuroBERT body (``is_decoder: false``), is
refused with its reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Mapping

import torch

from poolkit.contracts.capabilities import BorrowsConfig, TaskAdapters, TaskPrompt
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl

from .blocks.adapters import peft_task_adapter
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


class JinaEmbeddingsV5Model(Qwen3Model, TaskAdapters, BorrowsConfig):
    """jina-embeddings-v5-text-small: Qwen3, its task adapters mixed per request, the last token
    L2-normalised.

    Example:
        >>> llm = LLM("jinaai/jina-embeddings-v5-text-small")
        >>> llm.embed(["how do task adapters work?"], prompt_name="retrieval.query")
    """

    config_model_type: ClassVar[str | None] = "qwen3"

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """Refuse the EuroBERT body (jina-embeddings-v5-text-nano) and a config without tasks; let
        requests ask for any width (the publisher's ``truncate_dim`` cuts to any)."""
        if getattr(config, "is_decoder", True) is False:
            raise ModelLoadError(
                "this JinaEmbeddingsV5Model has a bidirectional EuroBERT body (is_decoder: false, "
                "jina-embeddings-v5-text-nano), which poolkit has no native port of; only the Qwen3 body is served"
            )
        tasks = getattr(config, "task_names", None)
        if not isinstance(tasks, (list, tuple)) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ModelLoadError(f"config.json of a JinaEmbeddingsV5Model must list its tasks in task_names, got {tasks!r}")
        chosen = getattr(config, "jina_task", None)
        if chosen is not None and chosen not in tasks:
            raise ModelLoadError(f"jina_task {chosen!r} is not one of the checkpoint's task_names {list(tasks)}")
        if getattr(config, "matryoshka_dimensions", None) is None:
            config.is_matryoshka = True
        super().configure(config, tokenizer)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
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
            ModelLoadError: a task's folder is missing, or holds no plain LoRA adapter.
        """
        folders = {task: Path(model_dir) / ADAPTERS_FOLDER / task for task in self._tasks}
        for task, folder in folders.items():
            if not (folder / ADAPTER_CONFIG).is_file():
                raise ModelLoadError(f"the adapter of task '{task}' is missing: no {ADAPTERS_FOLDER}/{task}/{ADAPTER_CONFIG} in the checkpoint")
        self._adapters = {task: peft_task_adapter(folder, task, allow_pickle) for task, folder in folders.items()}

    def task_adapters(self) -> Mapping[str, Mapping[str, tuple[torch.Tensor, torch.Tensor]]]:
        """The tasks' adapters, as :meth:`load_companion_files` reads them."""
        return self._adapters

    def task_prompts(self) -> Mapping[str, TaskPrompt]:
        """The prompt names of :meth:`_prompt_table`."""
        return self._prompts


@hookimpl
def poolkit_register_architectures(register):
    register("JinaEmbeddingsV5Model", JinaEmbeddingsV5Model)
