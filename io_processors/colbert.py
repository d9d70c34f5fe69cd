"""ColBERT query and document prompts: markers, lengths, query expansion and the skiplist.

Three layouts say how a late-interaction model reads its inputs, and all three are read here:

- colbert-ai (``HF_ColBERT``): ``artifact.metadata`` (``query_token_id``, ``doc_token_id``,
  ``query_maxlen``, ``doc_maxlen``, ``attend_to_mask_tokens``, ``mask_punctuation``);
- PyLate: ``config_sentence_transformers.json`` (``query_prefix``, ``document_prefix``,
  ``query_length``, ``document_length``, ``do_query_expansion``, ``attend_to_expansion_tokens``,
  ``skiplist_words``);
- sentence-transformers' ``MultiVectorEncoder``: the ``query`` / ``document`` prompts, the
  Transformer module's ``query_length``, ``document_length`` and ``query_expansion``, and the
  ``MultiVectorMask`` module's ``skiplist_words``.

A query becomes ``[CLS] [Q] tokens [SEP]`` padded with ``[MASK]`` up to the expansion length; the
``[MASK]`` tokens have vectors that are scored, but no token attends to them unless the model says
so (:attr:`poolkit.Prompt.attended`), as colbert-ai and PyLate run them. A document becomes
``[CLS] [D] tokens [SEP]``, and its skiplist tokens (punctuation, by colbert-ai's and PyLate's
default) take no part in MaxSim. vLLM applies none of this.
"""

from __future__ import annotations

import json
import logging
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.io import IOProcessor, Prompt

logger = logging.getLogger(__name__)
PUNCTUATION = tuple(string.punctuation)


@dataclass(frozen=True)
class ColbertSettings:
    """How a late-interaction model reads queries and documents.

    Attributes:
        query_prefix, document_prefix: the text put before a query or document (``"[Q] "``); a
            first word that is one token of the vocabulary goes in as that token, right after the
            leading special token, as colbert-ai inserts its markers.
        query_length, document_length: token limits, special tokens included (``None``: the model's).
        expansion: the length a query is padded to with the expansion token (``None``: no expansion).
        expansion_strategy: ``"fixed"`` (every query is exactly ``expansion`` tokens) or ``"min"``
            (``expansion`` is the floor; ``query_length`` the ceiling).
        expansion_token: the pad token of the expansion (``None``: the tokenizer's mask token, else EOS).
        attend_expansion: whether the other tokens attend to the expansion tokens.
        skiplist: tokens left out of the scored vectors of ``skiplist_tasks``' inputs.
        markers: whether a prefix's first word is a marker token put in as its id (colbert-ai and
            PyLate); ``False``: prefixes are plain text (sentence-transformers' own saves).
    """

    query_prefix: str | None = None
    document_prefix: str | None = None
    query_length: int | None = None
    document_length: int | None = None
    expansion: int | None = None
    expansion_strategy: str = "fixed"
    expansion_token: str | None = None
    attend_expansion: bool = False
    skiplist: tuple[str, ...] = ()
    skiplist_tasks: tuple[str, ...] = ("document",)
    markers: bool = True

    def prefix(self, kind: str) -> str | None:
        return self.query_prefix if kind == "query" else self.document_prefix


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None


def _colbert_ai(meta: dict[str, Any]) -> ColbertSettings:
    """colbert-ai's ``artifact.metadata``, its ColBERTConfig defaults where a key is missing."""
    return ColbertSettings(
        (meta.get("query_token_id") or "[unused0]") + " ",
        (meta.get("doc_token_id") or "[unused1]") + " ",
        document_length=meta.get("doc_maxlen"),
        expansion=meta.get("query_maxlen") or 32,
        attend_expansion=bool(meta.get("attend_to_mask_tokens", False)),
        skiplist=PUNCTUATION if meta.get("mask_punctuation", True) else (),
    )


