"""Media processing as a declared step: a vision-language family's media processor.

A vision-language architecture names a media processor (:attr:`poolkit.Architecture.media_processor`):
an IO processor that turns each prompt with images (or videos) into token ids, one token per image
feature, and the tensors its model reads beside them (:attr:`Prompt.media`). Every family does the
same steps, and :meth:`MediaProcessor.pre_process` runs them, once for all: the prompt's media
refused or counted against the per-prompt limit, each item decoded, pre-processed and released
(the one decode loop), the prompt's text (or the default placeholders of a prompt without text)
cut at the placeholders and the placeholders counted against the media, and each placeholder
replaced by the item's tokens. A family declares only what is its own: which placeholder marks an item and what it
becomes (:class:`PromptReplacement`, after vLLM's record of the same name), how an item becomes
pixels (resizing, tiling, normalisation: :meth:`~MediaProcessor.process_image`), and what else its
model reads (:meth:`~MediaProcessor.extra_media`).

The steps are here, beside the declaration, because a media processor is an IO processor: the
renderer runs it, and so does anyone who takes it from the IO processor registry. Decoding is not:
a processor names how an image is decoded and how many a prompt may carry
(:meth:`~MediaProcessor.load_image`, :meth:`~MediaProcessor.limit`); the built-in families take the
image IO processor's guarded decoding (``poolkit.io_processors.image.MediaProcessor``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from .errors import InvalidRequest
from .io import IOProcessor, Prompt

if TYPE_CHECKING:
    from .model import ModelInfo

#: The media kinds a prompt may carry, in the order their placeholders are counted.
MEDIA_KINDS = ("image", "video")


@dataclasses.dataclass(frozen=True)
class MediaItem:
    """One image or video of a prompt, pre-processed by its family.

    Attributes:
        pixels: what the vision tower reads of it (an array or tensor, first axis its tiles,
            patches or frames); a prompt's items of one kind are concatenated into ``{kind}_pixels``.
        features: how many features it makes, the rows its placeholder's tokens hold.
        data: what the model reads of it beside the pixels (a tile grid, a size: whole numbers),
            each key a ``[items, ...]`` long tensor ``{kind}_{key}`` of the prompt's media.
        meta: what the family's replacement reads of it and the model does not (a frame count).
    """

    pixels: Any
    features: int
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PromptReplacement:
    """Where a family's media items go in a prompt and what each becomes (vLLM's ``PromptReplacement``).

    Attributes:
        modality: the kind of item it places, ``"image"`` or ``"video"``.
        target: the placeholder: a token id (the text is tokenized, then each such token replaced
            by the item's token ids) or a text (replaced in the text by the item's text, the text
            then tokenized).
        replacement: what an item becomes: token ids for a token target, text for a text target;
            by default (token targets only) ``features`` copies of the target.
        default: the text of one item in a prompt that has media and no text (by default the
            target's text).
        hint: how to write the placeholder, after its name in the refusal of a miscounted prompt.
        feature_token: the token of the features' rows where it is not the target (a text
            target's): a prompt whose text holds it of its own is refused.
    """

    modality: str
    target: int | str
    replacement: Callable[[MediaItem], list[int] | str] | None = None
    default: str | None = None
    hint: str = ""
    feature_token: int | None = None

    def tokens(self, item: MediaItem) -> list[int] | str:
        """What ``item`` becomes in place of its placeholder."""
        if self.replacement is not None:
            return self.replacement(item)
        if isinstance(self.target, str):
            raise TypeError(f"the {self.modality} replacement of a text target needs a replacement")
        return [self.target] * item.features


@dataclasses.dataclass(frozen=True)
class Layout:
    """A prompt cut at its placeholders, before its media are decoded.

    Attributes:
        pieces: what stands between the placeholders, one more than there are: token ids, or
            texts where the targets are texts (tokenized once the placeholders are replaced).
        slots: the kind of item each placeholder holds, in order.
        add_special_tokens: whether texts are tokenized with the tokenizer's special tokens.
    """

    pieces: list[Any]
    slots: list[str]
    add_special_tokens: bool = True


class Placement(NamedTuple):
    """Where one item's tokens stand in the expanded token ids."""

    modality: str
    item: MediaItem
    start: int
    length: int


class Expansion(NamedTuple):
    """A prompt's token ids with every placeholder replaced, and where each item went (token
    targets only: a text target's items are placed in the text)."""

    ids: list[int]
    placements: list[Placement]


def plural(count: int, word: str) -> str:
    """``"1 image"``, ``"2 images"``."""
    return f"{count} {word}{'s' if count != 1 else ''}"


def count_refusal(index: int, kind: str, found: int, given: int, name: str, hint: str = "") -> InvalidRequest:
    """The refusal of a prompt whose ``kind`` placeholders (``name``) do not match its items."""
    return InvalidRequest(
        f"prompt {index} has {plural(found, f'{kind} placeholder')} ({name}) for {plural(given, kind)}; "
        f"put one {name}{hint} where each {kind} goes"
    )


def media_data(data: Any, taker: str) -> dict[str, Any]:
    """The request data of an IO processor that reads media (``taker``, as messages name it):
    ``{"prompts": [...], "model": PoolingModel}``, optionally with ``"allow_local_files"``.

    Raises:
        InvalidRequest: data of another shape.
    """
    if not (isinstance(data, dict) and "prompts" in data and "model" in data):
        raise InvalidRequest(f"{taker} takes {{'prompts': [...], 'model': PoolingModel}}")
    return data


@contextlib.contextmanager
def opened(given: Any, decoded: Any) -> Iterator[Any]:
    """``decoded`` (what ``given`` decoded into) for the length of a block, closed after it when it
    was opened here and not given: the file an image was read from (an animation keeps it open) is
    released whatever the block raises."""
    try:
        yield decoded
    finally:
        if decoded is not given and hasattr(decoded, "close"):
            decoded.close()


def concat(pixels: Sequence[Any]) -> torch.Tensor:
    """Items' pixels (arrays or tensors) as one tensor along the first axis."""
    if all(isinstance(p, np.ndarray) for p in pixels):
        return torch.from_numpy(np.concatenate(pixels))
    return torch.cat([torch.as_tensor(p) for p in pixels])


class MediaProcessor(IOProcessor):
    """A vision-language family's media processor: the shared steps, and what a family declares.

    ``pre_process`` takes ``{"prompts": [...], "model": PoolingModel}`` (and optionally
    ``"allow_local_files": False``, which a server passes so request data cannot name files on
    its disk) and returns the prompts, each with media as token ids with :attr:`Prompt.media`
    (``{kind}_pixels``, ``{kind}_{key}`` of each :attr:`MediaItem.data` key, and
    :meth:`extra_media`); prompts without media go through :meth:`text_prompt`.

    A family implements :meth:`replacements` and :meth:`process_image` (and, reading videos,
    :attr:`reads_videos`, :meth:`load_video` and :meth:`process_video`); a processor names its
    decoding with :meth:`load_image` and :meth:`limit`.
    """

    #: Videos are read (chat ``video_url`` parts, ``multi_modal_data={"video": ...}``).
    reads_videos: bool = False

    def __init__(self) -> None:
        self._settings: dict[tuple[str, Any], Any] = {}
        self._lock = threading.Lock()

    # -- what a family declares -----------------------------------------------------------------

    def replacements(self, model: ModelInfo) -> Sequence[PromptReplacement]:
        """The placeholder of each media kind the model reads, and what an item becomes."""
        raise NotImplementedError

    def process_image(self, image: Any, model: ModelInfo) -> MediaItem:
        """One decoded image (a ``PIL.Image.Image``) as the model reads it."""
        raise NotImplementedError

    def process_video(self, video: Any, model: ModelInfo) -> MediaItem:
        """One decoded video (what :meth:`load_video` returns) as the model reads it."""
        raise NotImplementedError

    def load_image(self, index: int, value: Any, model: ModelInfo, allow_files: bool) -> Any:
        """Decode the image ``value`` of prompt ``index`` into a ``PIL.Image.Image`` (the given one
        if it is one: only an image opened here is closed after use)."""
        raise NotImplementedError

    def load_video(self, index: int, value: Any, model: ModelInfo, allow_files: bool) -> Any:
        """Decode the video ``value`` of prompt ``index`` (for :meth:`process_video`)."""
        raise NotImplementedError

    def limit(self, model: ModelInfo, kind: str) -> int:
        """Most items of ``kind`` one prompt may carry."""
        raise NotImplementedError

    def text_prompt(self, index: int, prompt: Prompt, model: ModelInfo) -> Prompt:
        """A prompt without media, as the model reads it (here: as given)."""
        return prompt

    def prompt_text(self, index: int, prompt: Prompt, counts: Mapping[str, int], model: ModelInfo) -> str:
        """The text of a prompt with media: its own, else each item's default placeholder."""
        if prompt.text:
            return prompt.text
        defaults = {r.modality: self._default(r, model) for r in self.replacements(model)}
        return "".join(defaults[kind] * counts.get(kind, 0) for kind in MEDIA_KINDS if kind in defaults)

    def layout(self, index: int, text: str, counts: Mapping[str, int], model: ModelInfo, add_special_tokens: bool) -> Layout:
        """``text`` cut at its placeholders, which must be one per item of each kind: tokenized
        first where the targets are tokens, as texts where they are texts (all of one sort).

        Raises:
            InvalidRequest: a kind's placeholders miscounted.
        """
        replacements = self.replacements(model)
        pieces: list[Any]
        if all(isinstance(r.target, str) for r in replacements):
            pieces, slots = _split_text(text, {str(r.target): r.modality for r in replacements})
        else:
            ids = model.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
            pieces, slots = _split_ids(ids, {int(r.target): r.modality for r in replacements})
        for r in replacements:
            found, given = slots.count(r.modality), counts.get(r.modality, 0)
            if found != given:
                raise count_refusal(index, r.modality, found, given, self._name(r, model), r.hint)
        return Layout(pieces, slots, add_special_tokens)

    def extra_media(self, expansion: Expansion, model: ModelInfo) -> dict[str, torch.Tensor]:
        """What else the model reads of a prompt with media (multimodal positions); none here."""
        return {}

    # -- the steps every family shares ----------------------------------------------------------

    def parse_data(self, data: Any) -> dict[str, Any]:
        return media_data(data, "a media processor")

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        data = self.parse_data(data)
        model: ModelInfo = data["model"]
        allow_files = bool(data.get("allow_local_files", True))
        out = []
        for i, prompt in enumerate(data["prompts"]):
            given = self.media_of(i, prompt, model)
            out.append(self.media_prompt(i, prompt, given, model, allow_files) if given else self.text_prompt(i, prompt, model))
        return out

    def media_of(self, index: int, prompt: Prompt, model: ModelInfo) -> dict[str, list[Any]]:
        """The items of each kind ``prompt`` carries (``{}``: none), checked against what the model
        reads and the per-prompt limit (:meth:`limit`).

        Raises:
            InvalidRequest: videos for a model without them, or more items than the limit.
        """
        if "image" not in prompt.extras and "video" not in prompt.extras:
            return {}
        if "video" in prompt.extras and not self.reads_videos:
            raise InvalidRequest(f"prompt {index}: model '{model.name}' takes no videos; pass images")
        given = {}
        for kind in MEDIA_KINDS:
            value = prompt.extras.get(kind)
            items = [] if value is None else self.split(kind, value)
            per_prompt = self.limit(model, kind)
            if len(items) > per_prompt:
                raise InvalidRequest(f"prompt {index}: {len(items)} {kind}s, more than the limit of {per_prompt} per prompt")
            given[kind] = items
        return given

    def split(self, kind: str, value: Any) -> list[Any]:
        """A prompt's ``kind`` value as a list of items: a list of them, or one."""
        return list(value) if isinstance(value, (list, tuple)) else [value]

    def media_prompt(
        self, index: int, prompt: Prompt, given: Mapping[str, list[Any]], model: ModelInfo, allow_files: bool
    ) -> Prompt:
        """One prompt with media: its text, then each item decoded and pre-processed (an item that
        does not decode is refused first), then the placeholders counted and replaced."""
        counts = {kind: len(items) for kind, items in given.items()}
        text = self.prompt_text(index, prompt, counts, model)
        items = {kind: [self.item(index, kind, value, model, allow_files) for value in values] for kind, values in given.items() if values}
        layout = self.layout(index, text, counts, model, prompt.add_special_tokens)
        expansion = self.expand(index, layout, items, model)
        media: dict[str, torch.Tensor] = {}
        for kind, made in items.items():
            media[f"{kind}_pixels"] = concat([item.pixels for item in made])
            for key in made[0].data:
                media[f"{kind}_{key}"] = torch.tensor([item.data[key] for item in made], dtype=torch.long)
        media.update(self.extra_media(expansion, model))
        return dataclasses.replace(prompt, text=None, token_ids=expansion.ids, media=media, extras={})

    def item(self, index: int, kind: str, value: Any, model: ModelInfo, allow_files: bool) -> MediaItem:
        """One item decoded, pre-processed by the family and released: the one decode loop.

        Raises:
            InvalidRequest: naming the prompt, an item that does not decode or that the family's
                pre-processing refuses.
        """
        load, process = (self.load_image, self.process_image) if kind == "image" else (self.load_video, self.process_video)
        with opened(value, load(index, value, model, allow_files)) as decoded:
            try:
                return process(decoded, model)
            except InvalidRequest as exc:
                raise InvalidRequest(f"prompt {index}: {exc}") from None

    def expand(self, index: int, layout: Layout, items: Mapping[str, list[MediaItem]], model: ModelInfo) -> Expansion:
        """The prompt's token ids, each placeholder replaced by its item's tokens.

        Raises:
            InvalidRequest: a text that holds a text target's feature token of its own.
        """
        replacements = {r.modality: r for r in self.replacements(model)}
        left = {kind: iter(made) for kind, made in items.items()}
        chosen = [(replacements[kind], next(left[kind])) for kind in layout.slots]
        if layout.pieces and isinstance(layout.pieces[0], str):
            text = layout.pieces[0] + "".join(str(r.tokens(item)) + piece for (r, item), piece in zip(chosen, layout.pieces[1:]))
            ids = model.tokenizer(text, add_special_tokens=layout.add_special_tokens)["input_ids"]
            for r in replacements.values():
                if r.feature_token is not None:
                    wanted = sum(item.features for item in items.get(r.modality, ()))
                    got = sum(1 for t in ids if t == r.feature_token)
                    if got != wanted:
                        name = model.tokenizer.convert_ids_to_tokens(r.feature_token)
                        raise InvalidRequest(
                            f"prompt {index} has {got - wanted} {name} tokens of its own; mark each {r.modality} with "
                            f"{self._name(r, model)} instead"
                        )
            return Expansion(ids, [])
        ids = list(layout.pieces[0])
        placements = []
        for (r, item), piece in zip(chosen, layout.pieces[1:]):
            tokens = r.tokens(item)
            placements.append(Placement(r.modality, item, len(ids), len(tokens)))
            ids += tokens
            ids += piece
        return Expansion(ids, placements)

    def cached(self, model: ModelInfo, key: Any, read: Callable[[], Any]) -> Any:
        """``read()``'s result for this model's directory and ``key``, read on the first call only."""
        full = (str(Path(model.path).resolve()), key)
        with self._lock:
            if full not in self._settings:
                self._settings[full] = read()
            return self._settings[full]

    @staticmethod
    def _name(replacement: PromptReplacement, model: ModelInfo) -> str:
        target = replacement.target
        return target if isinstance(target, str) else str(model.tokenizer.convert_ids_to_tokens(int(target)))

    def _default(self, replacement: PromptReplacement, model: ModelInfo) -> str:
        return replacement.default if replacement.default is not None else self._name(replacement, model)


def _split_ids(ids: Sequence[int], targets: Mapping[int, str]) -> tuple[list[list[int]], list[str]]:
    """Token ids cut at the target tokens: the pieces between them and the kind of each target."""
    pieces: list[list[int]] = [[]]
    slots: list[str] = []
    for t in ids:
        kind = targets.get(t)
        if kind is None:
            pieces[-1].append(t)
        else:
            slots.append(kind)
            pieces.append([])
    return pieces, slots


def _split_text(text: str, targets: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """A text cut at the target texts: the pieces between them and the kind of each target."""
    pieces: list[str] = []
    slots: list[str] = []
    at = 0
    while True:
        found = [(text.find(target, at), target) for target in targets]
        found = [(pos, target) for pos, target in found if pos >= 0]
        if not found:
            pieces.append(text[at:])
            return pieces, slots
        pos, target = min(found)
        pieces.append(text[at:pos])
        slots.append(targets[target])
        at = pos + len(target)
