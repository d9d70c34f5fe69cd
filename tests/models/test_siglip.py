"""SigLIP (SiglipModel) text and image embeddings against transformers, in fp32 and bf16, batch
invariance, its config checks, and the server's /v1/embeddings and /v2/embed on it.

The reference is transformers' ``SiglipModel.get_text_features`` / ``get_image_features`` on the
same token ids and pixels, L2-normalised as poolkit's embed task does. SigLIP pools the last token
of each text: poolkit packs (no padding), so the reference is fed each text's own token ids
unpadded, and padding to SigLIP's 64 tokens is something the caller does to the token ids
(``test_text_padded_to_max_length_matches_transformers``).
"""

from __future__ import annotations

import base64
import io

import pytest
import torch
import torch.nn.functional as F

from poolkit import LLM, InvalidRequest, ModelLoadError

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

ATOL = 1e-4
MIN_COS = 0.99999
TEXTS = [
    "paris is the capital of france",
    "hello",
    "the quick brown fox jumps over the lazy dog the quick brown fox",
    "",
    "what is the capital of germany?",
]


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    from tiny_models import build_siglip

    return build_siglip(tmp_path_factory.mktemp("siglip") / "siglip")


@pytest.fixture(scope="module")
def llm(siglip_dir):
    return LLM(str(siglip_dir), dtype="float32")


def _hf(path, dtype=torch.float32):
    import transformers as T

    return (
        T.SiglipModel.from_pretrained(str(path), dtype=dtype).eval(),
        T.AutoTokenizer.from_pretrained(str(path)),
        T.AutoImageProcessor.from_pretrained(str(path)),
    )


@pytest.fixture(scope="module")
def hf(siglip_dir):
    return _hf(siglip_dir)


@pytest.fixture(scope="module")
def images():
    """Random RGB 40x50 (squashed to a square: SigLIP resizes without cropping), grayscale 37x29,
    RGBA 64x48, as PIL images."""
    gen = torch.Generator().manual_seed(0)

    def pixels(h, w, c):
        return torch.randint(0, 256, (h, w, c), generator=gen, dtype=torch.uint8).numpy()

    return {
        "rgb": Image.fromarray(pixels(50, 40, 3), "RGB"),
        "gray": Image.fromarray(pixels(29, 37, 1)[..., 0], "L"),
        "rgba": Image.fromarray(pixels(48, 64, 4), "RGBA"),
    }


def hf_text(hf, ids: list[int]) -> torch.Tensor:
    """``get_text_features`` on one text's token ids, as they are (no padding, no mask)."""
    model = hf[0]
    with torch.no_grad():
        out = model.get_text_features(input_ids=torch.tensor([ids]))
    return F.normalize(out.pooler_output.float(), dim=-1)[0]


def hf_image(hf, image) -> torch.Tensor:
    model, _, processor = hf
    pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"].to(model.dtype)
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixel_values)
    return F.normalize(out.pooler_output.float(), dim=-1)[0]


def image_prompt(image):
    return {"prompt": "", "multi_modal_data": {"image": image}}


def vectors(outputs) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in outputs])


def assert_parity(got: torch.Tensor, ref: torch.Tensor, min_cos: float = MIN_COS, atol: float | None = ATOL) -> None:
    assert got.shape == ref.shape
    cos = F.cosine_similarity(got.float(), ref.float(), dim=-1)
    assert cos.min().item() >= min_cos, cos
    if atol is not None:
        assert (got - ref).abs().max().item() <= atol


def test_siglip_runs_natively(llm):
    info = llm.model.describe()
    assert info["architecture"] == "SiglipModel"
    assert info["implementation"] == "native"
    assert info["architecture_plugin"] == "builtin_siglip"
    assert info["embedding_size"] == 32
    assert info["max_model_len"]["value"] == 64
    assert info["tasks"]["embed"]["pooling_type"]["value"] == "LAST"
    assert "embed" in llm.supported_tasks and "classify" not in llm.supported_tasks


def test_text_embeddings_match_transformers(llm, hf):
    _, tok, _ = hf
    ids = tok(TEXTS)["input_ids"]
    # SigLIP's tokenizer closes every text with </s>, its padding token too; there is no BOS.
    assert all(row[-1] == tok.eos_token_id == tok.pad_token_id for row in ids)
    got = vectors(llm.embed(TEXTS))
    ref = torch.stack([hf_text(hf, row) for row in ids])
    assert got.shape == (len(TEXTS), 32)
    assert_parity(got, ref)
    off_diagonal = (ref @ ref.T)[~torch.eye(len(TEXTS), dtype=torch.bool)]
    assert off_diagonal.max() < 0.999, "the tiny model must tell texts apart"


