"""tomoro's ColQwen3 (TomoroAI/tomoro-colqwen3-embed-4b / -8b) against its publisher's computation, on
tiny random checkpoints laid out as published (``tiny_colqwen3.py``).

The publisher ships the model as remote code, written out here over transformers' Qwen3-VL classes. The
Hub files were read in a public copy of them adapted for vLLM (it adds ``get_rope_index`` and
``get_image_features`` and strips placeholders from a page's text, as its notes say), whose ``forward``
and prompts are the ones published:

- :class:`TomoroColQwen3` is ``modeling_colqwen3.py``'s ``ColQwen3``: a ``Qwen3VLConfig`` built from the
  config's ``text_config``, ``vision_config`` and token ids, ``self.vlm`` transformers'
  ``Qwen3VLForConditionalGeneration`` (``AutoModelForImageTextToText.from_config``), ``forward``
  running ``self.vlm.model`` (``Qwen3VLModel``), ``embedding_proj_layer`` (``nn.Linear(hidden,
  embed_dim)``), ``x / x.norm(-1).clamp_min(eps)`` and the attention mask. transformers 5 asks
  ``Qwen3VLModel`` for ``mm_token_type_ids``, which the transformers of its day derived from the image
  tokens: given here the same way;
- :func:`publisher_inputs` is ``processing_colqwen3.py``'s ``ColQwen3Processor``: ``from_pretrained``
  setting the image processor's ``max_pixels`` and ``size["longest_edge"]`` to ``max_num_visual_tokens``
  (1280) merged patches; ``process_texts`` (queries and text documents): ``query_prefix`` ("") + the
  text stripped + ten ``tokenizer.pad_token``; ``process_images``: ``visual_prompt_prefix`` +
  ``visual_prompt_suffix`` with ``<|image_pad|>`` expanded to ``grid.prod() // merge²`` tokens;
- MaxSim is its ``score_multi_vector``: ``einsum("bnd,csd->bcns").max(dim=3).sum(dim=2)``.

One input at a time, so the padding (left) and the attention mask are no-ops; poolkit builds the prompts
and pixels itself and runs them packed. fp32 to DESIGN.md §7's 1e-4.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers as T
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from tiny_colqwen3 import DIM, bare_names, build_colqwen3
from tiny_models import picture
from tolerances import assert_bf16_as_close_as_the_reference

from poolkit import LLM
from poolkit.builtin_models.colvision import ColQwen3
from poolkit.contracts.errors import InvalidRequest, ModelLoadError

ATOL = 1e-4
QUERIES = ["Retrieve the city of Singapore", "  berlin ", "what is the capital of france? no, of germany, and of italy"]
PAGES = [picture(37, 53, 0), picture(64, 40, 1), picture(150, 110, 2), picture(30, 30, 3, "L")]
#: ``ColQwen3Processor``'s ``visual_prompt_prefix`` and ``visual_prompt_suffix``.
VISUAL_PREFIX, VISUAL_SUFFIX = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.", "<|im_end|><|endoftext|>"
IMAGE_PAD = "<|image_pad|>"


class TomoroColQwen3(nn.Module):
    """``modeling_colqwen3.py``'s ``ColQwen3`` (see the module docstring), from ``config.json``."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        text = config["text_config"]
        vlm_config = T.Qwen3VLConfig(
            text_config=text,
            vision_config=config["vision_config"],
            image_token_id=config.get("image_token_id", 151655),
            video_token_id=config.get("video_token_id", 151656),
            vision_start_token_id=config.get("vision_start_token_id", 151652),
            vision_end_token_id=config.get("vision_end_token_id", 151653),
            tie_word_embeddings=text.get("tie_word_embeddings", False),
        )
        self.vlm = T.Qwen3VLForConditionalGeneration(vlm_config)
        self.embedding_proj_layer = nn.Linear(vlm_config.text_config.hidden_size, config.get("embed_dim", 320))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **media: torch.Tensor) -> torch.Tensor:
        image_tokens = (input_ids == self.vlm.config.image_token_id).int()
        hidden = self.vlm.model(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=image_tokens, **media)[0]
        embeddings = self.embedding_proj_layer(hidden.to(self.embedding_proj_layer.weight.dtype))
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(embeddings.dtype).eps)
        return embeddings * attention_mask.unsqueeze(-1)


def load_publisher(model_dir: Path, dtype: torch.dtype = torch.float32, max_num_visual_tokens: int = 1280) -> tuple:
    """The publisher's model (its checkpoint's names are its own: ``key_mapping`` maps nothing) and
    its processor's parts, the tokenizer and the Pillow image processor with ``from_pretrained``'s
    budget (it sets the ``max_pixels`` attribute to the same value, which transformers 5 reads as a
    deprecated call argument and this Pillow processor does not need)."""
    model = TomoroColQwen3(json.loads((model_dir / "config.json").read_text()))
    missing, unexpected = model.load_state_dict(load_file(model_dir / "model.safetensors"), strict=False)
    assert not unexpected and set(missing) <= {"vlm.lm_head.weight"}
    tok = T.AutoTokenizer.from_pretrained(model_dir)
    images = T.AutoImageProcessor.from_pretrained(model_dir, backend="pil")
    tile = images.patch_size * images.merge_size
    images.size["longest_edge"] = max_num_visual_tokens * tile * tile
    return model.to(dtype).eval(), tok, images


