"""A SentencePiece unigram model (``spiece.model``) as a fast ``tokenizers`` tokenizer, read
without the ``sentencepiece`` or ``protobuf`` packages.

Checkpoints such as the first SigLIP ones ship only ``spiece.model``, which transformers reads
with a slow, ``sentencepiece``-based tokenizer. poolkit needs a fast one, so the model file (a
protobuf ``ModelProto``) is decoded here: its pieces and scores become a ``tokenizers`` unigram
model, and its normaliser settings (the precompiled character map, the removal of extra
whitespace, the ``▁`` word-boundary marker and the dummy prefix) become the tokenizer's
normaliser and pre-tokeniser, as transformers' own converters build them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..contracts.errors import ModelLoadError

#: SentencePiece's word-boundary marker.
SPACE = "\u2581"
#: ``SentencePiece.Type`` values.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM = 1


@dataclass
class SentencePieceModel:
    """The parts of a ``ModelProto`` a unigram tokenizer needs."""

    pieces: list[tuple[str, float, int]] = field(default_factory=list)
    model_type: int = _UNIGRAM
    byte_fallback: bool = False
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True

    @property
    def unk_id(self) -> int:
        return next((i for i, (_, _, kind) in enumerate(self.pieces) if kind == UNKNOWN), 0)


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """``(field number, value)`` of each field of a protobuf message: varints and fixed-width
    numbers as ints, length-delimited fields as bytes."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = struct.unpack_from("<I", data, pos)[0], pos + 4
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", data, pos)[0], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ValueError("truncated protobuf message")
        yield number, value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated protobuf varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def read_model(path: Path) -> SentencePieceModel:
    """Decode ``spiece.model``.

    Raises:
        ModelLoadError: the file is not a SentencePiece model, or not a unigram one.
    """
    model = SentencePieceModel()
    try:
        for number, value in _fields(path.read_bytes()):
            if number == 1:  # SentencePiece piece = 1, score = 2, type = 3
                parts = dict(_fields(value))
                score = struct.unpack("<f", struct.pack("<I", parts.get(2, 0)))[0]
                model.pieces.append((parts.get(1, b"").decode("utf-8"), score, parts.get(3, NORMAL)))
            elif number == 2:  # TrainerSpec: model_type = 3, byte_fallback = 35
                spec = dict(_fields(value))
                model.model_type = spec.get(3, _UNIGRAM)
                model.byte_fallback = bool(spec.get(35, 0))
            elif number == 3:  # NormalizerSpec
                spec = dict(_fields(value))
                model.precompiled_charsmap = spec.get(2, b"")
                model.add_dummy_prefix = bool(spec.get(3, 1))
                model.remove_extra_whitespaces = bool(spec.get(4, 1))
                model.escape_whitespaces = bool(spec.get(5, 1))
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise ModelLoadError(f"{path} is not a readable SentencePiece model: {exc}") from None
    if not model.pieces:
        raise ModelLoadError(f"{path} is not a readable SentencePiece model: it has no pieces")
    if model.model_type != _UNIGRAM:
        raise ModelLoadError(f"{path} is a SentencePiece model of type {model.model_type}; poolkit reads unigram models only")
    return model


def unigram_tokenizer(model: SentencePieceModel, canonical: list | None = None, prepend_scheme: str = "always"):
    """A ``tokenizers.Tokenizer`` that splits text into ``model``'s pieces as SentencePiece does.

    Args:
        model: the decoded ``spiece.model``.
        canonical: ``tokenizers`` normalisers applied before SentencePiece's own (a model
            family's text canonicalisation).
        prepend_scheme: where the dummy prefix ``▁`` goes when the model asks for one: before
            each stretch of text between special tokens (``"always"``, as SentencePiece does),
            or only at the start of the text (``"first"``, as transformers' slow tokenizers
            that prepend it themselves do; leading whitespace is then kept, to become that
            ``▁``).
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram

    vocab = [(piece, score) for piece, score, _ in model.pieces]
    tokenizer = Tokenizer(Unigram(vocab, unk_id=model.unk_id, byte_fallback=model.byte_fallback))
    steps = list(canonical or [])
    if model.precompiled_charsmap:
        steps.append(normalizers.Precompiled(model.precompiled_charsmap))
    if model.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=prepend_scheme != "first"), normalizers.Replace(Regex(" {2,}"), " ")]
    tokenizer.normalizer = normalizers.Sequence(steps)
    scheme = prepend_scheme if model.add_dummy_prefix else "never"
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme=scheme)
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme=scheme)
    return tokenizer
