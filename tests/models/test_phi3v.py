"""Phi-3-Vision (VLM2Vec, ``Phi3VForCausalLM``) embeddings of text, images and both, against a
reference built from transformers' own classes on a tiny random checkpoint.

The published model ships only remote code, which nothing here runs. So the reference is
assembled from what that code is made of: transformers' ``Phi3ForCausalLM`` for the decoder and
``CLIPVisionModel`` for the tower, loaded from the same checkpoint, and, written out below from the
published ``image_processing_phi3_v.py`` / ``processing_phi3_v.py`` / ``image_embedding_phi3_v.py``,
the HD transform of the pixels (torchvision's PIL operations spelled out with Pillow), the prompt's
placeholders (negative ids, ``<s>`` before every piece), the 2x2 merge with its ``sub_GN`` /
``glb_GN`` separators and the projector. The embedding is the last token's final hidden state,
L2-normalised (vLLM's pooling for VLM2Vec). poolkit crops, counts and merges with its own code.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as T
from PIL import Image, ImageOps
from safetensors.torch import load_file

from tiny_models import picture
from tolerances import assert_bf16_as_close_as_the_reference
from poolkit import LLM
from poolkit.contracts.errors import InvalidRequest, ModelLoadError

#: fp32 parity (DESIGN.md §7).
ATOL, MIN_COS = 1e-4, 0.99999
VLM2VEC_IMAGE = "<|image_1|> Represent the given image."
VLM2VEC_TEXT = "Find me an everyday image that matches the given caption: The label of the object is stop sign"
#: vLLM's examples/pooling/embed/template/vlm2vec_phi3v.jinja: content parts joined by spaces, images as <|image_N|>.
VLM2VEC_TEMPLATE = (
    "{% set vars = namespace(parts=[], next_image_id=1) %}{% for message in messages %}{% for content in message['content'] %}"
    "{% if content['type'] == 'text' %}{% set vars.parts = vars.parts + [content['text']] %}"
    "{% elif content['type'] == 'image' %}{% set vars.parts = vars.parts + ['<|image_' ~ vars.next_image_id ~ '|>'] %}"
    "{% set vars.next_image_id = vars.next_image_id + 1 %}{% endif %}{% endfor %}{% endfor %}{{ vars.parts | join(' ') }}"
)
PATTERN = r"<\|image_\d+\|>"

CASES = {
    "text": ("is paris the capital of france?", []),
    "long text (LongRoPE's long factors)": (VLM2VEC_TEXT + ", which is red and white, by a road in the snow", []),
    "vlm2vec image, wide 2x2": (VLM2VEC_IMAGE, [picture(24, 40, 0)]),
    "tall 3x1, turned by the transform": ("<|user|>\n<|image_1|>\nWhat is this?<|end|>\n<|assistant|>\n", [picture(70, 20, 1)]),
    "image only, long 1x3": ("", [picture(20, 70, 2)]),
    "two images": ("<|image_1|> and <|image_2|> compared", [picture(33, 61, 3), picture(50, 30, 4)]),
    "grey and transparent": ("<|image_1|><|image_2|> yes", [picture(30, 30, 5, "L"), picture(45, 17, 6, "RGBA")]),
    "small": ("a <|image_1|> b", [picture(5, 9, 7)]),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny_phi3v import build_phi3v

    return build_phi3v(tmp_path_factory.mktemp("phi3v"))


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(str(model_dir), dtype="float32")


# -- the reference ------------------------------------------------------------------------------


class Reference:
    """The published model's computation from transformers' classes and the checkpoint's files."""

    def __init__(self, model_dir, num_crops: int | None = None, dtype: torch.dtype = torch.float32) -> None:
        raw = json.loads((model_dir / "config.json").read_text())
        pre = json.loads((model_dir / "preprocessor_config.json").read_text())
        self.num_crops = num_crops or pre["num_crops"]
        self.mean, self.std = pre["image_mean"], pre["image_std"]
        img, embd = raw["img_processor"], raw["embd_layer"]
        self.layer, self.order = img.get("layer_idx", -2), embd["hd_transform_order"]
        vision = T.CLIPVisionConfig(**img["vision_config"])
        self.crop, self.grid, self.dim = vision.image_size, vision.image_size // vision.patch_size, img["image_dim_out"]
        text = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "auto_map", "embd_layer", "img_processor")}
        weights = load_file(model_dir / "model.safetensors")
        self.lm = T.Phi3ForCausalLM(T.AutoConfig.for_model("phi3", **text)).eval()
        self.lm.load_state_dict({k: v for k, v in weights.items() if not k.startswith("model.vision_embed_tokens.")})
        self.clip = T.CLIPVisionModel(vision).eval()
        tower = "model.vision_embed_tokens.img_processor.vision_model."
        self.clip.load_state_dict({k[len(tower):]: v for k, v in weights.items() if k.startswith(tower)})
        width = 4 * self.dim
        hidden = raw["hidden_size"]
        self.projection = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden))
        projection = "model.vision_embed_tokens.img_projection."
        self.projection.load_state_dict({k[len(projection):]: v for k, v in weights.items() if k.startswith(projection)})
        self.glb_GN, self.sub_GN = (weights[f"model.vision_embed_tokens.{n}"].to(dtype) for n in ("glb_GN", "sub_GN"))
        self.dtype = dtype
        for module in (self.lm, self.clip, self.projection):
            module.to(dtype)
        self.tok = T.AutoTokenizer.from_pretrained(model_dir, config=self.lm.config)  # not the remote-code config

    def pixels(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """``Phi3VImageProcessor.preprocess`` of one image: ``[num_crops + 1, 3, S, S]`` and the HD size."""
        from transformers.image_transforms import convert_to_rgb

        s = self.crop
        image = convert_to_rgb(image).convert("RGB")
        width, height = image.size
        turned = width < height
        if turned:
            image = image.transpose(Image.TRANSPOSE)
            width, height = image.size
        ratio = width / height
        scale = 1
        while scale * np.ceil(scale / ratio) <= self.num_crops:
            scale += 1
        scale -= 1
        new_w = int(scale * s)
        new_h = int(new_w / ratio)
        image = image.resize((new_w, new_h), Image.BILINEAR)  # torchvision's resize of a PIL image
        target = int(np.ceil(new_h / s) * s)
        top = int((target - new_h) / 2)
        image = ImageOps.expand(image, border=(0, top, 0, target - new_h - top), fill=(255, 255, 255))  # its pad
        if turned:
            image = image.transpose(Image.TRANSPOSE)
        hd = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)  # ToTensor
        hd = (hd - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]  # Normalize
        whole = F.interpolate(hd.unsqueeze(0).float(), size=(s, s), mode="bicubic")
        h, w = hd.shape[1:]
        crops = hd.reshape(1, 3, h // s, s, w // s, s).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, s, s)
        both = torch.cat([whole, crops])
        padding = torch.zeros(self.num_crops + 1 - both.shape[0], 3, s, s)
        return torch.cat([both, padding]), (h, w)

    def count(self, h: int, w: int) -> int:
        m, s = self.grid // 2, self.crop
        return int((h // s * w // s + 1) * m * m + 1 + (h // s + 1) * m)

    def input_ids(self, text: str, sizes: list[tuple[int, int]]) -> list[int]:
        """``Phi3VProcessor``: every piece tokenized with ``<s>``, placeholders as runs of ``-N``."""
        if not sizes:
            return self.tok(text).input_ids
        chunks = [self.tok(chunk).input_ids for chunk in re.split(PATTERN, text)]
        tags = [int(t.split("|")[1].split("_")[-1]) for t in re.findall(PATTERN, text)]
        pads = [[-n] * self.count(*sizes[n - 1]) for n in tags]
        ids = []
        for i, chunk in enumerate(chunks):
            ids += chunk + (pads[i] if i < len(pads) else [])
        return ids

    def features(self, pixels: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """``Phi3ImageEmbedding``'s HD transform, separators and projection, per image."""
        c, g, s = self.dim, self.grid, self.crop
        states = self.clip(pixels.flatten(0, 1).to(self.dtype), output_hidden_states=True).hidden_states[self.layer][:, 1:]
        states = states.reshape(pixels.shape[0], -1, g * g, c)
        out = []
        for i, (h, w) in enumerate(sizes):
            h, w = h // s, w // s
            glb = states[i, :1].reshape(1, g, g, c).reshape(1, g // 2, 2, g // 2, 2, c)
            glb = glb.permute(0, 1, 3, 2, 4, 5).reshape(1, g // 2, g // 2, 4 * c)
            glb = torch.cat([glb, self.sub_GN.repeat(1, g // 2, 1, 1)], dim=2).reshape(1, -1, 4 * c)
            sub = states[i, 1 : 1 + h * w].reshape(h * w, g, g, c).reshape(h * w, g // 2, 2, g // 2, 2, c)
            sub = sub.permute(0, 1, 3, 2, 4, 5).reshape(h * w, -1, 4 * c)
            sub = sub.reshape(1, h, w, g // 2, g // 2, -1).permute(0, 1, 3, 2, 4, 5).reshape(1, h * g // 2, w * g // 2, 4 * c)
            sub = torch.cat([sub, self.sub_GN.repeat(1, h * g // 2, 1, 1)], dim=2).reshape(1, -1, 4 * c)
            joined = [sub, self.glb_GN, glb] if self.order == "sub_glb" else [glb, self.glb_GN, sub]
            out.append(self.projection(torch.cat(joined, dim=1))[0])
        return out

    @torch.no_grad()
    def embed(self, text: str, images: list[Image.Image]) -> torch.Tensor:
        made = [self.pixels(image) for image in images]
        sizes = [size for _, size in made]
        ids = torch.tensor(self.input_ids(text or "".join(f"<|image_{i + 1}|>" for i in range(len(images))), sizes))
        x = self.lm.model.embed_tokens(ids.clamp_min(0))
        if images:
            features = self.features(torch.stack([p for p, _ in made]), sizes)
            at = torch.nonzero(ids < 0).flatten()
            x[at] = torch.cat(features).to(x.dtype)
        hidden = self.lm.model(inputs_embeds=x.unsqueeze(0)).last_hidden_state
        return F.normalize(hidden[0, -1].float(), dim=-1)


@pytest.fixture(scope="module")
def ref(model_dir):
    return Reference(model_dir)


def as_prompt(text: str, images: list) -> object:
    return text if not images else {"prompt": text, "multi_modal_data": {"image": images if len(images) > 1 else images[0]}}


def measure(got, want) -> tuple[float, float]:
    got = torch.as_tensor(got, dtype=torch.float32)
    return float((got - want).abs().max()), float(F.cosine_similarity(got, want, dim=0))


def assert_close(got, want) -> None:
    diff, cos = measure(got, want)
    assert diff <= ATOL and cos >= MIN_COS, (diff, cos)


# -- parity -------------------------------------------------------------------------------------


def test_cases_cover_crop_layouts_and_both_rotary_factors(llm, ref):
    from poolkit.builtin_models.phi3v.processor import crop_image, read_settings

    settings = read_settings(llm.model.path, llm.model.hf_config)
    grids = {crop_image(im, settings)[1] for _, images in CASES.values() for im in images}
    assert {(2, 2), (3, 1), (1, 3)} <= grids  # 1x1: test_num_crops_from_mm_processor_kwargs
    lengths = [len(ref.tok(text).input_ids) for text, images in CASES.values() if not images]
    assert min(lengths) <= 48 < max(lengths)  # original_max_position_embeddings: short and long factors


@pytest.mark.parametrize("case", list(CASES))
def test_embedding_matches_the_reference(llm, ref, case):
    text, images = CASES[case]
    (out,) = llm.embed([as_prompt(text, images)])
    assert_close(out.outputs.embedding, ref.embed(text, images))


def test_a_batch_mixing_text_and_images_matches_the_reference(llm, ref):
    cases = list(CASES.values())
    outs = llm.embed([as_prompt(*case) for case in cases] * 2)
    worst = max(measure(out.outputs.embedding, ref.embed(*case))[0] for out, case in zip(outs, cases * 2))
    assert worst <= ATOL, worst


def test_placeholders_expand_as_the_published_processor(llm, ref):
    token = llm.model.hf_config.image_token_id
    assert token == ref.tok.convert_tokens_to_ids("<|image|>")
    for text, images in CASES.values():
        if not images:
            continue
        (out,) = llm.embed([as_prompt(text, images)])
        want = ref.input_ids(text or "".join(f"<|image_{i + 1}|>" for i in range(len(images))), [ref.pixels(im)[1] for im in images])
        assert list(out.prompt_token_ids) == [token if t < 0 else t for t in want]


def test_pixels_match_the_published_processor(llm, ref):
    from poolkit.builtin_models.phi3v.processor import crop_image, read_settings

    settings = read_settings(llm.model.path, llm.model.hf_config)
    for _, images in CASES.values():
        for image in images:
            pixels, (rows, cols) = crop_image(image, settings)
            want, (h, w) = ref.pixels(image)
            assert (rows, cols) == (h // 16, w // 16)
            torch.testing.assert_close(pixels, want[: 1 + rows * cols], atol=1e-6, rtol=0)


def test_vlm2vec_chat_template_renders_the_image_prompt(llm):
    image = picture(24, 40, 0)
    messages = [{"role": "user", "content": [{"type": "image_pil", "image_pil": image}, {"type": "text", "text": "Represent the given image."}]}]
    (chat,) = llm.embed([{"messages": messages, "chat_template": VLM2VEC_TEMPLATE}])
    (plain,) = llm.embed([as_prompt(VLM2VEC_IMAGE, [image])])
    assert list(chat.prompt_token_ids) == list(plain.prompt_token_ids)
    np.testing.assert_allclose(chat.outputs.embedding, plain.outputs.embedding, atol=1e-6)


def test_without_an_image_token_the_features_fill_vllms_32044(tmp_path):
    """VLM2Vec's config names no ``image_token_id``, and vLLM takes Phi-3-Vision's 32044 ("cannot find
    it from the HF config"): with neither the config nor the tokenizer naming ``<|image|>``, a model
    with Phi-3's 32064-token vocabulary fills token 32044 with the image features, exactly as the same
    checkpoint whose config names 32044 does."""
    import shutil

    from tiny_phi3v import build_phi3v

    bare = build_phi3v(tmp_path / "bare", vocab_size=32064, image_token=False)
    named = tmp_path / "named"
    shutil.copytree(bare, named)
    raw = json.loads((named / "config.json").read_text())
    raw["image_token_id"] = 32044
    (named / "config.json").write_text(json.dumps(raw))
    guessed, told = LLM(str(bare)), LLM(str(named))
    assert guessed.model.hf_config.image_token_id == 32044
    prompt = as_prompt(VLM2VEC_IMAGE, [picture(24, 40, 0)])
    (a,), (b,) = guessed.embed([prompt]), told.embed([prompt])
    assert list(a.prompt_token_ids) == list(b.prompt_token_ids) and list(a.prompt_token_ids).count(32044) > 0
    np.testing.assert_array_equal(a.outputs.embedding, b.outputs.embedding)


def test_num_crops_from_mm_processor_kwargs(model_dir):
    llm = LLM(str(model_dir), dtype="float32", mm_processor_kwargs={"num_crops": 1})
    ref = Reference(model_dir, num_crops=1)
    text, images = CASES["vlm2vec image, wide 2x2"]
    (out,) = llm.embed([as_prompt(text, images)])
    assert sum(1 for t in out.prompt_token_ids if t == llm.model.hf_config.image_token_id) == (1 + 1) * 4 + 1 + 2 * 2
    assert_close(out.outputs.embedding, ref.embed(text, images))


def test_bfloat16_as_close_as_the_references_own(model_dir, ref):
    """bf16 within 0.9999 of the fp32 reference, or, where the reference run in bf16 misses that on
    this tiny random model, no further from it than that."""
    ref16 = Reference(model_dir, dtype=torch.bfloat16)
    llm16 = LLM(str(model_dir), dtype="bfloat16")
    cases = list(CASES.values())
    ours = [out.outputs.embedding for out in llm16.embed([as_prompt(*case) for case in cases])]
    assert_bf16_as_close_as_the_reference(ours, [ref16.embed(*case) for case in cases], [ref.embed(*case) for case in cases])


def test_default_pooling_is_last(llm):
    assert llm.model.architecture.default_pooling_type == "LAST"


@pytest.mark.parametrize(
    "variant",
    [
        dict(rope="default", partial_rotary_factor=0.5, sliding_window=12, order="glb_sub", layer_idx=-1, num_crops=2),
        dict(partial_rotary_factor=0.75, layer_idx=1, num_crops=9),
    ],
    ids=["partial-rotary,sliding-window,glb_sub,last-layer", "partial-longrope,layer-1,9-crops"],
)
def test_other_settings_match_the_reference(tmp_path, variant):
    from tiny_phi3v import build_phi3v

    model_dir = build_phi3v(tmp_path / "variant", seed=1, **variant)
    llm = LLM(str(model_dir), dtype="float32")
    ref = Reference(model_dir)
    cases = [CASES[name] for name in ("text", "long text (LongRoPE's long factors)", "two images", "tall 3x1, turned by the transform")]
    outs = llm.embed([as_prompt(*case) for case in cases])
    for out, case in zip(outs, cases):
        assert_close(out.outputs.embedding, ref.embed(*case))


def test_su_rope_scaling_loads_as_longrope(llm, model_dir, tmp_path):
    """Phi-3-Vision's config.json names LongRoPE ``su``, which transformers 5's Phi3Config cannot read
    (it asks for ``original_max_position_embeddings`` inside ``rope_scaling`` before renaming ``su``):
    the loader reads ``su`` as ``longrope``, and the model runs as with that config (with or
    without the ``hf_overrides`` that says so)."""
    import shutil

    su = tmp_path / "su"
    shutil.copytree(model_dir, su)
    raw = json.loads((su / "config.json").read_text())
    raw["rope_scaling"]["type"] = "su"
    (su / "config.json").write_text(json.dumps(raw))
    prompts = [as_prompt(*CASES["long text (LongRoPE's long factors)"]), as_prompt(*CASES["vlm2vec image, wide 2x2"])]
    for moved in (LLM(str(su), dtype="float32"), LLM(str(su), dtype="float32", hf_overrides={"rope_scaling": {"type": "longrope"}})):
        for got, want in zip(moved.embed(prompts), llm.embed(prompts)):
            np.testing.assert_allclose(got.outputs.embedding, want.outputs.embedding, atol=1e-6)


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({"prompt": "no placeholder here", "multi_modal_data": {"image": "IMG"}}, "prompt 0 has 0 image placeholders (<|image_N|>) for 1 image;"),
        ({"prompt": "<|image_1|><|image_2|>", "multi_modal_data": {"image": "IMG"}}, "prompt 0 has 2 image placeholders (<|image_N|>) for 1 image;"),
        ({"prompt": "<|image_1|>", "multi_modal_data": {"image": ["IMG", "IMG"]}}, "prompt 0 has 1 image placeholder (<|image_N|>) for 2 images;"),
        ({"prompt": "<|image_2|> first", "multi_modal_data": {"image": "IMG"}}, "must be <|image_1|> to <|image_1|> in order, each once; got <|image_2|>"),
        ({"prompt": "<|image_2|> <|image_1|>", "multi_modal_data": {"image": ["IMG", "IMG"]}}, "got <|image_2|>, <|image_1|>"),
        ({"prompt": "<|image_1|> <|image|>", "multi_modal_data": {"image": "IMG"}}, "text holds <|image|>, the token of image features"),
        ({"prompt_token_ids": [1, 2, 3], "multi_modal_data": {"image": "IMG"}}, "takes a text 'prompt', not prompt_token_ids"),
        ({"prompt": "<|image_1|>", "multi_modal_data": {"video": ["IMG"]}}, "takes no videos"),
        ({"prompt": "<|image_1|>", "multi_modal_data": {"image": "https://example.com/a.png"}}, "remote image URLs are disabled"),
        ({"prompt": "<|image_1|>", "multi_modal_data": {"image": b"not an image"}}, "prompt 0"),
    ],
)
def test_bad_prompts_are_one_line_errors(llm, prompt, message):
    def fill(v):
        return picture(16, 16, 8) if v == "IMG" else [fill(x) for x in v] if isinstance(v, list) else v

    prompt = {**prompt, "multi_modal_data": {k: fill(v) for k, v in prompt["multi_modal_data"].items()}}
    with pytest.raises(InvalidRequest) as info:
        llm.embed([prompt])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_too_many_images_per_prompt(model_dir):
    limited = LLM(str(model_dir), dtype="float32", limit_mm_per_prompt={"image": 1})
    with pytest.raises(InvalidRequest, match="2 images, more than the limit of 1 per prompt"):
        limited.embed([{"prompt": "<|image_1|><|image_2|>", "multi_modal_data": {"image": [picture(16, 16, 9)] * 2}}])


def test_a_prompt_with_images_is_never_truncated(llm):
    prompt = {"prompt": "<|image_1|> what", "multi_modal_data": {"image": picture(32, 32, 10)}}
    with pytest.raises(InvalidRequest, match="a prompt with images is not truncated"):
        llm.embed([prompt], pooling_params={"truncate_prompt_tokens": 10})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"embd_layer": {"hd_transform_order": "sideways"}}, "hd_transform_order 'sideways' is not supported"),
        ({"embd_layer": {"projection_cls": "linear"}}, "embd_layer projection_cls 'linear' is not supported"),
        ({"embd_layer": {"use_hd_transform": False}}, "embd_layer use_hd_transform False is not supported"),
        ({"img_processor": {"type_feature": "cls_patch"}}, "type_feature 'cls_patch' is not supported"),
        ({"img_processor": {"name": "siglip"}}, "img_processor name 'siglip' is not supported"),
        ({"img_processor": {"image_dim_out": 48}}, "image_dim_out 48 is not the vision tower's width 32"),
        ({"img_processor": {"layer_idx": 7}}, "layer_idx 7 is out of range for a vision tower of 3 layers"),
        ({"img_processor": {"num_img_tokens": 144}}, "num_img_tokens 144 does not fit 4x4-patch crops"),
        ({"rope_scaling": {"short_factor": [1.0]}}, "short_factor"),
    ],
)
def test_configs_it_cannot_run_are_refused(model_dir, overrides, message):
    with pytest.raises(ModelLoadError) as info:
        LLM(str(model_dir), dtype="float32", hf_overrides=overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_published_checkpoints_extra_tensors_are_skipped_quietly(llm, model_dir, tmp_path, caplog):
    """The remote code's tied ``wte`` copy, CLIP's ``position_ids`` buffer and the post-LayerNorm
    are in the published files; none is read, none is reported as unused."""
    import shutil

    from safetensors.torch import save_file

    extra = tmp_path / "extra"
    shutil.copytree(model_dir, extra)
    weights = load_file(extra / "model.safetensors")
    weights["model.vision_embed_tokens.wte.weight"] = weights["model.embed_tokens.weight"].clone()
    weights["model.vision_embed_tokens.img_processor.vision_model.embeddings.position_ids"] = torch.arange(17).unsqueeze(0)
    save_file(weights, extra / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level("WARNING"):
        moved = LLM(str(extra), dtype="float32")
    assert "unused" not in caplog.text
    prompt = as_prompt(*CASES["two images"])
    np.testing.assert_allclose(moved.embed([prompt])[0].outputs.embedding, llm.embed([prompt])[0].outputs.embedding, atol=1e-6)


def test_a_checkpoint_without_separators_is_refused(model_dir, tmp_path):
    import shutil

    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["model.vision_embed_tokens.glb_GN"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"model.vision_embed_tokens.glb_GN of shape \(1, 1, 128\) is needed; the checkpoint lacks it"):
        LLM(str(broken), dtype="float32")
