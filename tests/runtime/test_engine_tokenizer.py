"""The engine reads token ids straight from the Rust tokenizer when a transformers fast tokenizer
would give the same: these tests hold it to transformers' own call, case by case."""

from __future__ import annotations

import pytest

from poolkit import LLM, PoolingParams
from poolkit.contracts.io import Prompt

TEXTS = [
    "paris is the capital of france",
    "",
    "the quick brown fox jumps over the lazy dog " * 30,
    "Ünïcödé and   spaces\tand\nnewlines",
    "x" * 3000,
]


def _both(engine, prompts, params):
    fast = engine.tokenize(prompts, params)
    backend = engine.tokenizer._backend
    engine.tokenizer.__dict__["_backend"] = None  # transformers' __call__ instead
    try:
        slow = engine.tokenize(prompts, params)
    finally:
        engine.tokenizer.__dict__["_backend"] = backend
    return fast, slow


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("special", [True, False])
def test_the_backend_path_encodes_as_transformers_does(tiny_encoders, side: str, special: bool) -> None:
    llm = LLM(str(tiny_encoders["bert"]), device="cpu")
    assert llm.engine.tokenizer._backend is not None
    prompts = [Prompt(text=t, add_special_tokens=special) for t in TEXTS]
    for limit in (-1, 16, 7):
        params = [PoolingParams(truncate_prompt_tokens=limit, truncation_side=side)] * len(prompts)
        fast, slow = _both(llm.engine, prompts, params)
        assert [e.token_ids for e in fast] == [e.token_ids for e in slow]
        assert [e.truncated for e in fast] == [e.truncated for e in slow]
        assert [_types(e) for e in fast] == [_types(e) for e in slow]
        assert all(e.token_type_ids is None for e in fast)  # a single text's are all 0: not read text by text


def _types(encoded) -> list[int]:
    """Segment ids, ``None`` read as all 0 (as the packed batch reads it)."""
    return encoded.token_type_ids if encoded.token_type_ids is not None else [0] * len(encoded.token_ids)


def test_pairs_and_segment_ids_match_transformers(minilm) -> None:
    engine = minilm.engine
    prompts = [Prompt(text=a, text_pair=b) for a, b in zip(TEXTS, reversed(TEXTS))]
    params = [PoolingParams(truncate_prompt_tokens=24)] * len(prompts)
    fast, slow = _both(engine, prompts, params)
    assert [(e.token_ids, e.token_type_ids, e.truncated) for e in fast] == [
        (e.token_ids, e.token_type_ids, e.truncated) for e in slow
    ]
    assert any(any(e.token_type_ids or []) for e in fast)


def test_a_tokenizer_class_with_its_own_encoding_code_keeps_transformers_call(tiny_encoders) -> None:
    llm = LLM(str(tiny_encoders["bert"]), device="cpu")
    tok = llm.model.tokenizer
    own = type("OwnEncoding", (type(tok),), {"_encode_plus": lambda self, *a, **k: super(type(self), self)._encode_plus(*a, **k)})
    tok.__class__ = own
    try:
        del llm.engine.tokenizer.__dict__["_backend"]
    except KeyError:
        pass
    assert llm.engine.tokenizer._backend is None
    assert llm.engine.tokenize([Prompt(text="hello there")], [PoolingParams()])[0].token_ids


def test_a_text_at_the_limit_is_told_cut_by_its_tokens(tmp_path) -> None:
    """Whether a text at the limit was cut is what a count of all its tokens says, on either side,
    without character offsets: a byte-level BPE text of a few emoji has more tokens than
    characters, and a token cut from the middle of an emoji drops no whole character (character
    spans said "not cut" for ``"😀😀 a"`` cut on the left; one of its 9 tokens was)."""
    from tiny_models import build_qwen

    llm = LLM(str(build_qwen(tmp_path / "qwen3", "qwen3")), device="cpu")
    assert llm.engine.tokenizer._backend is not None
    texts = ["😀😀😀", "😀😀", "ok", "😀😀 a", "a longer text of many more characters than the limit has tokens"]
    counts = [len(llm.model.tokenizer(t)["input_ids"]) for t in texts]
    prompts = [Prompt(text=t) for t in texts]
    for side in ("right", "left"):
        params = [PoolingParams(truncate_prompt_tokens=8, truncation_side=side)] * len(prompts)
        fast, slow = _both(llm.engine, prompts, params)
        assert [e.token_ids for e in fast] == [e.token_ids for e in slow]
        assert [e.truncated for e in fast] == [e.truncated for e in slow] == [n > 8 for n in counts], side
        assert len(fast[0].token_ids) == 8 and fast[0].truncated  # 3 characters, 12 bytes: at the limit
        # exactly the limit, nothing cut
        assert len(fast[1].token_ids) == 8 and not fast[1].truncated
