"""The contract a model architecture fulfils (packed batch in, hidden states out), and the loaded
model that runs it (:class:`LoadedModel`, what tasks, scorers and :meth:`Architecture.task_head` read).

What a family does beyond that is a capability it opts into (:mod:`poolkit.contracts.capabilities`).
:class:`~poolkit.contracts.capabilities.TaskPrompt` and
:class:`~poolkit.contracts.capabilities.ListwiseLayout`, which lived here, are importable from here still.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import torch

from .batch import PackedBatch
from .capabilities import ListwiseLayout, TaskPrompt  # noqa: F401 - moved there, importable here still
from .config_checks import ConfigChecks
from .errors import ModelLoadError
from .model import ModelInfo

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from .checkpoint import Checkpoint

    from .io import IOProcessor, Prompt
    from .model import Tokenizer
    from .params import Setting
    from .pooling import Head, Pooler
    from .sentence_transformers import TokenPoolingSpec


class Architecture(torch.nn.Module):
    """Base class of every poolkit model architecture.

    An architecture is built from a Hugging Face config, loads its weights by name, and maps a
    :class:`PackedBatch` to ``[T, H]`` hidden states (one row per token, no padding). Poolers
    and task heads take it from there.

    Subclasses set the class attributes that describe them and implement ``load_weights`` and
    ``forward``; what a family does beyond that (sharing prefixes, carrying task adapters, a
    listwise layout, ...) is a capability it opts into by naming it among its bases
    (:mod:`poolkit.contracts.capabilities`).

    Example:
        >>> class StaticModel(Architecture):
        ...     def __init__(self, config):
        ...         super().__init__(config)
        ...         self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        ...     def load_weights(self, weights):
        ...         load_into(self, weights)
        ...     def forward(self, batch):
        ...         return self.embed(batch.input_ids)
    """

    #: Sequence pooling type this architecture calls for when neither the user nor a
    #: sentence-transformers config says (BERT: ``"CLS"``); ``None`` leaves it to the task.
    default_pooling_type: ClassVar[str | None] = None
    #: Token pooling type (``"ALL"``, ``"STEP"``) this architecture calls for, or ``None``.
    default_token_pooling_type: ClassVar[str | None] = None
    #: Defaults for :class:`PoolerConfig` fields the user leaves unset (say ``step_tag_id`` of a
    #: process reward model, or ``use_activation: False`` for raw rewards).
    default_pooler_config: ClassVar[dict[str, Any]] = {}
    #: What prompts the model reads: ``"text"`` (token ids), and ``"image"`` (or ``"video"``) for
    #: models that read pixels: a dual encoder's image-only prompts (``batch.extras["pixel_values"]``,
    #: CLIP), or a vision-language model's prompts of text and images (see :attr:`media_processor`).
    input_modalities: ClassVar[tuple[str, ...]] = ("text",)
    #: The IO processor class that turns this model's prompts with images or videos
    #: (``extras["image"]`` / ``extras["video"]``) into token ids with their :attr:`Prompt.media`
    #: tensors: a vision-language model's placeholders expanded, pixels cut into patches. The
    #: model's renderer makes one instance of it. A ``str`` names a registered IO processor instead
    #: (an architecture whose processor another plugin provides). The forward pass then finds each
    #: sequence's tensors in ``batch.extras["media"]`` (one dict or ``None`` per sequence, in batch
    #: order). ``None`` (the default): image prompts are image-only and run as one-token sequences
    #: (CLIP, SigLIP).
    media_processor: ClassVar[type[IOProcessor] | str | None] = None
    #: The tasks this architecture may serve, or ``None`` for all whose heads it can feed (a
    #: late-interaction model offers ``token_embed`` only, say).
    pooling_tasks: ClassVar[frozenset[str] | None] = None
    #: How :meth:`LLM.score` compares texts with this model (``"late-interaction"`` for MaxSim),
    #: or ``None`` to derive it from the tasks (cross-encoder, else bi-encoder).
    score_type: ClassVar[str | None] = None
    #: How the model runs, for ``poolkit info``: ``"native"`` (packed, poolkit's own code) or,
    #: for instance, ``"fallback (transformers)"``.
    implementation: ClassVar[str] = "native"
    #: What :meth:`check_config` compares between the config and the checkpoint before the model
    #: is built: positive sizes, multiples, the layer count and key tensor shapes.
    config_checks: ClassVar[ConfigChecks] = ConfigChecks()
    #: The registered name of the architecture whose hidden states serve this one's checkpoints
    #: without its classification head (``convert="embed"`` on a ``TinyConvForSequenceClassification``
    #: checkpoint, say, or ``convert="auto"`` when this name is not registered itself). ``None`` (the
    #: default) follows the name rule: ``<Prefix>Model`` serves ``<Prefix>ForSequenceClassification``,
    #: ``<Prefix>ForMaskedLM``, ``<Prefix>ForCausalLM`` and the other suffixes of
    #: :data:`poolkit.config.conversion.CONVERTIBLE_SUFFIXES`.
    base_architecture: ClassVar[str | None] = None
    #: Whether the engine may pad a packed batch with one-token filler sequences
    #: (:meth:`PackedBatch.with_filler`) to the row count the kernels ask for
    #: (:func:`poolkit.kernel_rows`), taking back only the first ``num_tokens`` rows of the
    #: forward pass. True for any architecture that keeps the sequences of a batch apart, as the
    #: forward contract asks; ``False`` for one that does not use poolkit's kernels (the
    #: transformers fallback pads to shapes of its own).
    accepts_filler: ClassVar[bool] = True
    #: Whether LoRA adapters (:mod:`poolkit.lora`) may target its linear layers: each layer is an
    #: ``nn.Linear`` run through the built-in layer helpers (or called as a module), which add the
    #: adapters' products, and :meth:`parameter_name` maps a checkpoint's names to the model's.
    takes_adapters: ClassVar[bool] = False

    def adapter_target(self, layer: str) -> tuple[str, int, int] | None:
        """Where a checkpoint's linear layer ``layer`` (its name in the checkpoint, say
        ``encoder.layers.0.attn.Wqkv``) lives in this model, for LoRA adapters
        (``takes_adapters``): ``(module path, piece, pieces)``, the layer being piece ``piece`` of
        ``pieces`` projections of equal size that the module stacks by output rows; a module path
        ``""`` for a layer the model does not use (skipped, as its weights are). ``None`` (the
        default) leaves it to the general rule: ``parameter_name`` of ``layer + ".weight"``, and
        the projections of fused layers (a linear module with ``parts``)."""
        return None

    def role_prompts(self, texts: list[str], side: str, model: LoadedModel) -> Sequence[Prompt] | None:
        """``texts`` as the checkpoint's queries or documents (``side``: ``"query"`` or
        ``"document"``, already checked), for a multi-vector retriever that writes its two sides its own
        way (ColPali's query prompt and augmentation; BGE-M3, the same text both ways). ``None`` (the
        default): the model has no sides of its own, and a ColBERT checkpoint's are its IO processor's
        (markers, lengths, query expansion)."""
        return None

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """Refuse a config that does not fit the checkpoint, before anything is allocated.

        Called once per load, after :meth:`configure` and before the model is built, so that an
        absurd config (a million layers, a hidden size of ten million, zero attention heads) is
        a one-line error instead of gigabytes allocated. The default applies
        :attr:`config_checks`; override to check more, calling ``super().check_config(...)``.

        Args:
            config: the Hugging Face config, ``hf_overrides`` applied.
            shapes: checkpoint tensor name -> shape, read without loading a tensor; ``None``
                when unknown.
            overridden: the config fields ``hf_overrides`` set (dotted for sub-configs).

        Raises:
            ModelLoadError: naming the field that does not fit.
        """
        cls.config_checks.check(config, shapes, overridden)

    @classmethod
    def inspect_checkpoint(cls, config: PretrainedConfig, checkpoint: Checkpoint) -> list[str]:
        """Read what the checkpoint ships beside ``config.json`` into the config: the hub id it was
        fetched as, its model card, its sentence-transformers files (a causal LM published as a
        reranker, say, which only these tell from an embedder).

        Called once per load, after ``hf_overrides`` are applied and before :meth:`configure`. The
        default reads nothing.

        Returns:
            Warnings about how the checkpoint will be served that no setting shows (a causal LM
            with no pooling files served as an embedder): logged at load, listed by ``poolkit info``.

        Raises:
            ModelLoadError: the checkpoint contradicts itself.
        """
        return []

    def describe(self) -> dict[str, Any]:
        """What ``poolkit info`` shows of this architecture beyond the settings every model has (a
        causal LM read as a publisher's reranker: which, and recognised from what), each entry a
        ``{"value", "source"}`` pair like the settings. The default shows nothing."""
        return {}

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """Adjust the config before the model is built, with what only the tokenizer knows.

        Called once per load, after ``hf_overrides`` are applied. The default does nothing; a
        yes/no reranker, say, looks up the token ids of its ``classifier_from_token`` words.

        Raises:
            ModelLoadError: the config asks for something this architecture cannot do.
        """

    @classmethod
    def load_tokenizer(cls, path: Path, config: PretrainedConfig) -> Tokenizer | None:
        """A fast tokenizer for a checkpoint that transformers gives none for, or ``None``.

        Called once per load, before :meth:`configure`, with the tokenizer's directory (the
        model's, or the ``tokenizer`` setting). The default returns ``None``: transformers
        loads ``tokenizer.json``. SigLIP, whose first checkpoints ship only a SentencePiece
        model, builds one from ``spiece.model``.

        Returns:
            A transformers ``PreTrainedTokenizerFast``, or ``None``.

        Raises:
            ModelLoadError: the tokenizer files are unreadable.
        """
        return None

    def __init__(self, config: PretrainedConfig) -> None:
        """Build the modules for ``config`` (kept as ``self.config``); called once per load.

        Subclasses call ``super().__init__(config)`` first. ``config`` is the Hugging Face config,
        ``hf_overrides`` applied and :meth:`configure` run.
        """
        super().__init__()
        self.config = config

    @property
    def size_config(self) -> PretrainedConfig:
        """The config :attr:`hidden_size` and :attr:`max_positions` read: ``config``, or the part of
        it that holds the model :meth:`forward` runs (a vision-language model's ``text_config``)."""
        return self.config

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states :meth:`forward` returns (``hidden_size`` of :attr:`size_config`)."""
        return int(self.size_config.hidden_size)

    @property
    def max_positions(self) -> int | None:
        """Most tokens one sequence may hold, special tokens included; ``None`` if unbounded."""
        n = getattr(self.size_config, "max_position_embeddings", None)
        return int(n) if n else None

    @property
    def num_labels(self) -> int:
        """Outputs of the classifiers (``config.num_labels``)."""
        return int(getattr(self.config, "num_labels", 0) or 0)

    def sequence_classifier(self) -> torch.nn.Module | None:
        """The classifier of pooled vectors, ``[B, H] -> [B, num_labels]``; ``None`` if there is none.

        Its presence makes the ``classify`` task (and cross-encoder scoring) available: the task's
        head pools, then runs it.
        """
        return None

    def token_classifier(self) -> torch.nn.Module | None:
        """The classifier of token vectors, ``[T, H] -> [T, num_labels]``; ``None`` if there is none.

        Its presence makes the ``token_classify`` task (and ``LLM.reward``) available. The default
        is :meth:`sequence_classifier`: a sequence classifier also classifies every token, as vLLM
        serves ``token_classify`` with a sequence classifier. Override it when the per-token
        classifier differs (BERT's is the bare ``classifier``, without the pooler its sequence
        classifier starts with), or return ``None`` when the sequence classifier cannot read token
        vectors.
        """
        return self.sequence_classifier()

    def sequence_head(self) -> torch.nn.Module | None:
        """The deprecated old name of :meth:`sequence_classifier` (in poolkit's words, a head is a task's)."""
        return self.sequence_classifier()

    def token_head(self) -> torch.nn.Module | None:
        """The deprecated old name of :meth:`token_classifier` (in poolkit's words, a head is a task's)."""
        return self.token_classifier()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """An architecture written against the old names still serves: a subclass that overrides
        ``sequence_head`` / ``token_head`` (and not the new name) has that method as its classifier,
        with a :class:`DeprecationWarning` naming the new one."""
        super().__init_subclass__(**kwargs)
        for old, new in _RENAMED_METHODS.items():
            if old in cls.__dict__ and new not in cls.__dict__:
                warnings.warn(
                    f"{cls.__qualname__}.{old}() has been renamed Architecture.{new}() (a head is "
                    f"what a task runs; the layers that score a vector are its classifier); the old name still works for now",
                    DeprecationWarning,
                    stacklevel=2,
                )
                setattr(cls, new, cls.__dict__[old])

    def lm_head(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The masked-LM / LM head: ``[n, H]`` hidden rows -> ``[n, vocab]`` logits; ``None`` when
        the checkpoint has none (the default).

        The logits are ``config.vocab_size`` wide. Their presence makes the ``sparse_embed`` task
        (SPLADE) available: the task builds its head from them. On a
        :class:`~poolkit.contracts.capabilities.MaskedLMHead` they also classify tokens when the
        model has no :meth:`token_classifier`.
        """
        return None

    def task_head(self, task: TaskSpec, model: LoadedModel) -> Head | None:
        """A head of this architecture's own for ``task`` (a :class:`poolkit.contracts.tasks.Task`) on
        ``model`` (whose ``architecture`` is this one), or ``None``.

        ``None`` (the default) lets the task build its head from the poolers and the
        classifiers above; a SPLADE model returns the ``sparse_embed`` task's head for ``embed``,
        for instance.
        """
        return None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors, given as ``(name, tensor)`` pairs, into the parameters.

        Raises:
            ModelLoadError: a parameter has no tensor, or a tensor has the wrong shape.
        """
        raise NotImplementedError

    def load_companion_files(self, model_dir: Path, allow_pickle: bool) -> None:
        """Load weights a checkpoint keeps in files of its own beside the main weights
        (BGE-M3's ``sparse_linear.pt`` and ``colbert_linear.pt``).

        Called once per load, right after :meth:`load_weights` and before the model is moved
        to its device and dtype. The default does nothing.

        Args:
            model_dir: the checkpoint directory.
            allow_pickle: whether the user opted in to pickle files (load them with
                ``torch.load(weights_only=True)`` only then).

        Raises:
            ModelLoadError: a file is missing, malformed, or a pickle without the opt-in.
        """

    def quantize(self, method: str, batches: Callable[[], Iterable[PackedBatch]], budget: float | None = None) -> dict[str, Any]:
        """Run the model quantized (the ``quantization`` setting, vLLM's name: ``"int8"``).

        Called once per load, after the model is on its device and in its dtype, when the user
        asks for it. ``batches()`` gives calibration batches (the built-in calibration texts or
        ``--calibration FILE``), on the model's device, to measure activations and the error;
        ``budget`` is the user's ``quantization_budget`` (the least cosine similarity to the float
        model to keep on them), ``None`` for the implementation's default.
        Returns what ``poolkit info`` shows of it. The native families implement it
        (:mod:`poolkit.builtin_models.blocks.quantize`); the default refuses.

        Raises:
            ModelLoadError: the architecture cannot run ``method``.
        """
        raise ModelLoadError(
            f"quantization '{method}' is not supported by {type(self).__name__} "
            f"(the {self.implementation} implementation); poolkit quantizes the models it implements natively"
        )

    def forward(self, batch: PackedBatch) -> torch.Tensor:  # pragma: no cover - abstract
        """Hidden states ``[batch.num_tokens, hidden_size]`` of the last layer.

        Called once per batch under ``torch.inference_mode()``, ``batch`` on the model's device;
        attention must stay within each sequence, and away from the tokens past a sequence's
        ``batch.key_lens`` when it has them (the ``varlen_attention`` kernel does both).
        """
        raise NotImplementedError


#: Architecture methods renamed when "head" came to mean a task's head only: old name -> new name (``Architecture.__init_subclass__``).
_RENAMED_METHODS = {"sequence_head": "sequence_classifier", "token_head": "token_classifier"}


class TaskSpec(Protocol):
    """What a loaded model reads of a task (a :class:`poolkit.contracts.tasks.Task` is one): the
    granularity and default pooler its pooling settings resolve by, and how it builds its head."""

    @property
    def name(self) -> str:
        """The task name users pass (``"embed"``)."""
        ...

    @property
    def granularity(self) -> str:
        """``"sequence"``, ``"token"`` or ``"plugin"``."""
        ...

    @property
    def default_pooling_type(self) -> str | None:
        """The pooler used when nothing else names one; ``None`` for a task that pools with none."""
        ...

    def build(self, model: LoadedModel) -> Head | None:
        """The head serving this task on ``model``, or ``None`` if the model cannot serve it."""
        ...


# Beside Architecture, not in model.py: it holds an Architecture and Architecture.task_head takes
# it, and tasks.py imports it, so one module keeps the contracts free of import cycles.
@runtime_checkable
class LoadedModel(ModelInfo, Protocol):
    """A loaded model as tasks, scorers and :meth:`Architecture.task_head` see it: its settings
    (:class:`poolkit.contracts.model.ModelInfo`), the architecture that runs it, and the poolers
    and heads each task runs with on it. :class:`poolkit.loading.model.PoolingModel` is one."""

    #: The loaded module: its classifiers, ``hidden_size``, class attributes.
    architecture: Architecture
    #: The registered name of the architecture that serves the model (the base one after a conversion).
    architecture_name: str

    def pooling_type(self, task: TaskSpec) -> Setting:
        """The upper-case names of the poolers ``task`` pools with here, and their source."""
        ...

    def ignored_pooling_type(self, task: TaskSpec) -> str | None:
        """Why the user's ``pooling_type`` does not apply to ``task``, or ``None``."""
        ...

    def poolers(self, task: TaskSpec) -> list[Pooler]:
        """The registered poolers :meth:`pooling_type` names for ``task``, in order."""
        ...

    def head(self, task: TaskSpec) -> Head | None:
        """The head serving ``task`` (:meth:`Architecture.task_head`, else the task's), built once."""
        ...

    @property
    def token_pooling(self) -> TokenPoolingSpec | None:
        """How documents' token vectors are pooled when a request sets no ``token_pool_factor``
        (``--token-pool-factor``, else the checkpoint's ``HierarchicalTokenPooling``), or ``None``."""
        ...


def check_architecture(name: str, obj: object) -> type[Architecture]:
    """Registry check: a subclass of :class:`Architecture`."""
    if not (isinstance(obj, type) and issubclass(obj, Architecture)):
        raise TypeError(f"architecture '{name}' must be a subclass of poolkit.Architecture, got {obj!r}")
    return obj