def publisher_inputs(ref: tuple, item: str | Image.Image, text: str = "") -> dict:
    """``ColQwen3Processor.process_texts([item])``, or ``process_images([item])`` (``__call__`` with
    ``text`` beside the image, when given)."""
    _, tok, images = ref
    if isinstance(item, str):
        return dict(tok([item.strip() + tok.pad_token * 10], return_tensors="pt"))
    pixels = images(images=[[item.convert("RGB")]], return_tensors="pt")
    tokens = int(pixels["image_grid_thw"][0].prod()) // images.merge_size**2
    text = f"{VISUAL_PREFIX} {text.strip()}{VISUAL_SUFFIX}" if text.strip() else VISUAL_PREFIX + VISUAL_SUFFIX
    text = text.replace(IMAGE_PAD, IMAGE_PAD * tokens)
    return {**tok([text], return_tensors="pt"), "pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"]}


def publisher(ref: tuple, item: str | Image.Image, text: str = "") -> tuple[list[int], torch.Tensor]:
    """The publisher's token ids and token vectors of one input."""
    given = publisher_inputs(ref, item, text)
    with torch.no_grad():
        vectors = ref[0](**given)[0]
    return given["input_ids"][0].tolist(), vectors


def maxsim(query: torch.Tensor, page: torch.Tensor) -> torch.Tensor:
    """``ColQwen3Processor.score_multi_vector`` of one query and one page."""
    return torch.einsum("bnd,csd->bcns", query[None], page[None]).max(dim=3)[0].sum(dim=2)[0, 0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_colqwen3(tmp_path_factory.mktemp("colqwen3"))


@pytest.fixture(scope="module")
def llm(model_dir: Path) -> LLM:
    return LLM(str(model_dir), dtype="float32")


@pytest.fixture(scope="module")
def ref(model_dir: Path) -> tuple:
    return load_publisher(model_dir)


def prompt(item: str | Image.Image) -> str | dict:
    return item if isinstance(item, str) else {"prompt": "", "multi_modal_data": {"image": item}}


def vectors(outputs: list) -> list[torch.Tensor]:
    return [torch.as_tensor(o.outputs.data, dtype=torch.float32) for o in outputs]


def test_registered_as_late_interaction_with_the_layout_it_recognised(llm: LLM) -> None:
    assert type(llm.model.architecture) is ColQwen3
    assert llm.model.supported_tasks() == ["token_embed"] and llm.score_type == "late-interaction"
    assert llm.model.architecture.hidden_size == DIM
    layout = {
        "value": f"tomoro-colqwen3 (vlm.model.* and embedding_proj_layer tensor names, {DIM}-wide projection)",
        "source": "config.json architectures (ColQwen3), the checkpoint's tensor names",
    }
    assert llm.model.describe()["layout"] == layout


def test_poolkit_info_shows_the_layout(model_dir: Path) -> None:
    from poolkit.entrypoints.cli import app

    result = CliRunner().invoke(app, ["info", str(model_dir)])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["layout"]["value"].startswith("tomoro-colqwen3 (vlm.model.*")


@pytest.mark.parametrize("item", range(len(QUERIES) + len(PAGES)))
def test_token_ids_and_vectors_match_the_publisher(llm: LLM, ref: tuple, item: int) -> None:
    given = (QUERIES + PAGES)[item]
    (out,) = llm.encode([prompt(given)], pooling_task="token_embed")
    ids, want = publisher(ref, given)
    assert out.prompt_token_ids == ids
    got = vectors([out])[0]
    assert got.shape == want.shape == (len(ids), DIM)
    assert (got - want).abs().max() <= ATOL


def test_queries_and_pages_packed_equal_each_alone_and_the_publisher(llm: LLM, ref: tuple) -> None:
    items = QUERIES + PAGES
    together = vectors(llm.encode([prompt(i) for i in items], pooling_task="token_embed"))
    for item, got in zip(items, together):
        alone = vectors(llm.encode([prompt(item)], pooling_task="token_embed"))[0]
        assert (got - alone).abs().max() <= 1e-5
        assert (got - publisher(ref, item)[1]).abs().max() <= ATOL


@pytest.mark.parametrize("text", ["  the revenue table ", " "])
def test_a_page_with_text_of_its_own_is_written_as_the_publisher_writes_it(llm: LLM, ref: tuple, text: str) -> None:
    (out,) = llm.encode([{"prompt": text, "multi_modal_data": {"image": PAGES[1]}}], pooling_task="token_embed")
    ids, want = publisher(ref, PAGES[1], text)
    assert out.prompt_token_ids == ids
    assert (vectors([out])[0] - want).abs().max() <= ATOL


def test_a_page_has_the_publishers_budget_of_1280_visual_tokens_not_the_configs(llm: LLM, ref: tuple) -> None:
    # preprocessor_config.json's longest_edge (64 * 64 pixels) would give the 150 x 110 page 12 image tokens.
    (out,) = llm.encode([prompt(PAGES[2])], pooling_task="token_embed")
    assert out.prompt_token_ids.count(llm.model.hf_config.image_token_id) == 9 * 7
    few = LLM(str(llm.model.path), dtype="float32", mm_processor_kwargs={"max_num_visual_tokens": 4})
    (out,) = few.encode([prompt(PAGES[2])], pooling_task="token_embed")
    ids, want = publisher(load_publisher(llm.model.path, max_num_visual_tokens=4), PAGES[2])
    assert out.prompt_token_ids == ids and ids.count(llm.model.hf_config.image_token_id) <= 4
    assert (vectors([out])[0] - want).abs().max() <= ATOL


def test_score_of_a_query_against_pages_and_texts_is_the_publishers_maxsim(llm: LLM, ref: tuple) -> None:
    pages = [{"content": [{"type": "image_pil", "image_pil": image}]} for image in PAGES]
    got = torch.tensor([out.outputs.score for out in llm.score(QUERIES[0], pages + QUERIES[1:])])
    query = publisher(ref, QUERIES[0])[1]
    want = torch.stack([maxsim(query, publisher(ref, doc)[1]) for doc in PAGES + QUERIES[1:]])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_bfloat16_as_close_as_the_publishers_own(model_dir: Path, ref: tuple) -> None:
    ref16 = load_publisher(model_dir, torch.bfloat16)
    items = QUERIES[:1] + PAGES[:2]
    ours = vectors(LLM(str(model_dir), dtype="bfloat16").encode([prompt(i) for i in items], pooling_task="token_embed"))
    theirs = [publisher(ref16, i)[1].float() for i in items]
    assert_bf16_as_close_as_the_reference(ours, theirs, [publisher(ref, i)[1] for i in items])


def test_the_bare_names_its_conversion_mapping_reads_load_alike(tmp_path: Path, llm: LLM) -> None:
    shutil.copytree(llm.model.path, tmp_path / "bare")
    bare_names(tmp_path / "bare")
    other = LLM(str(tmp_path / "bare"), dtype="float32")
    assert "(bare Qwen3VLModel and custom_text_proj tensor names" in other.model.describe()["layout"]["value"]
    items = [prompt(QUERIES[0]), prompt(PAGES[0])]
    for got, want in zip(vectors(other.encode(items, pooling_task="token_embed")), vectors(llm.encode(items, pooling_task="token_embed"))):
        assert torch.equal(got, want)


def test_videos_are_refused(llm: LLM) -> None:
    frames = [picture(32, 32, 9 + i) for i in range(2)]
    with pytest.raises(InvalidRequest, match="takes no videos"):
        llm.encode([{"prompt": "", "multi_modal_data": {"video": frames}}], pooling_task="token_embed")


def test_a_bad_max_num_visual_tokens_is_refused(model_dir: Path) -> None:
    llm = LLM(str(model_dir), dtype="float32", mm_processor_kwargs={"max_num_visual_tokens": 0})
    with pytest.raises(InvalidRequest, match="max_num_visual_tokens must be a positive whole number, got 0"):
        llm.encode([prompt(PAGES[0])], pooling_task="token_embed")


def with_config(model_dir: Path, out: Path, **change: object) -> Path:
    """A copy of the checkpoint whose ``config.json`` has ``change`` (``None``: the key removed)."""
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    for key, value in change.items():
        config.pop(key) if value is None else config.update({key: value})
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        ({"embed_dim": 8}, f"config.json embed_dim is 8, but the weights hold {DIM} ('embedding_proj_layer.weight' has shape ({DIM}, 64))"),
        ({"embed_dim": None}, f"config.json has no embed_dim, so the projection is ColQwen3Config's default 320 wide, but the weights hold {DIM}"),
        ({"embed_dim": 0}, "config.json embed_dim is 0; it must be a positive integer"),
    ],
)
def test_a_projection_that_disagrees_with_config_json_fails_at_load_in_one_line(
    model_dir: Path, tmp_path: Path, change: dict, message: str
) -> None:
    with pytest.raises(ModelLoadError) as caught:
        LLM(str(with_config(model_dir, tmp_path / "bad", **change)), dtype="float32")
    assert message in str(caught.value) and "\n" not in str(caught.value)
