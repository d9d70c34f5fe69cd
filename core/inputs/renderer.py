"""The renderer of a loaded model: the one place where an input becomes a prompt.

Every surface (``LLM``, the CLI, each route of the server, corpus jobs, the sentence-transformers
classes, Ray) converts its own schema into inputs — texts, token ids, :class:`~poolkit.inputs.chat.Chat`
conversations, prompts with media (:class:`~poolkit.inputs.request.MediaItem`), score pairs, plugin
data — and hands them here. The renderer owns what turns them into prompts: the model's prompt
names and prefixes, its chat template, media parts with their URL policy and fetching, and the
family's media processor (the architecture's :attr:`~poolkit.Architecture.media_processor`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..contracts.errors import InvalidRequest, short
from ..contracts.io import IOProcessor, Prompt, PromptBatch
from ..contracts.params import LateChunkingParams, PoolingParams
from ..contracts.tasks import ROLES
from ..lora.manager import adapted_params
from ..plugins.lookup import registry
from ..runtime.tokenizing import as_read
from . import chat as chats
from . import shapes
from .chat import Chat, Worker
from .content import MediaRules
from .media import MediaPolicy
from .params import check_params
from .request import Accepted, InputLimits, MediaItem, PoolRequest, Reads, Rendered, Side

if TYPE_CHECKING:
    from ..contracts.architecture import LoadedModel
    from ..contracts.tasks import Task
    from ..runtime.engine import Engine

#: The side of a request that names no ``input_type``.
NO_SIDE = Side(None, None, None)


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
        model: LoadedModel,
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
        processor = media_processor or model.architecture.media_processor
        if isinstance(processor, str):  # a third-party architecture naming a registered IO processor
            processor = registry("io_processor").get(processor)
        elif isinstance(processor, type):
            processor = processor()
        #: The family's media IO processor (a vision-language model's), or ``None``.
        self.media_processor: IOProcessor | None = processor
        self._media = MediaRules(model, self.media_policy, processor)
        #: Whether the architecture writes its own query and document sides, for every task of the
        #: model (:meth:`poolkit.Architecture.role_prompts`: the ColVision retrievers, BGE-M3, a
        #: sparse Router): a property of the model, asked once.
        self.writes_sides = model.architecture.role_prompts([], "query", model) is not None
        media, instructions = self._media, dict(getattr(model.hf_config, "task_instructions", None) or {})
        self._reads = Reads(
            media.reads_media, media.takes_images, media.takes_videos, media.part_types,
            chat_template or getattr(model.tokenizer, "chat_template", None) or None,
            sorted(set(model.prompts) | set(instructions)), dict(model.prompts), model.default_prompt_name,
        )

    @property
    def reads(self) -> Reads:
        """What the model reads: media with text, images, videos, its chat template (read again each
        time: a tokenizer's template may be set after loading), its prompts."""
        template = self.chat_template_override or getattr(self.model.tokenizer, "chat_template", None) or None
        if template != self._reads.chat_template:
            self._reads = self._reads._replace(chat_template=template)
        return self._reads

    def configured(self, **settings: Any) -> "Renderer":
        """A renderer of the same model with other settings (the server's, per served model), sharing
        this one's media processor (and the settings it read once)."""
        current = dict(
            chat_template=self.chat_template_override, media_policy=self.media_policy, served=self.served,
            max_messages=self.max_messages, template_hint=self.template_hint,
        )
        return Renderer(self.model, **{**current, **settings}, media_processor=self.media_processor)

    # -- the door --------------------------------------------------------------------------------

    def render(self, request: PoolRequest, engine: Engine) -> Rendered:
        """The door: a request's prompts (:meth:`request`) and one :class:`PoolingParams` each,
        checked for its task and side, under its LoRA adapter (or the one the checkpoint carries for
        its prompt name, jina-v3) and each prompt's ``cache_salt``, for ``engine`` to run."""
        model = engine.model
        task = model.task(request.task)
        parsed = self.request(
            request.inputs, task, prompt_name=request.prompt_name, prefix=request.prefix, input_type=request.side,
            add_special_tokens=request.add_special_tokens, messages=request.messages, chat_template=request.chat_template,
        )
        lora_request = request.lora_request
        if lora_request is None and model.adapters is not None:
            lora_request = model.adapters.own(request.prompt_name)
        checked = check_params(model, engine, request.params, len(parsed), task.name, request.truncation, request.side)
        params = self.salted(parsed, adapted_params(checked, lora_request, model.adapters))
        if any(p.late_chunking_params is not None for p in params):
            for index, (prompt, p) in enumerate(zip(parsed, params)):
                if p.late_chunking_params is not None and prompt.token_ids is None and not prompt.text:
                    raise InvalidRequest(f"prompt {index}: {LateChunkingParams.NEEDS_TEXT}")
        return Rendered(task, parsed, params)

    async def accept(self, request: PoolRequest, worker: Worker | None = None, *, offline: bool = False) -> Accepted:
        """A server's request made ready for the door (:meth:`render`): its ``input_type`` read
        (:meth:`side`: a prompt name, an instruction put before each text, or a retrieval side), its
        inputs or chat ``messages`` checked against its ``limits`` (:mod:`poolkit.inputs.shapes`;
        none: the surface checked them), each conversation and each input of content parts rendered
        (:meth:`render_input`: remote media fetched, the template run by ``worker``; ``offline``:
        media read as given, :func:`poolkit.inputs.chat.settled` runs it), its ``salt`` put on its
        parameters. An input may also be a :class:`Chat`, rendered as it is, or a score side's
        :class:`~poolkit.inputs.request.MediaItem`, whose images are fetched.

        Inputs of content parts (Cohere's) take the ``input_type``'s text by the one rule for text
        and media together: for a vision-language model, the prompt's or the instruction's text
        goes before every text and is every chat's system message; for a dual encoder, whose images
        are read alone, the texts are instructed or prompted as texts alone are.

        Raises:
            InvalidRequest: the field at fault named; a retrieval side named for inputs with media.
        """
        options = request.chat_options or {}
        resolved = NO_SIDE if request.input_type is None else self.side(
            request.task or "", request.input_type, request.input_aliases, prompt_name=request.prompt_name
        )
        if options:
            chats.check_template_kwargs(options.get("chat_template_kwargs"))
        special, prompt_name = request.add_special_tokens, request.prompt_name or resolved.prompt_name
        if request.messages is not None:
            if request.inputs is not None:
                raise InvalidRequest("send either 'input' or 'messages', not both", param="messages")
            limits = request.limits or InputLimits(None, None)
            inputs = [await self.render_input(chat, worker=worker) for chat in shapes.message_chats(request.messages, options, limits)]
            special = None  # the template writes the special tokens; chat_options say whether the tokenizer adds its own
        else:
            inputs = shapes.input_items(request.inputs, request.limits) if request.limits is not None else list(request.inputs)
        parts = [
            i for i, item in enumerate(inputs)
            if item.__class__ in (Chat, MediaItem) or item.__class__ is list and shapes.is_content(item)
        ]
        if not parts:
            inputs = inputs if resolved.prefix is None else resolved.instructed(inputs)
        elif resolved.side is not None:
            raise InvalidRequest(f"input_type '{request.input_type}' is a retrieval side of texts: send texts", param="input_type")
        else:
            together = self._reads.media
            before = resolved.text if together else resolved.prefix
            inputs = [before + item if before and isinstance(item, str) else item for item in inputs]
            for i in parts:
                item, at = inputs[i], f"{request.where}[{i}]"
                if item.__class__ is MediaItem:  # a score side's input: its images fetched, read with its pair later
                    self._media.check_count(["image"] * len(item.images), at)
                    inputs[i] = MediaItem(item.text, tuple(await self._media.values([(url, at) for url in item.images])))
                else:
                    system = before if together else None
                    inputs[i] = await self.render_input(item, at, system=system, worker=worker, offline=offline)
            prompt_name = None if together else prompt_name
        params = request.params
        if request.salt is not None and isinstance(params, PoolingParams):
            params = params.with_salt(request.salt)
        return Accepted(request.task or "", inputs, params, prompt_name, resolved.side, special)

    async def render_input(
        self, item: Chat | Sequence[Any], where: str = "input", *, system: str | None = None,
        worker: Worker | None = None, offline: bool = False,
    ) -> Any:
        """One input that is more than a text, as a prompt: a conversation (:class:`Chat`) rendered
        with its template; or content parts (chat content parts in order: ``text``, ``image_url``,
        ``video_url`` and, offline, ``image_pil``) by the one rule for text and media together, which
        sentence-transformers' multimodal inputs and Cohere's share: a vision-language model with a
        chat template reads them as one user message, after ``system`` as a system message, rendered
        with the template, as sentence-transformers and vLLM do; any other model reads a prompt of
        their text (``system`` before it) and media: a vision-language model's text carries the
        model's placeholders (the media processor places those of media without text), a dual
        encoder takes one image alone.

        ``offline``: media as given (data URIs, images), nothing fetched, the rendering run here
        (:func:`poolkit.inputs.chat.settled` runs it without an event loop); else remote media are
        fetched under the media policy and the template runs on ``worker`` (the server's tokenizing thread).

        Raises:
            InvalidRequest: media the model does not read, more than its limit, a URL the policy
                refuses, a conversation its template refuses.
        """
        worker = worker or chats.Inline()
        if isinstance(item, Chat):
            return await self._chat_prompt(item, worker, offline)
        if self._media.reads_media and self.reads.chat_template:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": list(item)}]
            return await self._chat_prompt(Chat(messages, where=where), worker, offline)
        kinds, urls, texts = [], [], []
        for raw in item:
            part = chats.content_part(raw)
            if part.type == "text":
                texts += [part.value] if part.value else []
            else:
                kinds.append(chats.MEDIA_PARTS.get(part.type or "", "image"))
                urls.append(part.value)
        self._media.check_count(kinds, where)
        if system and not texts:
            raise InvalidRequest(
                f"{where}: input_type with image-only inputs needs a chat template (serve the model with --chat-template)", param="input_type"
            )
        media = [(kind, url, where) for kind, url in zip(kinds, urls)]
        values = self._media.offline_values(media) if offline else await self._media.values([(url, where) for url in urls])
        text = "\n".join(texts) if texts else None
        return self._media.to_prompt((system or "") + text if text else None, values, where, kinds=kinds)

    # -- the tokenizer's door (the tokenize and detokenize routes) ------------------------------

    def tokenize(
        self, text: str | Prompt, *, add_special_tokens: bool = True, prefix: str | None = None, offsets: bool = False
    ) -> Any:
        """The tokenizer's encoding of ``text`` as the model reads it (``prefix``, a prompt's text,
        before it; lower case where the model wants it:
        :func:`~poolkit.runtime.tokenizing.as_read`), its ``input_ids`` and, with ``offsets``, each
        token's character span and whether it is special. A prompt with media: its ``input_ids``
        with each placeholder expanded as the model's media processor expands it (what ``/tokenize``
        of a conversation with images answers).

        Raises:
            InvalidRequest: media of a model that reads them apart from text (a dual encoder: they
                have no token ids).
        """
        if isinstance(text, Prompt):
            (prepared,) = self.prompts([text])
            if prepared.token_ids is None:
                raise InvalidRequest(f"messages: model '{self.model.name}' reads images apart from text: they have no token ids", param="messages")
            return {"input_ids": list(prepared.token_ids)}
        read = as_read(self.model, [text], prefix)[0]
        extra = {"return_offsets_mapping": True, "return_special_tokens_mask": True} if offsets else {}
        return self.model.tokenizer(read, add_special_tokens=add_special_tokens, verbose=False, **extra)

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = False, each: bool = False) -> Any:
        """The text of token ids; ``each``: the tokenizer's string of each id instead.

        Raises:
            InvalidRequest: ids the tokenizer cannot map.
        """
        if each:
            return list(self.model.tokenizer.convert_ids_to_tokens(list(ids)))
        try:
            return self.model.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        except (OverflowError, ValueError, TypeError) as exc:
            raise InvalidRequest(f"cannot decode the tokens: {short(exc, 200)}") from None

    # -- prompt names ----------------------------------------------------------------------------

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
        known = self._reads.prompt_names
        if not known:
            raise InvalidRequest(f"{given} This model does not define any input_type task instructions.", param="input_type")
        raise InvalidRequest(f"{given} Supported values: {', '.join(known)}", param="input_type")

    def side(self, task: str, input_type: str | None, aliases: Sequence[str] = (), *, prompt_name: str | None = None) -> Side:
        """A request's ``input_type`` as what runs it for the task named ``task``, the one rule of every surface.

        For a task that takes sides (token vectors, ``token_embed``) it is the retrieval side,
        ``"query"`` or ``"document"``, as the model encodes it (:meth:`role_prompts`); for any other
        task it names one of the model's prompts or task instructions, as vLLM's and Cohere's
        ``input_type`` does (:meth:`input_type`), or a side of a retriever that writes its sides
        itself for every task (BGE-M3's dense vectors: :meth:`own_sides`). ``aliases``: the names
        that say the same in a sentence-transformers config, in order of preference, for an
        ``input_type`` the model does not know (Cohere's ``search_query``: ``query``).
        ``prompt_name``: the prompt the request names otherwise (Jina's ``task``), which an
        ``input_type`` naming a prompt too conflicts with.

        Raises:
            InvalidRequest: a role the model has neither (Cohere's wording); two prompts named.
        """
        if input_type is None:
            return NO_SIDE
        takes_sides = self.model.task(task).takes_sides
        known = self._reads.prompt_names
        if aliases and input_type not in known:
            if not set(known) & set(aliases) and self.own_sides(aliases[0]):  # a retriever's own side
                input_type = aliases[0]
            else:
                input_type = next((name for name in aliases if name in known), input_type)
        # a retriever's own side, unless the name is a prompt with text or an instruction (an empty
        # prompt of the side's name, as sentence-transformers saves carry, says nothing against it)
        own = self.own_sides(input_type) and not self.model.prompts.get(input_type) and input_type not in self._instructions
        if takes_sides or own:
            return Side(None, None, input_type)
        name, instruction = self.input_type(input_type)
        if name is not None and prompt_name is not None:
            raise InvalidRequest("input_type and task both name a prompt: send one", param="input_type")
        return Side(name, instruction, None, instruction if name is None else self.model.prompts[name])

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
        if chats.has_chat(inputs):
            inputs = [self.chat_prompt(self.chat(item, chat_options, i)) if chats.is_chat(item) else item for i, item in enumerate(chats.chat_items(inputs))]
        parsed = self._with_media(PromptBatch.of(registry("io_processor").get("text").pre_process(inputs)))
        prefix = self._reads.prefix(prompt_name) if prefix is None else prefix
        if prefix:
            parsed.set_prefix(prefix)
        return parsed

    def _with_media(self, parsed: PromptBatch) -> PromptBatch:
        """Prompts with their media pre-processed: by the model's media processor (a vision-language
        model's reads texts too), or a dual encoder's images by the image processor."""
        media = self.media_processor
        with_media = not parsed.columnar and any("image" in p.extras or "video" in p.extras for p in parsed)
        if media is not None and (media.reads_text or with_media):
            return PromptBatch.of(media.pre_process({"prompts": list(parsed), "model": self.model}))
        if with_media:
            return PromptBatch.of(registry("io_processor").get("image").pre_process({"prompts": list(parsed), "model": self.model}))
        return parsed

    def request(
        self,
        inputs: Any,
        task: Task,
        *,
        prompt_name: str | None = None,
        prefix: str | None = None,
        input_type: Any = None,
        add_special_tokens: Any = None,
        messages: Any = None,
        chat_template: str | None = None,
    ) -> Any:
        """What a request's ``inputs`` become for ``task`` (``LLM.prepare``'s prompts): with chat
        ``messages`` instead, their conversations (:func:`poolkit.inputs.chat.conversations`, rendered
        with ``chat_template`` if given); :meth:`prompts`; with ``input_type``, the texts in that
        retrieval role (:meth:`role_prompts`); with ``add_special_tokens`` (``True`` / ``False``),
        tokenized with or without the tokenizer's special tokens.

        Raises:
            InvalidRequest: ``inputs`` and ``messages`` both, an ``input_type`` the task or the inputs
                do not take, or an ``add_special_tokens`` that is not a boolean.
        """
        inputs = chats.conversations(inputs, messages, chat_template)
        if input_type is not None:
            if prompt_name is not None or prefix:
                raise InvalidRequest("input_type takes text prompts (no token ids, images or prompt_name)", param="input_type")
            parsed = PromptBatch.of(registry("io_processor").get("text").pre_process(inputs))
            parsed = self._with_media(PromptBatch.of(self.role_prompts(task, parsed, input_type)))
        else:
            parsed = self.prompts(inputs, prompt_name, prefix=prefix)
        if add_special_tokens is not None:
            if not isinstance(add_special_tokens, bool):
                raise InvalidRequest(f"add_special_tokens must be true or false, got {add_special_tokens!r}")
            parsed.set_add_special_tokens(add_special_tokens)
        return parsed

    def role_prompts(self, task: Task, prompts: Sequence[Prompt], input_type: Any) -> list[Prompt]:
        """Text prompts in a retrieval role (vLLM's ``input_type``: ``"query"`` / ``"document"``), as
        the task encodes them (:meth:`~poolkit.contracts.tasks.Task.role_prompts`: a late-interaction
        model's markers, lengths and query expansion, as its scorer reads them).

        Raises:
            InvalidRequest: with vLLM's wording, a task that takes no ``input_type``; prompts that are
                not plain texts; a side that is neither; a model without such roles.
        """
        if not task.takes_sides and not self.own_sides(input_type):
            takers = [e.name for e in registry("task").entries() if e.obj.takes_sides]
            raise InvalidRequest(f"input_type is only supported with task {' or '.join(map(repr, takers))}.")
        if any(p.text is None or p.prompt_prefix or p.extras for p in prompts):
            raise InvalidRequest("input_type takes text prompts (no token ids, images or prompt_name)", param="input_type")
        texts = [p.text for p in prompts]
        if not task.takes_sides:  # a retriever's own sides hold for its every task (BGE-M3's dense vectors)
            return list(self.model.architecture.role_prompts(texts, input_type, self.model) or ())
        if input_type not in ROLES:
            raise InvalidRequest(f"input_type must be 'query' or 'document', got {short(input_type, 40)!r}")
        encoded = task.role_prompts(self.model, texts, input_type)
        if encoded is None:
            raise InvalidRequest("input_type is only supported for ColBERT models.")
        return encoded

    def own_sides(self, input_type: Any) -> bool:
        """Whether ``input_type`` is a retrieval side the model's architecture writes itself
        (:attr:`writes_sides`), for any of its tasks."""
        return input_type in ROLES and self.writes_sides

    @staticmethod
    def salted(prompts: Any, params: list[PoolingParams]) -> list[PoolingParams]:
        """Each prompt's parameters under its ``cache_salt`` (``{"prompt": ..., "cache_salt": ...}``):
        prompts share computed prefixes only with prompts of the same salt."""
        if getattr(prompts, "columnar", False) or not any("cache_salt" in p.extras for p in prompts):
            return params
        return [p.with_salt(prompt.extras.get("cache_salt")) for prompt, p in zip(prompts, params)]

    @staticmethod
    def chat(item: Any, options: dict[str, Any] | None = None, index: int | None = None) -> Chat:
        """A conversation input: a :class:`Chat`, or ``{"messages": [...], **options}`` (vLLM's
        chat-style fields: ``add_generation_prompt``, ``continue_final_message``,
        ``chat_template_kwargs``, ``add_special_tokens``), ``options`` their defaults."""
        if isinstance(item, Chat):
            return item
        fields = {**(options or {}), **{k: v for k, v in item.items() if k != "messages"}}
        where = "messages" if index is None else f"prompts[{index}].messages"
        return chats.chat_of(item["messages"], fields, where, instead="prompts")

    def check_chat(self, chat: Chat) -> None:
        """Refuse a conversation before any work (:func:`poolkit.inputs.chat.check_chat`)."""
        chats.check_chat(chat, chat.chat_template or self.reads.chat_template, self.served, self.max_messages, self.template_hint)

    def chat_prompt(self, chat: Chat) -> Any:
        """One conversation as a prompt, rendered here: its token ids (``{"prompt_token_ids": ...}``),
        or with media parts a prompt of its text and media (data URIs and vLLM's offline ``image_pil``
        parts; remote URLs are fetched by the server, :meth:`render_input`)."""
        return chats.settled(self._chat_prompt(chat, chats.Inline(), offline=True))

    async def _chat_prompt(self, chat: Chat, worker: Worker, offline: bool) -> Any:
        """The one rendering of a conversation: the checks, the media (``offline``: data URIs and
        images as given; else fetched under the media policy), then the template and the tokenizer
        run by ``worker``. Offline nothing waits, so :meth:`chat_prompt` runs it without an event loop."""
        if not chats.has_media_parts(chat.messages):
            render = self.chat_renderer(chat)
            return {"prompt_token_ids": await worker.run(lambda: self._token_ids(chat, render()), chats.rendering_cost(chat.messages))}
        rendered, media, texts = self._media_parts(chat, offline)
        kinds = [kind for kind, _, _ in media]
        given = self._media.offline_values(media) if offline else None

        async def values() -> list[Any]:
            return given if given is not None else await self._media.values([(url, where) for _, url, where in media])

        if not self._media.reads_media:  # a dual encoder: one image, no text, no template
            self._media.to_prompt("\n".join(texts), [None] * len(media), chat.where, kinds=kinds)
            return self._media.to_prompt(None, await values(), chat.where, kinds=kinds)
        render = self.chat_renderer(chat, rendered)
        fetched = await values()
        text = await worker.run(render, chats.rendering_cost(rendered))
        return self._media.to_prompt(text, fetched, chat.where, add_special_tokens=chat.add_special_tokens, kinds=kinds)

    def chat_renderer(self, chat: Chat, messages: Sequence[Any] | None = None) -> Callable[[], str]:
        """Check ``chat``; its rendering as text, to run on the thread that tokenizes."""
        self.check_chat(chat)
        return chats.renderer(self.model.tokenizer, chat.chat_template or self.reads.chat_template, chat, messages)

    def _token_ids(self, chat: Chat, text: str) -> list[int]:
        ids = self.model.tokenizer(text, add_special_tokens=chat.add_special_tokens)["input_ids"]
        if not ids:
            raise InvalidRequest("the rendered chat has no tokens", param=chat.where)
        return ids

    def _media_parts(self, chat: Chat, offline: bool = False) -> tuple[list[dict[str, Any]], list[tuple[str, Any, str]], list[str]]:
        chats.check_count(len(chat.messages), chat.where, self.max_messages)
        kinds = self._media.part_types + (("image_pil",) if offline else ())
        rendered, media, texts = chats.media_parts(chat.messages, chat.where, kinds)
        self._media.check_count([kind for kind, _, _ in media], chat.where)
        return rendered, media, texts
