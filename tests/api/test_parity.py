"""Parity with sentence-transformers on the same weights (DESIGN.md §7 tolerances)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from poolkit import LLM, PoolingParams

MIN_COSINE = 0.99999
MAX_DIFF = 1e-4

WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this be or "
    "have had one not but all new more been would their there who when said will can about two if "
    "pooling embedding retrieval vector sentence model token transformer attention batch matrix"
).split()
SPECIAL = [
    "",
    " ",
    "   \t\n  ",
    "Hello, my name is",
    "A man is eating food.",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nmixed   spacing",
    "Ünïcödé àccents — “quotes” and ‘apostrophes’ … ellipsis",
    "Ελληνικά κείμενα και Кириллица тоже",
    "العربية من اليمين إلى اليسار",
    "日本語のテキストと中文文本，还有한국어",
    "emoji 🎉🚀 and ZWJ 👩‍💻 family 👨‍👩‍👧 flags 🇫🇷",
    "🙂" * 40,
    "numbers 3.14159 1,000,000 2026-11-21 #hashtag @mention https://example.com/a?b=c",
    "CamelCaseWords and snake_case_words and kebab-case-words",
    "a" * 300,
    "supercalifragilisticexpialidocious " * 5,
    "First sentence. Second sentence! Third sentence? Fourth; fifth: sixth.",
    "word " * 400,
    "一" * 700,
    ("The chef prepared a delicious meal. " * 200).strip(),
    "x" * 20000,
    " ".join(["lorem ipsum dolor sit amet"] * 3000),
]


def corpus(n: int = 220, seed: int = 7) -> list[str]:
    """Deterministic varied inputs: short, multi-sentence, long (> 256 tokens), special cases."""
    rng = random.Random(seed)
    texts = list(SPECIAL)
    while len(texts) < n:
        sentences = []
        for _ in range(rng.choice([1, 1, 2, 3, 8, 40])):
            words = [rng.choice(WORDS) for _ in range(rng.randint(1, 25))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ""]))
        text = " ".join(sentences)
        if rng.random() < 0.15:
            text = rng.choice(SPECIAL[7:14]) + " " + text
        if rng.random() < 0.1:
            text = "   " + text.replace(" ", "  ") + "\n"
        texts.append(text)
    return texts


#: sentence-transformers truncates over-long inputs silently; poolkit's LLM, like vLLM's, refuses them
#: unless truncation is asked for, so the parity tests ask (-1: the model's limit, as ST does).
TRUNCATE = {"truncate_prompt_tokens": -1}


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    ours, ref = ours.float(), ref.float()
    assert ours.shape == ref.shape
    cos = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)
    diff = (ours - ref).abs().max().item()
    assert cos.min().item() >= MIN_COSINE, f"min cosine {cos.min().item()}"
    assert diff <= MAX_DIFF, f"max |diff| {diff}"
    return cos.min().item(), diff


def test_minilm_matches_sentence_transformers(minilm, minilm_st):
    texts = corpus()
    assert len(texts) >= 200
    ours = minilm.embed(texts, tokenization_kwargs=TRUNCATE)
    ref = minilm_st.encode(texts, convert_to_tensor=True, batch_size=32)
    got = torch.tensor([o.outputs.embedding for o in ours])
    min_cos, max_diff = assert_close(got, ref)
    print(f"all-MiniLM-L6-v2 parity over {len(texts)} inputs: min cosine {min_cos:.8f}, max |diff| {max_diff:.2e}")


def test_minilm_truncates_exactly_like_sentence_transformers(minilm, minilm_st):
    texts = corpus()
    ours = minilm.embed(texts, tokenization_kwargs=TRUNCATE)
    long_inputs = 0
    for text, out in zip(texts, ours):
        ref_ids = minilm_st.tokenizer(text, truncation=True, max_length=minilm_st.max_seq_length)["input_ids"]
        assert out.prompt_token_ids == ref_ids, text[:60]
        long_inputs += len(ref_ids) == 256
    assert long_inputs >= 10, "the corpus must exercise truncation"


def test_batch_invariance(minilm):
    texts = corpus(64, seed=11)
    alone = minilm.embed(texts[5], tokenization_kwargs=TRUNCATE).pop().outputs.embedding
    in_batch = minilm.embed(texts, tokenization_kwargs=TRUNCATE)[5].outputs.embedding
    cos = torch.nn.functional.cosine_similarity(torch.tensor(alone), torch.tensor(in_batch), dim=0)
    assert cos.item() >= MIN_COSINE


def test_small_token_budget_changes_nothing(minilm_dir, minilm):
    texts = corpus(40, seed=3)
    tight = LLM(str(minilm_dir), max_batch_tokens=300)
    a = torch.tensor([o.outputs.embedding for o in tight.embed(texts, tokenization_kwargs=TRUNCATE)])
    b = torch.tensor([o.outputs.embedding for o in minilm.embed(texts, tokenization_kwargs=TRUNCATE)])
    assert_close(a, b)


ST_MODES = {
    "cls": "CLS",
    "mean": "MEAN",
    "max": "MAX",
    "lasttoken": "LAST",
    "mean_sqrt_len_tokens": "MEAN_SQRT_LEN",
    "weightedmean": "WEIGHTEDMEAN",
}
TINY_TEXTS = [
    "paris is the capital of france",
    "hello",
    "the quick brown fox jumps over the lazy dog " * 3,
    "what is the capital of germany? berlin is the capital of germany.",
    "",
]


@pytest.mark.parametrize("kind", ["bert", "roberta", "xlm-roberta"])
@pytest.mark.parametrize("st_mode", list(ST_MODES))
def test_tiny_encoder_pooling_types(tiny_encoders, kind, st_mode):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer

    path = str(tiny_encoders[kind])
    st = SentenceTransformer(modules=[Transformer(path), Pooling(32, pooling_mode=st_mode)], device="cpu")
    ref = st.encode(TINY_TEXTS, convert_to_tensor=True)
    llm = LLM(path, pooler_config={"pooling_type": ST_MODES[st_mode], "use_activation": False})
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TINY_TEXTS)])
    assert_close(got, ref)


def test_tiny_encoder_token_embed_matches_transformers(tiny_encoders):
    from transformers import AutoModel, AutoTokenizer

    path = str(tiny_encoders["bert"])
    hf = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    llm = LLM(path)
    outs = llm.encode(TINY_TEXTS, pooling_task="token_embed")
    for text, out in zip(TINY_TEXTS, outs):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            ref = hf(**enc).last_hidden_state[0]
        assert out.outputs.data.shape == ref.shape
        assert_close(out.outputs.data, torch.nn.functional.normalize(ref, dim=-1))


def test_architecture_default_is_cls_without_st_config(tiny_encoders):
    from transformers import AutoModel, AutoTokenizer

    path = str(tiny_encoders["bert"])
    llm = LLM(path)
    assert llm.model.describe()["tasks"]["embed"]["pooling_type"] == {
        "value": "CLS",
        "source": "architecture default (BertModel)",
    }
    hf = AutoModel.from_pretrained(path).eval()
    enc = AutoTokenizer.from_pretrained(path)("hello world", return_tensors="pt")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(hf(**enc).last_hidden_state[0, 0], dim=-1)
    assert_close(torch.tensor(llm.embed("hello world")[0].outputs.embedding), ref)


@pytest.fixture(scope="module")
def st_full_dir(tmp_path_factory):
    """A sentence-transformers model using every setting poolkit must read.

    The tokenizer is cased, so ``do_lower_case`` changes the tokens; length and lower-casing are
    written to ``sentence_bert_config.json`` as sentence-transformers 2.x models have them.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    from tiny_models import build_encoder

    root = tmp_path_factory.mktemp("st")
    cased = build_encoder(root / "cased-bert", "bert", lowercase=False)
    torch.manual_seed(3)
    transformer = Transformer(str(cased))
    pooling = Pooling(32, pooling_mode=("cls", "mean", "max"), include_prompt=False)
    dense = Dense(96, 24, activation_function=torch.nn.Tanh())
    dense2 = Dense(24, 16, activation_function=torch.nn.Identity())
    model = SentenceTransformer(modules=[transformer, pooling, dense, dense2, Normalize()], device="cpu")
    model.prompts = {"query": "query: ", "passage": "passage: "}
    model.default_prompt_name = "query"
    out = root / "full"
    model.save(str(out))
    config_file = out / "sentence_bert_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "max_seq_length": 12, "do_lower_case": True}))
    return out


