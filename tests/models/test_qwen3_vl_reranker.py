"""Qwen3-VL-Reranker: a Qwen3-VL checkpoint (``Qwen3VLForConditionalGeneration``, the LM head kept)
that nothing in ``config.json`` tells from Qwen3-VL-Embedding, scored as its publisher scores it.

The reference is the publisher's script written out (``scripts/qwen3_vl_reranker.py`` of
huggingface.co/Qwen/Qwen3-VL-Reranker-2B, ``src/models/qwen3_vl_reranker.py`` of
github.com/QwenLM/Qwen3-VL-Embedding): its messages, rendered by Qwen3-VL's chat template with the
generation prompt, run through transformers' own ``Qwen3VLForConditionalGeneration`` on the same tiny
random weights, ``sigmoid((lm_head["yes"] - lm_head["no"]) · h)`` at the last token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T
from PIL import Image

from tiny_models import picture
from poolkit import LLM
from test_llm_rerankers import ATOL, DOCS, QUERY, assert_differ, hub_snapshot, scores

#: The parts of Qwen3-VL's chat template (chat_template.json of Qwen/Qwen3-VL-2B-Instruct, which the
#: reranker's processor ships) that render the script's messages: a system message of text parts, a
#: user message of parts joined as they are, the generation prompt.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}"
    "{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
#: The script's ``Qwen3VLReranker.__init__`` default.
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
#: The model card's front matter and title (huggingface.co/Qwen/Qwen3-VL-Reranker-2B, README.md): no pipeline_tag.
CARD = (
    "---\nlicense: apache-2.0\nbase_model:\n- Qwen/Qwen3-VL-2B-Instruct\ntags:\n- transformers\n- multimodal rerank\n---\n"
    "# Qwen3-VL-Reranker-2B\n\nThe **Qwen3-VL-Embedding** and **Qwen3-VL-Reranker** model series ...\n"
)
#: vLLM's score template for it (vllm examples/pooling/score/template/qwen3_vl_reranker.jinja), with
#: ``--hf-overrides`` of :data:`VLLM_OVERRIDES` (vLLM's docs and the publisher's examples/reranker_vllm.ipynb).
VLLM_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    '<Instruct>: {{ instruction | default(instruct | default(messages | selectattr("role", "eq", "system") | '
    'map(attribute="content") | first | default("Given a search query, retrieve relevant candidates that answer the query.", true), true), true) }}'
    '<Query>:{{\n    messages\n    | selectattr("role", "eq", "query")\n    | map(attribute="content")\n    | first\n}}\n'
    '<Document>:{{\n    messages\n    | selectattr("role", "eq", "document")\n    | map(attribute="content")\n    | first\n}}'
    "<|im_end|>\n<|im_start|>assistant\n\n"
)
VLLM_OVERRIDES = {
    "architectures": ["Qwen3VLForSequenceClassification"], "classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": True,
}


def format_mm_instruction(query: str, document: str | Image.Image, instruction: str | None) -> list[dict]:
    """The script's ``format_mm_instruction`` (with ``format_mm_content``) for a text query and a text
    or one-image document."""
    side = [{"type": "image", "image": document}] if isinstance(document, Image.Image) else [{"type": "text", "text": document}]
    return [
        {"role": "system", "content": [{"type": "text", "text": (
            'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
            'Note that the answer can only be "yes" or "no".'
        )}]},
        {"role": "user", "content": [
            {"type": "text", "text": "<Instruct>: " + (instruction or DEFAULT_INSTRUCTION)},
            {"type": "text", "text": "<Query>:"}, {"type": "text", "text": query},
            {"type": "text", "text": "\n<Document>:"}, *side,
        ]},
    ]


def reference(path: Path, query: str, documents: list, instruction: str | None = None) -> list[float]:
    """The script's ``tokenize``, ``get_binary_linear`` and ``compute_scores``, one pair at a time; an
    image through transformers' image processor (the checkpoint's settings)."""
    from tiny_qwen_vl import hf_embedding

    tok = T.AutoTokenizer.from_pretrained(str(path))
    lm = T.Qwen3VLForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32).eval()
    hf = (lm, tok, T.AutoImageProcessor.from_pretrained(str(path), backend="pil"))
    vocab = tok.get_vocab()
    weight = lm.lm_head.weight.data[vocab["yes"]] - lm.lm_head.weight.data[vocab["no"]]
    out = []
    for document in documents:
        messages = format_mm_instruction(query, document, instruction)
        text = tok.apply_chat_template(messages, chat_template=QWEN3_VL_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True)
        images = [document] if isinstance(document, Image.Image) else []
        h = hf_embedding(hf, text, images, [], normalize=False)
        out.append(torch.sigmoid(h @ weight).item())
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3-VL saved as ``Qwen3VLForConditionalGeneration`` with its own LM head (untied), in a
    folder of no name, its tokenizer taking the prompts whole."""
    from tiny_qwen_vl import build_qwen3_vl

    path = build_qwen3_vl(tmp_path_factory.mktemp("qwen3vl") / "checkpoint", seed=3)
    settings = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 1024}))  # the prompt's ~210 tokens
    return path


