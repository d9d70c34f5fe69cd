"""Tiny adapter repositories as colpali-engine publishes its retrievers: a base folder, and a PEFT
adapter folder over it (``adapter_config.json`` naming the base, ``adapter_model.safetensors``, the
processor's files), built offline with transformers' and peft's own classes.

Sources (github.com/illuin-tech/colpali unless said otherwise):

- The models are colpali-engine's classes, written out here as they are in
  ``colpali_engine/models/paligemma/colpali/modeling_colpali.py`` (``ColPali``: a
  ``PaliGemmaForConditionalGeneration`` as ``model``, ``custom_text_proj`` ``hidden -> 128`` with
  bias, ``self.dim = 128`` hard-coded; its ``_checkpoint_conversion_mapping`` from the published
  names to transformers 5's) and ``colpali_engine/models/qwen2_5/colqwen2_5/modeling_colqwen2_5.py``
  (``ColQwen2_5`` of colpali-engine 0.3.18, the PyPI wheel: a ``Qwen2_5_VLModel`` and
  ``custom_text_proj``, ``dim`` 128 hard-coded, its ``forward`` unpadding ``pixel_values``, projecting,
  L2-normalising and masking; its mapping ``^model.layers`` / ``^model.embed_tokens`` /
  ``^model.norm -> language_model.*``, the last two added after 0.3.14), with its processor's
  ``process_images`` / ``process_queries`` (``processing_colqwen2_5.py``, ``utils/processing_utils.py``:
  the visual prompt; ``query_prefix`` "" since 0.3.13, "Query: " before; ten ``<|endoftext|>``;
  ``max_num_visual_tokens * 28 * 28`` pixels when given) over transformers' ``Qwen2VLProcessor``.
- The base folders (vidore/colpaligemma-3b-pt-448-base, vidore/colqwen2.5-base) are what
  ``scripts/init_base_model.py`` saves: ``config.json`` of the backbone's config class with the
  colpali-engine class as its architecture (``"architectures": ["ColPali"]``, ``"model_type":
  "paligemma"``: transformers' ``convert_colpali_weights_to_hf.py`` copies that config of
  vidore/colpali-v1.2-merged, whose ``_name_or_path`` is the base; ``["ColQwen2_5"]``, ``"qwen2_5_vl"``),
  tensors named as the transformers 4.4x module tree named them when the bases were saved (the
  ``key_mapping`` colpali-engine loads them with): ``model.vision_tower.vision_model.*``,
  ``model.multi_modal_projector.*``, ``model.language_model.model.*``, ``custom_text_proj.*`` for
  ColPali; ``model.layers.*``/``model.embed_tokens``/``model.norm``, ``visual.*``,
  ``custom_text_proj.*`` for ColQwen2.5 (the ColNomic loaders in the code corpus read
  ``custom_text_proj.weight``/``.bias`` from the base's index). Tied ``lm_head`` weights are not
  written (``save_pretrained`` drops tied tensors); not confirmed from the published headers.
  vidore/colqwen2.5-base's ``config.json`` is taken to be Qwen/Qwen2.5-VL-3B-Instruct's (the base of
  colqwen2.5-v0.2) as transformers 4.49 saved it in February 2025: flat, decoder keys at the top,
  ``rope_scaling`` ``{"mrope_section", "rope_type": "default", "type": "default"}``, no ``dim``; its
  ``preprocessor_config.json`` that model's ``Qwen2VLImageProcessor`` (``min_pixels``/``max_pixels``
  and ``size``); the published files themselves were not reachable, so neither is confirmed, nor
  whether the published pixel budget is Qwen2.5-VL's (12845056) or training's 768 x 28 x 28.
- The adapters (vidore/colpali-v1.3, vidore/colqwen2.5-v0.2): ``LoraConfig`` as the training
  configs give it (``scripts/configs/pali/train_colpali_model.yaml``,
  ``scripts/configs/qwen2/train_colqwen25_model.py``: ``r=32``, ``lora_alpha=32``, ``bias="none"``,
  ``task_type="FEATURE_EXTRACTION"``, ``target_modules`` the regexes below), tensors
  ``base_model.model.<module>.lora_{A,B}.weight`` with ``<module>`` as colpali-engine's class nested
  the backbone then (``model.language_model.model.layers.N...`` and ``custom_text_proj`` for
  ColPali, as a port's converter reads them; ``model.layers.N...`` and ``custom_text_proj`` for
  ColQwen2.5, as a census of the published safetensors headers lists them). r and alpha of the
  published adapter_config.json files themselves were not seen.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers as T
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn
from transformers.models.paligemma.modeling_paligemma import PaliGemmaForConditionalGeneration, PaliGemmaPreTrainedModel
from transformers.models.qwen2_5_vl import Qwen2_5_VLModel

from tiny_colretrieval import _randomise, build_colqwen2, gemma_like_tokenizer
from tiny_models import qwen_vl_tokenizer
from tiny_qwen_vl import _token_ids

#: The hub ids the adapters name as their base (their adapter_config.json's ``base_model_name_or_path``).
COLPALI_BASE = "vidore/colpaligemma-3b-pt-448-base"
COLQWEN2_5_BASE = "vidore/colqwen2.5-base"
#: The LoRA target regexes of colpali-engine's training configs (see the module docstring).
COLPALI_TARGETS = r"(.*(language_model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(custom_text_proj).*$)"
COLQWEN2_5_TARGETS = r"(.*(model)(?!.*visual).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(custom_text_proj).*$)"
#: colpali-engine's regex as a user aims it at transformers' ``ColQwen2ForRetrieval`` (the ``-hf``
#: checkpoints), whose projection is ``embedding_proj_layer``.
COLQWEN2_HF_TARGETS = r"(.*(language_model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(embedding_proj_layer).*$)"


class ColPali(PaliGemmaPreTrainedModel):
    """colpali-engine's ``ColPali`` (``modeling_colpali.py``): PaliGemma's last hidden states through
    ``custom_text_proj``, L2-normalised, masked by the attention mask."""

    main_input_name = "doc_input_ids"
    _checkpoint_conversion_mapping = {
        "^model.language_model.model": "model.model.language_model",
        "^model.vision_tower": "model.model.vision_tower",
        "^model.multi_modal_projector": "model.model.multi_modal_projector",
        "^model.language_model.lm_head": "model.lm_head",
        r"^base_model\.model\.custom_text_proj": "custom_text_proj",
    }

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        key_mapping = kwargs.pop("key_mapping", None)
        if key_mapping is None:
            key_mapping = cls._checkpoint_conversion_mapping
        return super().from_pretrained(*args, **kwargs, key_mapping=key_mapping)

    def __init__(self, config: T.PaliGemmaConfig) -> None:
        super().__init__(config=config)
        model = PaliGemmaForConditionalGeneration(config=config)
        if model.model.language_model._tied_weights_keys is not None:
            self._tied_weights_keys = [f"model.model.language_model.{k}" for k in model.model.language_model._tied_weights_keys]
        self.model = model
        self.dim = 128
        self.custom_text_proj = nn.Linear(self.model.config.text_config.hidden_size, self.dim)
        self.post_init()

    def forward(self, *args, **kwargs) -> torch.Tensor:
        kwargs.pop("output_hidden_states", None)
        if "pixel_values" in kwargs:
            kwargs["pixel_values"] = kwargs["pixel_values"].to(dtype=self.dtype)
        outputs = self.model(*args, output_hidden_states=True, **kwargs)
        proj = self.custom_text_proj(outputs.hidden_states[-1])
        proj = proj / proj.norm(dim=-1, keepdim=True)
        return proj * kwargs["attention_mask"].unsqueeze(-1)

    def get_input_embeddings(self):
        return self.model.model.language_model.get_input_embeddings()


class ColQwen2_5(Qwen2_5_VLModel):  # noqa: N801 - colpali-engine's name, which config.json's architectures carry
    """colpali-engine 0.3.18's ``ColQwen2_5`` (``modeling_colqwen2_5.py``): ``Qwen2_5_VLModel`` (the
    M-RoPE positions it computes from ``image_grid_thw`` and ``mm_token_type_ids``), ``custom_text_proj``
    (``hidden -> 128``, with bias), ``proj / proj.norm(-1)`` times the attention mask; its default
    ``mask_non_image_embeddings=False``. ``forward`` unpads ``pixel_values`` as it does (see
    :func:`colqwen2_5_process_images`)."""

    main_input_name = "doc_input_ids"
    _checkpoint_conversion_mapping = {
        r"^base_model\.model\.custom_text_proj": "custom_text_proj",
        r"^model\.layers": "language_model.layers",
        r"^model\.embed_tokens": "language_model.embed_tokens",
        r"^model\.norm": "language_model.norm",
    }

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        key_mapping = kwargs.pop("key_mapping", None)
        if key_mapping is None:
            key_mapping = dict(getattr(super(), "_checkpoint_conversion_mapping", None) or {})
            key_mapping.update(cls._checkpoint_conversion_mapping)
        return super().from_pretrained(*args, **kwargs, key_mapping=key_mapping)

    def __init__(self, config: T.Qwen2_5_VLConfig) -> None:
        super().__init__(config=config)
        self.dim = 128
        self.custom_text_proj = nn.Linear(self.config.text_config.hidden_size, self.dim)
        self.padding_side = "left"
        self.post_init()

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if "pixel_values" in kwargs:
            offsets = kwargs["image_grid_thw"][:, 1] * kwargs["image_grid_thw"][:, 2]
            kwargs["pixel_values"] = torch.cat([pixels[:offset] for pixels, offset in zip(kwargs["pixel_values"], offsets)], dim=0)
        kwargs.pop("return_dict", True)
        kwargs.pop("output_hidden_states", None)
        kwargs.pop("use_cache", None)
        hidden = super().forward(*args, **kwargs, use_cache=False, output_hidden_states=True, return_dict=True).last_hidden_state
        proj = self.custom_text_proj(hidden)
        proj = proj / proj.norm(dim=-1, keepdim=True)
        return proj * kwargs["attention_mask"].unsqueeze(-1)


class ImageQwen2VLProcessor(T.Qwen2VLProcessor):
    """transformers' ``Qwen2VLProcessor`` (the base of colpali-engine's ``ColQwen2_5_Processor``)
    without a video processor, which needs torchvision to be built; pages and queries never read it."""

    def check_argument_for_proper_class(self, argument_name: str, argument: object) -> None:
        if argument is not None:
            super().check_argument_for_proper_class(argument_name, argument)


#: ``ColQwen2_5_Processor.visual_prompt_prefix`` and ``query_augmentation_token``.
COLQWEN2_5_VISUAL_PROMPT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>"
COLQWEN2_5_AUGMENTATION = "<|endoftext|>"


def colqwen2_5_processor(folder: Path, max_num_visual_tokens: int | None = None) -> ImageQwen2VLProcessor:
    """``ColQwen2_5_Processor.from_pretrained(folder)``: the tokenizer, padding on the left, and the
    Pillow image processor, ``max_pixels`` and ``size["longest_edge"]`` set to
    ``max_num_visual_tokens * 28 * 28`` when given."""
    tok = T.AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    images = T.AutoImageProcessor.from_pretrained(folder, backend="pil")
    if max_num_visual_tokens is not None:
        images.max_pixels = max_num_visual_tokens * 28 * 28
        images.size["longest_edge"] = images.max_pixels
    return ImageQwen2VLProcessor(image_processor=images, tokenizer=tok, video_processor=None)


def colqwen2_5_process_images(processor: ImageQwen2VLProcessor, images: list) -> dict:
    """``ColQwen2_5_Processor.process_images``: the visual prompt per image, RGB, and ``pixel_values``
    split per image and padded to ``[images, patches, features]`` (which ``forward`` undoes)."""
    batch = processor(
        text=[COLQWEN2_5_VISUAL_PROMPT] * len(images), images=[i.convert("RGB") for i in images], padding="longest", return_tensors="pt"
    )
    offsets = batch["image_grid_thw"][:, 1] * batch["image_grid_thw"][:, 2]
    batch["pixel_values"] = torch.nn.utils.rnn.pad_sequence(list(torch.split(batch["pixel_values"], offsets.tolist())), batch_first=True)
    return dict(batch)


def colqwen2_5_process_queries(processor: ImageQwen2VLProcessor, texts: list[str]) -> dict:
    """``BaseVisualRetrieverProcessor.process_queries`` (colpali-engine 0.3.13 on): ``query_prefix``
    (empty) + the text + ten ``query_augmentation_token``, through ``process_texts``."""
    return dict(processor(text=[t + COLQWEN2_5_AUGMENTATION * 10 for t in texts], padding="longest", return_tensors="pt"))


#: transformers 5's names of ``ColPali``'s tensors -> the published ones (the inverse of its mapping;
#: transformers 5 drops SigLIP's ``vision_model.`` level, which the published names keep).
COLPALI_PUBLISHED = (
    ("model.model.language_model.", "model.language_model.model."),
    ("model.model.vision_tower.", "model.vision_tower.vision_model."),
    ("model.model.multi_modal_projector.", "model.multi_modal_projector."),
)


#: transformers 5's names of ``ColQwen2_5``'s tensors -> the published ones (``Qwen2_5_VLForConditionalGeneration``'s
#: of transformers 4.49: the decoder under ``model.``, the vision tower ``visual.`` at the top).
COLQWEN2_5_PUBLISHED = (("language_model.", "model."),)


def published(name: str, renames: tuple[tuple[str, str], ...]) -> str:
    """``name`` with the first matching prefix of ``renames`` replaced."""
    for new, old in renames:
        if name.startswith(new):
            return old + name[len(new):]
    return name


def colpali_config(tok: T.PreTrainedTokenizerFast, image_token_id: int, image_size: int, patch_size: int) -> T.PaliGemmaConfig:
    """The tiny PaliGemma config of ``tiny_colretrieval.build_colpali``'s ``vlm_config``."""
    return T.PaliGemmaConfig(
        text_config=dict(
            model_type="gemma", vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
            patch_size=patch_size, projection_dim=64, vision_use_head=False,
        ),
        image_token_id=image_token_id,
        projection_dim=64,
        hidden_size=64,
    )