def test_sentence_transformers_files_read_faithfully(st_full_dir):
    from sentence_transformers import SentenceTransformer

    texts = ["PARIS is the Capital of France", "Hello", "the quick brown fox jumps over the lazy dog " * 4]
    st = SentenceTransformer(str(st_full_dir), device="cpu")
    llm = LLM(str(st_full_dir))
    lowered = llm.embed("PARIS")[0].prompt_token_ids
    assert lowered == llm.get_tokenizer()("query: paris")["input_ids"] != llm.get_tokenizer()("query: PARIS")["input_ids"]
    info = llm.model.describe()
    assert info["max_model_len"]["value"] == 12
    assert info["do_lower_case"] is True and info["include_prompt"] is False
    assert info["tasks"]["embed"]["pooling_type"]["value"] == "CLS+MEAN+MAX"
    assert [d["out"] for d in info["projector"]] == [24, 16]
    for prompt_name in ("query", "passage"):
        ref = st.encode(texts, prompt_name=prompt_name, convert_to_tensor=True)
        got = torch.tensor([o.outputs.embedding for o in llm.embed(texts, prompt_name=prompt_name, tokenization_kwargs=TRUNCATE)])
        assert got.shape == (3, 16)
        assert_close(got, ref)
    default_ref = st.encode(texts, convert_to_tensor=True)  # default_prompt_name applies
    assert_close(torch.tensor([o.outputs.embedding for o in llm.embed(texts, tokenization_kwargs=TRUNCATE)]), default_ref)


