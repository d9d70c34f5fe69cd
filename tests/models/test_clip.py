"""CLIP text and image embeddings against transformers, image inputs, and their guard rails."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
import torch

from poolkit import LLM, InvalidRequest
from poolkit.entrypoints.cli import app

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

ATOL = 1e-4
TEXTS = [
    "paris is the capital of france",
    "hello",
    "the quick brown fox jumps over the lazy dog the quick brown fox",
    "",
    "what is the capital of germany?",
]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from tiny_models import build_clip

    return build_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def llm(clip_dir):
    return LLM(str(clip_dir))


@pytest.fixture(scope="module")
def hf(clip_dir):
    import transformers as T

    return (
        T.CLIPModel.from_pretrained(str(clip_dir)).eval(),
        T.AutoTokenizer.from_pretrained(str(clip_dir)),
        T.AutoImageProcessor.from_pretrained(str(clip_dir)),
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Small images saved as PNG: random RGB 40x50, grayscale 37x29, RGBA with transparency 64x48."""
    root = tmp_path_factory.mktemp("images")
    gen = torch.Generator().manual_seed(0)

    def pixels(h, w, c):
        return torch.randint(0, 256, (h, w, c), generator=gen, dtype=torch.uint8).numpy()

    made = {
        "rgb": Image.fromarray(pixels(50, 40, 3), "RGB"),
        "gray": Image.fromarray(pixels(29, 37, 1)[..., 0], "L"),
        "rgba": Image.fromarray(pixels(48, 64, 4), "RGBA"),
    }
    paths = {}
    for name, image in made.items():
        paths[name] = root / f"{name}.png"
        image.save(paths[name])
    return paths


