"""Loading a model directory into a :class:`PoolingModel`, and resolving its pooling settings.

Precedence for every pooling setting: the user's ``pooler_config`` > the sentence-transformers
files > the architecture's default > the task's default. Each resolved value remembers where it
came from, which ``poolkit info`` shows.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .architecture import Architecture, check_architecture
from .batch import PackedBatch
from .config import PoolerConfig, Setting
from .config_checks import check_common_sizes, overridden_fields
from .conversion import CONVERTIBLE_SUFFIXES, base_architecture, has_heads, missing_base  # noqa: F401 (re-exported)
from .errors import InvalidRequest, ModelLoadError, UnknownName
from .lookup import kernel_table
from .model_dir import check_symlinks
from .model_impl import MODEL_IMPLS
from .plugins import get_manager, registry
from .pooling import Pooler
from .st_config import STConfig, read_st_config
from .tasks import SEQUENCE, TOKEN, Head, Task
from .weights import checkpoint_files, checkpoint_shapes, iter_tensors

logger = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
}
_HUGE = 10**6


@dataclass(frozen=True)
class Conversion:
    """What a ``convert`` setting does to a checkpoint's architecture.

    Attributes:
        to_base: a ``<Prefix>For...`` checkpoint may be served by its registered base architecture
            (:func:`poolkit.conversion.base_architecture`: declared, else ``<Prefix>Model``).
        resolve_base: ask the architecture resolvers for that base architecture too.
        hidden_states: serve the hidden states of a checkpoint that has a classifier (its
            embeddings), rather than the classifier.
        needs_head: refuse a checkpoint without a classification head.
    """

    to_base: bool = False
    resolve_base: bool = False
    hidden_states: bool = False
    needs_head: bool = False


#: The ``convert`` settings (vLLM's ``--convert``).
CONVERSIONS = {
    "auto": Conversion(to_base=True),
    "none": Conversion(),
    "embed": Conversion(to_base=True, resolve_base=True, hidden_states=True),
    "classify": Conversion(needs_head=True),
}


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 where the hardware multiplies bf16 natively (GPUs, CPUs with AVX512-BF16
    or AMX), fp32 elsewhere. ``POOLKIT_DTYPE`` changes what ``"auto"`` means for the process.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        override = os.environ.get("POOLKIT_DTYPE", "auto")
        if override not in ("", "auto"):
            return resolve_dtype(override, device)
        if device.type == "cuda" or (device.type == "cpu" and cpu_multiplies_bf16()):
            return torch.bfloat16
        return torch.float32
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise InvalidRequest(f"unknown dtype '{dtype}'; use auto, {', '.join(DTYPES)}") from None


def resolve_device(device: Any) -> torch.device:
    """``None``/``"auto"``: ``POOLKIT_DEVICE`` when set, else a GPU if there is one, else the CPU."""
    if device in (None, "auto"):
        device = os.environ.get("POOLKIT_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidRequest(f"unknown device '{device}'") from None


def _load_hf_config(path: Path, overrides: dict[str, Any]) -> Any:
    from transformers import AutoConfig, PretrainedConfig

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json; is it a Hugging Face model directory?")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc.msg}") from None
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    model_type = raw.get("model_type")
    check_common_sizes(raw, _attribute_map(model_type), overridden_fields(overrides))
    try:
        return AutoConfig.for_model(model_type, **{k: v for k, v in raw.items() if k != "model_type"})
    except (ValueError, KeyError):
        pass
    except Exception as exc:  # a config class that validates, or computes with a value it cannot use
        raise ModelLoadError(f"{config_file} does not make a valid '{model_type}' config: {_one_line(exc)}") from None
    substitute = _config_model_type(raw)
    if substitute is not None:
        try:
            return AutoConfig.for_model(substitute, **{k: v for k, v in raw.items() if k != "model_type"})
        except Exception as exc:
            raise ModelLoadError(f"{config_file} does not make a valid '{substitute}' config: {_one_line(exc)}") from None
    try:
        return PretrainedConfig.from_dict(raw)
    except Exception as exc:
        raise ModelLoadError(f"{config_file} is not a valid config: {_one_line(exc)}") from None


def _config_model_type(raw: dict[str, Any]) -> str | None:
    """The ``config_model_type`` of the first registered architecture ``raw`` names, if any."""
    archs = registry("architecture")
    for name in raw.get("architectures") or []:
        if isinstance(name, str) and name in archs:
            return getattr(archs.get(name), "config_model_type", None)
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _attribute_map(model_type: Any) -> dict[str, str]:
    """The config class's aliases of standard fields (GPT-2: ``n_layer`` for ``num_hidden_layers``)."""
    from transformers import CONFIG_MAPPING

    try:
        return dict(getattr(CONFIG_MAPPING[model_type], "attribute_map", None) or {})
    except (KeyError, TypeError, ValueError):
        return {}


