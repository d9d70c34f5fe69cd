"""Models under ``torch.inference_mode()``, as vLLM's model tests run them.

A model loaded inside inference mode holds *inference tensors*, which keep no version counter;
the oneDNN linear kernel's packed-weight cache must still work for them, and must still notice
weights that change in place outside inference mode. BERT, ModernBERT, Qwen and CLIP give the
same outputs whether they are loaded or called inside inference mode or not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch
import transformers as T
from PIL import Image
from tolerances import assert_within_order_bound, linear_act_bound

from poolkit import LLM
from poolkit.contracts.batch import PackedBatch
from poolkit.kernels import linear
from poolkit.kernels.linear import linear_act, linear_act_onednn

onednn = pytest.mark.skipif(not linear._onednn_available(), reason="torch built without oneDNN")
TEXTS = [
    "paris is the capital of france. berlin is the capital of germany",
    "hello",
    "the quick brown fox jumps over the lazy dog " * 3,
]


def _image() -> Image.Image:
    g = torch.Generator().manual_seed(0)
    return Image.fromarray(torch.randint(0, 256, (50, 40, 3), generator=g, dtype=torch.uint8).numpy(), "RGB")


def _outputs(runs: list[Callable[[LLM], list]]) -> Callable[[LLM], list[torch.Tensor]]:
    return lambda llm: [torch.as_tensor(x).float() for run in runs for x in run(llm)]


def _embed(llm: LLM) -> list:
    return [o.outputs.embedding for o in llm.embed(TEXTS)]


def _classify(llm: LLM) -> list:
    return [o.outputs.probs for o in llm.classify(TEXTS)]


def _reward(llm: LLM) -> list:
    return [o.outputs.data for o in llm.reward(TEXTS)]


def _images(llm: LLM) -> list:
    return [o.outputs.embedding for o in llm.embed([{"prompt": "", "multi_modal_data": {"image": _image()}}])]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[tuple[Path, dict]], list[Callable]]]:
    """Per family: (directory, LLM keyword arguments) pairs and what to compute with each."""
    from tiny_models import build_classifier, build_clip, build_encoder, build_modernbert, build_qwen

    root = tmp_path_factory.mktemp("inference-mode")
    lm = build_qwen(root / "qwen2-lm", "qwen2", task="lm", tie_word_embeddings=False)
    ids = T.AutoTokenizer.from_pretrained(str(lm))(TEXTS[0])["input_ids"]
    step = {"pooling_type": "STEP", "step_tag_id": max(set(ids), key=ids.count), "returned_token_ids": [7, 9]}
    return {
        "bert": (
            [(build_encoder(root / "bert", "bert"), {}), (build_classifier(root / "bert-cls", "bert", 3), {})],
            [_embed, _classify],
        ),
        "modernbert": (
            [(build_modernbert(root / "mb", "embed"), {}), (build_modernbert(root / "mb-ner", "token_classify"), {})],
            [_embed, _reward],
        ),
        "qwen": (
            # without prefix sharing: a second call would read the first's cached prefix states,
            # equal to their rounding only, and these tests compare calls bit for bit
            [
                (build_qwen(root / "qwen3", "qwen3"), {"enable_prefix_caching": False}),
                (lm, {"pooler_config": json.dumps(step), "enable_prefix_caching": False}),
            ],
            [_embed, _reward],
        ),
        "clip": ([(build_clip(root / "clip"), {})], [_embed, _images]),
    }


def _same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.equal(g, w), (g - w).abs().max()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", ["bert", "modernbert", "qwen", "clip"])
def test_outputs_are_the_same_inside_inference_mode(cases, family: str, dtype: str) -> None:
    models, runs = cases[family]
    llms = [LLM(str(path), dtype=dtype, **kwargs) for path, kwargs in models]
    want = [x for llm, run in zip(llms, runs) for x in _outputs([run])(llm)]
    assert any(x.numel() for x in want)
    with torch.inference_mode():
        called_inside = [x for llm, run in zip(llms, runs) for x in _outputs([run])(llm)]
        loaded_inside = [LLM(str(path), dtype=dtype, **kwargs) for path, kwargs in models]
        both_inside = [x for llm, run in zip(loaded_inside, runs) for x in _outputs([run])(llm)]
    assert all(p.is_inference() for llm in loaded_inside for p in llm.model.architecture.parameters())
    loaded_inside_called_outside = [x for llm, run in zip(loaded_inside, runs) for x in _outputs([run])(llm)]
    _same(called_inside, want)
    _same(both_inside, want)
    _same(loaded_inside_called_outside, want)


@pytest.mark.parametrize("family", ["bert", "qwen"])
def test_a_model_loaded_in_inference_mode_runs_outside_it(cases, family: str) -> None:
    """The architecture itself, called under ``no_grad`` only, with inference-tensor weights."""
    (path, _), *_ = cases[family][0]
    outside = LLM(str(path), dtype="float32")
    with torch.inference_mode():
        inside = LLM(str(path), dtype="float32")
    device = outside.model.device
    batch = PackedBatch.from_sequences([[5, 9, 13, 7], [21, 8]], device=device)
    if outside.model.architecture.uses_token_type_ids:
        batch = PackedBatch.from_sequences([[5, 9, 13, 7], [21, 8]], token_type_ids=[[0] * 4, [0] * 2], device=device)
    with torch.no_grad():
        want = outside.model.architecture(batch)
        got = inside.model.architecture(batch)
    assert not got.is_inference()
    assert torch.equal(got, want)


# -- the packed-weight cache ---------------------------------------------------------------------


def _check(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():  # as the engine runs: a weight made in inference mode takes no autograd
        return _compare(layer, x)


def _compare(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    got = linear_act_onednn(x.to(layer.weight.dtype), layer.weight, layer.bias, "gelu")
    want = linear_act(x.to(layer.weight.dtype), layer.weight, layer.bias, "gelu")
    if layer.weight.dtype == torch.float32:
        assert_within_order_bound(got, want, linear_act_bound(x, layer.weight, layer.bias, "gelu"))
    else:
        torch.testing.assert_close(got, want, atol=0.1, rtol=1e-2)
    return got


@onednn
def test_inference_tensor_weights_are_packed_once() -> None:
    x = torch.randn(5, 48)
    with torch.inference_mode():
        layer = torch.nn.Linear(48, 72)
        assert layer.weight.is_inference()
        before = _check(layer, x)
        packed = linear._PACKED[id(layer.weight), ("onednn", None)][-1]
        _check(layer, x)
        assert linear._PACKED[id(layer.weight), ("onednn", None)][-1] is packed  # cached, not repacked
        # An in-place rewrite inside inference mode leaves no trace on an inference tensor.
        layer.weight.mul_(2)
        linear.forget_packed()
        doubled = _check(layer, x)
        assert not torch.allclose(doubled, before)
    assert torch.equal(_check(layer, x), doubled)  # the inference-mode packing serves outside it too
    with torch.inference_mode():
        layer.to(torch.bfloat16)  # new inference tensors: seen by storage and dtype
        if torch.bfloat16 in linear._onednn_dtypes():
            assert _check(layer, x).dtype == torch.bfloat16
        layer.float()
        assert layer.weight.is_inference()
        torch.testing.assert_close(_check(layer, x), doubled, atol=0.1, rtol=0.05)


@onednn
def test_normal_weights_are_repacked_when_changed_in_or_out_of_inference_mode() -> None:
    layer = torch.nn.Linear(48, 72)
    x = torch.randn(5, 48)
    with torch.inference_mode():
        first = _check(layer, x)  # packed inside inference mode
    with torch.no_grad():
        layer.weight.mul_(2)  # changed outside it
    with torch.inference_mode():
        second = _check(layer, x)
        assert not torch.allclose(first, second)
        layer.weight.mul_(0.5)  # changed inside it: a normal tensor's version counter still moves
        assert_within_order_bound(_check(layer, x), first, 2 * linear_act_bound(x, layer.weight, layer.bias, "gelu"))
