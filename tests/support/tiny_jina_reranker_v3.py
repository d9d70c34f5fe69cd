"""A tiny jina-reranker-v3 (``JinaForRanking``) laid out as published, and Jina's published
modeling and prompt code written out as the parity reference.

Sources of the layout:

- The modeling and prompt code below (:func:`format_docs_prompts_func`, :class:`JinaForRanking`,
  its ``rerank``): Jina's ``modeling.py`` of https://huggingface.co/jinaai/jina-reranker-v3
  (``blob/main/modeling.py``; vLLM's ``vllm/model_executor/models/jina.py`` says it is adapted from
  that file, and vLLM's ``JinaRankingIOProcessorMixin.format_docs_prompts_func`` writes the same
  prompt); cut to what ``rerank`` runs (no ``top_n`` sorting, no ``return_embeddings``, ``forward``
  returning its scores and vectors as a tuple), its statements otherwise as published.
- ``config.json``: ``"architectures": ["JinaForRanking"]``, ``"model_type": "qwen3"``,
  ``"auto_map": {"AutoModel": "modeling.JinaForRanking"}``, no ``id2label``,
  ``"use_sliding_window": false``, ``"max_position_embeddings": 131072`` (public write-ups that
  quote the published ``config.json``, for TEI's and infinity's Jina reranker integrations; vLLM
  registers ``JinaForRanking`` under its late-interaction models and sets ``embedding_size = 512``
  in ``JinaForRankingConfig``). The other keys are those of the Qwen3-0.6B
  body the model is built on (Jina's release: Qwen3-0.6B, 28 layers, 16/8 heads), as transformers'
  ``Qwen3Config`` reads them (``rope_theta``, ``rope_scaling``, ``head_dim``, ``tie_word_embeddings``...);
  sizes are shrunk, names kept.
- weights: the modeling code's own names, saved by ``save_pretrained`` from the class below:
  ``model.*`` (the Qwen3 body), ``projector.0.weight`` and ``projector.2.weight``, no ``lm_head``
  (an ``nn.Identity``), as vLLM's loader expects (it skips ``lm_head.``).
- tokenizer: Qwen3's byte-level BPE with ``<|im_start|>``/``<|im_end|>``, ``<think>``/``</think>``,
  then Jina's additional special tokens ``<|score_token|>``, ``<|embed_token|>``, ``<|rerank_token|>``
  (ids 151669-151671 in the published tokenizer; 151670 and 151671 are the ids Jina's code and
  vLLM's ``JinaForRankingPool`` hard-code); ``eos_token`` ``<|im_end|>``, ``pad_token``
  ``<|endoftext|>``, ``model_max_length`` 131072 (Qwen3's ``tokenizer_config.json``). The tiny
  vocabulary gives the tokens small ids, so the reference reads them from the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import transformers as T
from torch import nn
from transformers.models.qwen3 import modeling_qwen3

from tiny_models import bytelevel_bpe_tokenizer

#: Jina's additional special tokens, in the published order.
JINA_SPECIAL_TOKENS = ["<|score_token|>", "<|embed_token|>", "<|rerank_token|>"]


# -- Jina's published code (modeling.py), the parity reference -----------------------------------


def sanitize_input(text: str, special_tokens: Dict[str, str]) -> str:
    for token in special_tokens.values():
        text = text.replace(token, "")
    return text


def format_docs_prompts_func(
    query: str,
    docs: list[str],
    instruction: Optional[str] = None,
    special_tokens: Dict[str, str] = {},
    no_thinking: bool = True,
) -> str:
    query = sanitize_input(query, special_tokens)
    docs = [sanitize_input(doc, special_tokens) for doc in docs]

    prefix = (
        "<|im_start|>system\n"
        "You are a search relevance expert who can determine a ranking of the passages based on how relevant they are to the query. "
        "If the query is a question, how relevant a passage is depends on how well it answers the question. "
        "If not, try to analyze the intent of the query and assess how well each passage satisfies the intent. "
        "If an instruction is provided, you should follow the instruction when determining the ranking."
        "<|im_end|>\n<|im_start|>user\n"
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n"
    if no_thinking:
        suffix += "<think>\n\n</think>\n\n"

    doc_emb_token = special_tokens["doc_embed_token"]
    query_emb_token = special_tokens["query_embed_token"]

    prompt = (
        f"I will provide you with {len(docs)} passages, each indicated by a numerical identifier. "
        f"Rank the passages based on their relevance to query: {query}\n"
    )

    if instruction:
        prompt += f'<instruct>\n{instruction}\n</instruct>\n'

    doc_prompts = [f'<passage id="{i}">\n{doc}{doc_emb_token}\n</passage>' for i, doc in enumerate(docs)]
    prompt += "\n".join(doc_prompts) + "\n"
    prompt += f"<query>\n{query}{query_emb_token}\n</query>"

    return prefix + prompt + suffix


class JinaForRanking(modeling_qwen3.Qwen3ForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        self.padding_side = "left"
        self.projector_dim = 512

        self.lm_head = nn.Identity()

        self.projector = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size // 2, bias=False),
            nn.ReLU(),
            nn.Linear(config.hidden_size // 2, self.projector_dim, bias=False),
        )

        self.post_init()

        self.special_tokens = {"query_embed_token": "<|rerank_token|>", "doc_embed_token": "<|embed_token|>"}
        self.doc_embed_token_id = 151670
        self.query_embed_token_id = 151671

    def forward(self, *args, **kwargs):
        kwargs.pop("output_hidden_states", None)
        kwargs.pop("use_cache", None)
        input_ids = kwargs.pop("input_ids", None)

        outputs = super().forward(*args, input_ids=input_ids, use_cache=False, output_hidden_states=True, **kwargs)

        hidden_states = outputs.hidden_states[-1]
        batch_size, _, dim = hidden_states.shape

        query_embed_token_indexes = torch.eq(input_ids, self.query_embed_token_id)
        doc_embed_token_indexes = torch.eq(input_ids, self.doc_embed_token_id)

        doc_embeds = hidden_states[doc_embed_token_indexes].view(batch_size, -1, dim)
        query_embeds = hidden_states[query_embed_token_indexes].unsqueeze(1)

        doc_embeds = self.projector(doc_embeds)
        query_embeds = self.projector(query_embeds)

        query_embeds_expanded = query_embeds.expand_as(doc_embeds)
        scores = torch.nn.functional.cosine_similarity(doc_embeds, query_embeds_expanded, dim=-1).squeeze(-1)
        return scores, query_embeds, doc_embeds

    def _ensure_tokenizer(self):
        if not hasattr(self, "_tokenizer"):
            self._tokenizer = T.AutoTokenizer.from_pretrained(self.name_or_path)
            self._tokenizer.padding_side = "left"

    def _truncate_texts(
        self, query: str, documents: List[str], max_query_length: int = 512, max_doc_length: int = 2048
    ) -> Tuple[str, List[str], List[int], int]:
        self._ensure_tokenizer()

        docs = []
        doc_lengths = []
        for doc in documents:
            doc_tokens = self._tokenizer(doc, truncation=True, max_length=max_doc_length)
            if len(doc_tokens["input_ids"]) >= max_doc_length:
                doc = self._tokenizer.decode(doc_tokens["input_ids"])
            doc_lengths.append(len(doc_tokens["input_ids"]))
            docs.append(doc)

        query_tokens = self._tokenizer(query, truncation=True, max_length=max_query_length)
        if len(query_tokens["input_ids"]) >= max_query_length:
            query = self._tokenizer.decode(query_tokens["input_ids"])

        query_length = len(query_tokens["input_ids"])

        return query, docs, doc_lengths, query_length

    def _compute_single_batch(self, query: str, docs: List[str], instruction: Optional[str] = None):
        self._ensure_tokenizer()
        prompt = format_docs_prompts_func(
            query, docs, instruction=instruction, special_tokens=self.special_tokens, no_thinking=True
        )
        batch = self._tokenizer(text=[prompt], padding=True, padding_side="left", return_tensors="pt")
        return self.forward(**batch)

    def _calculate_cosine_scores(self, query_embeddings: np.ndarray, doc_embeddings: np.ndarray) -> np.ndarray:
        return np.dot(query_embeddings, doc_embeddings.T) / (
            np.linalg.norm(query_embeddings) * np.linalg.norm(doc_embeddings, axis=1)
        )

    @torch.no_grad()
    def rerank(self, query: str, documents: List[str], max_doc_length: int = 2048, max_query_length: int = 512) -> np.ndarray:
        """The published ``rerank``'s scores, in the documents' order (its sorting left out)."""
        self._ensure_tokenizer()
        max_length = self._tokenizer.model_max_length
        block_size = 125

        query, docs, doc_lengths, query_length = self._truncate_texts(query, documents, max_query_length, max_doc_length)

        length_capacity = max_length - 2 * query_length

        block_docs = []
        doc_embeddings = []
        query_embeddings = []
        block_weights = []

        def run_block():
            scores, query_embeds, doc_embeds = self._compute_single_batch(query, block_docs, instruction=None)
            doc_embeddings.extend(doc_embeds[0].cpu().float().numpy())
            query_embeddings.append(query_embeds[0].cpu().float().numpy())
            scores = scores.view(-1).cpu().float().numpy()
            block_weights.append(((1.0 + scores) / 2.0).max())

        for length, doc in zip(doc_lengths, docs):
            block_docs.append(doc)
            length_capacity -= length

            if len(block_docs) >= block_size or length_capacity <= max_doc_length:
                run_block()
                block_docs = []
                length_capacity = max_length - 2 * query_length

        if len(block_docs) > 0:
            run_block()

        query_embeddings = np.average(np.array(query_embeddings), axis=0, weights=block_weights)
        return self._calculate_cosine_scores(query_embeddings, np.array(doc_embeddings))[0]


def load_reference(path: Path) -> JinaForRanking:
    """Jina's class on the tiny checkpoint, in fp32, its embed token ids those of the tiny tokenizer.

    Loaded untied: transformers 5 ties ``lm_head.weight`` to the embeddings when the config says
    ``tie_word_embeddings`` and finds no weight on Jina's ``nn.Identity`` head; the head is never run.
    """
    model = JinaForRanking.from_pretrained(path, dtype=torch.float32, tie_word_embeddings=False).eval()
    model._ensure_tokenizer()
    model.doc_embed_token_id = model._tokenizer.convert_tokens_to_ids("<|embed_token|>")
    model.query_embed_token_id = model._tokenizer.convert_tokens_to_ids("<|rerank_token|>")
    return model


# -- the tiny checkpoint ------------------------------------------------------------------------


def jina_reranker_v3_tokenizer(model_max_length: int = 131072) -> T.PreTrainedTokenizerFast:
    """The tiny byte-level BPE with Qwen3's thinking tokens and Jina's special tokens (module docstring)."""
    tok = bytelevel_bpe_tokenizer(eos="<|endoftext|>")
    tok.add_tokens(["<think>", "</think>"])
    tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "additional_special_tokens": JINA_SPECIAL_TOKENS})
    tok.model_max_length = model_max_length
    return tok


def build_jina_reranker_v3(out: Path, seed: int = 0, model_max_length: int = 131072, hidden_size: int = 64) -> Path:
    """A tiny ``JinaForRanking`` saved to ``out`` as Jina publishes it (module docstring): a 2-layer
    Qwen3 body of ``hidden_size``, the projector ``hidden -> hidden / 2 -> 512``, random weights
    (norms too). ``model_max_length``: the tokenizer's, which splits long document lists."""
    tok = jina_reranker_v3_tokenizer(model_max_length)
    config = T.Qwen3Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=131072,
        max_window_layers=2,
        use_sliding_window=False,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.eos_token_id,
        architectures=["JinaForRanking"],
        auto_map={"AutoModel": "modeling.JinaForRanking"},
    )
    torch.manual_seed(seed)
    model = JinaForRanking(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.2)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _published_config(out)
    return out


def _published_config(out: Path) -> None:
    """Rewrite the saved ``config.json`` with the published file's keys (transformers 5 writes its
    own spelling of a few: ``rope_parameters``, ``dtype``)."""
    path = out / "config.json"
    saved = json.loads(path.read_text())
    keys = (
        "architectures", "auto_map", "attention_bias", "attention_dropout", "bos_token_id", "eos_token_id", "head_dim",
        "hidden_act", "hidden_size", "initializer_range", "intermediate_size", "max_position_embeddings",
        "max_window_layers", "model_type", "num_attention_heads", "num_hidden_layers", "num_key_value_heads",
        "pad_token_id", "rms_norm_eps", "sliding_window", "tie_word_embeddings", "use_cache", "use_sliding_window",
        "vocab_size",
    )
    config = {key: saved.get(key) for key in keys}
    config.update(rope_scaling=None, rope_theta=1000000.0, torch_dtype="float32", use_cache=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
