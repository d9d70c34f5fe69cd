"""Score templates: a (query, document) pair rendered into one prompt for LLM-style rerankers.

A template is Jinja text that sees ``query``, ``document``, ``instruction`` and, as in vLLM's
score templates, ``messages`` (``[{"role": "query", ...}, {"role": "document", ...}]``, plus a
``system`` message holding the instruction when one is given). It renders in Jinja's sandbox with
the settings of transformers' chat templates, which vLLM renders score templates with
(``trim_blocks``, ``lstrip_blocks``, the template's final newline dropped).

A sentence-transformers CrossEncoder whose Transformer declares the "message" modality brings its
own template: the tokenizer's chat template, rendered as sentence-transformers renders pairs
(:class:`ChatTemplatePairProcessor`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from poolkit.contracts.errors import InvalidRequest
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.io import IOProcessor, Prompt

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


#: Contents of the two renders whose common token tail is a chat template's closing tokens
#: (sentence-transformers' fillers: they tokenize differently, so the shared tail is template).
_TAIL_FILLERS = ("0", "1 2 3 4")
#: A baseline pair, then one pair per role varying only that role's content (sentence-transformers'
#: probes): a template that renders both roles moves with each.
_PAIR_PROBES = (("alpha", "bravo"), ("charlie", "bravo"), ("alpha", "foxtrot"))
#: Model types whose chat templates take flat message content (sentence-transformers' table).
_FLAT_MODEL_TYPES = frozenset({"apertus", "deepseek_v3", "gpt_oss", "seed_oss"})
_STRUCTURED_PATTERNS = ("content[0]", ".type", "'type'", '"type"', "item.type", "message.content[")


@lru_cache(maxsize=32)
def _compile(source: str, keep_trailing_newline: bool = False) -> Any:
    from jinja2 import TemplateSyntaxError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=keep_trailing_newline, extensions=[loopcontrols]
    )
    try:
        return env.from_string(source)
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

    Data is ``(queries, documents)``, ``(queries, documents, instruction)`` or ``(queries,
    documents, instruction, variables)``: ``variables`` are further template variables (a score
    request's ``chat_template_kwargs``, as in vLLM).

    Args:
        template: Jinja text, or a file holding it.
        keep_trailing_newline: keep the template's final newline, which transformers (and so
            vLLM) drop; on only for poolkit's own templates written as the exact prompt.
    """

    def __init__(self, template: str = QWEN3_RERANKER_TEMPLATE, keep_trailing_newline: bool = False) -> None:
        self.template = load_template(template)
        self.keep_trailing_newline = keep_trailing_newline
        _compile(self.template, keep_trailing_newline)

    def with_template(self, template: str) -> "ScoreTemplateProcessor":
        """A processor rendering another template (Jinja text or a file path) as vLLM does."""
        return ScoreTemplateProcessor(template)

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        extra = tuple(data[2:]) if isinstance(data, (tuple, list)) else ()
        instruction = extra[0] if extra else None
        variables = dict(extra[1] or {}) if len(extra) > 1 else {}
        queries, documents = TextPairProcessor().parse_data(tuple(data[:2]))
        template = _compile(self.template, self.keep_trailing_newline)
        prompts = []
        for query, document in zip(queries, documents):
            messages = ([{"role": "system", "content": instruction}] if instruction else []) + [
                {"role": "query", "content": query},
                {"role": "document", "content": document},
            ]
            try:
                context = {**variables, "query": query, "document": document, "instruction": instruction}
                text = template.render(context, messages=messages)
            except Exception as exc:  # a user's template may fail in any way while rendering
                raise InvalidRequest(f"score template failed to render: {type(exc).__name__}: {exc}") from None
            prompts.append(Prompt(text=text))
        return prompts


def message_format(declared: str, tokenizer: Any, model_type: str | None) -> str:
    """``"flat"`` or ``"structured"`` message content: as declared, or for ``"auto"`` inferred as
    sentence-transformers infers it (its model-type table, then the chat template's text)."""
    if declared != "auto":
        return declared
    if model_type in _FLAT_MODEL_TYPES:
        return "flat"
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return "structured"
    return "structured" if any(p in template for p in _STRUCTURED_PATTERNS) else "flat"


def pair_messages(query: str, document: str, prompt: str | None, fmt: str) -> list[dict[str, Any]]:
    """A pair as sentence-transformers' messages: ``query`` then ``document``, after a ``system``
    message holding the prompt when there is one; content a string (flat) or a list of parts."""

    def content(text: str) -> Any:
        return [{"type": "text", "text": text}] if fmt == "structured" else text

    system = [{"role": "system", "content": content(prompt)}] if prompt else []
    return system + [{"role": "query", "content": content(query)}, {"role": "document", "content": content(document)}]


