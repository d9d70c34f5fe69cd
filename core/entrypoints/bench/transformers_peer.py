"""``poolkit bench --vs transformers``: transformers' own class of the checkpoint's architecture on
the same weights, for the models the transformers fallback cannot run (a vision sub-config).

The transformers side runs as sentence-transformers would: texts sorted by length, padded batches
of 32, the same dtype, and returns what poolkit returns: SigLIP 2's ``get_text_features`` /
``get_image_features`` (normalised), ModernVBERT's pooled hidden state (its ``classifier_pooling``,
normalised), ColModernVBERT's vector of every real token. Its fp32 model is the parity reference;
for multi-vector outputs the least cosine is per token. Workload I (:func:`image_workload`) runs
here on the same pages as the vision-language workload of :mod:`.images`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .base import Peer, SkipWorkload
from .images import pages
from .measure import _interleave, _padding_fraction

if TYPE_CHECKING:
    from transformers import ColModernVBertForRetrieval, ModernVBertModel, PreTrainedModel, Siglip2Model

    from ...config.settings import EngineArgs
    from ...contracts.architecture import LoadedModel
    from .measure import Result

#: Pixels of each page workload I embeds here (the vision-language workload's default).
IMAGE_SIZE = 448


def _limit(model: PreTrainedModel, processor: Any) -> int:
    """The most tokens a text keeps, as sentence-transformers caps it: the text model's positions
    or the tokenizer's limit, whichever is smaller."""
    return min(int(model.config.get_text_config().max_position_embeddings), int(processor.tokenizer.model_max_length))


def _siglip2_texts(model: Siglip2Model, processor: Any, texts: list[str]) -> list[Any]:
    """``get_text_features`` on a left-padded batch, positions counted from each text's first token:
    its pooled last position is then each text's own last token, as poolkit pools it unpadded."""
    import torch

    inputs = processor.tokenizer(  # not the processor's call, which pads every text to 64 tokens
        texts, padding=True, truncation=True, max_length=_limit(model, processor), padding_side="left", return_tensors="pt"
    )
    mask = inputs["attention_mask"].to(model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    pooled = model.get_text_features(input_ids=inputs["input_ids"].to(model.device), attention_mask=mask, position_ids=positions)
    return list(torch.nn.functional.normalize(pooled.pooler_output.float(), dim=-1))


def _siglip2_images(model: Siglip2Model, processor: Any, images: list[Any]) -> list[Any]:
    """``get_image_features`` on one NaFlex batch from the checkpoint's image processor."""
    import torch

    inputs = processor.image_processor(images=images, return_tensors="pt").to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return list(torch.nn.functional.normalize(model.get_image_features(**inputs).pooler_output.float(), dim=-1))


def _real_tokens(model: ColModernVBertForRetrieval, inputs: Any) -> list[Any]:
    """ColModernVBERT's vectors (normalised by its head) of each row's real (unmasked) tokens."""
    inputs = inputs.to(model.device)
    inputs.pop("labels", None)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    vectors = model(**inputs).embeddings.float()
    return [row[mask.bool()] for row, mask in zip(vectors, inputs["attention_mask"])]


def _colmodernvbert_queries(model: ColModernVBertForRetrieval, processor: Any, texts: list[str]) -> list[Any]:
    """``process_queries``' right-padded rows cut to the model's limit: a query's first tokens, as
    poolkit cuts the query's token ids (its augmentation included, the tokenizer's truncation not used)."""
    inputs = processor.process_queries(texts)
    limit = _limit(model, processor)
    for key in ("input_ids", "attention_mask"):
        inputs[key] = inputs[key][:, :limit]
    return _real_tokens(model, inputs)


def _modernvbert_texts(model: ModernVBertModel, processor: Any, texts: list[str]) -> list[Any]:
    """The encoder's hidden states of a right-padded batch, pooled as the config's ``classifier_pooling``."""
    import torch

    limit = _limit(model, processor)
    inputs = processor(text=texts, padding=True, truncation=True, max_length=limit, return_tensors="pt").to(model.device)
    hidden = model(**inputs).last_hidden_state.float()
    if getattr(model.config, "classifier_pooling", "cls") == "mean":
        mask = inputs["attention_mask"][..., None].float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    else:
        pooled = hidden[:, 0]
    return list(torch.nn.functional.normalize(pooled, dim=-1))


@dataclass(frozen=True)
class Side:
    """How transformers' class of one architecture embeds texts and (``images``, where workload I
    compares it) images: each a function of (model, its ``AutoProcessor``, batch) to one tensor per
    input, a vector, or with ``multi_vector`` one row per token."""

    texts: Callable[[Any, Any, list[str]], list[Any]]
    images: Callable[[Any, Any, list[Any]], list[Any]] | None = None
    multi_vector: bool = False


#: The architectures the peer compares, by the transformers class of the same name.
SIDES: dict[str, Side] = {
    "Siglip2Model": Side(_siglip2_texts, _siglip2_images),
    "ModernVBertModel": Side(_modernvbert_texts),
    "ColModernVBertForRetrieval": Side(
        _colmodernvbert_queries,
        lambda model, processor, images: _real_tokens(model, processor.process_images(images)), multi_vector=True,
    ),
}


class TransformersModel:
    """transformers' class of the checkpoint's architecture, with the sentence-transformers
    ``encode`` the workloads call (one row per text, or per real token of a multi-vector model)."""

    def __init__(self, architecture: str, path: str, device: str, dtype: str) -> None:
        import torch
        import transformers

        self.architecture = architecture
        self.side = SIDES[architecture]
        self.model = getattr(transformers, architecture).from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
        self.processor = transformers.AutoProcessor.from_pretrained(path)

    def rows(self, embed: Callable[[Any, Any, list[Any]], list[Any]], items: list[Any], batch_size: int = 32) -> list[Any]:
        """``embed`` (a :class:`Side`'s) on ``batch_size`` items at a time: one tensor per item, in order."""
        import torch

        out: list[Any] = []
        with torch.inference_mode():
            for start in range(0, len(items), batch_size):
                out += [row.cpu() for row in embed(self.model, self.processor, items[start : start + batch_size])]
        return out

    def stacked(self, rows: list[Any]) -> Any:
        """One row per input, or each input's token rows one after another (a multi-vector model)."""
        import torch

        return torch.cat(rows) if self.side.multi_vector else torch.stack(rows)

    def encode(self, texts: str | list[str], batch_size: int = 32, convert_to_tensor: bool = False) -> Any:
        """Embeddings of ``texts`` (one vector for one string), batched longest first as
        sentence-transformers sorts them, returned in the texts' order."""
        items = [texts] if isinstance(texts, str) else list(texts)
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))
        placed: list[Any] = [None] * len(items)
        for i, row in zip(order, self.rows(self.side.texts, [items[i] for i in order], batch_size)):
            placed[i] = row
        vectors = self.stacked(placed)
        if isinstance(texts, str) and not self.side.multi_vector:
            vectors = vectors[0]
        return vectors if convert_to_tensor else vectors.numpy()