@dataclass(frozen=True)
class ModelConfig:
    """What vLLM's ``llm.model_config`` tells about a loaded model (the fields its tests read)."""

    model: str
    served_model_name: str
    tokenizer: str
    architecture: str
    architectures: list[str]
    hf_config: Any
    dtype: torch.dtype
    head_dtype: torch.dtype
    max_model_len: int | None
    embedding_size: int
    hidden_size: int
    vocab_size: int | None
    pooler_config: PoolerConfig
    is_matryoshka: bool
    matryoshka_dimensions: list[int] | None
    convert_type: str
    trust_remote_code: bool
    runner_type: str = "pooling"

    def get_hidden_size(self) -> int:
        return self.hidden_size

    def get_vocab_size(self) -> int | None:
        return self.vocab_size


class PoolingModel:
    """A loaded model: architecture, tokenizer and resolved pooling settings.

    Built by :func:`load_model`; the engine runs it and the tasks build their heads on it. Tasks
    and scorers read it and never change it: it is shared by every request.
    """

    def __init__(
        self,
        *,
        name: str,
        path: Path,
        hf_config: Any,
        architecture_name: str,
        architecture: Architecture,
        tokenizer: Any,
        st: STConfig | None,
        pooler_config: PoolerConfig,
        device: torch.device,
        dtype: torch.dtype,
        max_model_len: Setting,
        allow_pickle: bool = False,
        convert: str = "auto",
        args: Any = None,
        quantization: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.hf_config = hf_config
        self.architecture_name = architecture_name
        self.architecture = architecture
        self.tokenizer = tokenizer
        self.st = st
        self.pooler_config = pooler_config
        self.device = device
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.allow_pickle = allow_pickle
        self.convert = convert
        #: The :class:`EngineArgs` the model was loaded with.
        self.args = args
        #: What :meth:`Architecture.quantize` reported (layers in int8 and in float, the measured
        #: cosine), or ``None`` for a model that runs unquantized.
        self.quantization = quantization
        self._heads: dict[str, Head | None] = {}
        #: Tasks served by the architecture's own head (:meth:`Architecture.task_head`).
        self._own_heads: set[str] = set()
        #: Tasks whose run has logged :meth:`ignored_pooling_type`.
        self._warned_pooling: set[str] = set()

    # -- settings ------------------------------------------------------------------------------

    def pooling_type(self, task: Task) -> Setting:
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

    def ignored_pooling_type(self, task: Task) -> str | None:
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

    def poolers(self, task: Task) -> list[Pooler]:
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

    def _default_pooling_type(self, task: Task) -> Setting:
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
        """Whether heads apply their activation unless a request says otherwise.

        Args:
            from_st_normalize: the task's activation is the L2 normalisation that a
                sentence-transformers ``Normalize`` module stands for (embedding tasks).
        """
        if self.pooler_config.use_activation is not None:
            return Setting(self.pooler_config.use_activation, "pooler_config")
        st = self.st
        # PyLate normalises in code; sentence-transformers' own multi-vector saves have the module
        st_normalize = st is not None and (
            st.model_type == "MultiVectorEncoder" or (st.model_type in (None, "SentenceTransformer") and not st.late_interaction)
        )
        if from_st_normalize and st_normalize:
            return Setting(st.normalize, "sentence-transformers modules.json (Normalize)")
        default = self.config_value("use_activation")
        return default if default.value is not None else Setting(True, "default")

    @cached_property
    def dimensions(self) -> Setting:
        """The default matryoshka width (``pooler_config.dimensions``); ``None``: full width."""
        return Setting(self.pooler_config.dimensions, "pooler_config" if self.pooler_config.dimensions else "default")

    @cached_property
    def projector(self) -> torch.nn.Module | None:
        """The sentence-transformers Dense stack (fp32), or ``None``."""
        if self.st is None or not self.st.dense:
            return None
        return torch.nn.Sequential(*(d.build() for d in self.st.dense)).to(self.device).eval()

    @property
    def embedding_size(self) -> int:
        """Width of an embedding: the last sentence-transformers Dense output, else ``hidden_size``."""
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
        """Whether the model has a classification head (the architecture's, or a sentence-transformers
        CrossEncoder export's score modules): only then do ``num_labels`` and ``id2label`` apply."""
        arch = self.architecture
        scores = self.st is not None and self.st.score_outputs is not None
        return scores or arch.sequence_head() is not None or arch.token_head() is not None

    @property
    def num_labels(self) -> Setting:
        """Outputs of the classification heads, and where the number comes from."""
        overrides = set((self.args.hf_overrides or {}) if self.args is not None else ())
        source = "hf_overrides" if {"num_labels", "id2label"} & overrides else "config.json"
        if self.st is not None and self.st.score_outputs is not None:
            source = "sentence-transformers CrossEncoder score modules"
        return Setting(self.architecture.num_labels, source)

    @property
    def id2label(self) -> dict[int, str]:
        """Label names of the classification heads, by index; empty for a model without one."""
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
        """The sentence-transformers prompts by name."""
        return dict(self.st.prompts) if self.st is not None else {}

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

    def head(self, task: Task) -> Head | None:
        """The head serving ``task``: the architecture's own, else the task's; ``None`` if neither."""
        if task.name not in self._heads:
            offered = self.architecture.pooling_tasks
            if offered is not None and task.name not in offered:
                self._heads[task.name] = None
            else:
                own = self.architecture.task_head(task, self)
                if own is not None:
                    self._own_heads.add(task.name)
                self._heads[task.name] = own if own is not None else task.build(self)
        return self._heads[task.name]

    @cached_property
    def model_config(self) -> ModelConfig:
        """The vLLM-shaped summary of this model (``llm.model_config``)."""
        args = self.args
        vocab = getattr(self.hf_config, "vocab_size", None)
        return ModelConfig(
            model=self.name,
            served_model_name=self.name,
            tokenizer=(args.tokenizer if args is not None and args.tokenizer else self.name),
            architecture=self.architecture_name,
            architectures=list(getattr(self.hf_config, "architectures", None) or [self.architecture_name]),
            hf_config=self.hf_config,
            dtype=self.dtype,
            head_dtype=_head_dtype(self.hf_config, self.dtype),
            max_model_len=self.max_model_len.value,
            embedding_size=self.embedding_size,
            hidden_size=self.architecture.hidden_size,
            vocab_size=int(vocab) if vocab else None,
            pooler_config=self.pooler_config,
            is_matryoshka=self.is_matryoshka,
            matryoshka_dimensions=self.matryoshka_dimensions,
            convert_type=self.convert,
            trust_remote_code=bool(args is not None and args.trust_remote_code),
        )

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
            "architecture_plugin": self._architecture_plugin(),
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


def _pick_architecture(
    names: list[str], conversion: Conversion, config: Any, model_impl: str = "auto"
) -> tuple[str, type[Architecture]]:
    archs = registry("architecture")
    impl = MODEL_IMPLS[model_impl]
    for name in names:
        cls = archs.get(name) if name in archs else None
        if cls is not None and impl.allows(cls) and not (conversion.hidden_states and has_heads(cls)):
            return name, cls
    if conversion.to_base:
        for name in names:
            base = base_architecture(name)
            if base and base in archs and impl.allows(archs.get(base)):
                logger.info("serving %s with the %s architecture (convert=embed)", name, base)
                return base, archs.get(base)
    if conversion.resolve_base:
        for name in names:
            base = base_architecture(name)
            cls = get_manager().resolve_architecture(base, config) if base else None
            if cls is not None and impl.allows(cls) and not has_heads(check_architecture(base, cls)):
                logger.info("serving %s with %s (%s, convert=embed)", name, cls.__name__, cls.implementation)
                return base, cls
    refused: list[str] = []
    for name in names:
        cls = get_manager().resolve_architecture(name, config)
        if cls is not None:
            check_architecture(name, cls)
            if not impl.allows(cls):
                refused.append(cls.implementation)
                continue
            logger.info("serving %s with %s (%s)", name, cls.__name__, cls.implementation)
            return name, cls
    shown = ", ".join(names) or "none listed in config.json"
    if refused:
        raise ModelLoadError(f"model_impl='{model_impl}': only the {refused[0]} implementation runs {shown}; use model_impl='auto'")
    if impl.only is not None:
        raise ModelLoadError(
            f"model_impl='{model_impl}': nothing runs {shown} with the {impl.only} implementation; use model_impl='auto'"
        )
    why_no_base = missing_base(names) if conversion.hidden_states else None
    if why_no_base:
        raise ModelLoadError(why_no_base)
    why = archs.explain_missing(archs.kind, shown)
    raise ModelLoadError(
        f"no poolkit architecture for {shown}, and no architecture resolver (such as the transformers "
        f"fallback) accepted it; native: {', '.join(archs.names())}. "
        "Install a plugin that provides it, or set hf_overrides={'architectures': [...]}" + (f". {why}" if why else "")
    )


def _max_model_len(architecture: Architecture, tokenizer: Any, st: STConfig | None, requested: int | None) -> Setting:
    limit = architecture.max_positions
    tok_max = getattr(tokenizer, "model_max_length", None)
    if requested is not None:
        if requested < 1 or (limit is not None and requested > limit):
            raise InvalidRequest(f"max_model_len={requested} is outside 1..{limit} for this model")
        return Setting(requested, "max_model_len argument")
    if st is not None and st.max_seq_length:
        value = min(st.max_seq_length, limit) if limit else st.max_seq_length
        return Setting(value, f"sentence-transformers {st.tokenizer_config_file}")
    candidates = [(limit, "config.json max_position_embeddings")]
    if tok_max and tok_max < _HUGE:
        candidates.append((int(tok_max), "tokenizer model_max_length"))
    candidates = [(v, s) for v, s in candidates if v]
    if not candidates:
        return Setting(None, "unbounded")
    value, source = min(candidates)
    return Setting(value, source)


def load_model(args: Any) -> PoolingModel:
    """Resolve ``args.model`` to a directory and build a :class:`PoolingModel` from it.

    Args:
        args: the :class:`poolkit.settings.EngineArgs` to load with.

    Raises:
        ModelLoadError: the model cannot be found, is unsafe to load, or no plugin provides its
            architecture.
        InvalidRequest: a setting is invalid for this model.
    """
    conversion = CONVERSIONS[args.convert]
    torch_device = resolve_device(args.device)
    torch_dtype = resolve_dtype(args.dtype, torch_device)

    name = args.model
    path = get_manager().resolve_model(name)
    if path is None:
        raise ModelLoadError(f"model '{name}' was not found")
    if not args.allow_external_symlinks:
        check_symlinks(path)
        if args.tokenizer and Path(args.tokenizer).is_dir():
            check_symlinks(Path(args.tokenizer), "tokenizer")
    hf_config = _load_hf_config(path, args.hf_overrides or {})
    hf_config.name_or_path = name
    arch_names = list(getattr(hf_config, "architectures", None) or [])
    try:
        arch_name, arch_cls = _pick_architecture(arch_names, conversion, hf_config, args.model_impl)
    except ModelLoadError:
        if getattr(hf_config, "auto_map", None):
            raise ModelLoadError(
                f"model '{name}' needs remote code (auto_map in config.json), which poolkit never runs; "
                "use a checkpoint whose architecture poolkit or an installed plugin implements"
            ) from None
        raise
    refused = arch_cls.unsupported_dtypes.get(str(torch_dtype).removeprefix("torch."))
    if refused:
        raise ModelLoadError(
            f"The model type '{getattr(hf_config, 'model_type', arch_name)}' does not support "
            f"{str(torch_dtype).removeprefix('torch.')}. Reason: {refused}"
        )
    if conversion.needs_head and not has_heads(arch_cls):
        raise ModelLoadError(
            f"convert='{args.convert}' needs a checkpoint with a classification head; {arch_name} has none"
        )
    if args.trust_remote_code:
        logger.warning("trust_remote_code is ignored: poolkit never runs code shipped with a model")
    st = read_st_config(path, args.allow_pickle)
    if st is not None and st.score_outputs is not None:
        hf_config.num_labels = st.score_outputs  # a CrossEncoder's own score modules are its classifier
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else path
    tok = arch_cls.load_tokenizer(tokenizer_dir, hf_config) or _load_tokenizer(tokenizer_dir, hf_config)
    arch_cls.configure(hf_config, tok)

    files = checkpoint_files(path, args.allow_pickle)
    # Before the model is built: an absurd config must not allocate gigabytes first.
    arch_cls.check_config(hf_config, checkpoint_shapes(files), overridden_fields(args.hf_overrides))
    architecture = arch_cls(hf_config)
    architecture.load_weights(iter_tensors(files))
    architecture.load_companion_files(path, args.allow_pickle)
    architecture.to(device=torch_device, dtype=torch_dtype).eval()
    head_dtype = _head_dtype(hf_config, torch_dtype)
    if head_dtype != torch_dtype:
        # Classifier heads are a sliver of the work: they stay fp32, like pooling and activations.
        for head in (architecture.sequence_head(), architecture.token_head()):
            if head is not None:
                head.to(head_dtype)
    if conversion.needs_head and architecture.sequence_head() is None and architecture.token_head() is None:
        raise ModelLoadError(
            f"convert='{args.convert}' needs a checkpoint with a classification head; this {arch_name} has none"
        )
    quantization = None
    if args.quantization is not None:
        texts = calibration_texts(args.calibration)
        limit = min(CALIBRATION_TOKENS, architecture.max_positions or CALIBRATION_TOKENS)
        quantization = architecture.quantize(
            args.quantization, lambda: _calibration_batches(tok, texts, limit, torch_device)
        )
    pooling_model = PoolingModel(
        name=name,
        path=path,
        hf_config=hf_config,
        architecture_name=arch_name,
        architecture=architecture,
        tokenizer=tok,
        st=st,
        pooler_config=args.pooler_config or PoolerConfig(),
        device=torch_device,
        dtype=torch_dtype,
        max_model_len=_max_model_len(architecture, tok, st, args.max_model_len),
        allow_pickle=args.allow_pickle,
        convert=args.convert,
        args=args,
        quantization=quantization,
    )
    for entry in registry("task").entries():
        entry.obj.check_model(pooling_model)
    return pooling_model


#: Calibration texts are cut to this many tokens (quantization).
CALIBRATION_TOKENS = 128
#: The built-in calibration texts: a hundred sentences and paragraphs of assorted kinds.
CALIBRATION_FILE = Path(__file__).with_name("calibration.txt")


def calibration_texts(path: str | None) -> list[str]:
    """The non-empty lines of ``path``, or of the built-in calibration texts.

    Raises:
        InvalidRequest: the file cannot be read or has no text.
    """
    try:
        lines = Path(path or CALIBRATION_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read the calibration file {path}: {_one_line(exc)}") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise InvalidRequest(f"the calibration file {path} has no text (one text a line)")
    return texts


def _calibration_batches(tokenizer: Any, texts: list[str], limit: int, device: torch.device) -> list[PackedBatch]:
    """``texts`` tokenized (cut to ``limit`` tokens) and packed into batches of up to 64 texts."""
    ids = tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
    return [PackedBatch.from_sequences(ids[i : i + 64], device=device) for i in range(0, len(ids), 64)]


def _head_dtype(hf_config: Any, dtype: torch.dtype) -> torch.dtype:
    """The classifier heads' dtype: fp32 unless ``config.json`` (or ``hf_overrides``) says
    ``head_dtype`` (vLLM's key): ``"model"`` for the model's dtype, or a dtype name."""
    wanted = getattr(hf_config, "head_dtype", None)
    if wanted in (None, "float32", "fp32", "float"):
        return torch.float32
    if wanted == "model":
        return dtype
    try:
        return DTYPES[str(wanted).lower()]
    except KeyError:
        raise InvalidRequest(f"unknown head_dtype '{wanted}'; use model or one of {', '.join(DTYPES)}") from None


def _load_tokenizer(path: Path, hf_config: Any) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), config=hf_config, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {path}: {type(exc).__name__}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"the tokenizer in {path} has no fast (tokenizers) implementation; poolkit needs tokenizer.json")
    return tokenizer
