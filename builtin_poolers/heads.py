"""Task heads: pooler -> projector -> matryoshka truncation -> activation, in fp32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.params import PoolingParams
from poolkit.contracts.pooling import Pooler

from .activations import normalize
from .poolers import SegmentPooler
from .token_pooling import TokenPooling, pool_tokens


class VectorHead:
    """Pools, projects, truncates and activates, for sequence or token granularity.

    Args:
        poolers: one or more poolers of the head's granularity; several are concatenated
            (sentence-transformers pooling with several modes on).
        projector: applied to the pooled vectors (sentence-transformers Dense layers), or None.
        activation: applied where a request's ``use_activation`` (default below) is true.
        use_activation: the default when a request leaves ``use_activation`` unset.
        dimensions: the default matryoshka width when a request leaves ``dimensions`` unset.
        token_pooling: the model's token pooling (its protected tokens, normalisation and skiplists
            apply to every ``token_pool_factor``), or ``None`` for sentence-transformers' defaults.
    """

    def __init__(
        self,
        poolers: Sequence[Pooler],
        projector: torch.nn.Module | None,
        activation: Callable[[torch.Tensor], torch.Tensor],
        use_activation: bool,
        dimensions: int | None = None,
        token_pooling: TokenPooling | None = None,
    ) -> None:
        self.poolers = list(poolers)
        self.token_pooling = token_pooling
        self.granularity = self.poolers[0].granularity
        self.projector = projector
        self.activation = activation
        self.use_activation = use_activation
        self.dimensions = dimensions

    def _pool(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor | list[torch.Tensor]:
        if self.granularity == "sequence":
            pooled = [p(hidden, batch).float() for p in self.poolers]
            return pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)
        return [t.float() for t in self.poolers[0](hidden, batch)]

    def _finish(self, x: torch.Tensor, dims: int | None, activate: bool) -> torch.Tensor:
        if dims is not None:
            x = x[..., :dims]
        return self.activation(x) if activate else x

    def _fusable(self, batch: PackedBatch, settings: list[tuple[int | None, bool]]) -> bool:
        """Whether the head is just pooling then L2 normalisation: one ``segment_pool`` call does both."""
        return (
            len(self.poolers) == 1
            and isinstance(self.poolers[0], SegmentPooler)
            and self.projector is None
            and self.activation is normalize
            and batch.pool_mask is None
            and all(s == (None, True) for s in settings)
        )

    def _setting(self, p: PoolingParams) -> tuple[int | None, bool]:
        return p.dimensions or self.dimensions, self.use_activation if p.use_activation is None else p.use_activation

    def __call__(
        self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]
    ) -> torch.Tensor | list[torch.Tensor]:
        if params and all(p is params[0] for p in params):  # one request's parameters: one setting
            settings = [self._setting(params[0])] * len(params)
        else:
            settings = [self._setting(p) for p in params]
        if self._fusable(batch, settings):
            return self.poolers[0].pooled(hidden, batch, normalize=True)
        pooled = self._pool(hidden, batch)
        if self.granularity == "sequence":
            if self.projector is not None:
                pooled = self.projector(pooled)
            if len(set(settings)) == 1:
                return self._finish(pooled, *settings[0])
            return [self._finish(row, *s) for row, s in zip(pooled.unbind(0), settings)]
        if self.projector is not None:
            pooled = [self.projector(t) for t in pooled]
        pooled = [self._finish(late_chunks(t, p), *s) for t, s, p in zip(pooled, settings, params)]
        return token_pool(pooled, batch, params, self.token_pooling)


class TokenPooledHead:
    """An architecture's own token head (BGE-M3's ColBERT vectors) with the request's token pooling
    after it (:func:`token_pool`), as :class:`VectorHead` pools its own."""

    def __init__(self, head: Callable, pooling: TokenPooling | None) -> None:
        self.head = head
        self.pooling = pooling

    def __call__(
        self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]
    ) -> torch.Tensor | list[torch.Tensor]:
        return token_pool(self.head(hidden, batch, params), batch, params, self.pooling)

    def __getattr__(self, name: str) -> object:  # the wrapped head's own attributes (granularity, ...)
        if name == "head":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.head, name)


def late_chunks(tokens: torch.Tensor, params: PoolingParams) -> torch.Tensor:
    """Token vectors ``[n, H]`` averaged over consecutive chunks of the request's late-chunking
    size (``[ceil(n / size), H]``), or unchanged when the request asks for no late chunking."""
    if params.late_chunking_params is None:
        return tokens
    size = params.late_chunking_params.chunk_size
    return torch.stack([part.float().mean(0) for part in tokens.split(size)])


def token_pool(
    tokens: list[torch.Tensor], batch: PackedBatch, params: Sequence[PoolingParams], pooling: TokenPooling | None = None
) -> list[torch.Tensor]:
    """Each sequence's token vectors ``[n, H]`` (finished: truncated and normalised) pooled by its
    request's ``token_pool_factor`` as sentence-transformers pools them (:class:`~.token_pooling.TokenPooling`:
    the model's protected tokens, normalisation and skiplist of the sequence's side), or unchanged without one."""
    if all(p.token_pool_factor is None for p in params):
        return tokens
    ids = batch.split(batch.input_ids)
    out = []
    for t, i, p in zip(tokens, ids, params):
        if p.token_pool_factor is None:
            out.append(t)
        elif pooling is None:
            out.append(pool_tokens(t, p.token_pool_factor))
        else:
            out.append(pooling(t, p.token_pool_factor, i, p.side))
    return out


@dataclass(eq=False, repr=False)
class ClassifierHead:
    """Classifier logits, calibrated ``(x - logit_mean) / logit_sigma``, then the activation.

    Sequence heads pool first (``poolers``); token heads classify every token, optionally keeping
    only the ``STEP`` rows and columns a request asks for.

    Args:
        classifier: the architecture's classifier (``[N, H] -> [N, num_labels]``).
        activation: the activation, or ``None`` for sigmoid with one output, softmax with several.
        use_activation: the default when a request leaves ``use_activation`` unset.
        logit_mean: subtracted from the logits when set.
        logit_sigma: divides the logits when set.
        poolers: the sequence poolers (concatenated), or ``None`` for a token head.
        step: a token head keeps only ``step_tag_id`` rows and ``returned_token_ids`` columns.
    """

    classifier: torch.nn.Module
    activation: Callable[[torch.Tensor], torch.Tensor] | None
    use_activation: bool
    logit_mean: float | None = None
    logit_sigma: float | None = None
    poolers: Sequence[Pooler] | None = None
    step: bool = False

    def __post_init__(self) -> None:
        self.poolers = list(self.poolers) if self.poolers else None

    def _activate(self, logits: torch.Tensor, activate: bool) -> torch.Tensor:
        if self.logit_mean is not None:
            logits = logits - self.logit_mean
        if self.logit_sigma is not None:
            logits = logits / self.logit_sigma
        if not activate:
            return logits
        if self.activation is not None:
            return self.activation(logits)
        return torch.sigmoid(logits) if logits.shape[-1] < 2 else torch.softmax(logits, dim=-1)

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        weight = next(self.classifier.parameters(), None)
        return self.classifier(x if weight is None else x.to(weight.dtype)).float()

    def __call__(
        self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]
    ) -> torch.Tensor | list[torch.Tensor]:
        flags = [self.use_activation if p.use_activation is None else p.use_activation for p in params]
        if self.poolers is not None:
            pooled = [p(hidden, batch) for p in self.poolers]
            logits = self._classify(pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1))
            if len(set(flags)) == 1:
                return self._activate(logits, flags[0])
            return [self._activate(row, flag) for row, flag in zip(logits.unbind(0), flags)]
        rows = batch.split(self._classify(hidden))
        if self.step:
            rows = [self._step(r, ids, p) for r, ids, p in zip(rows, batch.split(batch.input_ids), params)]
        return [self._activate(r, flag) for r, flag in zip(rows, flags)]

    @staticmethod
    def _step(logits: torch.Tensor, token_ids: torch.Tensor, params: PoolingParams) -> torch.Tensor:
        if params.returned_token_ids:
            logits = logits[:, params.returned_token_ids]
        if params.step_tag_id is not None:
            logits = logits[token_ids == params.step_tag_id]
        return logits


#: Most LM-head logits (rows x vocabulary) :class:`LMHeadStepHead` holds at once: 2**24 floats,
#: 110 token rows of Qwen's 151k-token vocabulary.
LOGITS_BUDGET = 1 << 24


class _LMHeadClassifier(ClassifierHead):
    """A classifier head whose classifier is an LM head, run over a bounded chunk of rows at a time.

    Args:
        lm_head: ``[n, H]`` hidden rows -> ``[n, vocab]`` logits (``Architecture.lm_head()``).
        vocab_size: width of the logits.
        activation, use_activation, logit_mean, logit_sigma: as for :class:`ClassifierHead`.
        chunk_rows: rows per LM-head call; ``None`` derives it from :data:`LOGITS_BUDGET`.
    """

    step: bool = False

    def __init__(
        self,
        lm_head: Callable[[torch.Tensor], torch.Tensor],
        vocab_size: int,
        activation: Callable[[torch.Tensor], torch.Tensor] | None,
        use_activation: bool,
        logit_mean: float | None = None,
        logit_sigma: float | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        classifier: torch.nn.Module = lm_head  # type: ignore[assignment]  # called, never inspected
        super().__init__(classifier, activation, use_activation, logit_mean, logit_sigma, step=self.step)
        self.vocab_size = int(vocab_size)
        self.chunk_rows = chunk_rows or max(1, LOGITS_BUDGET // max(1, self.vocab_size))


class LMHeadStepHead(_LMHeadClassifier):
    """``STEP`` rewards read off a causal LM's next-token head (math-shepherd's process rewards).

    Each sequence keeps the rows of its ``step_tag_id`` tokens (all rows without one); only those
    rows go through the LM head, a bounded chunk at a time so that ``[rows, vocab]`` logits never
    exist for a whole batch, and each chunk keeps only the ``returned_token_ids`` columns. Then
    the classifier activation applies: softmax over the columns (sigmoid for one), as vLLM's
    ``StepPool`` with its classifier head. Arguments as for the base class.
    """

    step = True

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        flags = [self.use_activation if p.use_activation is None else p.use_activation for p in params]
        rows = batch.split(hidden)
        if any(p.step_tag_id is not None for p in params):
            ids = batch.split(batch.input_ids)
            rows = [r if p.step_tag_id is None else r[t == p.step_tag_id] for r, t, p in zip(rows, ids, params)]
        logits: list[torch.Tensor | None] = [None] * len(rows)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault(tuple(p.returned_token_ids or ()), []).append(i)
        for columns, members in groups.items():  # one pass over the head per set of columns
            picked = self._logits(torch.cat([rows[i] for i in members]), list(columns))
            for i, part in zip(members, picked.split([rows[i].shape[0] for i in members])):
                logits[i] = part
        return [self._activate(x, flag) for x, flag in zip(logits, flags)]

    def _logits(self, rows: torch.Tensor, columns: list[int]) -> torch.Tensor:
        width = len(columns) if columns else self.vocab_size
        parts = []
        for chunk in rows.split(self.chunk_rows):
            out = self.classifier(chunk)
            parts.append((out[:, columns] if columns else out).float())
        return torch.cat(parts) if parts else rows.new_zeros((0, width), dtype=torch.float32)


class LMHeadTokenHead(_LMHeadClassifier):
    """Every token classified by a masked-LM head: its distribution over the vocabulary.

    vLLM serves a masked LM's ``token_classify`` this way (``[n_tokens, vocab_size]`` per input).
    The head runs over a bounded chunk of rows at a time (:data:`LOGITS_BUDGET`), each chunk is
    activated as it comes, and the results go straight into one ``[T, vocab]`` fp32 tensor, so
    besides the outputs themselves only one chunk's logits exist at once. The activation is the
    classifier's (softmax over the vocabulary unless the model says otherwise); a request's
    ``use_activation=False`` gives the raw, calibrated logits.
    """

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        flags = [self.use_activation if p.use_activation is None else p.use_activation for p in params]
        out = torch.empty((hidden.shape[0], self.vocab_size), dtype=torch.float32, device=hidden.device)
        runs: list[tuple[int, int, bool]] = []  # (first row, end row, flag) of sequences in a row sharing a flag
        start = 0
        for length, flag in zip(batch.seq_lens, flags):
            if runs and runs[-1][2] == flag:
                runs[-1] = (runs[-1][0], start + length, flag)
            else:
                runs.append((start, start + length, flag))
            start += length
        for first, end, flag in runs:
            for begin in range(first, end, self.chunk_rows):
                stop = min(end, begin + self.chunk_rows)
                out[begin:stop] = self._activate(self.classifier(hidden[begin:stop]).float(), flag)
        return batch.split(out)


class LogitScore(torch.nn.Module):
    """sentence-transformers' CrossEncoder ``LogitScore`` as the classifier of pooled (last-token)
    rows: the LM head's logit of ``true_token_id``, minus ``false_token_id``'s when given.

    ``[n, H] -> [n, 1]`` in fp32. The LM head (``Architecture.lm_head()``, tied or not) runs over
    a bounded chunk of rows at a time (:data:`LOGITS_BUDGET`).
    """

    def __init__(
        self,
        lm_head: Callable[[torch.Tensor], torch.Tensor],
        true_token_id: int,
        false_token_id: int | None,
        vocab_size: int,
    ) -> None:
        super().__init__()
        self.lm_head = lm_head
        self.true_token_id = int(true_token_id)
        self.false_token_id = None if false_token_id is None else int(false_token_id)
        self.chunk_rows = max(1, LOGITS_BUDGET // max(1, int(vocab_size)))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        scores = []
        for chunk in rows.split(self.chunk_rows):
            logits = self.lm_head(chunk).float()
            score = logits[:, self.true_token_id]
            if self.false_token_id is not None:
                score = score - logits[:, self.false_token_id]
            scores.append(score)
        return torch.cat(scores).unsqueeze(1)
