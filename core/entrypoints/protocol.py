"""Request bodies of the HTTP server (OpenAI, vLLM and Cohere field names).

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

#: Older spellings of ``use_activation`` that vLLM clients still send (deprecated in vLLM).
ACTIVATION_ALIASES = ("normalize", "softmax", "activation")

# -- the JSON schemas of the inputs: what the routes' checks accept --------------------------------

#: A text: not empty (:func:`poolkit.contracts.io.text_problem`).
TEXT = {"type": "string", "minLength": 1}
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
#: apply_chat_template arguments the request sets by other fields (or never): not template variables.
RESERVED_TEMPLATE_KWARGS = (
    "conversation", "messages", "chat_template", "tools", "documents", "tokenize", "add_generation_prompt",
    "continue_final_message", "return_dict", "return_tensors", "padding", "truncation", "max_length",
)


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


def _check_score_side(value: Any, handler: Any) -> Any:
    """``str | list[str]``, vLLM's multimodal ``{"content": [parts]}``, or a list of strings and such inputs."""
    def one(v: Any) -> bool:
        return isinstance(v, str) or (isinstance(v, dict) and ("content" in v or "type" in v))

    if isinstance(value, str) or (isinstance(value, dict) and "content" in value) or (isinstance(value, list) and all(map(one, value))):
        return value
    raise PydanticCustomError(
        "score_input_type", "must be a string, a list of strings, or {'content': [text and image_url parts]} (or a list of those)"
    )


#: A content part of a multimodal input: a text, or an image as a data URI (remote URLs only
#: where the server allows their host).
CONTENT_PART = {
    "oneOf": [
        {"type": "object", "required": ["type", "text"], "properties": {"type": {"const": "text"}, "text": TEXT}},
        {
            "type": "object",
            "required": ["type", "image_url"],
            "properties": {
                "type": {"const": "image_url"},
                "image_url": {
                    "anyOf": [
                        {"type": "string", "pattern": "^data:"},
                        {"type": "object", "required": ["url"], "properties": {"url": {"type": "string", "pattern": "^data:"}}},
                    ]
                },
            },
        },
    ]
}
#: vLLM's ``ScoreMultiModalParam``: content parts, each one input (text or ``image_url``).
MULTIMODAL_CONTENT = {"type": "object", "required": ["content"], "properties": {"content": list_of(CONTENT_PART)}}

PromptInput = Annotated[
    Union[StrictStr, List[StrictStr], List[StrictInt], List[List[StrictInt]]],
    WrapValidator(_check_prompt_input),
    schema({"anyOf": [TEXT, list_of(TEXT), TOKEN_IDS, list_of(TOKEN_IDS)]}),
]
TextInput = Annotated[
    Union[StrictStr, List[StrictStr]], WrapValidator(_check_texts), schema({"anyOf": [TEXT, list_of(TEXT)]})
]
ScoreInput = Annotated[
    Union[StrictStr, Dict[str, Any], List[Union[StrictStr, Dict[str, Any]]]],
    WrapValidator(_check_score_side),
    schema({"anyOf": [TEXT, list_of(TEXT), MULTIMODAL_CONTENT, list_of({"anyOf": [TEXT, MULTIMODAL_CONTENT]})]}),
]
Text = Annotated[StrictStr, schema(TEXT)]
Positive = Annotated[StrictInt, schema(POSITIVE)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: Optional[StrictStr] = Field(None, description="The served model name; any other value is a 404.")
    user: Optional[StrictStr] = None
    cache_salt: Optional[StrictStr] = Field(
        None,
        min_length=1,
        description="vLLM's prefix-cache key: accepted and checked as vLLM does (not empty); no effect, "
        "as poolkit keeps no prefix cache.",
    )


class _Tokenization(BaseModel):
    truncate_prompt_tokens: Optional[Annotated[StrictInt, schema(TRUNCATION)]] = Field(
        None,
        description="Keep at most N tokens (-1: the model's limit). Without it (or truncation_side), an input "
        "longer than the model's limit is refused, as vLLM does.",
    )
    truncation_side: Optional[Literal["left", "right"]] = None


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


class _Chat(BaseModel):
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


class _Activation(BaseModel):
    """``use_activation``, also read from vLLM's deprecated ``normalize`` / ``softmax`` / ``activation``."""

    use_activation: Optional[StrictBool] = None

    @model_validator(mode="before")
    @classmethod
    def _fold_activation_aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(k in data for k in ACTIVATION_ALIASES):
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


class _Encoding(BaseModel):
    """How tensors are written; ``null`` is the default, as OpenAI's clients send it for "not given"."""

    encoding_format: Optional[Literal["float", "base64", "bytes", "bytes_only"]] = "float"
    embed_dtype: Optional[Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]] = "float32"
    endianness: Optional[Literal["native", "little", "big"]] = "native"

    @field_validator("encoding_format", "embed_dtype", "endianness", mode="after")
    @classmethod
    def _null_is_default(cls, value: Optional[str], info: Any) -> str:
        return cls.model_fields[info.field_name].default if value is None else value