@pytest.fixture(scope="module")
def expected(checkpoint: Path) -> list[float]:
    values = reference(checkpoint, QUERY, DOCS)
    assert_differ(values)
    return values


def shipped(tmp_path: Path, checkpoint: Path, evidence: str) -> Path:
    """The checkpoint as it reaches poolkit with ``evidence``, the only thing that says "reranker"."""
    if evidence == "hub id":
        return hub_snapshot(tmp_path, checkpoint, "Qwen/Qwen3-VL-Reranker-2B")
    if evidence == "folder name":
        return Path(_copy(checkpoint, tmp_path / "Qwen3-VL-Reranker-2B"))
    path = Path(_copy(checkpoint, tmp_path / "checkpoint"))
    if evidence == "model card":
        (path / "README.md").write_text(CARD)
    else:
        (path / "scripts").mkdir()
        (path / "scripts" / "qwen3_vl_reranker.py").write_text("class Qwen3VLReranker():\n    pass\n")
    return path


def _copy(source: Path, target: Path) -> str:
    import shutil

    return shutil.copytree(source, target)


@pytest.mark.parametrize("evidence", ["hub id", "model card", "script", "folder name"])
def test_recognised_from_what_it_ships(checkpoint: Path, expected: list[float], tmp_path: Path, evidence: str) -> None:
    llm = LLM(str(shipped(tmp_path, checkpoint, evidence)), dtype="float32")
    assert llm.score_type == "cross-encoder"
    described = llm.model.describe()
    assert described["llm_reranker"]["value"] == "Qwen3-VL-Reranker"
    assert described["llm_reranker"]["source"].startswith(
        {"hub id": "hub id", "model card": "model card", "script": "the publisher's script", "folder name": "folder name"}[evidence]
    )
    assert described["warnings"] == []
    assert llm.model.hf_config.score_template == "qwen3_vl_reranker"
    assert scores(llm) == pytest.approx(expected, abs=ATOL)


def test_instruction_and_rerank(checkpoint: Path, expected: list[float], tmp_path: Path) -> None:
    llm = LLM(str(shipped(tmp_path, checkpoint, "hub id")), dtype="float32")
    instruction = "Retrieve images or text relevant to the user's query."
    assert scores(llm, instruction=instruction) == pytest.approx(reference(checkpoint, QUERY, DOCS, instruction), abs=ATOL)
    ranked = llm.rerank(QUERY, DOCS)
    assert [r.relevance_score for r in ranked] == pytest.approx(sorted(expected, reverse=True), abs=ATOL)


def test_image_documents(checkpoint: Path, tmp_path: Path) -> None:
    """An image document is its placeholder after ``<Document>:``, as the script's image part renders."""
    images = [picture(40, 24, 1), picture(37, 53, 2)]
    llm = LLM(str(shipped(tmp_path, checkpoint, "hub id")), dtype="float32")
    docs = [DOCS[0], *({"content": [{"type": "image_pil", "image_pil": image}]} for image in images)]
    got = [s.outputs.score for s in llm.score(QUERY, docs)]
    assert got == pytest.approx(reference(checkpoint, QUERY, [DOCS[0], *images]), abs=ATOL)


def test_the_vllm_way(checkpoint: Path, expected: list[float]) -> None:
    """vLLM's spelling (hf_overrides and its score template) scores the same; without a template it
    scores the plain pair, as vLLM does."""
    llm = LLM(str(checkpoint), hf_overrides=VLLM_OVERRIDES, dtype="float32")
    assert llm.score_type == "cross-encoder"
    assert llm.model.describe()["llm_reranker"]["value"] == "classifier_from_token"
    assert scores(llm, chat_template=VLLM_TEMPLATE) == pytest.approx(expected, abs=ATOL)


def test_an_embedder_stays_an_embedder(checkpoint: Path, tmp_path: Path) -> None:
    """Qwen3-VL-Embedding's card names the reranker too, but is no reranker's: a Qwen3-VL checkpoint
    recognised as none is an embedder of its last token, unwarned."""
    path = Path(_copy(checkpoint, tmp_path / "checkpoint"))
    (path / "README.md").write_text(
        "---\nlicense: apache-2.0\ntags:\n- transformers\n- multimodal embedding\n---\n# Qwen3-VL-Embedding-2B\n\n"
        "The **Qwen3-VL-Embedding** and **Qwen3-VL-Reranker** model series ...\n"
    )
    llm = LLM(str(path), dtype="float32")
    assert llm.score_type == "bi-encoder"
    described = llm.model.describe()
    assert "llm_reranker" not in described and described["warnings"] == []


def test_a_reranker_checkpoint_without_its_lm_head_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from poolkit.contracts.errors import ModelLoadError

    path = hub_snapshot(tmp_path, checkpoint, "Qwen/Qwen3-VL-Reranker-2B")
    (file,) = path.glob("*.safetensors")
    tensors = {k: v for k, v in load_file(str(file)).items() if not k.startswith("lm_head.")}
    save_file(tensors, str(file), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lm_head.weight") as info:
        LLM(str(path), dtype="float32")
    assert "\n" not in str(info.value)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    tied = LLM(str(path), dtype="float32")  # tied: the input embeddings are the LM head
    assert tied.model.describe()["llm_reranker"]["value"] == "Qwen3-VL-Reranker"