def _expansion(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """A query expansion: sentence-transformers' ``query_expansion`` (``None``: off), else PyLate's
    flat keys (on unless ``do_query_expansion`` is false, to ``query_length`` or 32 tokens)."""
    if "query_expansion" in cfg:
        return cfg["query_expansion"]
    if cfg.get("do_query_expansion") is False:
        return None
    attend = cfg.get("attend_to_expansion_tokens", cfg.get("attend_to_mask_tokens", False))
    return {"strategy": "fixed", "attend": bool(attend), "length": cfg.get("query_length") or 32}


def _pylate(cfg: dict[str, Any]) -> ColbertSettings:
    """PyLate's keys in ``config_sentence_transformers.json``, with PyLate's defaults (the
    punctuation skiplist when it names a prefix)."""
    expansion = _expansion(cfg) or {}
    words = cfg.get("skiplist_words")
    has_prefix = "query_prefix" in cfg or "document_prefix" in cfg
    return ColbertSettings(
        cfg.get("query_prefix") or None,
        cfg.get("document_prefix") or None,
        cfg.get("query_length") if "query_expansion" in cfg or not expansion else None,
        cfg.get("document_length"),
        expansion=expansion.get("length"),
        expansion_strategy=expansion.get("strategy") or "fixed",
        expansion_token=expansion.get("token"),
        attend_expansion=bool(expansion.get("attend", False)),
        skiplist=tuple(words) if words is not None else PUNCTUATION if has_prefix else (),
    )


def _multi_vector_encoder(model_dir: Path, cfg: dict[str, Any]) -> ColbertSettings:
    """A sentence-transformers ``MultiVectorEncoder`` save: its prompts and modules' configs."""
    prompts = cfg.get("prompts") or {}
    modules = _json(model_dir / "modules.json") or []
    transformer: dict[str, Any] = {}
    mask: dict[str, Any] = {}
    for module in modules if isinstance(modules, list) else []:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        folder = model_dir / str(module.get("path", ""))
        if kind == "Transformer":
            transformer = _json(folder / "sentence_bert_config.json")
        elif kind == "MultiVectorMask":
            mask = _json(folder / "config.json")
    legacy = ("query_length", "do_query_expansion", "attend_to_expansion_tokens", "query_prefix", "document_prefix")
    if "query_expansion" in transformer or not any(key in cfg for key in legacy):
        expansion = transformer.get("query_expansion") or {}
    else:  # PyLate's flat keys saved beside a sentence-transformers save, as it translates them
        expansion = _expansion(cfg) or {}
    tasks = mask.get("skiplist_tasks") or ["document"]
    return ColbertSettings(
        prompts.get("query") or None,
        prompts.get("document") or None,
        transformer.get("query_length"),
        transformer.get("document_length"),
        expansion=expansion.get("length"),
        expansion_strategy=expansion.get("strategy") or "fixed",
        expansion_token=expansion.get("token"),
        attend_expansion=bool(expansion.get("attend", False)),
        skiplist=tuple(mask.get("skiplist_words") or ()),
        skiplist_tasks=(tasks,) if isinstance(tasks, str) else tuple(tasks),
        markers=False,
    )


_PYLATE_KEYS = (
    "query_prefix", "document_prefix", "query_length", "document_length", "do_query_expansion", "query_expansion",
    "attend_to_expansion_tokens", "skiplist_words",
)


def colbert_settings(model_dir: Path, colbert_ai_defaults: bool = False) -> ColbertSettings | None:
    """The query/document settings a late-interaction checkpoint declares, or ``None``.

    ``colbert_ai_defaults``: an ``HF_ColBERT`` checkpoint without ``artifact.metadata`` gets
    colbert-ai's defaults (``[unused0]``/``[unused1]`` markers, 32-token queries, punctuation
    skiplist), as sentence-transformers' ``MultiVectorEncoder`` loads it; without it, such a
    checkpoint has no settings (vLLM's reading).
    """
    meta = _json(model_dir / "artifact.metadata")
    if meta.get("query_token_id") or meta.get("query_maxlen"):
        return _colbert_ai(meta)
    st = _json(model_dir / "config_sentence_transformers.json")
    if st.get("model_type") == "MultiVectorEncoder":
        return _multi_vector_encoder(model_dir, st)
    if any(key in st for key in _PYLATE_KEYS):
        return _pylate(st)
    if colbert_ai_defaults and "HF_ColBERT" in (_json(model_dir / "config.json").get("architectures") or []):
        logger.warning("%s has no artifact.metadata: colbert-ai's defaults apply ([unused0]/[unused1] markers, 32-token queries)", model_dir.name)
        return _colbert_ai(meta)
    return None


def split_prefix(prefix: str | None, tok: Any) -> tuple[int | None, str]:
    """A legacy prefix's marker token and the text after it: the whole prefix, else its first
    word, when that is an entry of the vocabulary (as sentence-transformers registers colbert-ai
    and PyLate markers); ``(None, prefix)`` when neither is. The text after the marker keeps its
    space, as in sentence-transformers' ``"[Q] " + text``: a byte-level BPE tokenizer (LFM2's,
    Qwen's) reads ``" text"`` as other tokens than ``"text"``; WordPiece reads both alike."""
    if not prefix or not prefix.split():
        return None, prefix or ""
    word = prefix.split(None, 1)[0]
    for word, after in ((prefix, ""), (word, prefix.partition(word)[2])):
        marker = tok.convert_tokens_to_ids(word)
        if marker is not None and (marker != tok.unk_token_id or word == tok.unk_token):
            return marker, after
    return None, prefix


def _leading_specials(tok: Any) -> int:
    """How many special tokens the tokenizer puts before a text (``[CLS]``, ``<s>``; 0 for none):
    where a marker goes."""
    special = set(tok.all_special_ids)
    ids = tok("a")["input_ids"]
    return next((i for i, t in enumerate(ids) if t not in special), len(ids))


def skiplist_ids(settings: ColbertSettings, tok: Any) -> torch.Tensor | None:
    """The token ids of the skiplist's words that are tokens of the vocabulary, or ``None``."""
    ids = [tok.convert_tokens_to_ids(word) for word in settings.skiplist]
    ids = [i for i, word in zip(ids, settings.skiplist) if i is not None and (i != tok.unk_token_id or word == tok.unk_token)]
    return torch.tensor(ids, dtype=torch.long) if ids else None


class ColbertProcessor(IOProcessor):
    """Texts in, token-id prompts with the model's ColBERT markers, lengths and expansion out.

    Data: ``{"texts": [...], "kind": "query" | "document", "model": PoolingModel}``, optionally
    ``"settings"`` (a :class:`ColbertSettings`, instead of the checkpoint's) and ``"prefix"`` (the
    text to put before each input instead of the settings' marker).
    """

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        model, kind, texts = data["model"], data["kind"], data["texts"]
        if kind not in ("query", "document"):
            raise InvalidRequest(f"ColBERT prompts are 'query' or 'document', got {kind!r}")
        settings = data.get("settings") or colbert_settings(Path(model.path)) or ColbertSettings()
        tok = model.tokenizer
        model_max = model.max_model_len.value
        length = settings.query_length if kind == "query" else settings.document_length
        limit = min(length or model_max, model_max)
        expansion = settings.expansion if kind == "query" else None
        if expansion is not None:
            limit = expansion if settings.expansion_strategy == "fixed" else max(limit, expansion)
            pad = tok.convert_tokens_to_ids(settings.expansion_token) if settings.expansion_token else tok.mask_token_id
            pad = tok.eos_token_id if pad is None else pad
            if pad is None:
                raise ModelLoadError("the tokenizer has neither a mask nor an EOS token to expand ColBERT queries with")
        prefix = data.get("prefix", settings.prefix(kind)) or ""
        marker, prefix = split_prefix(prefix, tok) if settings.markers else (None, prefix)
        lead = _leading_specials(tok) if marker is not None else 0
        room = limit - (marker is not None)
        prompts = []
        for text in texts:
            ids = tok(prefix + text, truncation=True, max_length=room)["input_ids"]
            if marker is not None:
                ids = ids[:lead] + [marker] + ids[lead:]
            attended = None
            if expansion is not None and len(ids) < expansion:
                attended = None if settings.attend_expansion else len(ids)
                ids = ids + [pad] * (expansion - len(ids))
            prompts.append(Prompt(token_ids=ids, attended=attended))
        return prompts

    def settings(self, model: Any, colbert_ai_defaults: bool = False) -> ColbertSettings:
        """The model's settings (:func:`colbert_settings`; empty settings for a model without)."""
        return colbert_settings(Path(model.path), colbert_ai_defaults) or ColbertSettings()

    def skipped(self, model: Any, kind: str, settings: ColbertSettings | None = None) -> torch.Tensor | None:
        """The token ids whose vectors MaxSim leaves out of a ``kind`` input (the skiplist's), or ``None``."""
        settings = settings or colbert_settings(Path(model.path)) or ColbertSettings()
        return skiplist_ids(settings, model.tokenizer) if kind in settings.skiplist_tasks else None


@hookimpl
def poolkit_register_io_processors(register):
    register("colbert", ColbertProcessor)
