"""The pieces the server's request bodies share (OpenAI, vLLM, Cohere and TEI field names).

Each request model lives beside the route that serves it (``EmbeddingRequest`` in
:mod:`poolkit.entrypoints.server.routes_openai`, vLLM's in ``routes_vllm``, Cohere's in
``routes_cohere``, TEI's in ``routes_tei``); this module holds what several of them take: the JSON
schemas of the inputs, the field groups (the model name, truncation, chat messages, the
activation, the tensor encoding) and the input types with their checks.

The models describe the API in ``/openapi.json`` and do the structural checks: strict types (no
``"256"`` for an integer, no ``1.0`` for a boolean), closed value sets (``encoding_format``,
``embed_dtype``, ...) and no NaN or Infinity. Unknown fields are ignored, as OpenAI and vLLM
clients send extras. Checks that need the model (task support, matryoshka dimensions) are the
``LLM``'s, and the server's limits its routes'.

The routes check values (an empty text, a negative count) with messages of their own, vLLM's where
vLLM has one; the schema states the same rules (``schema(...)``: no text shorter than one
character, no list without an item, ...), so generated clients refuse what the server refuses.
:mod:`poolkit.entrypoints.server.openapi` adds the loaded model's own bounds.
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..inputs.chat import RESERVED_TEMPLATE_KWARGS
from ..inputs.request import InputLimits, PoolRequest

#: Older spellings of ``use_activation`` that vLLM clients still send (deprecated in vLLM).
ACTIVATION_ALIASES = ("normalize", "softmax", "activation")

# -- the JSON schemas of the inputs: what the routes' checks accept --------------------------------

#: A text: not empty (:func:`poolkit.contracts.io.text_problem`).
TEXT = {"type": "string", "minLength": 1}
#: A rerank document given as ``{"text": ...}`` (Jina's and Cohere's form).
TEXT_DOCUMENT = {"type": "object", "required": ["text"], "properties": {"text": TEXT}}
#: Token ids: not empty, not negative (the vocabulary's size is the loaded model's bound).
TOKEN_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
#: One chat conversation: messages with a string ``role`` and a string or list ``content``.
CONVERSATION = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {"role": {"type": "string"}, "content": {"anyOf": [{"type": "string"}, {"type": "array"}]}},
    },
}
#: ``truncate_prompt_tokens``: -1 (the model's limit) or a positive count.
TRUNCATION = {"anyOf": [{"const": -1}, {"type": "integer", "minimum": 1}]}
POSITIVE = {"type": "integer", "minimum": 1}


def list_of(item: dict) -> dict:
    return {"type": "array", "minItems": 1, "items": item}


def schema(json_schema: dict) -> WithJsonSchema:
    """The JSON schema ``/openapi.json`` gives a field, instead of the one its type derives."""
    return WithJsonSchema(json_schema)


def given(*names: str) -> dict:
    """The schema rule "these fields are present and not null"."""
    return {"required": list(names), "properties": {n: {"not": {"type": "null"}} for n in names}}


def one_of(*names: str) -> dict:
    """The schema rule "exactly one of these fields is given" (the others absent or null)."""
    return {"oneOf": [given(n) for n in names]}


#: The pairs of fields a score request may carry (vLLM's ``ScoreRequest`` union).
SCORE_PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _is_numbers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in value)


def _check_prompt_input(value: Any, handler: Any) -> Any:
    """``str | list[str] | list[int] | list[list[int]]`` with one clear message when it is not."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and (
        all(isinstance(v, str) for v in value) or _is_token_ids(value) or all(_is_token_ids(v) for v in value)
    ):
        return value
    if isinstance(value, list) and value and (_is_numbers(value) or all(_is_numbers(v) for v in value)):
        raise PydanticCustomError("int_type", "Input should be a valid integer: token ids are written without a fraction")
    raise PydanticCustomError(
        "input_type",
        "must be a string, a list of strings, a list of token ids or a list of lists of token ids",
    )


def _check_texts(value: Any, handler: Any) -> Any:
    """``str | list[str]``."""
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise PydanticCustomError("texts_type", "must be a string or a list of strings")


PromptInput = Annotated[
    Union[StrictStr, List[StrictStr], List[StrictInt], List[List[StrictInt]]],
    WrapValidator(_check_prompt_input),
    schema({"anyOf": [TEXT, list_of(TEXT), TOKEN_IDS, list_of(TOKEN_IDS)]}),
]
TextInput = Annotated[
    Union[StrictStr, List[StrictStr]], WrapValidator(_check_texts), schema({"anyOf": [TEXT, list_of(TEXT)]})
]
Text = Annotated[StrictStr, schema(TEXT)]
Positive = Annotated[StrictInt, schema(POSITIVE)]
#: A token pooling factor: a number of at least 1 (the model's input limit bounds it too, beyond the schema).
PoolFactor = Annotated[Union[StrictFloat, StrictInt], schema({"type": "number", "minimum": 1})]


