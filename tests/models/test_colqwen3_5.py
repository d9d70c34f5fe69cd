"""ColQwen3.5 (multi-vector) and BiQwen3.5 (single-vector) retrievers against colpali-engine 0.3.18's
classes, written out in ``colqwen3_5_reference.py`` (transformers' ``Qwen3_5Model`` and the retrievers'
heads), on tiny random checkpoints laid out as published (``tiny_colqwen3_5.py``).

The reference is fed by transformers' own ``Qwen3VLProcessor`` with colpali-engine's prompts (the page's
visual prompt, a query's ten ``<|endoftext|>``), one input at a time, its padding rows dropped; poolkit
builds the prompts and pixels itself, packed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as T
from PIL import Image

import colqwen3_5_reference as reference
from tiny_colqwen3_5 import DIM, build_colqwen3_5
from tiny_models import picture
from tolerances import assert_bf16_as_close_as_the_reference

from poolkit import LLM
from poolkit.builtin_models.colvision import BiQwen3_5, ColQwen3_5
from poolkit.contracts.errors import InvalidRequest, ModelLoadError

#: fp32 parity (DESIGN.md §7).
ATOL = 1e-4
QUERIES = ["is paris the capital of france?", "berlin", "what is the capital of france? no, of germany, and of italy"]
PAGES = [picture(37, 53, 0), picture(64, 40, 1), picture(150, 110, 2), picture(30, 30, 3, "L")]


@pytest.fixture(scope="module")
def col_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_colqwen3_5(tmp_path_factory.mktemp("colqwen3_5"), head="col")


@pytest.fixture(scope="module")
def bi_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_colqwen3_5(tmp_path_factory.mktemp("biqwen3_5"), head="bi")


@pytest.fixture(scope="module")
def col(col_dir: Path) -> LLM:
    return LLM(str(col_dir), dtype="float32")


@pytest.fixture(scope="module")
def bi(bi_dir: Path) -> LLM:
    return LLM(str(bi_dir), dtype="float32")


def load_reference(model_dir: Path, cls: type, dtype: torch.dtype = torch.float32) -> tuple:
    model = cls.from_pretrained(model_dir, dtype=dtype).eval()
    return model, reference.load_processor(model_dir)


@pytest.fixture(scope="module")
def col_ref(col_dir: Path) -> tuple:
    return load_reference(col_dir, reference.ColQwen3_5)


@pytest.fixture(scope="module")
def bi_ref(bi_dir: Path) -> tuple:
    return load_reference(bi_dir, reference.BiQwen3_5)


def inputs(processor: object, item: str | Image.Image) -> dict:
    """The reference processor's inputs for one query (a text) or one page (an image)."""
    return dict(reference.process_queries(processor, [item]) if isinstance(item, str) else reference.process_images(processor, [item]))


def col_reference(ref: tuple, item: str | Image.Image) -> tuple[list[int], torch.Tensor]:
    """The reference's token ids and token vectors of one input, padding rows dropped."""
    model, processor = ref
    given = inputs(processor, item)
    keep = given["attention_mask"][0].bool()
    return given["input_ids"][0][keep].tolist(), reference.encode(model, given)[0][keep]


def prompt(item: str | Image.Image) -> str | dict:
    return item if isinstance(item, str) else {"prompt": "", "multi_modal_data": {"image": item}}


def vectors(outputs: list) -> list[torch.Tensor]:
    return [torch.as_tensor(o.outputs.data, dtype=torch.float32) for o in outputs]


def test_registered_as_late_interaction_and_single_vector(col: LLM, bi: LLM) -> None:
    assert type(col.model.architecture) is ColQwen3_5 and type(bi.model.architecture) is BiQwen3_5
    assert col.model.supported_tasks() == ["token_embed"] and col.score_type == "late-interaction"
    assert col.model.architecture.hidden_size == DIM
    assert "embed" in bi.model.supported_tasks() and bi.model.architecture.default_pooling_type == "LAST"
    assert not col.model.architecture.shares_prefixes and not bi.model.architecture.shares_prefixes


