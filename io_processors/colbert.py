"""ColBERT query and document prompts: marker tokens, lengths and query expansion.

colbert-ai checkpoints say in ``artifact.metadata`` (``query_token_id``, ``doc_token_id``,
``query_maxlen``, ``doc_maxlen``), PyLate ones in ``config_sentence_transformers.json``
(``query_prefix``, ``document_prefix``, ``query_length``, ``document_length``,
``do_query_expansion``). A query becomes ``[CLS] [Q] tokens [SEP]`` padded with ``[MASK]`` up to
the query length (the expansion tokens are attended); a document ``[CLS] [D] tokens [SEP]``.
vLLM applies none of this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from poolkit.errors import InvalidRequest, ModelLoadError
from poolkit.hookspecs import hookimpl
from poolkit.io import IOProcessor, Prompt


@dataclass(frozen=True)
class ColbertSettings:
    """Markers (token strings), lengths (tokens, special tokens included) and query expansion."""

    query_marker: str | None = None
    document_marker: str | None = None
    query_length: int | None = None
    document_length: int | None = None
    expand_query: bool = False


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None


def colbert_settings(model_dir: Path) -> ColbertSettings | None:
    """The query/document settings a ColBERT checkpoint declares, or ``None``."""
    meta = _json(model_dir / "artifact.metadata")
    if meta.get("query_token_id") or meta.get("query_maxlen"):
        return ColbertSettings(
            meta.get("query_token_id"),
            meta.get("doc_token_id"),
            meta.get("query_maxlen"),
            meta.get("doc_maxlen"),
            expand_query=True,
        )
    st = _json(model_dir / "config_sentence_transformers.json")
    if st.get("query_prefix") or st.get("query_length"):
        strip = lambda marker: marker.strip() if isinstance(marker, str) and marker.strip() else None  # noqa: E731
        return ColbertSettings(
            strip(st.get("query_prefix")),
            strip(st.get("document_prefix")),
            st.get("query_length"),
            st.get("document_length"),
            expand_query=bool(st.get("do_query_expansion", True)),
        )
    return None


class ColbertProcessor(IOProcessor):
    """Texts in, token-id prompts with the model's ColBERT markers out.

    Data: ``{"texts": [...], "kind": "query" | "document", "model": PoolingModel}``.
    """

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        model, kind, texts = data["model"], data["kind"], data["texts"]
        if kind not in ("query", "document"):
            raise InvalidRequest(f"ColBERT prompts are 'query' or 'document', got {kind!r}")
        settings = colbert_settings(Path(model.path)) or ColbertSettings()
        tok = model.tokenizer
        marker = settings.query_marker if kind == "query" else settings.document_marker
        length = settings.query_length if kind == "query" else settings.document_length
        limit = min(length or model.max_model_len.value, model.max_model_len.value)
        marker_id = None
        if marker is not None:
            marker_id = tok.convert_tokens_to_ids(marker)
            if marker_id is None or marker_id == tok.unk_token_id:
                raise ModelLoadError(f"the tokenizer has no ColBERT marker token '{marker}'")
        room = limit - (marker_id is not None)
        prompts = []
        for text in texts:
            ids = tok(text, truncation=True, max_length=room)["input_ids"]
            if marker_id is not None:
                ids = ids[:1] + [marker_id] + ids[1:]
            if kind == "query" and settings.expand_query and length and tok.mask_token_id is not None:
                ids = ids + [tok.mask_token_id] * (limit - len(ids))
            prompts.append(Prompt(token_ids=ids))
        return prompts


@hookimpl
def poolkit_register_io_processors(register):
    register("colbert", ColbertProcessor)
