"""A loaded model (:class:`PoolingModel`): its network, its tokenizer, and its pooling settings resolved.

Precedence for every pooling setting: the user's ``pooler_config`` > the sentence-transformers
files > the checkpoint's ``config.json`` (``use_activation``) > the architecture's default > the
task's default. Each resolved value remembers where it came from, which ``poolkit info`` shows.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config.conversion import CONVERSIONS, Conversion
from ..contracts.architecture import Architecture, TaskSpec
from ..contracts.checkpoint import Layout
from ..contracts.errors import InvalidRequest, UnknownName
from ..contracts.model import Tokenizer
from ..contracts.params import PoolerConfig, Setting
from ..contracts.pooling import Head, Pooler
from ..contracts.sentence_transformers import STConfig, TokenPoolingSpec
from ..contracts.tasks import SEQUENCE, TOKEN, Task
from ..plugins.lookup import kernel_table
from ..plugins.manager import registry

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from ..config.settings import EngineArgs

logger = logging.getLogger(__name__)


@dataclass(eq=False, repr=False)
class PoolingModel:
    """A loaded model: architecture, tokenizer and resolved pooling settings.

    Built by :func:`load_model`; the engine runs it and the tasks build their heads on it. Tasks
    and scorers read it and never change it: it is shared by every request. It is the
    :class:`~poolkit.contracts.architecture.LoadedModel` the contracts describe.
    """

    name: str
    path: Path
    hf_config: PretrainedConfig
    architecture_name: str
    architecture: Architecture
    tokenizer: Tokenizer
    st: STConfig | None
    pooler_config: PoolerConfig
    device: torch.device
    dtype: torch.dtype
    max_model_len: Setting
    allow_pickle: bool = False
    convert: str = "auto"
    #: The :class:`EngineArgs` the model was loaded with.
    args: EngineArgs | None = None
    #: What :meth:`Architecture.quantize` reported (layers in int8 and in float, the measured
    #: cosine), or ``None`` for a model that runs unquantized.
    quantization: dict[str, Any] | None = None
    #: For a model the transformers fallback runs, ``"transformers fallback: "`` and why (no
    #: native port, ``model_impl``, the remote code it refused); ``None`` for the others.
    fallback: str | None = None
    #: What :meth:`Architecture.inspect_checkpoint` warned of at load (a causal LM served as an embedder).
    warnings: list[str] = field(default_factory=list)
    #: Where the folder keeps its parts (``poolkit_checkpoint_layout``), ``None`` read as a plain Hugging Face folder.
    layout: Layout | None = None
    #: The model's LoRA adapters (:class:`poolkit.lora.manager.Adapters`), ``None`` without ``enable_lora``.
    adapters: Any = field(default=None, init=False)
    _heads: dict[str, Head | None] = field(default_factory=dict, init=False)
    #: Tasks served by the architecture's own head (:meth:`Architecture.task_head`).
    _own_heads: set[str] = field(default_factory=set, init=False)
    #: Tasks whose run has logged :meth:`ignored_pooling_type`.
    _warned_pooling: set[str] = field(default_factory=set, init=False)

    # -- settings ------------------------------------------------------------------------------

    @property
    def limit_mm_per_prompt(self) -> dict[str, int]:
        """Most media items of each kind one prompt may carry (the load setting, vLLM's
        ``limit_mm_per_prompt``); a kind it leaves out has the media processor's default."""
        return dict(getattr(self.args, "limit_mm_per_prompt", None) or {})

    @property
    def mm_processor_kwargs(self) -> dict[str, Any]:
        """The load setting ``mm_processor_kwargs`` (vLLM's): what the media IO processor reads
        over the checkpoint's ``preprocessor_config.json`` (a pixel budget, say)."""
        return dict(getattr(self.args, "mm_processor_kwargs", None) or {})

    @property
    def max_image_pixels(self) -> int | None:
        """The load setting ``max_image_pixels``: most pixels an image may have (``None``: the image IO
        processor's default)."""
        return getattr(self.args, "max_image_pixels", None)

    @property
    def max_image_bytes(self) -> int | None:
        """The load setting ``max_image_bytes``: most bytes of an image given as bytes, a data URI or a
        fetched URL (``None``: the image IO processor's default)."""
        return getattr(self.args, "max_image_bytes", None)

    def pooling_type(self, task: TaskSpec) -> Setting:
        """The upper-case names of the poolers ``task`` pools with here (several, outputs concatenated,
        for a sentence-transformers config's modes), and their source; :meth:`poolers` looks them up.

        First wins: the user's ``seq_pooling_type`` / ``tok_pooling_type``, ``pooling_type`` when its
        pooler has the task's granularity (as in vLLM; :meth:`ignored_pooling_type` says why not),
        the sentence-transformers config, the architecture's default, the task's.
        """
        cfg = self.pooler_config
        explicit = cfg.seq_pooling_type if task.granularity == "sequence" else cfg.tok_pooling_type
        if explicit is not None:
            return Setting((explicit.upper(),), "pooler_config")
        if cfg.pooling_type is not None:
            pooler = registry("pooler").get(cfg.pooling_type)
            if pooler.granularity == task.granularity:
                return Setting((registry("pooler").key(cfg.pooling_type),), "pooler_config")
        setting = self._default_pooling_type(task)
        note = self.ignored_pooling_type(task)
        return Setting(setting.value, f"{setting.source}; {note}") if note else setting

    def ignored_pooling_type(self, task: TaskSpec) -> str | None:
        """Why the user's ``pooling_type`` does not apply to ``task``, or ``None`` when it does or is unset."""
        name = self.pooler_config.pooling_type
        if name is None or task.granularity not in (SEQUENCE, TOKEN):
            return None
        pooler = registry("pooler").get(name)
        if pooler.granularity == task.granularity:
            return None
        return (
            f"pooling_type '{registry('pooler').key(name)}' pools {pooler.granularity}s, so it applies to "
            f"{pooler.granularity} tasks only; set seq_pooling_type or tok_pooling_type to choose each"
        )

    def poolers(self, task: TaskSpec) -> list[Pooler]:
        """The registered poolers :meth:`pooling_type` names for ``task``, in order.

        Raises:
            UnknownName: no plugin registered one of the names.
            InvalidRequest: a pooler pools another granularity than the task's.
        """
        names = self.pooling_type(task).value
        poolers = [registry("pooler").get(name) for name in names]
        for name, pooler in zip(names, poolers):
            if pooler.granularity != task.granularity:
                raise InvalidRequest(
                    f"pooling type '{name}' pools {pooler.granularity}s, but task '{task.name}' "
                    f"needs a {task.granularity} pooler"
                )
        return poolers

    def _default_pooling_type(self, task: TaskSpec) -> Setting:
        """:meth:`pooling_type` when the user's ``pooler_config`` names no pooler for ``task``."""
        if task.granularity == "sequence":
            if self.st is not None and self.st.pooling_modes:
                return Setting(self.st.pooling_modes, f"sentence-transformers {self.st.pooling_path}")
            default = self.architecture.default_pooling_type
        else:
            default = self.architecture.default_token_pooling_type
        if default is not None:
            return Setting((default,), f"architecture default ({self.architecture_name})")
        return Setting((task.default_pooling_type,), f"task default ({task.name})")

    def config_value(self, name: str) -> Setting:
        """A :class:`PoolerConfig` field: the user's value, else the architecture's default."""
        value = getattr(self.pooler_config, name)
        if value is not None:
            return Setting(value, "pooler_config")
        default = self.architecture.default_pooler_config.get(name)
        if default is not None:
            return Setting(default, f"architecture default ({self.architecture_name})")
        return Setting(None, "default")

    def use_activation(self, from_st_normalize: bool = True) -> Setting:
        """Whether heads apply their activation unless a request says otherwise: the user's
        ``pooler_config``, a sentence-transformers ``Normalize`` (embedding tasks), the checkpoint's
        ``config.json`` ``use_activation`` (or ``hf_overrides``), the architecture's default (raw
        rewards of Qwen2-Math-RM and Jamba's reward model, as in vLLM), else true.

        Args:
            from_st_normalize: the task's activation is the L2 normalisation that a
                sentence-transformers ``Normalize`` module stands for (embedding tasks).
        """
        if self.pooler_config.use_activation is not None:
            return Setting(self.pooler_config.use_activation, "pooler_config")
        st = self.st
        # PyLate normalises in code (also a PyLate folder without its config, served by an architecture with a
        # score type of its own, MaxSim, as vLLM normalises it); sentence-transformers' own multi-vector saves have the module
        late = st is not None and (st.late_interaction or self.architecture.score_type is not None)
        # as vLLM, modules.json without a Pooling module (nor Normalize) says nothing of it: a custom module
        # that pools in code (jina-embeddings-v5's custom_st.Transformer) leaves it to the defaults
        said = st is not None and bool(st.pooling_modes or st.normalize)
        st_normalize = st is not None and (st.model_type == "MultiVectorEncoder" or (st.model_type in (None, "SentenceTransformer") and not late and said))
        if from_st_normalize and st_normalize:
            return Setting(st.normalize, "sentence-transformers modules.json (Normalize)")
        declared = getattr(self.hf_config, "use_activation", None)
        if declared is not None:  # a bool: load_model checks it
            overrides = (self.args.hf_overrides or {}) if self.args is not None else {}
            return Setting(declared, "hf_overrides" if "use_activation" in overrides else "config.json use_activation")
        default = self.config_value("use_activation")
        return default if default.value is not None else Setting(True, "default")

    @cached_property
    def dimensions(self) -> Setting:
        """The default matryoshka width (``pooler_config.dimensions``); ``None``: full width."""
        return Setting(self.pooler_config.dimensions, "pooler_config" if self.pooler_config.dimensions else "default")

    @cached_property
    def token_pooling(self) -> TokenPoolingSpec | None:
        """How documents' token vectors are pooled when a request sets no ``token_pool_factor``: the
        user's ``pooler_config.token_pool_factor`` (``--token-pool-factor``), else the checkpoint's
        sentence-transformers ``HierarchicalTokenPooling`` module, else ``None`` (not pooled)."""
        factor = self.pooler_config.token_pool_factor
        if factor is not None:
            return TokenPoolingSpec(float(factor))
        return self.st.token_pooling if self.st is not None else None

    @cached_property
    def projector(self) -> torch.nn.Module | None:
        """The sentence-transformers Dense stack (fp32), or ``None``."""
        if self.st is None or not self.st.dense:
            return None
        return torch.nn.Sequential(*(d.build() for d in self.st.dense)).to(self.device).eval()

    @cached_property
    def embedding_size(self) -> int:
        """Width of an embedding: the last sentence-transformers Dense output, else ``hidden_size``
        (read once: the server sizes every response by it, and config reads are not free)."""
        if self.st is not None and self.st.dense:
            return int(self.st.dense[-1].weight.shape[0])
        return self.architecture.hidden_size

    @property
    def matryoshka_dimensions(self) -> list[int] | None:
        """The widths ``config.json`` (or ``hf_overrides``) declares, or ``None``."""
        dims = getattr(self.hf_config, "matryoshka_dimensions", None)
        return list(dims) if dims else None

    @property
    def is_matryoshka(self) -> bool:
        """Whether requests may ask for a smaller ``dimensions``."""
        return bool(self.matryoshka_dimensions) or bool(getattr(self.hf_config, "is_matryoshka", False))

    @property
    def has_classifier(self) -> bool:
        """Whether the model has a classifier (the architecture's, or a sentence-transformers
        CrossEncoder export's score modules): only then do ``num_labels`` and ``id2label`` apply."""
        arch = self.architecture
        scores = self.st is not None and self.st.score_outputs is not None
        return scores or arch.sequence_classifier() is not None or arch.token_classifier() is not None

    @property
    def num_labels(self) -> Setting:
        """Outputs of the classifiers, and where the number comes from."""
        overrides = set((self.args.hf_overrides or {}) if self.args is not None else ())
        source = "hf_overrides" if {"num_labels", "id2label"} & overrides else "config.json"
        if self.st is not None and self.st.score_outputs is not None:
            source = "sentence-transformers CrossEncoder score modules"
        return Setting(self.architecture.num_labels, source)

    @property
    def id2label(self) -> dict[int, str]:
        """Label names of the classifiers' outputs, by index; empty for a model without a classifier."""
        if not self.architecture.num_labels or not self.has_classifier:
            return {}
        raw = getattr(self.hf_config, "id2label", None) or {}
        return {int(k): str(v) for k, v in raw.items()}

    @property
    def do_lower_case(self) -> bool:
        """Whether inputs are lower-cased first (sentence-transformers ``do_lower_case``)."""
        return bool(self.st is not None and self.st.do_lower_case)

    @property
    def prompts(self) -> dict[str, str]:
        """The sentence-transformers prompts by name, and the prompt names of the checkpoint's own
        task adapters that they lack (:meth:`poolkit.lora.manager.Adapters.own_prompts`): a request
        names its task by prompt name even where the checkpoint ships no prompts
        (jina-embeddings-v3-hf's PEFT adapters)."""
        prompts = dict(self.st.prompts) if self.st is not None else {}
        own = self.adapters.own_prompts() if self.adapters is not None else {}
        return {**own, **prompts}

    @property
    def default_prompt_name(self) -> str | None:
        """The prompt used when a call names none, or ``None``."""
        return self.st.default_prompt_name if self.st is not None else None

    @property
    def include_prompt(self) -> bool:
        """Whether pooling includes a prompt's tokens (sentence-transformers ``include_prompt``)."""
        return self.st is None or self.st.include_prompt

    # -- tasks ---------------------------------------------------------------------------------

    def task(self, name: str) -> Task:
        """The registered task ``name`` (a deprecated alias resolved), checked against what this model can serve."""
        task = registry("task").get(name)
        if task.alias_of is not None:
            warnings.warn(
                f"task '{task.name}' is deprecated; use '{task.alias_of}'", DeprecationWarning, stacklevel=3
            )
            task = registry("task").get(task.alias_of)
        if self.head(task) is None:
            api = task.api_name or f"The {task.name}"
            raise InvalidRequest(
                f"{api} API is not supported by this model. Task {task.name} is not supported by model "
                f"'{self.name}'; supported tasks: {', '.join(self.supported_tasks()) or 'none'}"
            )
        pools = task.default_pooling_type is not None and task.name not in self._own_heads
        if pools and task.name not in self._warned_pooling and self.ignored_pooling_type(task):
            self._warned_pooling.add(task.name)  # once per model and task, not per request
            pooling = self.pooling_type(task)
            logger.warning("task %s pools with %s: %s", task.name, "+".join(pooling.value), pooling.source)
        return task

    def head(self, task: TaskSpec) -> Head | None:
        """The head serving ``task``: the architecture's own, else the task's; ``None`` if neither."""
        if task.name not in self._heads:
            offered = self.architecture.pooling_tasks
            if offered is not None and task.name not in offered:
                self._heads[task.name] = None
            else:
                own = self.architecture.task_head(task, self)
                if own is not None:
                    self._own_heads.add(task.name)
                    own = task.own_head(own, self)
                self._heads[task.name] = own if own is not None else task.build(self)
        return self._heads[task.name]

    @property
    def conversion(self) -> Conversion:
        """What the ``convert`` setting does to this model's checkpoint."""
        return CONVERSIONS[self.convert]

    def supported_tasks(self) -> list[str]:
        """The registered tasks this model can serve, derived from what their heads need."""
        supported = []
        for entry in registry("task").entries():
            try:
                if self.head(entry.obj) is not None:
                    supported.append(entry.name)
            except (InvalidRequest, UnknownName) as exc:
                logger.debug("task %s unavailable: %s", entry.name, exc)
        return supported

    def _architecture_plugin(self) -> str | None:
        """The plugin that registered the architecture serving the model (``None`` for a resolver's)."""
        archs = registry("architecture")
        if self.architecture_name not in archs or not isinstance(self.architecture, archs.get(self.architecture_name)):
            return None
        return archs.entry(self.architecture_name).plugin

    def _folder_layout(self) -> dict[str, Any]:
        """``describe()``'s ``layout`` entry when a ``poolkit_checkpoint_layout`` hook recognised the folder."""
        layout = self.layout
        return {} if layout is None or layout == Layout.plain(self.path) else {"layout": layout.shown()}

    def describe(self) -> dict[str, Any]:
        """Every resolved setting with its source, for ``poolkit info``."""
        tasks = {}
        for name in self.supported_tasks():
            task = registry("task").get(name)
            if name in self._own_heads:  # the task's settings do not shape the architecture's own head
                head = {"value": type(self.head(task)).__name__, "source": f"architecture ({self.architecture_name})"}
                tasks[name] = {"head": head}
            else:
                tasks[name] = {key: _shown(setting) for key, setting in task.settings(self).items()}
        labels = {}
        if self.has_classifier:
            labels = {"num_labels": _shown(self.num_labels), "id2label": self.id2label}
        return {
            "model": self.name,
            "path": str(self.path),
            "architecture": self.architecture_name,
            "implementation": self.architecture.implementation,
            "fallback": self.fallback,
            "architecture_plugin": self._architecture_plugin(),
            "layout": Layout.plain(self.path).shown(),
            **self.architecture.describe(),  # an architecture naming the layout it recognised says it here,
            **self._folder_layout(),  # and a folder a layout hook recognised says it over both
            "warnings": self.warnings,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "hidden_size": self.architecture.hidden_size,
            "embedding_size": self.embedding_size,
            "max_model_len": {"value": self.max_model_len.value, "source": self.max_model_len.source},
            "use_activation": {"value": self.use_activation().value, "source": self.use_activation().source},
            "dimensions": {"value": self.dimensions.value, "source": self.dimensions.source},
            "projector": [
                {"path": d.path, "in": int(d.weight.shape[1]), "out": int(d.weight.shape[0]), "activation": d.activation}
                for d in (self.st.dense if self.st else [])
            ],
            **labels,
            "is_matryoshka": self.is_matryoshka,
            "matryoshka_dimensions": self.matryoshka_dimensions,
            "do_lower_case": self.do_lower_case,
            "include_prompt": self.include_prompt,
            "prompts": self.prompts,
            "default_prompt_name": self.default_prompt_name,
            "tasks": tasks,
            "quantization": self.quantization,
            "kernels": kernel_table([self.device]),
        }


def _shown(setting: Setting) -> dict[str, Any]:
    """A setting as ``poolkit info`` prints it; several pooler names joined with ``+``."""
    value = "+".join(setting.value) if isinstance(setting.value, tuple) else setting.value
    return {"value": value, "source": setting.source}