class ChatTemplatePairProcessor(IOProcessor):
    """(query, document) pairs rendered through a model's own chat template, as sentence-transformers
    renders them for a CrossEncoder whose Transformer declares the "message" modality.

    Data: ``{"queries": [...], "documents": [...], "model": PoolingModel, "prompt": str | None}``,
    optionally with ``"template_kwargs"`` (a request's ``chat_template_kwargs``) and
    ``"restore_suffix"`` (a request's choice, ``None``: the saved one). Each pair becomes
    :func:`pair_messages`, rendered by the tokenizer's ``apply_chat_template`` with the saved
    ``processing_kwargs["chat_template"]`` (``add_generation_prompt``, a named template, ...), the
    request's kwargs over them, and tokenized without special tokens (the template writes its own).
    When truncation cuts a render, the template's closing tokens are written back over its last
    tokens (``Prompt.keep_suffix``), as sentence-transformers' ``restore_suffix`` does; a template
    whose closing tokens cannot be told (no fixed tail, or a probe render fails) keeps its cut.
    """

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        model, prompt = data["model"], data.get("prompt")
        queries, documents = TextPairProcessor().parse_data((data["queries"], data["documents"]))
        st, tok = model.st, model.tokenizer
        fmt = message_format(st.message_format, tok, getattr(model.hf_config, "model_type", None))
        kwargs = {**st.chat_template_kwargs, **(data.get("template_kwargs") or {})}
        restore = st.restore_suffix if data.get("restore_suffix") is None else data["restore_suffix"]
        self._check_pair_roles(model, fmt, kwargs)
        tail = self._template_tail(tok, pair_messages("", "", prompt, fmt), kwargs) if restore else []
        prompts = []
        for query, document in zip(queries, documents):
            text = _render_chat(tok, pair_messages(query, document, prompt, fmt), kwargs)
            prompts.append(Prompt(text=text, add_special_tokens=False, keep_suffix=tail or None))
        return prompts

    @staticmethod
    def _check_pair_roles(model: Any, fmt: str, kwargs: dict[str, Any]) -> None:
        """Refuse a chat template that drops the query or the document (sentence-transformers does)."""
        base, *varied = [_render_chat(model.tokenizer, pair_messages(q, d, None, fmt), kwargs) for q, d in _PAIR_PROBES]
        dropped = [role for role, text in zip(("query", "document"), varied) if text == base]
        if dropped:
            raise InvalidRequest(
                f"the chat template of model '{model.name}' does not render the {' and '.join(dropped)} message "
                "of a (query, document) pair; give it a template that renders both roles"
            )

    @staticmethod
    def _template_tail(tokenizer: Any, conversation: list[dict[str, Any]], kwargs: dict[str, Any]) -> list[int]:
        """The template's closing tokens: the common token tail of two renders whose non-system
        content differs (none when the renders never differ, or one fails, as sentence-transformers
        gives up then)."""
        renders = []
        for filler in _TAIL_FILLERS:
            skeleton = [m if m["role"] == "system" else _filled(m, filler) for m in conversation]
            try:
                text = _render_chat(tokenizer, skeleton, kwargs)
            except InvalidRequest:
                return []
            renders.append(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        first, second = renders
        count = 0
        for a, b in zip(reversed(first), reversed(second)):
            if a != b:
                break
            count += 1
        return list(first[len(first) - count :]) if 0 < count < min(len(first), len(second)) else []


def _filled(message: dict[str, Any], text: str) -> dict[str, Any]:
    """``message`` with ``text`` as its content, in the content's shape (a string or a list of parts)."""
    return {**message, "content": [{"type": "text", "text": text}] if isinstance(message["content"], list) else text}


def _render_chat(tokenizer: Any, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as exc:  # a model's template may fail in any way, or be missing
        raise InvalidRequest(
            f"the model's chat template failed to render a (query, document) pair: {type(exc).__name__}: {exc}"
        ) from None


@hookimpl
def poolkit_register_io_processors(register):
    register("score_template", ScoreTemplateProcessor)
    # The model card's prompt, final newline included.
    register("qwen3_reranker", ScoreTemplateProcessor(QWEN3_RERANKER_TEMPLATE, keep_trailing_newline=True))
    register("chat_template_pair", ChatTemplatePairProcessor)
