"""int8 calibration (``poolkit.builtin_models.blocks.quantize``): the batches it runs, what it compares,
each layer's own cost, and how many of the cheapest layers keep the budget together."""

from __future__ import annotations

import pytest
import torch
from int8_kernels import int8_family
from tiny_models import CORPUS

from poolkit import LLM, PackedBatch
from poolkit.plugins.lookup import select_kernel


def test_calibration_also_runs_the_texts_joined_into_documents(minilm):
    """The calibration texts are sentences: after their batches (cut at 128 tokens), one batch of
    them joined in order into documents of up to 256 tokens, so that the budget holds at the
    positions of a long input too."""
    from poolkit.loading.load import CALIBRATION_DOCUMENT_TOKENS, _calibration_batches, calibration_texts

    tokenizer = minilm.model.tokenizer
    texts = calibration_texts(None)
    batches = _calibration_batches(tokenizer, texts, 128, CALIBRATION_DOCUMENT_TOKENS, torch.device("cpu"))
    alone = tokenizer(texts, truncation=True, max_length=128)["input_ids"]
    assert [len(b.split(b.input_ids)) for b in batches[:-1]] == [min(64, len(texts) - i) for i in range(0, len(texts), 64)]
    assert batches[0].split(batches[0].input_ids)[0].tolist() == alone[0]
    documents = [d.tolist() for d in batches[-1].split(batches[-1].input_ids)]
    longest = max(len(ids) for ids in alone)
    assert len(documents) > 1 and all(len(d) <= CALIBRATION_DOCUMENT_TOKENS for d in documents)
    assert min(len(d) for d in documents[:-1]) > max(longest, CALIBRATION_DOCUMENT_TOKENS // 2)
    words = tokenizer.decode(sum((d[1:-1] for d in documents), []))  # every text, in order, once
    assert words == tokenizer.decode(sum((ids[1:-1] for ids in alone), []))


@pytest.mark.parametrize("kind", ["bert", "qwen3", "clip"])
def test_calibration_compares_the_last_token_where_the_architecture_pools_it(kind, tmp_path):
    """A sequence's mean and first token, and its last where the architecture pools that one (a
    decoder, CLIP's text side: a causal model's first token has read only itself)."""
    from poolkit.builtin_models.blocks import quantize

    model = LLM(str(int8_family(kind, tmp_path / kind)), dtype="float32").model.architecture
    batch = PackedBatch.from_sequences([list(range(5, 45)), list(range(7, 20)), [9, 10, 11]])
    with torch.inference_mode():
        hidden = model(batch).float()
        summary = quantize._summary(model, batch)
    ends = [batch.first_indices, batch.last_indices] if kind != "bert" else [batch.first_indices]
    assert (model.default_pooling_type == "LAST") is (kind != "bert")
    assert torch.equal(summary[3:], torch.cat([hidden[at] for at in ends]))
    assert torch.allclose(summary[:3], torch.stack([hidden[:40].mean(0), hidden[40:53].mean(0), hidden[53:].mean(0)]))


def _costs_by_definition(model, int8, layers, batch, reference) -> dict[str, float]:
    """Each layer's own cost as calibration defines it: the whole model run with that layer alone in int8."""
    from poolkit.builtin_models.blocks import quantize

    costs = {}
    for name, layer in layers.items():
        quantize._swap(model, {name: int8[name]})
        costs[name] = 1.0 - quantize._cosine(quantize._summary(model, batch), reference)
        quantize._swap(model, {name: layer})
    return costs


@pytest.mark.parametrize("kind", ["bert", "qwen3"])
def test_each_layers_own_cost_is_its_run_alone_in_int8(kind, tmp_path, monkeypatch):
    """``own_costs`` takes the float run's outputs for the calls before a layer's own: the costs of
    running the model with each layer alone in int8, to the bit, with each layer's run computing
    only the calls from its own on; where the kept outputs run out midway, the calls past them run."""
    from poolkit.builtin_models.blocks import quantize
    from poolkit.contracts.batch import PackedBatch

    llm = LLM(str(int8_family(kind, tmp_path / kind)), dtype="float32")
    model = llm.model.architecture
    batch = PackedBatch.from_sequences(llm.model.tokenizer(CORPUS)["input_ids"])
    computed: list[tuple[torch.nn.Module, int]] = []  # each matmul run: its layer, its output's bytes
    real_probing = quantize.probing

    def counting(probe):
        def run(layer, compute, x):
            out = compute(x)
            computed.append((layer, out.numel() * out.element_size()))
            return out

        return real_probing(lambda layer, x, compute: probe(layer, x, lambda y: run(layer, compute, y)))

    with torch.inference_mode():
        seen = quantize._input_maxima(model, [batch])
        names = {module: name for name, module in model.named_modules()}
        layers = {names[module]: module for module in seen}
        kernel = select_kernel("linear_int8", torch.device("cpu"))
        int8 = {name: quantize._int8_linear(layer, *seen[layer], kernel) for name, layer in layers.items()}
        reference = quantize._summary(model, batch)
        alone = _costs_by_definition(model, int8, layers, batch, reference)
        monkeypatch.setattr(quantize, "probing", counting)
        costs = quantize.own_costs(model, int8, layers, batch, reference)
        whole = len(computed)
        order = list(dict.fromkeys(layer for layer, _ in computed[: len(layers)]))  # the float run's calls
        monkeypatch.setattr(quantize, "REPLAY_BYTES", sum(size for _, size in computed[:3]))
        partly = quantize.own_costs(model, int8, layers, batch, reference)
    assert len(order) == len(layers) and costs == alone and partly == alone
    n = len(layers)
    assert whole == n + n * (n + 1) // 2  # the float run, then each layer's run from its own call on
    assert len(computed) - whole == n + sum(n - min(i, 3) for i in range(n))  # three outputs kept


def test_own_costs_keep_what_a_model_writes_into_its_layers_outputs():
    """A model that writes into a layer's output in place (as a hand-fused residual does) changes
    neither the float run's kept outputs nor, through a replayed copy, the next layer's run."""
    from poolkit.builtin_models.blocks import quantize
    from poolkit.builtin_models.blocks.linear import linear
    from poolkit.contracts.batch import PackedBatch

    class Scribbler(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second, self.third = (torch.nn.Linear(32, 32) for _ in range(3))
            self.kernel = select_kernel("linear_act", "cpu")

        def forward(self, batch: PackedBatch) -> torch.Tensor:
            x = torch.nn.functional.one_hot(batch.input_ids % 32, 32).float()
            for layer in (self.first, self.second, self.third):
                x = linear(x, layer, self.kernel).mul_(2.0).add_(x)
            return x

    torch.manual_seed(0)
    model = Scribbler()
    batch = PackedBatch.from_sequences([[1, 5, 9, 30], [2, 3], [7, 11, 13]])
    with torch.inference_mode():
        seen = quantize._input_maxima(model, [batch])
        layers = {name: getattr(model, name) for name in ("first", "second", "third")}
        kernel = select_kernel("linear_int8", "cpu")
        int8 = {name: quantize._int8_linear(layer, *seen[layer], kernel) for name, layer in layers.items()}
        reference = quantize._summary(model, batch)
        alone = _costs_by_definition(model, int8, layers, batch, reference)
        assert quantize.own_costs(model, int8, layers, batch, reference) == alone
    assert len(set(alone.values())) == 3 and min(alone.values()) > 0


def test_the_most_of_the_cheapest_layers_that_keep_the_budget_are_found_whole():
    """Between a count that kept the budget and all the layers (which did not), the longest start of the
    ranking that keeps it, each count measured whole, and the cosine it measured."""
    from poolkit.builtin_models.blocks.quantize import _most_within

    ranked = [f"layer{i}" for i in range(40)]
    measured: list[int] = []

    def cosine(chosen: list[str]) -> float:
        measured.append(len(chosen))
        return 1.0 - 1e-5 * len(chosen)  # each layer costs the whole 1e-5

    assert _most_within(ranked, 3, 0.99997, 0.9997, cosine) == (ranked[:30], pytest.approx(0.9997))
    assert len(measured) <= 6 and all(3 < n < 40 for n in measured)
    measured.clear()
    assert _most_within(ranked, 39, 0.99961, 0.9997, cosine) == (ranked[:39], 0.99961)  # nothing more to try
    assert _most_within(ranked, 0, 1.0, 0.999999, cosine) == ([], 1.0)  # not even one layer keeps it


def test_overstated_costs_still_put_every_layer_the_budget_allows_in_int8(tmp_path, monkeypatch):
    """Costs ten times too high (as a bf16 stream's rounding inflates them) fit far fewer layers into
    the budget than keep it together: calibration measures how many of the cheapest keep it, so the
    model keeps more layers in int8 than the costs' sum allows, and still its budget."""
    from poolkit.builtin_models.blocks import quantize

    path = int8_family("qwen3", tmp_path / "qwen3")
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(CORPUS))
    fitted: list[int] = []
    real_costs = quantize.own_costs

    def overstated(*args):
        costs = {name: 10 * cost for name, cost in real_costs(*args).items()}
        total, fits = 0.0, 0
        for cost in sorted(costs.values()):
            total += cost
            fits += total <= 1 - budget
        fitted.append(fits)
        return costs

    budget = 0.99999
    monkeypatch.setattr(quantize, "own_costs", overstated)
    report = LLM(str(path), dtype="float32", quantization="int8", calibration=str(calibration), quantization_budget=budget).model.quantization
    assert fitted, "the costs were not needed: every layer kept the budget"
    assert report["float_layers"] and report["min_cosine"] >= budget
    assert len(report["int8_layers"]) > fitted[0]