class EmbeddingRequest(_Body, _Tokenization, _Chat, _Encoding, _Activation):
    """``POST /v1/embeddings`` (OpenAI)."""

    model_config = ConfigDict(json_schema_extra=one_of("input", "messages"))

    input: Optional[PromptInput] = None
    dimensions: Optional[Positive] = None


class ClassificationRequest(_Body, _Tokenization, _Chat, _Activation):
    """``POST /classify``."""

    model_config = ConfigDict(json_schema_extra=one_of("input", "messages"))

    input: Optional[PromptInput] = None


class PoolingRequest(_Body, _Tokenization, _Chat, _Encoding, _Activation):
    """``POST /pooling``: any task (``task``), or ``data`` for the IO processor plugin task."""

    model_config = ConfigDict(json_schema_extra=one_of("input", "messages", "data"))

    input: Optional[PromptInput] = None
    data: Optional[Any] = Field(None, description="Input of the IO processor plugin (task 'plugin').")
    task: Optional[StrictStr] = None
    dimensions: Optional[Positive] = None
    step_tag_id: Optional[StrictInt] = Field(None, ge=0, lt=2**31)
    returned_token_ids: Optional[List[Annotated[StrictInt, Field(ge=0, lt=2**31)]]] = None
    top_k: Optional[Positive] = Field(None, description="sparse_embed: keep the K strongest weights.")
    threshold: Optional[Union[StrictFloat, StrictInt]] = Field(None, description="sparse_embed: drop weights below this.")
    return_tokens: StrictBool = False


class _ScoreLimits(BaseModel):
    max_tokens_per_query: Optional[Positive] = Field(
        None, description="Cut each query to its first N tokens before scoring (vLLM)."
    )
    max_tokens_per_doc: Optional[Positive] = Field(
        None, description="Cut each document to its first N tokens before scoring (vLLM, Cohere)."
    )


class _ScoreTemplate(BaseModel):
    chat_template_kwargs: Optional[Dict[str, Any]] = Field(
        None,
        description="Variables for the score template (vLLM); for a sentence-transformers CrossEncoder export also "
        "'prompt' (its prompt text, '' for none), 'prompt_name' (one of its saved prompts) and 'restore_suffix' "
        "(false: a truncated render keeps its cut instead of getting the template's closing tokens back).",
    )


