"""What a loaded model shows its plugins: its tokenizer (:class:`Tokenizer`) and its settings (:class:`ModelInfo`).

Protocols, not classes: :class:`poolkit.loading.model.PoolingModel` satisfies them, and so does
any stand-in a plugin's test builds. :class:`ModelInfo` is the model without its network and its
tasks (what an IO processor's context and an architecture's own head read);
:class:`poolkit.contracts.architecture.LoadedModel` adds those, for tasks and scorers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PretrainedConfig

    from .params import PoolerConfig, Setting
    from .sentence_transformers import STConfig


@runtime_checkable
class Tokenizer(Protocol):
    """The fast Hugging Face tokenizer a model's requests use (a ``PreTrainedTokenizerFast``):
    the calls and attributes poolkit and its plugins make of it. Shared by every request: never
    change it (an IO processor gets a copy)."""

    #: Which end truncation cuts (``"right"`` or ``"left"``).
    truncation_side: str
    #: The longest input the tokenizer was saved for (a huge number when it names none).
    model_max_length: int

    @property
    def all_special_ids(self) -> list[int]:
        """The ids of the special tokens (``[CLS]``, ``[SEP]``, BOS, padding, ...)."""
        ...

    @property
    def backend_tokenizer(self) -> RustTokenizer:
        """The Rust ``tokenizers.Tokenizer`` underneath, for batch encoding without Python objects per text."""
        ...

    def __call__(self, text: str | list[str], text_pair: str | list[str] | None = None, **kwargs: Any) -> Mapping[str, Any]:
        """Encode a text or a batch of texts (with their pairs): ``input_ids``, and what ``kwargs`` ask for."""
        ...

    def convert_ids_to_tokens(self, ids: int | list[int], skip_special_tokens: bool = False) -> str | list[str]:
        """The token strings of an id (a string) or of a list of ids (a list)."""
        ...

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """The id of a token string (an ``int``) or of a list of them (a list)."""
        ...

    def decode(self, token_ids: int | list[int], skip_special_tokens: bool = False, **kwargs: Any) -> str | list[str]:
        """The text of ``token_ids`` (a list of texts for a batch of id lists)."""
        ...

    def apply_chat_template(self, conversation: list[dict[str, Any]], **kwargs: Any) -> Any:
        """Render a chat (a list of messages) through the tokenizer's template: a string unless ``tokenize``."""
        ...


@runtime_checkable
class ModelInfo(Protocol):
    """A loaded model's identity, files and resolved settings: everything but its network and its tasks.

    What an IO processor's :class:`poolkit.contracts.io.IOContext` is made from and what
    :meth:`poolkit.Architecture.task_head` reads beside the architecture itself. Read it, never
    change it: one model serves every request. docs/plugins.md lists each member with where its
    value comes from.
    """

    #: The model as the user named it (``LLM(model=...)``).
    name: str
    #: The directory ``poolkit_resolve_model`` answered.
    path: Path
    #: The model's Hugging Face config, ``hf_overrides`` applied.
    hf_config: PretrainedConfig
    #: The tokenizer every request uses.
    tokenizer: Tokenizer
    #: The sentence-transformers files as read, or ``None`` for a plain checkpoint.
    st: STConfig | None
    #: The user's pooler configuration, unset fields ``None``.
    pooler_config: PoolerConfig
    #: Where the architecture runs.
    device: torch.device
    #: The dtype the architecture runs in.
    dtype: torch.dtype
    #: The longest input in tokens (``None``: unbounded), and its source.
    max_model_len: Setting
    #: Whether the user allowed pickle files.
    allow_pickle: bool
    #: The ``convert`` setting: ``auto``, ``none``, ``embed`` or ``classify``.
    convert: str
    #: What :meth:`poolkit.Architecture.quantize` reported, or ``None`` for a model run unquantized.
    quantization: dict[str, Any] | None

    @property
    def limit_mm_per_prompt(self) -> dict[str, int]:
        """Most media items of each kind (``"image"``, ``"video"``) one prompt may carry."""
        ...

    @property
    def mm_processor_kwargs(self) -> dict[str, Any]:
        """What a media IO processor reads over the checkpoint's ``preprocessor_config.json``."""
        ...

    @property
    def max_image_pixels(self) -> int | None:
        """Most pixels an image may have (``None``: the image IO processor's default)."""
        ...

    @property
    def max_image_bytes(self) -> int | None:
        """Most bytes of an encoded image (``None``: the image IO processor's default)."""
        ...

    @property
    def dimensions(self) -> Setting:
        """The default matryoshka width; ``None``: full width."""
        ...

    @property
    def projector(self) -> torch.nn.Module | None:
        """The sentence-transformers Dense stack (fp32), or ``None``."""
        ...

    @property
    def embedding_size(self) -> int:
        """Width of an embedding: the last Dense output, else the architecture's ``hidden_size``."""
        ...

    @property
    def matryoshka_dimensions(self) -> list[int] | None:
        """The widths ``config.json`` declares, or ``None``."""
        ...

    @property
    def is_matryoshka(self) -> bool:
        """Whether requests may ask for a smaller ``dimensions``."""
        ...

    @property
    def has_classifier(self) -> bool:
        """Whether the model has a classifier (the architecture's, or a CrossEncoder export's score modules)."""
        ...

    @property
    def num_labels(self) -> Setting:
        """Outputs of the classifiers, and their source."""
        ...

    @property
    def id2label(self) -> dict[int, str]:
        """Label names of the classifiers' outputs, by index; empty without a classifier."""
        ...

    @property
    def do_lower_case(self) -> bool:
        """Whether inputs are lower-cased first."""
        ...

    @property
    def prompts(self) -> dict[str, str]:
        """The sentence-transformers prompts by name."""
        ...

    @property
    def default_prompt_name(self) -> str | None:
        """The prompt used when a call names none, or ``None``."""
        ...

    @property
    def include_prompt(self) -> bool:
        """Whether pooling includes a prompt's tokens."""
        ...

    def config_value(self, name: str) -> Setting:
        """A :class:`PoolerConfig` field: the user's value, else the architecture's default."""
        ...

    def use_activation(self, from_st_normalize: bool = True) -> Setting:
        """Whether heads apply their activation when a request leaves ``use_activation`` unset."""
        ...

    def supported_tasks(self) -> list[str]:
        """The registered tasks this model can serve (builds every head: never call it from ``Task.build``)."""
        ...
