# Port of sentence-transformers tests/multi_vector_encoder/test_pretrained.py
# Two stored versions were read (18,923 and 15,834 characters, the newer one with more load paths).
# Upstream pins PyLate's MaxSim scores of eleven hub checkpoints, one per load path (marked slow: it
# downloads them); offline, each load path has a stand-in (below), and the port holds poolkit's scores
# to what sentence-transformers computes on the same stand-in (ADAPTED). The image-document, ColPali
# and ColQwen2 tests are multimodal (INVENTORY.md).
#
# Load paths and their stand-ins (conftest.py, tests/support/tiny_models.py):
# - PyLate v3 (model_type "ColBERT", pylate.models.Dense without module IO names):
#   lightonai/Reason-ModernColBERT -> "pylate-v3", the tiny random BERT saved so, "<s> " / "</s> " prefixes;
# - PyLate saved as a SentenceTransformer: answerdotai/answerai-colbert-small-v1, lightonai/colbertv2.0,
#   lightonai/GTE-ModernColBERT-v1, lightonai/LateOn, lightonai/mLateOn, mixedbread-ai/mxbai-edge-colbert-v0-17m
#   -> "pylate-st", all-MiniLM-L6-v2 + 16-wide Dense with "[unused0] " / "[unused1] " prefixes (``pylate_dir``);
# - colbert-ai HF_ColBERT: colbert-ir/colbertv2.0 -> "stanford" (``stanford_dir``);
# - a decoder with no mask token (EOS query expansion): LiquidAI/LFM2-ColBERT-350M -> "decoder-eos",
#   a tiny random Qwen3 saved PyLate-style;
# - expansion tokens attended to: perplexity-ai/pplx-embed-v1-late-0.6b (remote code upstream) ->
#   "attend-expansion", the tiny random BERT with attend_to_expansion_tokens;
# - a [Q] / [D] prefix with a text prompt: lightonai/ColBERT-Zero -> "prefix-and-prompts".
from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from st_port_utils import ATOL, assert_close, dense

QUERY = "Which planet is known as the Red Planet?"
DOCUMENTS = [
    "Venus is often called Earth's twin because of its similar size and proximity.",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Jupiter, the largest planet in our solar system, has a prominent red spot.",
    "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
]
_PUNCTUATED, _PLAIN = "paris, the capital. of france!", "paris the capital of france"


def _pylate_v3(out: Path, backbone: Path, **config) -> Path:
    """A PyLate v3 save: model_type "ColBERT", the Dense as pylate.models.Dense with no module IO names."""
    from tiny_models import build_pylate_colbert

    build_pylate_colbert(out, backbone, model_type="ColBERT", **config)
    dense_config_path = out / "1_Dense" / "config.json"
    dense_config = json.loads(dense_config_path.read_text())
    dense_config.pop("module_input_name", None)
    dense_config.pop("module_output_name", None)
    dense_config_path.write_text(json.dumps(dense_config))
    modules_path = out / "modules.json"
    modules = json.loads(modules_path.read_text())
    for module in modules:
        if module["type"].endswith("Dense"):
            module["type"] = "pylate.models.Dense.Dense"
    modules_path.write_text(json.dumps(modules))
    return out


@pytest.fixture(scope="module")
def stand_in(request, tmp_path_factory, tiny_bert_dir):
    """``stand_in(name)``: the directory of one load path's stand-in, built once per module."""
    from tiny_models import build_pylate_colbert, build_qwen

    root = tmp_path_factory.mktemp("mve-pretrained")
    markers = {"query_prefix": "<s> ", "document_prefix": "</s> "}
    builders = {
        "pylate-v3": lambda: _pylate_v3(root / "pylate-v3", tiny_bert_dir, query_length=16, document_length=24, **markers),
        "pylate-st": lambda: request.getfixturevalue("pylate_dir"),
        "stanford": lambda: request.getfixturevalue("stanford_dir"),
        "decoder-eos": lambda: build_pylate_colbert(
            root / "decoder-eos", build_qwen(root / "qwen3", "qwen3", "embed"), query_length=32, document_length=48
        ),
        "attend-expansion": lambda: build_pylate_colbert(
            root / "attend-expansion", tiny_bert_dir, query_length=32, attend_to_expansion_tokens=True, **markers
        ),
        "prefix-and-prompts": lambda: build_pylate_colbert(
            root / "prefix-and-prompts",
            tiny_bert_dir,
            query_length=16,
            prompts={"query": "query: ", "document": "passage: "},
            **markers,
        ),
        "pylate-st-skiplist": lambda: build_pylate_colbert(
            root / "pylate-st-skiplist", tiny_bert_dir, query_length=16, skiplist_words=list(string.punctuation), **markers
        ),
    }
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = Path(builders[name]())
        return built[name]

    return get