class ScoreRequest(_Body, _Tokenization, _Activation, _ScoreLimits, _ScoreTemplate):
    """``POST /score``, ``/v1/score``: one pair of sides, 1:1, 1:N or N:N."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                one_of("text_1", "data_1", "queries"),
                one_of("text_2", "data_2", "documents", "items"),
                {"anyOf": [given(*pair) for pair in SCORE_PAIRS]},
            ]
        }
    )

    text_1: Optional[ScoreInput] = None
    text_2: Optional[ScoreInput] = None
    data_1: Optional[ScoreInput] = None
    data_2: Optional[ScoreInput] = None
    queries: Optional[ScoreInput] = None
    documents: Optional[ScoreInput] = None
    items: Optional[ScoreInput] = None
    instruction: Optional[StrictStr] = None


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: Text


class RerankRequest(_Body, _Tokenization, _Activation, _ScoreLimits, _ScoreTemplate):
    """``POST /rerank``, ``/v1/rerank``, ``/v2/rerank`` (Jina / Cohere)."""

    query: Text
    documents: Annotated[
        Union[StrictStr, List[Union[StrictStr, RerankDocument]]],
        schema({"anyOf": [TEXT, list_of({"anyOf": [TEXT, {"type": "object", "required": ["text"], "properties": {"text": TEXT}}]})]}),
    ] = Field(
        description="The documents, or one document as a string (vLLM)."
    )
    top_n: Annotated[StrictInt, schema({"type": "integer", "minimum": 0})] = Field(0, description="Keep the best N (0: all).")
    return_documents: StrictBool = True
    instruction: Optional[StrictStr] = None


class CohereImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: Annotated[StrictStr, schema({"type": "string", "pattern": "^data:"})]


class CohereContent(BaseModel):
    """One part of a Cohere input: ``{"type": "text", "text": ...}`` or ``{"type": "image_url", "image_url": ...}``."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "oneOf": [
                {"required": ["type", "text"], "properties": {"type": {"const": "text"}, "text": TEXT}},
                {"required": ["type", "image_url"], "properties": {"type": {"const": "image_url"}, "image_url": {"not": {"type": "null"}}}},
            ]
        },
    )

    type: Literal["text", "image_url"]
    text: Optional[StrictStr] = None
    image_url: Optional[Union[CohereImageUrl, Annotated[StrictStr, schema({"type": "string", "pattern": "^data:"})]]] = None


class CohereInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    content: Annotated[List[CohereContent], Field(json_schema_extra={"minItems": 1})] = Field(
        description="One text or image_url part; a vision-language model also takes text and images together."
    )


class CohereEmbedRequest(_Body):
    """``POST /v2/embed`` (Cohere Embed v2)."""

    model_config = ConfigDict(json_schema_extra=one_of("texts", "images", "inputs"))

    texts: Optional[Annotated[List[StrictStr], schema(list_of(TEXT))]] = None
    images: Optional[Annotated[List[StrictStr], schema(list_of({"type": "string", "pattern": "^data:"}))]] = Field(
        None, description="Images as data:image/...;base64 URIs."
    )
    inputs: Optional[Annotated[List[CohereInput], Field(json_schema_extra={"minItems": 1})]] = None
    input_type: Optional[StrictStr] = None
    embedding_types: Annotated[
        List[Literal["float", "binary", "ubinary", "base64"]],
        schema(list_of({"enum": ["float", "binary", "ubinary", "base64"]})),
    ] = ["float"]
    output_dimension: Optional[Positive] = None
    truncate: Literal["NONE", "START", "END"] = "END"
    max_tokens: Optional[Positive] = None


class TokenizeRequest(_Body):
    """``POST /tokenize`` (vLLM): ``prompt``, or chat ``messages`` rendered with the chat template."""

    model_config = ConfigDict(json_schema_extra=one_of("prompt", "messages"))

    prompt: Optional[Text] = None
    messages: Annotated[Optional[List[Dict[str, Any]]], schema({"anyOf": [CONVERSATION, {"type": "null"}]})] = None
    add_special_tokens: Optional[StrictBool] = Field(
        None, description="Add the tokenizer's special tokens: default true for 'prompt', false for 'messages'."
    )
    add_generation_prompt: Optional[StrictBool] = Field(
        None, description="messages: add the generation prompt (default true, false with continue_final_message)."
    )
    continue_final_message: StrictBool = False
    return_token_strs: Optional[StrictBool] = Field(False, description="Also return the token strings.")


class DetokenizeRequest(_Body):
    """``POST /detokenize`` (vLLM): token ids back to text."""

    tokens: List[Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]]