def test_user_pooler_config_beats_st_config(st_full_dir, tiny_encoders):
    from poolkit import InvalidRequest

    llm = LLM(str(st_full_dir), pooler_config={"use_activation": False})
    assert llm.model.describe()["use_activation"] == {"value": False, "source": "pooler_config"}
    vec = torch.tensor(llm.embed("hello", prompt_name="query")[0].outputs.embedding)
    assert abs(vec.norm().item() - 1.0) > 1e-3  # not normalized
    narrow = LLM(str(st_full_dir), pooler_config={"pooling_type": "CLS"})
    with pytest.raises(InvalidRequest, match="gives 32-wide vectors, but the model's first sentence-transformers Dense layer takes 96"):
        narrow.embed("hello")
    mean = LLM(str(tiny_encoders["bert"]), pooler_config={"pooling_type": "mean"})
    assert mean.model.describe()["tasks"]["embed"]["pooling_type"] == {"value": "MEAN", "source": "pooler_config"}


def test_matryoshka_truncates_then_normalizes(minilm_dir, minilm):
    llm = LLM(str(minilm_dir), hf_overrides={"is_matryoshka": True})
    full = minilm.embed("Follow the white rabbit.", PoolingParams(use_activation=False))[0].outputs.embedding
    (out,) = llm.embed(["Follow the white rabbit."], pooling_params=PoolingParams(dimensions=32))
    expected = torch.nn.functional.normalize(torch.tensor(full[:32]), dim=0)
    assert len(out.outputs.embedding) == 32
    assert_close(torch.tensor(out.outputs.embedding), expected)