@pytest.mark.parametrize("item", range(len(QUERIES) + len(PAGES)))
def test_token_ids_and_vectors_match_colpali_engine(col: LLM, col_ref: tuple, item: int) -> None:
    given = (QUERIES + PAGES)[item]
    (out,) = col.encode([prompt(given)], pooling_task="token_embed")
    ids, want = col_reference(col_ref, given)
    assert out.prompt_token_ids == ids
    got = vectors([out])[0]
    assert got.shape == want.shape == (len(ids), DIM)
    assert (got - want).abs().max() <= ATOL


def test_queries_and_pages_packed_equal_each_alone_and_the_reference(col: LLM, col_ref: tuple) -> None:
    items = QUERIES + PAGES
    together = vectors(col.encode([prompt(i) for i in items], pooling_task="token_embed"))
    for item, got in zip(items, together):
        alone = vectors(col.encode([prompt(item)], pooling_task="token_embed"))[0]
        assert (got - alone).abs().max() <= 1e-5
        assert (got - col_reference(col_ref, item)[1]).abs().max() <= ATOL


def test_score_of_a_query_against_pages_is_maxsim(col: LLM, col_ref: tuple) -> None:
    pages = [{"content": [{"type": "image_pil", "image_pil": image}]} for image in PAGES]
    got = torch.tensor([out.outputs.score for out in col.score(QUERIES[0], pages)])
    query = col_reference(col_ref, QUERIES[0])[1]
    want = torch.stack([(query @ col_reference(col_ref, image)[1].T).max(dim=1).values.sum() for image in PAGES])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_biqwen3_5_matches_colpali_engine_packed_and_alone(bi: LLM, bi_ref: tuple) -> None:
    model, processor = bi_ref
    items = QUERIES + PAGES
    together = [torch.tensor(o.outputs.embedding) for o in bi.embed([prompt(i) for i in items])]
    for item, got in zip(items, together):
        (alone,) = bi.embed([prompt(item)])
        want = reference.encode(model, inputs(processor, item))[0]
        assert (got - torch.tensor(alone.outputs.embedding)).abs().max() <= 1e-5
        assert (got - want).abs().max() <= ATOL


def test_bfloat16_as_close_as_colpali_engine_own(col_dir: Path, col_ref: tuple) -> None:
    ref16 = load_reference(col_dir, reference.ColQwen3_5, torch.bfloat16)
    llm16 = LLM(str(col_dir), dtype="bfloat16")
    items = QUERIES[:2] + PAGES[:2]
    ours = vectors(llm16.encode([prompt(i) for i in items], pooling_task="token_embed"))
    theirs = [col_reference(ref16, i)[1].float() for i in items]
    assert_bf16_as_close_as_the_reference(ours, theirs, [col_reference(col_ref, i)[1] for i in items])


def test_videos_are_refused(col: LLM) -> None:
    frames = [picture(32, 32, 9 + i) for i in range(2)]
    with pytest.raises(InvalidRequest, match="takes no videos"):
        col.encode([{"prompt": "", "multi_modal_data": {"video": frames}}], pooling_task="token_embed")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dim": 0}, "dim must be a positive integer"),
        ({"retrieval_attention_contract": "bidirectional"}, "retrieval_attention_contract 'bidirectional' is not supported"),
    ],
)
def test_bad_configs_are_refused(col_dir: Path, change: dict, message: str) -> None:
    config = T.AutoConfig.from_pretrained(col_dir)
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(ModelLoadError, match=message):
        ColQwen3_5.check_config(config, None)


def test_a_config_without_dim_projects_to_colpali_engines_default(col_dir: Path) -> None:
    config = T.AutoConfig.from_pretrained(col_dir)
    del config.dim
    assert ColQwen3_5(config).hidden_size == 128
