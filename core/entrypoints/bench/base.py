"""The peer interface: what ``poolkit bench --vs`` measures poolkit against (the peers are in
:mod:`.peers` and :mod:`.exports`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ...contracts.errors import PoolkitError

if TYPE_CHECKING:
    from ...config.settings import EngineArgs
    from ...contracts.architecture import LoadedModel


#: The transformers auto classes W4 and PR (cross-encoders) and W7 (SPLADE) derive their models with
#: (:meth:`~poolkit.entrypoints.bench.workloads.Bench._derived_model`).
SEQUENCE_CLASSIFIER = "AutoModelForSequenceClassification"
MASKED_LM = "AutoModelForMaskedLM"


class SkipWorkload(PoolkitError):
    """A workload that cannot compare poolkit with the peer; the message says why (the report lists it)."""


class Peer:
    """The other side of every workload.

    Args:
        args: the bench's load settings (every poolkit model it runs loads with them).
        engine: the engine of the bench's poolkit model (its token budget).
    """

    #: Its ``--vs`` name.
    key: str
    #: How the report names the peer.
    name: str
    #: Whether the parity reference is the peer's own model in fp32 (else: :meth:`reference`).
    own_reference: bool = True
    #: Workloads this peer has no side of, and why.
    skipped: dict[str, str] = {}

    def __init__(self, args: EngineArgs, engine: Any) -> None:
        self.args = args
        self.engine = engine

    def default_dtype(self, dtype: str, device_type: str) -> str:
        """The peer's dtype unless ``--peer-dtype`` says, given poolkit's: the same by default."""
        return dtype

    def model(self, cls: str, path: str, device: str, dtype: str) -> Any:
        """The peer's model of kind ``cls`` (a sentence-transformers class name) for the model
        directory ``path``; ``None`` when the peer's library is not installed."""
        raise NotImplementedError

    def reference(self, cls: str, path: str, device: str) -> Any:
        """The parity reference of kind ``cls``: the peer's own model in fp32 unless it says otherwise."""
        return self.model(cls, path, device, "float32")

    def padding_fraction(self, lengths: list[int]) -> float:
        """The share of padded positions the peer computes for sequences of ``lengths`` tokens."""
        raise NotImplementedError

    def cold_start(self, args: EngineArgs, model_dir: str, device: str) -> list[str]:
        """The command of a fresh process that loads the model and embeds one word."""
        raise NotImplementedError

    def peak_rss_mb(self, args: EngineArgs, payload: Any, dtype: str, task: str = "embed") -> float:
        """The peer's peak RSS in a child process (see :func:`~poolkit.entrypoints.bench.measure.peak_rss_mb`)."""
        raise NotImplementedError

    def check_ours(self, model: LoadedModel) -> str | None:
        """Why poolkit's side (``model``, a loaded :class:`~poolkit.loading.model.PoolingModel`) cannot be
        compared with this peer, or ``None``."""
        return None

    def image_side(self, encoder: Any) -> Callable[[list[Any]], Any]:
        """The peer's embeddings of a list of images by its model ``encoder``, for workload I in a
        list of workloads (:func:`~poolkit.entrypoints.bench.transformers_peer.image_workload`).

        Raises:
            SkipWorkload: the peer has none (by default: only ``--vs transformers`` has).
        """
        raise SkipWorkload("in a list of workloads, I runs with --vs transformers; -w I alone compares a vision-language model")

    def implementation(self, encoder: Any) -> str:
        """How the peer's embedding model ``encoder`` runs, for the report."""
        return self.name
