"""The renderer of a loaded model: the one place where an input becomes a prompt.

Every surface (``LLM``, the CLI, each route of the server, corpus jobs, the sentence-transformers
classes, Ray) converts its own schema into inputs — texts, token ids, :class:`~poolkit.inputs.chat.Chat`
conversations, prompts with media (:class:`~poolkit.inputs.pairs.MediaItem`), score pairs, plugin
data — and hands them here. The renderer owns what turns them into prompts: the model's prompt
names and prefixes, its chat template, media parts with their URL policy and fetching, and the
family's media processor (the architecture's :attr:`~poolkit.Architecture.media_processor`).
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Sequence

from ..contracts.errors import InvalidRequest, short
from ..contracts.io import IOProcessor, Prompt, PromptBatch
from ..plugins.lookup import registry
from . import chat as chats
from .chat import Chat
from ..runtime.estimates import tokens_of_text
from .media import IMAGE_TOKEN_GUESS, MediaPolicy, check_image_url, image_values

#: The chat-style fields of a ``{"messages": [...]}`` input (vLLM's names) and the :class:`Chat` field of each.
CHAT_FIELDS = {
    "add_generation_prompt": "add_generation_prompt",
    "continue_final_message": "continue_final_message",
    "chat_template_kwargs": "template_kwargs",
    "add_special_tokens": "add_special_tokens",
    "chat_template": "chat_template",
}
#: Runs a rendering on the thread that tokenizes, with its cost in tokens (the server's batcher).
Run = Callable[[Callable[[], Any], int], Awaitable[Any]]


async def _inline(work: Callable[[], Any], cost: int) -> Any:
    return work()


class Renderer:
    """Turns a loaded model's inputs into its prompts.

    Args:
        model: the loaded :class:`~poolkit.loading.model.PoolingModel`.
        chat_template: the template conversations are rendered with instead of the tokenizer's
            (``--chat-template``).
        media_policy: which remote media URLs may be fetched (``--allowed-media-domains``; by
            default none: media come as data URIs, or offline as files, bytes and PIL images).
        served: the model's name in messages (the server's served name).
        max_messages: most messages one conversation may have (``--max-inputs-per-request``).
        template_hint: the way out a model without a chat template is told of (the server's
            ``, or serve it with --chat-template``).
        media_processor: the media processor to use instead of a new one of the architecture's.
    """

    def __init__(
        self,
        model: Any,
        chat_template: str | None = None,
        media_policy: MediaPolicy | None = None,
        served: str | None = None,
        max_messages: int | None = None,
        template_hint: str = "",
        media_processor: IOProcessor | None = None,
    ) -> None:
        self.model = model
        self.template_hint = template_hint
        self.chat_template_override = chat_template
        self.media_policy = media_policy or MediaPolicy()
        self.served = served or model.name
        self.max_messages = max_messages
        processor = media_processor or getattr(model.architecture, "media_processor", None)
        if isinstance(processor, str):  # a third-party architecture naming a registered IO processor
            processor = registry("io_processor").get(processor)
        elif isinstance(processor, type):
            processor = processor()
        #: The family's media IO processor (a vision-language model's), or ``None``.
        self.media_processor: IOProcessor | None = processor

    def configured(self, **settings: Any) -> "Renderer":
        """A renderer of the same model with other settings (the server's, per served model), sharing
        this one's media processor (and the settings it read once)."""
        current = dict(
            chat_template=self.chat_template_override, media_policy=self.media_policy, served=self.served,
            max_messages=self.max_messages, template_hint=self.template_hint,
        )
        return Renderer(self.model, **{**current, **settings}, media_processor=self.media_processor)

    # -- what the model reads --------------------------------------------------------------------

    @property
    def reads_media(self) -> bool:
        """Whether the model reads text and media in one prompt (a vision-language model)."""
        return self.media_processor is not None

    @property
    def takes_images(self) -> bool:
        """Whether the model reads images at all (a vision-language model, or a dual encoder)."""
        return self.reads_media or "image" in getattr(self.model.architecture, "input_modalities", ("text",))

    @property
    def takes_videos(self) -> bool:
        """Whether the model reads videos (its media processor says so)."""
        return bool(getattr(self.media_processor, "reads_videos", False))

    @property
    def media_part_types(self) -> tuple[str, ...]:
        """The chat content part types of media the model reads."""
        return ("image_url", "video_url") if self.takes_videos else ("image_url",)

    @property
    def chat_template(self) -> str | None:
        """The template conversations are rendered with: the override, else the tokenizer's."""
        return self.chat_template_override or getattr(self.model.tokenizer, "chat_template", None) or None

    # -- prompt names ----------------------------------------------------------------------------

    def prefix(self, prompt_name: str | None) -> str | None:
        """The text a prompt name (sentence-transformers' ``prompts``) puts before each input; with
        none, the model's default prompt's.

        Raises:
            InvalidRequest: a name the model does not have.
        """
        prompts = self.model.prompts
        if prompt_name is None:
            name = self.model.default_prompt_name
            return prompts.get(name) if name else None
        if prompt_name not in prompts:
            known = ", ".join(sorted(prompts)) or "none"
            raise InvalidRequest(f"unknown prompt_name '{prompt_name}'; the model's prompts: {known}")
        return prompts[prompt_name]

    def named_prompt(self, prompt_name: str | None) -> str | None:
        """The text of the prompt ``prompt_name`` names, if the model has it (no default, no error)."""
        return self.model.prompts.get(prompt_name) if prompt_name else None

    @property
    def input_types(self) -> list[str]:
        """The retrieval roles a request may name (Cohere's ``input_type``): the model's prompt names
        and its config's ``task_instructions``."""
        return sorted(set(self.model.prompts) | set(self._instructions))

    def input_type(self, input_type: str | None) -> tuple[str | None, str | None]:
        """``input_type`` as a prompt name of the model, or as the text of its task instruction.

        Raises:
            InvalidRequest: a role the model has neither (Cohere's wording).
        """
        if input_type is None:
            return None, None
        if input_type in self.model.prompts:
            return input_type, None
        if input_type in self._instructions:
            return None, str(self._instructions[input_type])
        given = f"Unsupported input_type {short(input_type, 40)!r}."
        known = self.input_types
        if not known:
            raise InvalidRequest(f"{given} This model does not define any input_type task instructions.", param="input_type")
        raise InvalidRequest(f"{given} Supported values: {', '.join(known)}", param="input_type")

    @property
    def _instructions(self) -> dict[str, Any]:
        return dict(getattr(self.model.hf_config, "task_instructions", None) or {})

    # -- inputs to prompts -----------------------------------------------------------------------

    def prompts(
        self, inputs: Any, prompt_name: str | None = None, chat_options: dict[str, Any] | None = None, prefix: str | None = None
    ) -> PromptBatch:
        """The prompts of ``inputs`` (what ``LLM.embed`` takes: texts, token ids, ``{"prompt": ...}``,
        ``{"prompt_token_ids": ...}``, prompts with ``multi_modal_data``, :class:`Chat` conversations),
        the prompt name's prefix set (or ``prefix``, a prompt's text given as it is, ``""`` for none),
        their media pre-processed by the model's media processor. ``chat_options`` are :class:`Chat`'s
        fields for ``{"messages": [...]}`` inputs."""
        if _has_chat(inputs):
            inputs = [self.chat_prompt(self.chat(item, chat_options, i)) if _is_chat(item) else item for i, item in enumerate(_items(inputs))]
        parsed = PromptBatch.of(registry("io_processor").get("text").pre_process(inputs))
        media = self.media_processor
        with_media = not parsed.columnar and any("image" in p.extras or "video" in p.extras for p in parsed)
        if media is not None and (media.reads_text or with_media):  # a vision-language model's processor reads both
            parsed = PromptBatch.of(media.pre_process({"prompts": list(parsed), "model": self.model}))
        elif with_media:  # a dual encoder's images
            parsed = PromptBatch.of(registry("io_processor").get("image").pre_process({"prompts": list(parsed), "model": self.model}))
        prefix = self.prefix(prompt_name) if prefix is None else prefix
        if prefix:
            parsed.set_prefix(prefix)
        return parsed

    @staticmethod
    def chat(item: Any, options: dict[str, Any] | None = None, index: int | None = None) -> Chat:
        """A conversation input: a :class:`Chat`, or ``{"messages": [...], **options}`` (vLLM's
        chat-style fields: ``add_generation_prompt``, ``continue_final_message``,
        ``chat_template_kwargs``, ``add_special_tokens``), ``options`` their defaults."""
        if isinstance(item, Chat):
            return item
        fields = {**(options or {}), **{k: v for k, v in item.items() if k != "messages"}}
        unknown = sorted(set(fields) - set(CHAT_FIELDS))
        if unknown:
            raise InvalidRequest(f"a chat input takes 'messages' and {', '.join(CHAT_FIELDS)}; got {', '.join(unknown)}")
        where = "messages" if index is None else f"prompts[{index}].messages"
        kwargs = {CHAT_FIELDS[k]: v for k, v in fields.items() if v is not None}
        return Chat(item["messages"], where=where, instead="prompts", **kwargs)

    def check_chat(self, chat: Chat) -> None:
        """Refuse a conversation before any work (:func:`poolkit.inputs.chat.check_chat`)."""
        chats.check_chat(chat, chat.chat_template or self.chat_template, self.served, self.max_messages, self.template_hint)

    def chat_prompt(self, chat: Chat) -> Any:
        """One conversation as a prompt, rendered here: its token ids (``{"prompt_token_ids": ...}``),
        or with media parts a prompt of its text and media (data URIs and vLLM's offline ``image_pil``
        parts; remote URLs are fetched by the server, :meth:`chat_prompt_async`)."""
        if not chats.has_media_parts(chat.messages):
            return {"prompt_token_ids": self._token_ids(chat, self.chat_renderer(chat)())}
        rendered, media, texts = self._media_parts(chat, offline=True)
        for _, url, where in media:
            if isinstance(url, str):
                self.check_media_url(url, where)
                if not url.startswith("data:"):
                    raise InvalidRequest(f"{where}: remote media are fetched by the server only; send a data URI", param=where)
        kinds, values = [kind for kind, _, _ in media], [url for _, url, _ in media]
        if not self.reads_media:  # a dual encoder: one image, no text, no template
            self.media_prompt("\n".join(texts), [None] * len(values), chat.where, kinds=kinds)
            return self.media_prompt(None, values, chat.where, kinds=kinds)
        text = self.chat_renderer(chat, rendered)()
        return self.media_prompt(text, values, chat.where, add_special_tokens=chat.add_special_tokens, kinds=kinds)

    async def chat_prompt_async(self, chat: Chat, run: Run = _inline) -> Any:
        """:meth:`chat_prompt` for the server: every check before any work, remote media fetched
        under the media policy, the rendering and tokenizing run by ``run`` (on the thread that tokenizes)."""
        if not chats.has_media_parts(chat.messages):
            render = self.chat_renderer(chat)
            size = sum(len(json.dumps(m)) for m in chat.messages)
            return {"prompt_token_ids": await run(lambda: self._token_ids(chat, render()), tokens_of_text(size))}
        rendered, media, texts = self._media_parts(chat)
        kinds, urls = [kind for kind, _, _ in media], [(url, where) for _, url, where in media]
        if not self.reads_media:  # a dual encoder: one image, no text, no template
            self.media_prompt("\n".join(texts), [None] * len(urls), chat.where, kinds=kinds)
            return self.media_prompt(None, await self.media_values(urls), chat.where, kinds=kinds)
        render = self.chat_renderer(chat, rendered)
        values = await self.media_values(urls)
        size = sum(len(json.dumps(m)) for m in rendered)
        text = await run(render, tokens_of_text(size))
        return self.media_prompt(text, values, chat.where, add_special_tokens=chat.add_special_tokens, kinds=kinds)

    def chat_renderer(self, chat: Chat, messages: Sequence[Any] | None = None) -> Callable[[], str]:
        """Check ``chat``; its rendering as text, to run on the thread that tokenizes."""
        self.check_chat(chat)
        return chats.renderer(self.model.tokenizer, chat.chat_template or self.chat_template, chat, messages)

    def _token_ids(self, chat: Chat, text: str) -> list[int]:
        ids = self.model.tokenizer(text, add_special_tokens=chat.add_special_tokens)["input_ids"]
        if not ids:
            raise InvalidRequest("the rendered chat has no tokens", param=chat.where)
        return ids

    def _media_parts(self, chat: Chat, offline: bool = False) -> tuple[list[dict[str, Any]], list[tuple[str, Any, str]], list[str]]:
        chats.check_count(len(chat.messages), chat.where, self.max_messages)
        kinds = self.media_part_types + (("image_pil",) if offline else ())
        rendered, media, texts = chats.media_parts(chat.messages, chat.where, kinds)
        self.check_media_count([kind for kind, _, _ in media], chat.where)
        return rendered, media, texts

    def image_prompts(self, images: Sequence[Any], allow_local_files: bool = True) -> list[Prompt]:
        """Images alone as prompts, decoded and pre-processed (a dual encoder's image inputs)."""
        data = {"prompts": [Prompt(extras={"image": image}) for image in images], "model": self.model, "allow_local_files": allow_local_files}
        return list(registry("io_processor").get("image").pre_process(data))

    def token_ids(self, prompt: Prompt, where: str) -> list[int]:
        """The token ids of a prompt with media, each placeholder expanded as the model's media
        processor expands it (what ``/tokenize`` of a conversation with images answers).

        Raises:
            InvalidRequest: a model that reads its images apart from text (a dual encoder).
        """
        (prepared,) = self.prompts([prompt])
        if prepared.token_ids is None:
            raise InvalidRequest(f"{where}: model '{self.model.name}' reads images apart from text: they have no token ids", param=where)
        return list(prepared.token_ids)

    # -- media -----------------------------------------------------------------------------------

    def check_media_count(self, kinds: Sequence[str], where: str) -> None:
        """Refuse more images (or videos) in one prompt than the load setting ``limit_mm_per_prompt``
        allows, before any is fetched or decoded (the media IO processor applies its default limit itself)."""
        for kind in ("image", "video"):
            count = sum(1 for k in kinds if k == kind)
            limit = self.model.limit_mm_per_prompt.get(kind)
            if limit is not None and count > limit:
                raise InvalidRequest(
                    f"{where}: {count} {kind}s, more than the limit of {limit} per prompt (limit_mm_per_prompt)", param=where
                )

    def check_media_url(self, url: str, where: str) -> None:
        """Refuse, before any work, a media URL the policy will not read (:func:`poolkit.inputs.media.check_image_url`)."""
        check_image_url(url, where, self.media_policy)

    async def media_values(self, urls: Sequence[tuple[str, str]]) -> list[str | bytes]:
        """The media of ``(url, where)`` pairs: data URIs as they are, allowed remote ones fetched."""
        return await image_values(urls, self.media_policy, self.model.max_image_bytes)

    def media_prompt(
        self, text: str | None, media: list[Any], where: str, add_special_tokens: bool = True, kinds: Sequence[str] | None = None
    ) -> Prompt:
        """The prompt of ``text`` with ``media`` (images, or videos where ``kinds`` says so) for the
        model: a vision-language model reads both (its media processor checks the placeholders); a
        dual encoder one image and no text (vLLM's rule for CLIP); a text-only model none.

        Raises:
            InvalidRequest: media the model does not read.
        """
        kinds = list(kinds) if kinds is not None else ["image"] * len(media)
        if self.reads_media:
            extras: dict[str, Any] = {}
            for kind, value in zip(kinds, media):
                extras.setdefault(kind, []).append(value)
            if not extras:
                extras["image"] = []
            return Prompt(text=text or None, extras=extras, add_special_tokens=add_special_tokens)
        if not self.takes_images:
            # the whole name, which the server's error handler replaces with the served one
            raise InvalidRequest(f"{where}: model '{self.model.name}' reads text only; send no images", param=where)
        if "video" in kinds:
            raise InvalidRequest(f"{where}: model '{self.model.name}' takes no videos; send images", param=where)
        if text or len(media) != 1:
            raise InvalidRequest(
                f"{where}: this model (a dual encoder such as CLIP) embeds one image without text, or text without "
                "images; send them as separate inputs", param=where,
            )
        return Prompt(extras={"image": media[0]})

    def media_cost(self, prompts: Sequence[Any]) -> int:
        """Tokens the media of ``prompts`` are guessed at before they are decoded."""
        count = 0
        for p in prompts:
            if isinstance(p, Prompt):
                for kind in ("image", "video"):
                    if kind in p.extras:
                        count += len(p.extras[kind]) if isinstance(p.extras[kind], list) else 1
        return IMAGE_TOKEN_GUESS * count


def _is_chat(item: Any) -> bool:
    return isinstance(item, Chat) or (isinstance(item, dict) and "messages" in item)


def _items(inputs: Any) -> list[Any]:
    return [inputs] if _is_chat(inputs) else list(inputs)


def _has_chat(inputs: Any) -> bool:
    """Whether ``inputs`` hold a conversation; texts and token ids are told apart in bulk (the hot path)."""
    if not isinstance(inputs, (list, tuple)):
        return _is_chat(inputs)
    kinds = set(map(type, inputs))
    if not kinds & {dict, Chat}:
        return False
    return any(isinstance(item, Chat) or (isinstance(item, dict) and "messages" in item) for item in inputs)
