"""GritLM: a Mistral body run bidirectionally for embeddings, pooling the text after its instruction."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Sequence

from poolkit.contracts.capabilities import SkipsInstruction
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError

from ..blocks.attention import GLOBAL
from .mistral import MistralModel
from .model import DecoderModel, check_layer_types

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import Tokenizer

logger = logging.getLogger(__name__)


class GritLM(MistralModel, SkipsInstruction):
    """GritLM (parasail-ai/GritLM-7B-vllm): a Mistral body run bidirectionally for embeddings,
    whose sequence pooling leaves the instruction out, as vLLM's ``GritLM`` does.

    Prompts follow GritLM's format, ``<|user|>\nINSTRUCTION\n<|embed|>\nTEXT`` or
    ``<|embed|>\nTEXT``, after the tokenizer's ``<s>``; the mean runs over the tokens after
    ``<|embed|>\n`` (then L2 normalisation). The marker is found by its token ids in Mistral's
    SentencePiece vocabulary (``▁<`` / ``<``, ``|``, ``embed``, ``|``, ``>``, ``<0x0A>``); a
    prompt without ``<s>`` pools every token and one without the marker every token but ``<s>``,
    with a warning, as vLLM does. No sliding window: vLLM drops it for pooling. ``encode``
    (``token_embed``) returns every token's states.
    """

    default_pooling_type: ClassVar[str | None] = "MEAN"
    config_checks: ClassVar[ConfigChecks] = DecoderModel.config_checks
    #: The SentencePiece pieces of GritLM's markers, as vLLM matches them.
    _PIECES = ("<s>", "▁<", "<", "|", "embed", ">", "<0x0A>", "user")

    @classmethod
    def is_causal(cls, config: PretrainedConfig) -> bool:
        return False

    @classmethod
    def layer_types(cls, config: PretrainedConfig) -> list[str]:
        return check_layer_types(config, [GLOBAL] * int(config.num_hidden_layers))

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """Look up the marker pieces' token ids (``config.gritlm_token_ids``); a tokenizer without
        them is refused."""
        ids = dict(zip(cls._PIECES, tokenizer.convert_tokens_to_ids(list(cls._PIECES)))) if tokenizer is not None else {}
        unknown = [p for p in cls._PIECES if ids.get(p) is None or ids[p] == getattr(tokenizer, "unk_token_id", None)]
        if unknown:
            raise ModelLoadError(
                f"GritLM finds its <|embed|> marker by the tokens of Mistral's SentencePiece vocabulary; this tokenizer lacks {', '.join(unknown)}"
            )
        config.gritlm_token_ids = ids

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        ids = config.gritlm_token_ids
        self._bos = ids["<s>"]
        self._user = [ids[p] for p in ("▁<", "|", "user", "|", ">", "<0x0A>")]
        self._embed = [ids[p] for p in ("▁<", "|", "embed", "|", ">", "<0x0A>")]
        self._embed_after_user = [ids[p] for p in ("<0x0A>", "<", "|", "embed", "|", ">", "<0x0A>")]

    def pool_start(self, token_ids: Sequence[int]) -> int:
        """The instruction's length: up to and including ``<|embed|>\n``."""
        ids = list(token_ids)
        if not ids or ids[0] != self._bos:
            logger.warning("GritLM: no BOS token at the start of a prompt, so no instruction is left out of pooling; GritLM expects one")
            return 0
        marker = self._embed_after_user if ids[1 : 1 + len(self._user)] == self._user else self._embed
        found = _find(ids, marker, start=1)
        if found < 0:
            logger.warning("GritLM: no <|embed|> marker in a prompt, so only the BOS token is left out of pooling; GritLM expects one")
            return 1
        return found + len(marker)


def _find(ids: list[int], target: list[int], start: int) -> int:
    """Where ``target`` first occurs in ``ids`` at or after ``start``, or -1."""
    n = len(target)
    first = target[0]
    for i in range(start, len(ids) - n + 1):
        if ids[i] == first and ids[i : i + n] == target:
            return i
    return -1