def test_text_padded_to_max_length_matches_transformers(llm, hf):
    """SigLIP was trained on texts padded to 64 tokens, read without an attention mask, the last
    (padding) token pooled. poolkit never pads; token ids padded by the caller are ordinary
    tokens, so they give exactly what transformers gives on them."""
    model, tok, _ = hf
    padded = tok(TEXTS[:3], padding="max_length", max_length=64)["input_ids"]
    assert all(len(row) == 64 for row in padded)
    got = vectors(llm.embed([{"prompt_token_ids": row} for row in padded]))
    with torch.no_grad():
        ref = F.normalize(model.get_text_features(input_ids=torch.tensor(padded)).pooler_output, dim=-1)
    assert_parity(got, ref)
    unpadded = vectors(llm.embed(TEXTS[:3]))
    assert F.cosine_similarity(got, unpadded).max() < 0.99, "padding changes the pooled token"


def test_sentence_transformers_agrees_one_text_at_a_time(siglip_dir, llm, images):
    """sentence-transformers pads each batch to its longest text, so a shorter text's pooled
    position is a padding token and its embedding depends on the batch; encoding one text at a
    time it pools each text's own last token, as poolkit does."""
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(siglip_dir), device="cpu")
    alone = torch.stack([st.encode([t], convert_to_tensor=True, normalize_embeddings=True)[0] for t in TEXTS[:3]])
    assert_parity(vectors(llm.embed(TEXTS[:3])), alone.cpu())
    batched = st.encode(TEXTS[:3], convert_to_tensor=True, normalize_embeddings=True).cpu()
    assert F.cosine_similarity(batched, alone.cpu()).min() < 0.99, "sentence-transformers' padding moves the pooled token"
    picture = st.encode([images["rgb"]], convert_to_tensor=True, normalize_embeddings=True)[0].cpu()
    assert_parity(vectors(llm.embed(image_prompt(images["rgb"])))[0], picture)


def test_image_embeddings_match_transformers_for_every_input_kind(llm, hf, images, tmp_path):
    path = tmp_path / "rgb.png"
    images["rgb"].save(path)
    raw = path.read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    inputs = [images["rgb"], str(path), path, raw, uri]
    got = vectors(llm.embed([image_prompt(x) for x in inputs]))
    ref = hf_image(hf, images["rgb"])
    assert got.shape == (len(inputs), 32)
    assert_parity(got, ref.expand_as(got))
    assert (got - got[0]).abs().max() < 1e-6


@pytest.mark.parametrize("kind", ["gray", "rgba"])
def test_grayscale_and_alpha_images_match_transformers(llm, hf, images, kind):
    (out,) = llm.embed(image_prompt(images[kind]))
    assert_parity(torch.tensor(out.outputs.embedding), hf_image(hf, images[kind]))


def test_mixed_text_and_image_batch_keeps_input_order(llm, hf, images):
    _, tok, _ = hf
    prompts = [TEXTS[0], image_prompt(images["rgb"]), TEXTS[1], image_prompt(images["gray"]), TEXTS[2]]
    got = vectors(llm.embed(prompts))
    expected = torch.stack([
        hf_text(hf, tok(TEXTS[0])["input_ids"]),
        hf_image(hf, images["rgb"]),
        hf_text(hf, tok(TEXTS[1])["input_ids"]),
        hf_image(hf, images["gray"]),
        hf_text(hf, tok(TEXTS[2])["input_ids"]),
    ])
    assert_parity(got, expected)
    off_diagonal = (expected @ expected.T)[~torch.eye(len(expected), dtype=torch.bool)]
    assert off_diagonal.max() < 0.999, "swapped results must not pass for ordered ones"


def test_bfloat16_follows_float32_transformers(tmp_path, images):
    """bf16 weights, fp32 residual stream and norms: within cosine 0.9999 of fp32 transformers
    (std 1/sqrt(fan_in) matrices; transformers itself in bf16 is no closer)."""
    from tiny_models import build_siglip

    path = build_siglip(tmp_path / "siglip", gain=1.0)
    half = LLM(str(path), dtype="bfloat16")
    assert half.model.architecture.text_model.encoder.layers[0].self_attn.qkv.weight.dtype == torch.bfloat16
    ref = _hf(path)
    ids = ref[1](TEXTS)["input_ids"]
    got = vectors(half.embed(TEXTS + [image_prompt(images[k]) for k in ("rgb", "gray", "rgba")]))
    expected = torch.stack([hf_text(ref, row) for row in ids] + [hf_image(ref, images[k]) for k in ("rgb", "gray", "rgba")])
    assert torch.isfinite(got).all()
    assert_parity(got, expected, min_cos=0.9999, atol=None)


