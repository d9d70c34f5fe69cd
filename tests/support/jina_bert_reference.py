"""The published jina-embeddings-v2 modeling code, written out minimally as the parity reference.

Source: the remote code its checkpoints name in ``auto_map``, ``jinaai/jina-bert-implementation``
``modeling_bert.py`` (``JinaBertModel``: ``JinaBertEmbeddings``, ``JinaBertSelfAttention``,
``JinaBertGLUMLP``, ``JinaBertEncoder.rebuild_alibi_tensor``). Its gated block is MosaicBERT's
``BertGatedLinearUnitMLP`` (``gated_layers`` without bias, the first half activated, ``wo``,
``layernorm``), as found in public copies of ``bert_layers.py``; its ALiBi is the symmetric
``-slope * |i - j|`` of ``rebuild_alibi_tensor`` (also in transformers' pull request for
``jina_bert``, ``src/transformers/models/jina_bert/modeling_jina_bert.py``). The same structure and
names are what vLLM's TPU backend ports (github.com/vllm-project/tpu-inference,
``tpu_inference/models/jax/jina_bert.py``: ``gelu(first half) * second half``, exact GELU). Only the inference path
of the bare encoder is kept: no dropout, decoder, cache, head masks or task heads. It runs padded
batches with an attention mask, the bias built for the padded width as the published code does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _slopes(n_heads: int) -> list[float]:
    """``_get_alibi_head_slopes`` of the published code."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(closest) + _slopes(2 * closest)[0::2][: n_heads - closest]


class SelfAttention(nn.Module):
    """``JinaBertSelfAttention`` (eager path): scores / sqrt(d) + mask, softmax of that + ALiBi."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask
        probs = nn.functional.softmax(scores + bias, dim=-1)
        out = torch.matmul(probs, v).permute(0, 2, 1, 3)
        return out.reshape(*x.shape[:2], -1)


class Output(nn.Module):
    """``JinaBertSelfOutput``: dense, residual add, LayerNorm."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.self = SelfAttention(config)
        self.output = Output(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask, bias), x)


class GLUMLP(nn.Module):
    """``JinaBertGLUMLP``: ``layernorm(x + wo(act(gated) * non_gated))``, ``gated`` the first half."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.inner = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.act = nn.ReLU() if config.feed_forward_type == "reglu" else nn.GELU()
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gated_layers(x)
        gated, non_gated = h[..., : self.inner], h[..., self.inner :]
        return self.layernorm(x + self.wo(self.act(gated) * non_gated))


class Layer(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.mlp = GLUMLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attention(x, mask, bias))


class Embeddings(nn.Module):
    """``JinaBertEmbeddings`` with ALiBi: word + token type, LayerNorm (no position table)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, ids: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.word_embeddings(ids) + self.token_type_embeddings(types))


class Encoder(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))

    def alibi(self, size: int, device: torch.device) -> torch.Tensor:
        """``rebuild_alibi_tensor``: ``[1, heads, size, size]`` of ``-slope * |i - j|``."""
        context = torch.arange(size, device=device)[:, None]
        memory = torch.arange(size, device=device)[None, :]
        relative = torch.abs(memory - context).unsqueeze(0).expand(self.heads, -1, -1)
        slopes = torch.Tensor(_slopes(self.heads)).to(device) * -1
        return (slopes.unsqueeze(1).unsqueeze(1) * relative).unsqueeze(0)


class JinaBertModel(nn.Module):
    """The bare encoder: padded ids and mask in, last hidden state ``[B, L, H]`` out."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids, torch.zeros_like(input_ids))
        # get_extended_attention_mask: 0 where seen, the dtype's lowest where padded.
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        bias = self.encoder.alibi(input_ids.shape[1], input_ids.device).to(x.dtype)
        for layer in self.encoder.layer:
            x = layer(x, mask, bias)
        return x