class BaseRequest(BaseModel):
    """What every OpenAI, vLLM and Cohere request takes: the served model's name, and vLLM's extras."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: Optional[StrictStr] = Field(None, description="The served model name; any other value is a 404.")
    user: Optional[StrictStr] = None
    cache_salt: Optional[StrictStr] = Field(
        None,
        min_length=1,
        description="vLLM's prefix-cache key: prompts share computed prefix states (a decoder's shared "
        "instruction or query) only with prompts of the same salt.",
    )


class TokenizationFields(BaseModel):
    """Truncation of the inputs (vLLM's ``truncate_prompt_tokens`` and ``truncation_side``)."""

    truncate_prompt_tokens: Optional[Annotated[StrictInt, schema(TRUNCATION)]] = Field(
        None,
        description="Keep at most N tokens (-1: the model's limit). Without it (or truncation_side), an input "
        "longer than the model's limit is refused, as vLLM does.",
    )
    truncation_side: Optional[Literal["left", "right"]] = None


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


class ChatFields(BaseModel):
    """Chat-style inputs (``messages``, or conversations sent as ``input``) and their template's options."""

    messages: Annotated[
        Optional[Union[List[Dict[str, Any]], List[List[Dict[str, Any]]]]],
        schema({"anyOf": [CONVERSATION, list_of(CONVERSATION), {"type": "null"}]}),
    ] = Field(
        None,
        description="Chat-style input rendered with the chat template (--chat-template, else the tokenizer's): "
        "one conversation (one prompt) or a list of them (one prompt each).",
    )
    chat_template_kwargs: Annotated[
        Optional[Dict[str, Any]],
        schema({"anyOf": [{"type": "object", "propertyNames": {"not": {"enum": list(RESERVED_TEMPLATE_KWARGS)}}}, {"type": "null"}]}),
    ] = Field(None, description="Extra variables for the chat template (vLLM), e.g. an instruction.")
    add_generation_prompt: StrictBool = False
    continue_final_message: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _input_messages(cls, data: Any) -> Any:
        """vLLM reads chat messages given as ``input`` (one conversation, or a list of them) as ``messages``."""
        if not isinstance(data, dict):
            return data
        value = data.get("input")
        if _is_messages(value) or (isinstance(value, list) and value and all(_is_messages(v) for v in value)):
            if data.get("messages") is not None:
                raise PydanticCustomError("input_and_messages", "send either 'input' or 'messages', not both")
            data = {**data, "messages": value}
            data.pop("input")
        return data
    add_special_tokens: Optional[StrictBool] = Field(
        None,
        description="Add the tokenizer's special tokens: default true for 'input', false for 'messages' (vLLM).",
    )


class SideFields(BaseModel):
    """``input_type``: the side a request's texts are encoded in."""

    input_type: Optional[StrictStr] = Field(
        None,
        description="token_embed: 'query' or 'document', the retrieval side the texts are encoded in (a ColBERT's "
        "markers, lengths and query expansion; ColPali's query prompt); other tasks: one of the model's prompt names "
        "or task instructions, put before each text (vLLM).",
    )


class ActivationFields(BaseModel):
    """``use_activation``, also read from vLLM's deprecated ``normalize`` / ``softmax`` / ``activation``."""

    use_activation: Optional[StrictBool] = None

    @model_validator(mode="before")
    @classmethod
    def _fold_activation_aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.keys().isdisjoint(ACTIVATION_ALIASES):
            return data
        data = dict(data)
        given = {k: data.pop(k) for k in ACTIVATION_ALIASES if k in data}
        given = {k: v for k, v in given.items() if v is not None}
        if data.get("use_activation") is not None:
            given["use_activation"] = data["use_activation"]
        values = set(map(repr, given.values()))
        if len(values) > 1:
            raise PydanticCustomError(
                "activation_conflict",
                "{names} disagree; send only use_activation",
                {"names": " and ".join(sorted(given)), "param": "use_activation"},
            )
        if given:
            data["use_activation"] = next(iter(given.values()))
        return data


class EncodingFields(BaseModel):
    """How tensors are written; ``null`` is the default, as OpenAI's clients send it for "not given"."""

    encoding_format: Optional[Literal["float", "base64", "bytes", "bytes_only"]] = "float"
    embed_dtype: Optional[Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]] = "float32"
    endianness: Optional[Literal["native", "little", "big"]] = "native"

    @field_validator("encoding_format", "embed_dtype", "endianness", mode="after")
    @classmethod
    def _null_is_default(cls, value: Optional[str], info: Any) -> str:
        return cls.model_fields[info.field_name].default if value is None else value


def record_of(body: Any, task: str, params: Any, prompt_name: str | None, limits: InputLimits) -> PoolRequest:
    """The record of an ``input`` or ``messages`` request (``/v1/embeddings``, ``/pooling``,
    ``/classify``) for ``task``: its inputs or conversations with vLLM's chat fields, its
    ``input_type`` where the request has one, its special tokens and salt, ``params`` and the
    server's ``limits`` on its inputs (:meth:`poolkit.inputs.Renderer.accept` reads them)."""
    chat = {
        "add_generation_prompt": body.add_generation_prompt, "continue_final_message": body.continue_final_message,
        "chat_template_kwargs": body.chat_template_kwargs, "add_special_tokens": bool(body.add_special_tokens),
    }
    return PoolRequest(
        body.input, task=task, params=params, messages=body.messages, prompt_name=prompt_name,
        input_type=getattr(body, "input_type", None), add_special_tokens=body.add_special_tokens, chat_options=chat,
        salt=body.cache_salt, limits=limits,
    )