class TransformersPeer(Peer):
    """transformers' own class of the checkpoint's architecture (:data:`SIDES`) on the same weights,
    dtype and device, batched as sentence-transformers batches."""

    key = "transformers"
    name = "transformers' own class"
    skipped = {
        "W4": "a cross-encoder of the model's shape is not one of transformers' classes this peer runs",
        "W6": "no model runs in it (the MaxSim kernel against a padded einsum); run it without --vs transformers",
        "W7": "a masked-LM head of the model's shape is not one of transformers' classes this peer runs",
        "W9": "the cold start of transformers' class is not measured",
    }

    def check_ours(self, model: LoadedModel) -> str | None:
        """Why transformers' class cannot be compared: none exists, or the fallback runs it."""
        import transformers

        name = model.architecture_name
        if name in SIDES:
            return None
        if getattr(transformers, name, None) is None:
            return f"transformers has no class for {name} (its checkpoints name remote code)"
        return f"it compares {', '.join(SIDES)}; transformers' own {name} is what --vs fallback runs: use --vs fallback"

    def model(self, cls: str, path: str, device: str, dtype: str) -> Any:
        if cls != "SentenceTransformer":
            raise SkipWorkload(f"transformers' side of a {cls} is not compared")
        import transformers

        architecture = (transformers.AutoConfig.from_pretrained(path).architectures or [""])[0]  # the checkpoint's own
        return TransformersModel(architecture, path, device, dtype)

    def padding_fraction(self, lengths: list[int]) -> float:
        return _padding_fraction(lengths)

    def peak_rss_mb(self, args: EngineArgs, payload: Any, dtype: str, task: str = "embed") -> float:
        raise SkipWorkload("the peak memory of transformers' class is not measured; use --no-memory")

    def image_side(self, encoder: Any) -> Callable[[list[Any]], Any]:
        if encoder.side.images is None:
            with_images = ", ".join(name for name, side in SIDES.items() if side.images is not None)
            raise SkipWorkload(f"images of {encoder.architecture} are not compared (workload I runs on {with_images})")
        return lambda images: encoder.stacked(encoder.rows(encoder.side.images, images))

    def implementation(self, encoder: Any) -> str:
        return f"transformers {encoder.architecture} in {str(encoder.model.dtype).removeprefix('torch.')}"


def image_workload(bench: Any) -> Result:
    """Workload I in a list (``--vs transformers``): images per second of poolkit (``{"prompt": "",
    "multi_modal_data": {"image": ...}}`` each, its own pre-processing included) and of the peer
    (its processor and model), and poolkit's least cosine to the peer's fp32 (per token for a
    multi-vector model)."""
    import torch

    theirs = bench.peer.image_side(bench.encoder)  # before anything runs: the peer may have no side
    batch = pages(bench._n(32), IMAGE_SIZE)
    prompts = [{"prompt": "", "multi_modal_data": {"image": image}} for image in batch]
    rounds = _interleave(bench.rounds, lambda: bench._encode(prompts), lambda: theirs(batch), cold=(bench.llm,))
    outputs = bench._encode(prompts)
    tokens = sum(len(o.prompt_token_ids) for o in outputs)
    result = bench._result("I", f"{len(batch)} images of {IMAGE_SIZE}x{IMAGE_SIZE} pixels", len(batch), tokens, rounds)
    fp32 = bench._reference_model("SentenceTransformer", bench.model_dir) if bench._approximate_peer() else bench.encoder
    ref = bench.peer.image_side(fp32)(batch).float()
    got = bench._vectors(outputs)
    result.min_cosine = float(torch.nn.functional.cosine_similarity(got, ref).min())
    result.max_abs_diff = float((got - ref).abs().max())
    if bench._approximate_peer():
        own = theirs(batch).float()
        result.peer_min_cosine = float(torch.nn.functional.cosine_similarity(own, ref).min())
        result.peer_max_abs_diff = float((own - ref).abs().max())
    if tokens:  # a retriever's page prompt (SigLIP 2's images have no token ids)
        result.notes = f"{tokens / len(batch):.0f} tokens per image"
    return result