def test_batch_invariance(llm, images):
    """A text's (an image's) embedding does not depend on what else is in the batch."""
    gen = torch.Generator().manual_seed(3)
    vocab = llm.model.hf_config.text_config.vocab_size
    others = [torch.randint(7, vocab, (int(n),), generator=gen).tolist() for n in torch.randint(1, 64, (40,), generator=gen)]
    crowd = [{"prompt_token_ids": ids} for ids in others] + TEXTS
    together = vectors(llm.embed(crowd))[len(others):]
    alone = torch.stack([vectors(llm.embed([t]))[0] for t in TEXTS])
    assert_parity(together, alone, atol=1e-6)
    pictures = [image_prompt(images[k]) for k in ("rgb", "gray", "rgba")]
    batched = vectors(llm.embed(pictures * 4 + TEXTS))[:3]
    single = torch.stack([vectors(llm.embed([p]))[0] for p in pictures])
    assert_parity(batched, single, atol=1e-6)


def test_text_and_image_together_is_refused(llm, images):
    with pytest.raises(InvalidRequest) as info:
        llm.embed([TEXTS[0], {"prompt": "a photo", "multi_modal_data": {"image": images["rgb"]}}])
    message = str(info.value)
    assert message.startswith("prompt 1:") and "\n" not in message
    assert "accepts text-only or image-only inputs, not both!" in message


def test_text_longer_than_the_positions_is_refused(llm):
    with pytest.raises(InvalidRequest, match="maximum context length is 64 tokens"):
        llm.embed(["hello " * 80])
    (out,) = llm.embed(["hello " * 80], pooling_params={"truncate_prompt_tokens": -1})
    assert len(out.outputs.embedding) == 32


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"vision_config": {"image_size": 48}}, "vision_config.image_size 48 and patch_size 8 make 36 positions, but the weights hold 16"),
        ({"vision_config": {"vision_use_head": False}}, "vision_use_head is false"),
        ({"text_config": {"projection_size": 16}}, "text_config.projection_size is 16, but the weights hold 32"),
        ({"text_config": {"num_hidden_layers": 1000}}, "text_config.num_hidden_layers is 1000, but the weights hold 2 layers"),
    ],
)
def test_config_that_does_not_fit_the_weights_is_refused(siglip_dir, overrides, message):
    with pytest.raises(ModelLoadError) as info:
        LLM(str(siglip_dir), hf_overrides=overrides)
    assert message in str(info.value) and "hf_overrides" in str(info.value)


def test_text_and_image_widths_must_agree(tmp_path):
    from tiny_models import build_siglip

    from poolkit.builtin_models.siglip import SiglipModel

    config = __import__("transformers").AutoConfig.from_pretrained(str(build_siglip(tmp_path / "s")))
    config.text_config.projection_size = 16
    with pytest.raises(ModelLoadError, match="text_config.projection_size 16 differs from vision_config.hidden_size 32"):
        SiglipModel.check_config(config, None)


# -- the server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(llm):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    with TestClient(create_app(llm, served_model_name="siglip")) as c:
        yield c


