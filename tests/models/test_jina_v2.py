"""Native jina-embeddings-v2 (``JinaBertModel``: ALiBi, GeGLU) against its published modeling code.

There is no transformers class: the reference is the published remote code written out in
``tests/support/jina_bert_reference.py``, run on the same tiny checkpoint
(``tests/support/tiny_jina_v2.py``, laid out as jina-embeddings-v2-base-en) as one right-padded
batch with an attention mask. Six heads (not a power of two) take the slopes' interleaved branch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as T
from jina_bert_reference import JinaBertModel as Reference
from tiny_jina_v2 import build_jina_v2, reference_state

from poolkit import LLM, LoRARequest
from poolkit.builtin_models import jina_bert
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import checkpoint_files, iter_tensors

ATOL = 1e-4
#: Unsorted, repeated lengths apart, one past the others by far: ALiBi must not cross a neighbour.
LENGTHS = [1, 7, 60, 13, 7, 33, 2, 200]
TEXTS = ["paris is the capital of france", "hello", "the quick brown fox jumps over the lazy dog " * 5, ""]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_jina_v2(tmp_path_factory.mktemp("jina_v2") / "model")


def load(path: Path, dtype: torch.dtype = torch.float32) -> jina_bert.JinaBertModel:
    model = jina_bert.JinaBertModel(T.AutoConfig.from_pretrained(path))
    model.load_weights(iter_tensors(checkpoint_files(path)))
    return model.to(dtype).eval()


def reference(path: Path, dtype: torch.dtype = torch.float32) -> Reference:
    model = Reference(T.AutoConfig.from_pretrained(path))
    model.load_state_dict(reference_state(path))
    return model.to(dtype).eval()


def sequences(lengths: list[int], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 60, (n,), generator=g).tolist() for n in lengths]


def reference_hidden(model: Reference, seqs: list[list[int]]) -> list[torch.Tensor]:
    """The reference's last hidden state on one right-padded batch, cut back to each sequence."""
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    with torch.inference_mode():
        out = model(ids, mask)
    return [out[i, : len(s)].float() for i, s in enumerate(seqs)]


def packed_hidden(model: jina_bert.JinaBertModel, seqs: list[list[int]]) -> list[torch.Tensor]:
    batch = PackedBatch.from_sequences(seqs)
    with torch.inference_mode():
        return [h.float() for h in batch.split(model(batch))]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return (torch.cat(a) - torch.cat(b)).abs().max().item()


def test_slopes_are_the_published_ones() -> None:
    """ALiBi's slopes: 2^(-8h/n) for a power of two; for 6 heads the 4-head series then every other of 8's."""
    assert torch.allclose(jina_bert.alibi_slopes(8), torch.tensor([2.0 ** (-(h + 1)) for h in range(8)]))
    four = [2.0 ** (-2 * (h + 1)) for h in range(4)]
    assert torch.allclose(jina_bert.alibi_slopes(6), torch.tensor(four + [2.0**-1, 2.0**-3]))


def test_packed_matches_the_published_code(checkpoint: Path) -> None:
    seqs = sequences(LENGTHS, seed=0)
    assert max_diff(packed_hidden(load(checkpoint), seqs), reference_hidden(reference(checkpoint), seqs)) <= ATOL


def test_packed_equals_each_alone(checkpoint: Path) -> None:
    """A sequence's states do not depend on its packed neighbours: no ALiBi bias reaches across."""
    model, seqs = load(checkpoint), sequences(LENGTHS, seed=1)
    alone = [packed_hidden(model, [s])[0] for s in seqs]
    assert max_diff(packed_hidden(model, seqs), alone) <= 1e-5


def test_long_input_matches_the_published_code(checkpoint: Path) -> None:
    """1500 tokens, where the far keys' bias is large (the smallest slope times 1499), beside a short one."""
    seqs = sequences([1500, 9], seed=2)
    ref = reference(checkpoint)
    want = reference_hidden(ref, seqs[:1]) + reference_hidden(ref, seqs[1:])
    assert max_diff(packed_hidden(load(checkpoint), seqs), want) <= ATOL


def test_bfloat16_within_the_references_own_error(checkpoint: Path) -> None:
    """poolkit in bf16 is no further from the fp32 reference than the reference in bf16 is (with slack 2)."""
    seqs = sequences(LENGTHS, seed=3)
    exact = reference_hidden(reference(checkpoint), seqs)
    own = max_diff(reference_hidden(reference(checkpoint, torch.bfloat16), seqs), exact)
    ours = max_diff(packed_hidden(load(checkpoint, torch.bfloat16), seqs), exact)
    assert ours <= 2 * own, (ours, own)


def test_llm_embeds_with_mean_pooling(checkpoint: Path) -> None:
    """Through the engine, from the published architecture name: the reference's mean (the
    checkpoint's modules.json has no Normalize module, so the vector is not normalised)."""
    llm = LLM(str(checkpoint))
    info = llm.model.describe()
    assert info["architecture"] == "JinaBertForMaskedLM" and info["implementation"] == "native"
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    tok = T.AutoTokenizer.from_pretrained(str(checkpoint))
    hidden = reference_hidden(reference(checkpoint), [tok(t)["input_ids"] for t in TEXTS])
    want = torch.stack([h.mean(0) for h in hidden])
    assert (got - want).abs().max() <= ATOL


def test_loads_a_bert_prefixed_checkpoint(tmp_path: Path, checkpoint: Path) -> None:
    """``JinaBertForMaskedLM``'s own ``bert.`` prefix: the same model."""
    prefixed = build_jina_v2(tmp_path / "prefixed", prefix="bert.")
    seqs = sequences([5, 17], seed=4)
    assert max_diff(packed_hidden(load(prefixed), seqs), packed_hidden(load(checkpoint), seqs)) == 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("feed_forward_type", "original", "feed_forward_type 'original'"),
     ("position_embedding_type", "absolute", "position_embedding_type 'absolute'")],
)
def test_unsupported_configs_are_refused(tmp_path: Path, key: str, value: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        LLM(str(build_jina_v2(tmp_path / "model", **{key: value})))


def test_lora_adapter_matches_peft(tmp_path: Path, checkpoint: Path) -> None:
    """A LoRA adapter that PEFT trains on the published module names (query and value, pieces of
    poolkit's fused q/k/v; the gated block's ``gated_layers`` and ``wo``): poolkit with it equals
    PEFT's model around the reference, and without it the base model."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "gated_layers", "wo"], init_lora_weights=False)
    tuned = get_peft_model(reference(checkpoint), config).eval()
    tuned.save_pretrained(str(tmp_path / "adapter"))
    tok = T.AutoTokenizer.from_pretrained(str(checkpoint))
    hidden = reference_hidden(tuned, [tok(t)["input_ids"] for t in TEXTS])
    want = torch.stack([h.mean(0) for h in hidden])
    llm = LLM(str(checkpoint), enable_lora=True)
    request = LoRARequest("tuned", 1, str(tmp_path / "adapter"))
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS, lora_request=request)])
    assert (got - want).abs().max() <= ATOL
    plain = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)])
    assert (plain - want).abs().max() > 1e-2
