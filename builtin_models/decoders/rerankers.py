"""Causal LMs published as rerankers: each publisher's layout (its answer tokens, its formula, its
prompt) and how a checkpoint is recognised as one.

Such a checkpoint is a plain ``*ForCausalLM`` (config, weights, tokenizer): nothing in
``config.json`` says it reranks, and served as it reads it is a last-token embedder whose
``score`` is a cosine. A :class:`LLMReranker` says how its publisher scores it: the LM head's rows
of its answer tokens become the classifier (vLLM's ``classifier_from_token`` and ``method``), its
prompt is a registered score template, and calibration goes to the pooler defaults. An architecture
lists the layouts its checkpoints may have (:attr:`~.heads.ScoreClassifier.llm_rerankers`);
:func:`recognise` picks one from what the checkpoint ships, strongest evidence first: its
``config.json`` (``auto_map``), the hub id it was fetched as, the publisher's scoring script in its
folder, its model card (a ``text-ranking`` card, or one with the layout's tags, naming the model),
the folder's name (a local download named after the hub repository).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from poolkit.contracts.checkpoint import Checkpoint

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: LLM-as-reranker conversions (vLLM's ``SEQ_CLS_LOAD_METHODS``).
FROM_2_WAY_SOFTMAX, NO_POST_PROCESSING = "from_2_way_softmax", "no_post_processing"


@dataclass(frozen=True)
class LLMReranker:
    """A publisher's layout of a causal LM scored as a reranker.

    Attributes:
        name: the layout's name (``poolkit info`` shows it).
        tokens: the ``classifier_from_token`` words: ``[false, true]`` for ``from_2_way_softmax``.
        method: ``from_2_way_softmax`` (``sigmoid(logit[true] - logit[false])``) or
            ``no_post_processing`` (one output per token).
        template: the registered score template (IO processor) rendering a pair as the publisher's prompt.
        hub_ids: matches the hub ids (``org/name``) the publisher ships it as.
        folder_names: matches a folder named after one of those repositories.
        card_marker: matches the model's name in a ``text-ranking`` model card.
        card_tags: front-matter ``tags`` that, like ``pipeline_tag: text-ranking``, make the card a
            reranker's (a publisher that tags its card instead).
        script: ``(path, marker)``: a file the publisher ships in the repository (its scoring script)
            and a text it holds, or ``None``.
        auto_map: a class path the checkpoint's ``config.json`` ``auto_map`` names (remote code
            poolkit never runs, but which says what the checkpoint is), or ``None``.
        pooler_defaults: :class:`PoolerConfig` defaults its calibration needs (``logit_sigma``).
        source: where the layout comes from (the publisher's code or card).
    """

    name: str
    tokens: tuple[str, ...]
    method: str
    template: str
    hub_ids: re.Pattern[str]
    folder_names: re.Pattern[str]
    card_marker: re.Pattern[str]
    auto_map: str | None = None
    card_tags: tuple[str, ...] = ()
    script: tuple[str, str] | None = None
    pooler_defaults: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""


def recognise(config: PretrainedConfig, checkpoint: Checkpoint, layouts: Sequence[LLMReranker]) -> tuple[LLMReranker, str] | None:
    """The layout of ``layouts`` the checkpoint has, with what showed it, or ``None``."""
    auto_map = getattr(config, "auto_map", None) or {}
    for layout in layouts:
        if layout.auto_map and any(layout.auto_map in str(v) for v in auto_map.values()):
            return layout, f"config.json auto_map ({layout.auto_map})"
    hub_id = checkpoint.hub_id
    for layout in layouts:
        if hub_id and layout.hub_ids.fullmatch(hub_id):
            return layout, f"hub id {hub_id}"
    for layout in layouts:
        if layout.script is not None and layout.script[1] in (checkpoint.read_text(layout.script[0]) or ""):
            return layout, f"the publisher's script ({layout.script[0]})"
    card = checkpoint.model_card
    if card is not None:
        tags = {t.strip() for t in card.metadata.get("tags", "").split(",")}
        for layout in layouts:
            if card.metadata.get("pipeline_tag") == "text-ranking":
                why = "pipeline_tag text-ranking"
            elif tags.intersection(layout.card_tags):
                why = f"tags {', '.join(sorted(tags.intersection(layout.card_tags)))}"
            else:
                continue
            if layout.card_marker.search(card.text):
                return layout, f"model card (README.md: {why})"
    for layout in layouts:
        if layout.folder_names.fullmatch(checkpoint.folder_name):
            return layout, f"folder name {checkpoint.folder_name}"
    return None


# -- Qwen3-Reranker ------------------------------------------------------------------------------------

#: Qwen3-Reranker's model card (huggingface.co/Qwen/Qwen3-Reranker-0.6B) and vLLM's
#: examples/offline_inference/qwen3_reranker.py: softmax over the "no" / "yes" logits at the last
#: token, after the card's prompt (``qwen3_reranker``, :mod:`poolkit.io_processors.templates`).
QWEN3_RERANKER = LLMReranker(
    name="Qwen3-Reranker",
    tokens=("no", "yes"),
    method=FROM_2_WAY_SOFTMAX,
    template="qwen3_reranker",
    hub_ids=re.compile(r"Qwen/Qwen3-Reranker-[\w.-]+", re.IGNORECASE),
    folder_names=re.compile(r".*qwen3-reranker.*", re.IGNORECASE),
    card_marker=re.compile(r"Qwen3-Reranker"),
    source="Qwen3-Reranker model card; vLLM examples/offline_inference/qwen3_reranker.py",
)

# -- Qwen3-VL-Reranker ---------------------------------------------------------------------------------

#: Qwen3-VL-Reranker's scoring script, ``scripts/qwen3_vl_reranker.py`` of its model repository
#: (huggingface.co/Qwen/Qwen3-VL-Reranker-2B; ``src/models/qwen3_vl_reranker.py`` of
#: github.com/QwenLM/Qwen3-VL-Embedding), ``Qwen3VLReranker.format_mm_instruction``: its system
#: message, then one user message of the parts ``'<Instruct>: ' + (instruction or
#: default_instruction)``, ``'<Query>:'``, the query, ``'\n<Document>:'``, the document, rendered
#: by Qwen3-VL's chat template with the generation prompt, which joins the parts as they are. That
#: render, written out (the repository's ``examples/reranker_template.jinja`` writes it so for vLLM);
#: the default instruction is the script's ``default_instruction``. An image side is its
#: placeholder, as the script's image part renders.
QWEN3_VL_RERANKER_TEMPLATE = (
    "<|im_start|>system\n"
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
    "<Instruct>: {{ instruction or 'Given a search query, retrieve relevant candidates that answer the query.' }}"
    "<Query>:{{ query }}\n<Document>:{{ document }}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
#: The same script's ``get_binary_linear`` and ``compute_scores``: ``sigmoid((lm_head["yes"] -
#: lm_head["no"]) · h)`` at the last token. Its model card has no ``pipeline_tag``; it is tagged
#: ``multimodal rerank`` and titled ``# Qwen3-VL-Reranker-2B``.
QWEN3_VL_RERANKER = LLMReranker(
    name="Qwen3-VL-Reranker",
    tokens=("no", "yes"),
    method=FROM_2_WAY_SOFTMAX,
    template="qwen3_vl_reranker",
    hub_ids=re.compile(r"Qwen/Qwen3-VL-Reranker-[\w.-]+", re.IGNORECASE),
    folder_names=re.compile(r".*qwen3-vl-reranker.*", re.IGNORECASE),
    card_marker=re.compile(r"^# Qwen3-VL-Reranker", re.MULTILINE),
    card_tags=("multimodal rerank",),
    script=("scripts/qwen3_vl_reranker.py", "class Qwen3VLReranker"),
    source="huggingface.co/Qwen/Qwen3-VL-Reranker-2B, scripts/qwen3_vl_reranker.py (github.com/QwenLM/Qwen3-VL-Embedding)",
)

# -- mxbai-rerank-v2 -----------------------------------------------------------------------------------

#: mixedbread's ``mxbai-rerank`` library, ``mxbai_rerank/mxbai_rerank_v2.py`` (``MxbaiRerankV2``):
#: ``chat_template["prefix"]``, ``"instruction: {instruction}" + sep`` when there is one,
#: ``"query: {query}"``, ``sep``, ``"document: {document}"``, ``sep``, ``task_prompt``,
#: ``chat_template["suffix"]`` (``sep`` = ``"\n"``), each piece as published.
MXBAI_RERANK_V2_TEMPLATE = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "{% if instruction %}instruction: {{ instruction }}\n{% endif %}"
    "query: {{ query }}\ndocument: {{ document }}\n"
    "You are a search relevance expert who evaluates how well documents match search queries. "
    "For each query-document pair, carefully analyze the semantic relationship between them, "
    "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
    "<|im_end|>\n<|im_start|>assistant\n"
)
#: The same library's ``forward``: ``logits[:, -1, "1"] - logits[:, -1, "0"]``, a relevance above 0.5 after the sigmoid.
MXBAI_RERANK_V2 = LLMReranker(
    name="mxbai-rerank-v2",
    tokens=("0", "1"),
    method=FROM_2_WAY_SOFTMAX,
    template="mxbai_rerank_v2",
    hub_ids=re.compile(r"mixedbread-ai/mxbai-rerank-[\w.-]*v2", re.IGNORECASE),
    folder_names=re.compile(r"mxbai-rerank-[\w.-]*v2", re.IGNORECASE),
    card_marker=re.compile(r"mxbai-rerank-[\w.-]*v2|MxbaiRerankV2"),
    source="github.com/mixedbread-ai/mxbai-rerank, mxbai_rerank/mxbai_rerank_v2.py",
)

# -- zerank --------------------------------------------------------------------------------------------

#: zeroentropy's ``modeling_zeranker.py`` (huggingface.co/zeroentropy/zerank-1-small), its
#: ``format_pointwise_datapoints``: the query (its first 2,000 characters, stripped) as the system
#: message, the document (its first 10,000, stripped) as the user message, rendered by the checkpoint's
#: (Qwen3) chat template with ``add_generation_prompt=True``; that render, written out.
ZERANK_TEMPLATE = (
    "<|im_start|>system\n{{ query[:2000] | trim }}<|im_end|>\n"
    "<|im_start|>user\n{{ document[:10000] | trim }}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
#: Its ``predict``: ``sigmoid(logits[last, "Yes"] / 5)``; ``config.json`` names its remote config
#: ``modeling_zeranker.ZEConfig`` (an alias of ``Qwen3Config``) in ``auto_map``.
ZERANK = LLMReranker(
    name="zerank",
    tokens=("Yes",),
    method=NO_POST_PROCESSING,
    template="zerank",
    hub_ids=re.compile(r"zeroentropy/zerank-[\w.-]+", re.IGNORECASE),
    folder_names=re.compile(r"zerank-[\w.-]+", re.IGNORECASE),
    card_marker=re.compile(r"zerank-", re.IGNORECASE),
    auto_map="modeling_zeranker.",
    pooler_defaults={"logit_sigma": 5.0},
    source="huggingface.co/zeroentropy/zerank-1-small, modeling_zeranker.py",
)

#: Each layout's score template: registered name -> Jinja text (the prompt exactly: final newline kept).
TEMPLATES = {
    MXBAI_RERANK_V2.template: MXBAI_RERANK_V2_TEMPLATE,
    ZERANK.template: ZERANK_TEMPLATE,
    QWEN3_VL_RERANKER.template: QWEN3_VL_RERANKER_TEMPLATE,
}