def _png_uri(image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


#: The server refuses empty texts (as OpenAI does).
SERVED_TEXTS = [t for t in TEXTS if t]


def test_openai_embeddings_endpoint(client, llm, hf):
    r = client.post("/v1/embeddings", json={"model": "siglip", "input": SERVED_TEXTS})
    assert r.status_code == 200, r.text
    got = torch.tensor([d["embedding"] for d in r.json()["data"]])
    assert_parity(got, vectors(llm.embed(SERVED_TEXTS)), atol=1e-6)
    ids = hf[1](TEXTS[0])["input_ids"]
    by_ids = client.post("/v1/embeddings", json={"model": "siglip", "input": [ids]})
    assert by_ids.status_code == 200, by_ids.text
    assert_parity(torch.tensor(by_ids.json()["data"][0]["embedding"]), hf_text(hf, ids))


def test_cohere_embed_images_and_texts(client, llm, hf, images):
    uri = _png_uri(images["rgb"])
    expected = hf_image(hf, Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    r = client.post("/v2/embed", json={"model": "siglip", "images": [uri], "embedding_types": ["float"]})
    assert r.status_code == 200, r.text
    assert_parity(torch.tensor(r.json()["embeddings"]["float"][0]), expected)
    assert r.json()["meta"]["billed_units"]["image_tokens"] >= 1
    mixed = client.post(
        "/v2/embed",
        json={
            "model": "siglip",
            "inputs": [
                {"content": [{"type": "image_url", "image_url": {"url": uri}}]},
                {"content": [{"type": "text", "text": TEXTS[0]}]},
            ],
        },
    )
    assert mixed.status_code == 200, mixed.text
    rows = torch.tensor(mixed.json()["embeddings"]["float"])
    assert_parity(rows[0], expected)
    assert_parity(rows[1], hf_text(hf, hf[1](TEXTS[0])["input_ids"]))
    texts = client.post("/v2/embed", json={"model": "siglip", "texts": SERVED_TEXTS, "embedding_types": ["float"]})
    assert texts.status_code == 200, texts.text
    assert_parity(torch.tensor(texts.json()["embeddings"]["float"]), vectors(llm.embed(SERVED_TEXTS)), atol=1e-6)
    both = client.post(
        "/v2/embed",
        json={"inputs": [{"content": [{"type": "text", "text": "a photo"}, {"type": "image_url", "image_url": {"url": uri}}]}]},
    )
    assert both.status_code == 400 and "text-only or image-only" in both.json()["error"]["message"]


@pytest.fixture(scope="module")
def spiece_dir(siglip_dir, tmp_path_factory):
    """The tiny model with a SentencePiece tokenizer only (``spiece.model`` and
    ``tokenizer_config.json``, no ``tokenizer.json``), as google/siglip-* checkpoints ship it:
    a unigram model trained here with SentencePiece's NFKC normaliser, saved by transformers'
    ``SiglipTokenizer``."""
    import shutil

    spm = pytest.importorskip("sentencepiece")
    import transformers as T

    from poolkit.entrypoints.bench.corpus import make_corpus

    root = tmp_path_factory.mktemp("siglip-spiece")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(text.lower() for text in make_corpus(400, 30, 0.8, 0)), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "sp"), vocab_size=100, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        normalization_rule_name="nmt_nfkc", minloglevel=2,
    )  # fmt: skip
    out = root / "model"
    shutil.copytree(siglip_dir, out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (out / name).unlink(missing_ok=True)
    T.SiglipTokenizer(str(root / "sp.model")).save_pretrained(str(out))
    assert (out / "spiece.model").is_file() and not (out / "tokenizer.json").exists()
    return out


SPIECE_TEXTS = [
    "Hello, World!  Again",
    " a leading space, and a trailing one ",
    "ÉCOLE naïve café: ½ ﬁsh — “quoted”",
    "tabs\tand\nnewlines",
    "!!!",
    "UPPER lower MiXeD 123",
    "emoji 🙂 and <unk> in the text, </s> too",
]


def test_sentencepiece_only_checkpoint_tokenizes_as_siglip_tokenizer(spiece_dir):
    """google/siglip-* ship only spiece.model, which transformers reads with a slow tokenizer:
    poolkit builds a fast one from it, token for token SiglipTokenizer's (lower-cased,
    punctuation removed, whitespace collapsed, NFKC, </s> appended), and the embeddings are
    transformers' on those ids."""
    import transformers as T

    from poolkit.entrypoints.bench.corpus import make_corpus

    slow = T.SiglipTokenizer.from_pretrained(str(spiece_dir))
    llm = LLM(str(spiece_dir), dtype="float32")
    fast = llm.get_tokenizer()
    assert fast.is_fast and llm.model.describe()["implementation"] == "native"
    texts = SPIECE_TEXTS + make_corpus(100, 20, 0.8, 7)
    for text in texts:
        assert fast(text)["input_ids"] == slow(text)["input_ids"], text
    assert fast(*SPIECE_TEXTS[:2])["input_ids"] == slow(*SPIECE_TEXTS[:2])["input_ids"]
    assert (fast.eos_token, fast.pad_token, fast.unk_token) == ("</s>", "</s>", "<unk>")
    padded = fast(SPIECE_TEXTS[:2], padding="max_length", max_length=64)["input_ids"]
    assert padded == slow(SPIECE_TEXTS[:2], padding="max_length", max_length=64)["input_ids"]
    model = T.SiglipModel.from_pretrained(str(spiece_dir), dtype=torch.float32).eval()
    got = vectors(llm.embed(SPIECE_TEXTS))
    with torch.no_grad():
        ref = torch.cat(
            [
                F.normalize(model.get_text_features(input_ids=torch.tensor([ids])).pooler_output, dim=-1)
                for ids in slow(SPIECE_TEXTS)["input_ids"]
            ]
        )
    assert_parity(got, ref)


def test_unreadable_spiece_model_is_one_line_error(spiece_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(spiece_dir, broken)
    (broken / "spiece.model").write_bytes(b"\x0a\xff\xff\xff\xff\x0f not a model")
    with pytest.raises(ModelLoadError) as info:
        LLM(str(broken))
    message = str(info.value)
    assert "spiece.model is not a readable SentencePiece model" in message and "\n" not in message
