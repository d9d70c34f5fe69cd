"""Score templates: a (query, document) pair rendered into one prompt for LLM-style rerankers.

A template is Jinja text that sees ``query``, ``document``, ``instruction`` and, as in vLLM's
score templates, ``messages`` (``[{"role": "query", ...}, {"role": "document", ...}]``, plus a
``system`` message holding the instruction when one is given). It renders in Jinja's sandbox.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from poolkit.errors import InvalidRequest
from poolkit.hookspecs import hookimpl
from poolkit.io import IOProcessor, Prompt

from .text import TextPairProcessor

#: The prompt of Qwen3-Reranker's model card: the model answers "yes" or "no" after it.
QWEN3_RERANKER_TEMPLATE = (
    "<|im_start|>system\n"
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
    "<Instruct>: {{ instruction or 'Given a web search query, retrieve relevant passages that answer the query' }}\n"
    "<Query>: {{ query }}\n"
    "<Document>: {{ document }}<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n\n</think>\n\n"
)


@lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        return ImmutableSandboxedEnvironment(keep_trailing_newline=True).from_string(source)
    except TemplateSyntaxError as exc:
        raise InvalidRequest(f"score template is not valid Jinja: {exc.message} (line {exc.lineno})") from None


def load_template(template: str) -> str:
    """Template text from a string, or from a file when ``template`` names an existing file."""
    if "{" not in template and Path(template).expanduser().is_file():
        return Path(template).expanduser().read_text(encoding="utf-8")
    if "{" not in template:
        raise InvalidRequest(f"chat_template '{template}' is neither Jinja text nor an existing file")
    return template


class ScoreTemplateProcessor(IOProcessor):
    """(query, document) pairs rendered through a Jinja template, one prompt per pair.

    Data is ``(queries, documents)`` or ``(queries, documents, instruction)``.
    """

    def __init__(self, template: str = QWEN3_RERANKER_TEMPLATE) -> None:
        self.template = load_template(template)
        _compile(self.template)

    def with_template(self, template: str) -> "ScoreTemplateProcessor":
        """The same processor with another template (Jinja text or a file path)."""
        return ScoreTemplateProcessor(template)

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        instruction = data[2] if isinstance(data, (tuple, list)) and len(data) == 3 else None
        queries, documents = TextPairProcessor().parse_data(tuple(data[:2]))
        template = _compile(self.template)
        prompts = []
        for query, document in zip(queries, documents):
            messages = ([{"role": "system", "content": instruction}] if instruction else []) + [
                {"role": "query", "content": query},
                {"role": "document", "content": document},
            ]
            try:
                text = template.render(query=query, document=document, instruction=instruction, messages=messages)
            except Exception as exc:  # a user's template may fail in any way while rendering
                raise InvalidRequest(f"score template failed to render: {type(exc).__name__}: {exc}") from None
            prompts.append(Prompt(text=text))
        return prompts


@hookimpl
def poolkit_register_io_processors(register):
    register("score_template", ScoreTemplateProcessor)
    register("qwen3_reranker", ScoreTemplateProcessor(QWEN3_RERANKER_TEMPLATE))