def normalized(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def hf_text(hf, texts):
    model, tok, _ = hf
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return normalized(model.get_text_features(**enc).pooler_output)


def hf_image(hf, image):
    model, _, processor = hf
    pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return normalized(model.get_image_features(pixel_values=pixel_values).pooler_output)[0]


def image_prompt(image):
    return {"prompt": "", "multi_modal_data": {"image": image}}


def vectors(outputs):
    return torch.tensor([o.outputs.embedding for o in outputs])


def one_line_error(llm, prompts) -> str:
    with pytest.raises(InvalidRequest) as info:
        llm.embed(prompts)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_text_embeddings_match_transformers(llm, hf):
    model, tok, _ = hf
    # transformers pools the first eos_token_id ([SEP], not the legacy 2) of each padded row; with
    # poolkit's unpadded sequences that token is the last one, which LAST pooling reads.
    assert model.config.text_config.eos_token_id == tok.sep_token_id != 2
    assert all(ids[-1] == tok.sep_token_id for ids in tok(TEXTS)["input_ids"])
    got = vectors(llm.embed(TEXTS))
    ref = hf_text(hf, TEXTS)
    assert got.shape == (len(TEXTS), 16)
    assert (got - ref).abs().max() < ATOL
    off_diagonal = (ref @ ref.T)[~torch.eye(len(TEXTS), dtype=torch.bool)]
    assert off_diagonal.max() < 0.999, "the tiny model must tell texts apart"


def test_image_embeddings_match_transformers_for_every_input_kind(llm, hf, images):
    path = images["rgb"]
    raw = path.read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    with Image.open(path) as opened:
        pil = opened.convert("RGB")
    inputs = [pil, str(path), path, raw, uri]
    got = vectors(llm.embed([image_prompt(x) for x in inputs]))
    ref = hf_image(hf, Image.open(path))
    assert got.shape == (len(inputs), 16)
    for row in got:
        assert (row - ref).abs().max() < ATOL
    assert (got - got[0]).abs().max() < 1e-6


@pytest.mark.parametrize("kind", ["gray", "rgba"])
def test_grayscale_and_alpha_images_match_transformers(llm, hf, images, kind):
    (out,) = llm.embed(image_prompt(images[kind]))
    ref = hf_image(hf, Image.open(images[kind]))
    assert (torch.tensor(out.outputs.embedding) - ref).abs().max() < ATOL


def test_mixed_text_and_image_batch_keeps_input_order(llm, hf, images):
    prompts = [TEXTS[0], image_prompt(images["rgb"]), TEXTS[1], image_prompt(images["gray"]), TEXTS[2]]
    got = vectors(llm.embed(prompts))
    texts = hf_text(hf, [TEXTS[0], TEXTS[1], TEXTS[2]])
    expected = [texts[0], hf_image(hf, Image.open(images["rgb"])), texts[1], hf_image(hf, Image.open(images["gray"])), texts[2]]
    for row, ref in zip(got, expected):
        assert (row - ref).abs().max() < ATOL
    stacked = torch.stack(expected)
    off_diagonal = (stacked @ stacked.T)[~torch.eye(len(expected), dtype=torch.bool)]
    assert off_diagonal.max() < 0.999, "swapped results must not pass for ordered ones"


def test_text_and_image_together_is_refused(llm, images):
    message = one_line_error(llm, [TEXTS[0], {"prompt": "a photo", "multi_modal_data": {"image": images["rgb"]}}])
    assert message.startswith("prompt 1:")
    assert "CLIP accepts text-only or image-only inputs, not both! You must pass an image with an empty text prompt." in message


def test_unreadable_images_are_refused(llm, tmp_path, images):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all")
    assert "prompt 0: not a decodable image" in one_line_error(llm, image_prompt(junk))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(images["rgb"].read_bytes()[:200])
    assert "prompt 1: not a decodable image" in one_line_error(llm, [TEXTS[0], image_prompt(truncated)])
    assert "does not exist" in one_line_error(llm, image_prompt(tmp_path / "missing.png"))
    assert "not valid base64" in one_line_error(llm, image_prompt("data:image/png;base64,@@@"))
    assert "got int" in one_line_error(llm, image_prompt(42))


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "https://example.com/cat.png", "file:///etc/passwd"])
def test_urls_are_refused_without_fetching(llm, url, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the image processor tried to connect")

    monkeypatch.setattr(socket, "create_connection", no_network)
    message = one_line_error(llm, image_prompt(url))
    assert "URLs are" in message and message.startswith("prompt 0:")


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height``: a decompression bomb's header, cheaply."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # signature (8) + IHDR length (4) + b"IHDR" (4), then width, height and 5 more bytes, then the CRC
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("size", [(100_000, 100_000), (8_000, 8_000)])
def test_decompression_bombs_are_refused_from_the_header(llm, tmp_path, size):
    # 10^10 pixels trips Pillow's own bomb check; 64 megapixels only poolkit's 40-megapixel cap
    bomb = _png_claiming(*size)
    assert len(bomb) < 100
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    for value in (bomb, path, "data:image/png;base64," + base64.b64encode(bomb).decode()):
        assert "the image is too large" in one_line_error(llm, image_prompt(value))


def test_byte_cap(llm, images, monkeypatch):
    monkeypatch.setenv("POOLKIT_MAX_IMAGE_BYTES", "100")
    raw = images["rgb"].read_bytes()
    assert "more than the limit of 100" in one_line_error(llm, image_prompt(raw))
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    assert "larger than the limit of 100 bytes" in one_line_error(llm, image_prompt(uri))


def test_image_to_a_text_only_model_is_refused(tmp_path, images):
    from tiny_models import build_encoder

    bert = LLM(str(build_encoder(tmp_path / "bert", "bert")))
    message = one_line_error(bert, [TEXTS[0], image_prompt(images["rgb"])])
    assert "takes no images" in message and str(tmp_path / "bert") in message


def test_cli_embeds_images_like_the_python_api(llm, clip_dir, images):
    files = [str(images["rgb"]), str(images["rgba"])]
    args = ["embed", "--model", str(clip_dir), "--format", "jsonl", "--quiet"]
    result = CliRunner().invoke(app, args + [arg for f in files for arg in ("--image", f)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    expected = vectors(llm.embed([image_prompt(f) for f in files]))
    assert torch.tensor([r["embedding"] for r in rows]).sub(expected).abs().max() < 1e-6

    mixed = CliRunner().invoke(app, args + ["--image", files[0], "hello"])
    assert mixed.exit_code == 1
    assert "Error: pass --image files or texts" in mixed.stderr