def save_base(model: nn.Module, out: Path, renames: tuple[tuple[str, str], ...]) -> Path:
    """``model``'s config and its tensors (but the tied ``lm_head``) under their published names, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    tensors = {
        published(name, renames): tensor.detach().clone().contiguous()
        for name, tensor in model.state_dict().items()
        if "lm_head." not in name  # tied to the input embeddings
    }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def save_adapter(model: nn.Module, out: Path, base: str, targets: str, renames: tuple[tuple[str, str], ...], seed: int) -> nn.Module:
    """A LoRA adapter over ``model`` (``r=32``, ``lora_alpha=32``, ``targets``), its factors drawn at
    random (``lora_B`` too, which PEFT starts at zero), saved to ``out`` as PEFT saves it with the
    published names and ``base`` as its base; returns the PEFT model."""
    config = LoraConfig(
        r=32, lora_alpha=32, lora_dropout=0.1, init_lora_weights="gaussian", bias="none",
        task_type="FEATURE_EXTRACTION", target_modules=targets,
    )
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.5 * p.shape[1] ** -0.5)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out)
    prefix = "base_model.model."
    state = {
        prefix + published(name.removeprefix(prefix), renames): tensor.contiguous()
        for name, tensor in get_peft_model_state_dict(peft_model).items()
    }
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = base
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True))
    return peft_model


def build_colpali_repos(out: Path, seed: int = 0, base_id: str | None = None, image_size: int = 32, patch_size: int = 8) -> tuple[Path, Path]:
    """A tiny ColPali base (``out/base``) and a colpali-v1.3-like adapter over it (``out/adapter``,
    its ``base_model_name_or_path`` ``base_id``, else the base folder's path), each with the
    processor's files (PaliGemma's ``preprocessor_config.json`` and tokenizer: colpali-engine's
    trainer saves them beside the adapter, and its training configs load the processor from the base)."""
    tok = gemma_like_tokenizer()
    images = T.SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3
    )
    images.image_seq_length = (image_size // patch_size) ** 2
    processor = T.ColPaliProcessor(image_processor=images, tokenizer=tok)  # adds <image> and <loc....>/<seg...>
    config = colpali_config(tok, processor.image_token_id, image_size, patch_size)
    config.architectures = ["ColPali"]
    model = ColPali(config)
    _randomise(model, seed)
    base = save_base(model, out / "base", COLPALI_PUBLISHED)
    adapter = out / "adapter"
    save_adapter(model, adapter, base_id or str(base), COLPALI_TARGETS, COLPALI_PUBLISHED, seed + 1)
    for folder in (base, adapter):
        processor.save_pretrained(folder)
        images.save_pretrained(folder)
    return base, adapter


def colqwen2_5_config(tok: T.PreTrainedTokenizerFast, dim: int | None = None) -> dict:
    """vidore/colqwen2.5-base's ``config.json``, scaled down: Qwen/Qwen2.5-VL-3B-Instruct's as
    transformers 4.49 saved a ``Qwen2_5_VLConfig`` (decoder keys flat at the top, ``rope_scaling`` as
    4.49 rewrote ``"mrope"``, ``vision_config`` with ``in_chans`` / ``spatial_patch_size``), with
    colpali-engine's class as the architecture; ``dim`` only when given (not a published key)."""
    config = {
        "architectures": ["ColQwen2_5"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "bos_token_id": tok.eos_token_id,
        "eos_token_id": tok.eos_token_id,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 96,
        "max_position_embeddings": 128000,
        "max_window_layers": 70,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        **_token_ids(tok),
        "vocab_size": len(tok),
        "vision_config": {
            "depth": 2, "hidden_act": "silu", "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "in_chans": 3,
            "out_hidden_size": 64, "patch_size": 4, "spatial_merge_size": 2, "spatial_patch_size": 4, "window_size": 16,
            "fullatt_block_indexes": [1], "tokens_per_second": 4, "temporal_patch_size": 2,
        },
    }
    return config if dim is None else {**config, "dim": dim}


#: The tiny image processor's pixel budget (4-pixel patches merged 2x2).
COLQWEN2_5_MIN_PIXELS, COLQWEN2_5_MAX_PIXELS = 8 * 8, 48 * 48


def colqwen2_5_preprocessor_config() -> dict:
    """``preprocessor_config.json`` as transformers 4.49's ``Qwen2VLImageProcessor`` saved
    Qwen2.5-VL's (``min_pixels`` / ``max_pixels`` and ``size`` alike, CLIP's mean and std), scaled down."""
    return {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": list(T.image_utils.OPENAI_CLIP_MEAN), "image_std": list(T.image_utils.OPENAI_CLIP_STD),
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "ColQwen2_5_Processor",
        "min_pixels": COLQWEN2_5_MIN_PIXELS, "max_pixels": COLQWEN2_5_MAX_PIXELS,
        "size": {"shortest_edge": COLQWEN2_5_MIN_PIXELS, "longest_edge": COLQWEN2_5_MAX_PIXELS},
        "merge_size": 2, "patch_size": 4, "temporal_patch_size": 2, "resample": 3, "rescale_factor": 1 / 255,
    }


def build_colqwen2_5_repos(out: Path, seed: int = 0, base_id: str | None = None) -> tuple[Path, Path]:
    """A tiny ColQwen2.5 base (``out/base``: :func:`colqwen2_5_config`, Qwen2.5-VL with a 2-block
    vision tower and a 2-layer decoder) and a colqwen2.5-v0.2-like adapter over it (``out/adapter``),
    each with the tokenizer and :func:`colqwen2_5_preprocessor_config`."""
    tok = qwen_vl_tokenizer()
    raw = colqwen2_5_config(tok)
    model = ColQwen2_5(T.Qwen2_5_VLConfig(**raw))
    _randomise(model, seed)
    base = save_base(model, out / "base", COLQWEN2_5_PUBLISHED)
    (base / "config.json").write_text(json.dumps(raw, indent=2))
    adapter = out / "adapter"
    save_adapter(model, adapter, base_id or str(base), COLQWEN2_5_TARGETS, COLQWEN2_5_PUBLISHED, seed + 1)
    for folder in (base, adapter):
        tok.save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(json.dumps(colqwen2_5_preprocessor_config(), indent=2))
    return base, adapter


def build_colqwen2_hf_repos(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny ``-hf`` ColQwen2 (``tiny_colretrieval.build_colqwen2``, ``out/base``) and a LoRA adapter
    over it as peft saves one trained on transformers' ``ColQwen2ForRetrieval`` (``out/adapter``:
    ``base_model.model.vlm.language_model.*`` and ``embedding_proj_layer``), with the processor's files."""
    base = build_colqwen2(out / "base", seed)
    model = T.ColQwen2ForRetrieval.from_pretrained(str(base), dtype=torch.float32)
    adapter = out / "adapter"
    save_adapter(model, adapter, str(base), COLQWEN2_HF_TARGETS, (), seed + 1)
    T.ColQwen2Processor.from_pretrained(str(base)).save_pretrained(adapter)
    T.AutoImageProcessor.from_pretrained(str(base), backend="pil").save_pretrained(adapter)
    return base, adapter


def hub_cache(cache: Path, hub_id: str, folder: Path, revision: str = "0" * 40) -> Path:
    """``folder`` copied where the Hugging Face cache keeps ``hub_id`` (``models--org--name/snapshots/<rev>``,
    ``refs/main`` naming the revision); returns the snapshot."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snapshot = shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return Path(snapshot)