_LEFT_PADDED_EXPANSION = (
    "on a tokenizer that pads on the left (the tiny Qwen3's, like many decoders'), poolkit appends a short query's "
    "EOS expansion tokens after its text (io_processors/colbert.py ColbertProcessor.pre_process); "
    "sentence-transformers pads the query to the expansion length on the tokenizer's padding side, so the EOS "
    "tokens come first and the text's positions differ (Transformer.preprocess with query_expansion, "
    "MultiVectorEncoder on a PyLate save without a mask token)"
)


@pytest.mark.parametrize(
    "name",
    [
        "pylate-v3",
        "pylate-st",
        "stanford",
        pytest.param("decoder-eos", marks=pytest.mark.xfail(strict=True, reason=_LEFT_PADDED_EXPANSION)),
        "attend-expansion",
        "prefix-and-prompts",
    ],
)
def test_pretrained_multi_vector_maxsim(stand_in, load_mve, load_mve_reference, name: str) -> None:
    # ADAPTED: PyLate's pinned scores of the hub checkpoints -> sentence-transformers' scores on the
    # stand-in of each load path (no trained semantics to pin offline).
    path = stand_in(name)
    model = load_mve(path)
    query_embeddings = model.encode_query([QUERY])
    document_embeddings = model.encode_document(DOCUMENTS)
    similarities = model.similarity(query_embeddings, document_embeddings)[0].float().cpu()
    reference = load_mve_reference(path)
    expected = reference.similarity(reference.encode_query([QUERY]), reference.encode_document(DOCUMENTS))[0]
    assert_close(similarities, expected, atol=ATOL * max(1.0, float(dense(expected).abs().max())))


_PREFIX_NOT_ONE_PIECE = (
    "poolkit's MultiVectorEncoder.tokenizer is the checkpoint's tokenizer as saved: a colbert-ai / PyLate marker "
    "prefix ('[unused0]', '<s>') tokenizes into pieces (['[', 'unused', '##0', ']']); poolkit inserts the marker "
    "as one token id in encode itself (io_processors/colbert.py split_prefix). sentence-transformers registers "
    "the marker as a special token on its tokenizer (MultiVectorEncoder._register_prefix_tokens), so "
    "model.tokenizer.tokenize(prompt) starts with the marker as one piece"
)


@pytest.mark.parametrize("name", ["pylate-v3", "pylate-st", "stanford", "prefix-and-prompts"])
@pytest.mark.xfail(strict=True, reason=_PREFIX_NOT_ONE_PIECE)
def test_pretrained_prompt_prefix_stays_one_token(stand_in, load_mve, load_mve_reference, name: str) -> None:
    # ADAPTED: the stand-ins that carry a marker prefix (upstream's checkpoints all do). DEPARTURE:
    # upstream reads the raw prefix from the private model._legacy.prefixes; the port takes the
    # reference's prompt's first word (the marker) and checks the reference first.
    path = stand_in(name)
    model, reference = load_mve(path), load_mve_reference(path)
    prompts = {task: prompt for task, prompt in model.prompts.items() if prompt and prompt.strip()}
    assert prompts, f"{name} is expected to carry query / document prompts"
    assert prompts == {task: prompt for task, prompt in reference.prompts.items() if prompt and prompt.strip()}
    for task, prompt in prompts.items():
        prefix = prompt.split()[0]
        assert reference.tokenizer.tokenize(prompt)[:1] == [prefix]
        pieces = model.tokenizer.tokenize(prompt)
        assert pieces[:1] == [prefix], f"The {task!r} prompt {prompt!r} must start with {prefix!r} as one piece, got {pieces}"


@pytest.mark.parametrize("name", ["stanford", "pylate-st-skiplist", "pylate-v3"])
def test_pretrained_legacy_save_seeds_punctuation_skiplist(stand_in, load_mve, load_mve_reference, name: str) -> None:
    # ADAPTED: colbert-ir/colbertv2.0 (artifact.metadata mask_punctuation) -> "stanford";
    # lightonai/colbertv2.0 (skiplist_words in config_sentence_transformers.json) -> "pylate-st-skiplist";
    # lightonai/Reason-ModernColBERT (PyLate v3) -> "pylate-v3".
    path = stand_in(name)
    reference = load_mve_reference(path)
    mask_module = reference[2]
    assert type(mask_module).__name__ == "MultiVectorMask"
    assert mask_module.skiplist_words == list(string.punctuation)
    # DEPARTURE: the mask module's skiplist -> the punctuation (three single-token marks) is left out of
    # poolkit's document vectors, which are the reference's.
    got = load_mve(path).encode_document([_PUNCTUATED, _PLAIN])
    assert got[0].shape[0] == got[1].shape[0]
    expected = reference.encode_document([_PUNCTUATED, _PLAIN])
    assert [tuple(e.shape) for e in got] == [tuple(e.shape) for e in expected]
    for got_item, ref_item in zip(got, expected):
        assert_close(got_item, ref_item)