def test_truncation_options_match_the_tokenizer(minilm):
    tok = minilm.get_tokenizer()
    text = " ".join(WORDS)
    right = minilm.embed(text, PoolingParams(truncate_prompt_tokens=10))[0].prompt_token_ids
    assert right == tok(text, truncation=True, max_length=10)["input_ids"]
    tok.truncation_side = "left"
    try:
        expected_left = tok(text, truncation=True, max_length=10)["input_ids"]
    finally:
        tok.truncation_side = "right"
    left = minilm.embed(text, PoolingParams(truncate_prompt_tokens=10, truncation_side="left"))[0].prompt_token_ids
    assert left == expected_left and left != right
    via_kwargs = minilm.embed(text, tokenization_kwargs={"truncate_prompt_tokens": 10})[0].prompt_token_ids
    assert via_kwargs == right
    full = minilm.embed(text, PoolingParams(truncate_prompt_tokens=-1))[0].prompt_token_ids
    assert len(full) == min(256, len(tok(text)["input_ids"]))


def test_left_truncation_of_huge_text_is_exact(minilm):
    tok = minilm.get_tokenizer()
    text = " ".join(f"{WORDS[i % len(WORDS)]}{i}" for i in range(8000))
    got = minilm.embed(text, PoolingParams(truncation_side="left"))[0].prompt_token_ids
    tok.truncation_side = "left"
    try:
        assert got == tok(text, truncation=True, max_length=256)["input_ids"]
    finally:
        tok.truncation_side = "right"


def test_score_is_cosine_of_embeddings(minilm, minilm_st):
    from sentence_transformers.util import cos_sim

    q = "What is the capital of France?"
    docs = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    ref = cos_sim(minilm_st.encode([q], convert_to_tensor=True), minilm_st.encode(docs, convert_to_tensor=True))[0]
    one = minilm.score(q, docs[0])
    assert len(one) == 1 and abs(one[0].outputs.score - ref[0].item()) < 1e-5
    many = [o.outputs.score for o in minilm.score(q, docs)]
    assert many == pytest.approx(ref.tolist(), abs=1e-5) and many[1] > many[0]
    pairs = [o.outputs.score for o in minilm.score([q, q], docs)]
    assert pairs == pytest.approx(many, abs=1e-6)


def test_encode_embed_returns_tensor_data(minilm):
    (out,) = minilm.encode("Hello, my name is", pooling_task="embed")
    assert isinstance(out.outputs.data, torch.Tensor) and out.outputs.data.shape == (384,)
    (emb,) = minilm.embed("Hello, my name is")
    assert out.outputs.data.tolist() == pytest.approx(emb.outputs.embedding, abs=1e-7)


def test_token_id_prompts(minilm):
    tok = minilm.get_tokenizer()
    ids = tok("Hello, my name is")["input_ids"]
    a = minilm.embed({"prompt_token_ids": ids})[0].outputs.embedding
    b = minilm.embed("Hello, my name is")[0].outputs.embedding
    assert a == pytest.approx(b, abs=1e-6)


def test_auto_dtype_is_bf16_on_bf16_hardware_and_close_to_fp32(minilm_dir, minilm_st, monkeypatch):
    from poolkit.config.cpu import cpu_features

    monkeypatch.setenv("POOLKIT_DTYPE", "auto")
    llm = LLM(str(minilm_dir))
    expected = torch.bfloat16 if cpu_features().multiplies_bf16 else torch.float32
    assert llm.model.dtype == expected
    texts = corpus(120, seed=9)
    got = torch.tensor([o.outputs.embedding for o in llm.embed(texts, tokenization_kwargs=TRUNCATE)])
    ref = minilm_st.encode(texts, convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(got, ref)
    assert cos.min().item() >= 0.999, cos.min().item()
    monkeypatch.setenv("POOLKIT_DTYPE", "float32")
    assert LLM(str(minilm_dir)).model.dtype == torch.float32
