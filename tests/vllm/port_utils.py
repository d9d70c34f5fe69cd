"""Helpers shared by the ports of vLLM's pooling tests (tests/vllm/).

vLLM's own helpers, reproduced so the ported tests read like the originals:
``check_embeddings_close`` and ``matryoshka_fy`` (vllm tests/models/utils.py), ``softmax``
(the same file: sigmoid for one output, softmax otherwise), ``run_embedding_correctness_test``
(tests/models/language/pooling/embed_utils.py) and the ``example_prompts`` fixture's texts
(tests/prompts/example.txt). The model builders make the offline stand-ins for vLLM's hub models.
The last section holds what the documentation examples' two modules share.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# vllm tests/prompts/example.txt, read by vLLM's ``example_prompts`` fixture.
EXAMPLE_PROMPTS = [
    "vLLM is a high-throughput and memory-efficient inference and serving engine for LLMs.\n",
    "Briefly describe the major milestones in the development of artificial intelligence from 1950 to 2020.\n",
    "Compare and contrast artificial intelligence with human intelligence in terms of processing information.\n",
    "Describe the basic components of a neural network and how it can be trained.\n",
    "Write a short story about a robot that dreams for the first time.\n",
    "Analyze the impact of the COVID-19 pandemic on global economic structures and future business models.\n",
    "Explain the cultural significance of the Mona Lisa painting, and how its perception might vary in Western versus Eastern societies.\n",
    "Translate the following English sentence into Japanese, French, and Swahili: 'The early bird catches the worm.'\n",
]

# The chat template vLLM's server tests pass with --chat-template.
DUMMY_CHAT_TEMPLATE = (
    """{% for message in messages %}{{message['role'] + ': ' + message['content'] + '\\n'}}{% endfor %}"""
)


# A ChatML template (the layout of Qwen2.5's), for the Qwen stand-ins whose hub models ship one.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def check_embeddings_close(
    *,
    embeddings_0_lst: Sequence[Sequence[float]],
    embeddings_1_lst: Sequence[Sequence[float]],
    name_0: str,
    name_1: str,
    tol: float = 1e-3,
) -> None:
    assert len(embeddings_0_lst) == len(embeddings_1_lst)
    for prompt_idx, (embeddings_0, embeddings_1) in enumerate(zip(embeddings_0_lst, embeddings_1_lst)):
        assert len(embeddings_0) == len(embeddings_1), f"Length mismatch: {len(embeddings_0)} vs. {len(embeddings_1)}"
        sim = F.cosine_similarity(torch.as_tensor(embeddings_0).float(), torch.as_tensor(embeddings_1).float(), dim=0)
        fail_msg = (
            f"Test{prompt_idx}:\nCosine similarity: \t{sim:.4f}"
            f"\n{name_0}:\t{list(embeddings_0)[:16]!r}\n{name_1}:\t{list(embeddings_1)[:16]!r}"
        )
        assert sim >= 1 - tol, fail_msg


def matryoshka_fy(tensor: Any, dimensions: int) -> torch.Tensor:
    tensor = torch.as_tensor(tensor)
    tensor = tensor[..., :dimensions]
    return F.normalize(tensor, p=2, dim=1)


def softmax(data: torch.Tensor) -> torch.Tensor:
    if data.shape[-1] == 1:
        return F.sigmoid(data)
    return F.softmax(data, dim=-1)


def run_embedding_correctness_test(hf_model: Any, inputs: list[str], vllm_outputs: Sequence[Sequence[float]], dimensions: int | None = None) -> None:
    """vLLM's embed_utils helper; ``hf_model`` is a sentence-transformers model on the same weights."""
    hf_outputs = hf_model.encode(inputs)
    if dimensions:
        hf_outputs = matryoshka_fy(hf_outputs, dimensions)
    check_embeddings_close(embeddings_0_lst=hf_outputs, embeddings_1_lst=vllm_outputs, name_0="hf", name_1="vllm", tol=1e-2)


class EncoderScoringHfRunner:
    """vllm tests/entrypoints/pooling/scoring/util.py: cosine of sentence-transformers embeddings."""

    def __init__(self, st_model: Any):
        self.model = st_model

    @torch.inference_mode()
    def predict(self, prompts: list[list[str]], *args: Any, **kwargs: Any) -> torch.Tensor:
        hf_embeddings = [self.model.encode(prompt) for prompt in prompts]
        return torch.as_tensor([F.cosine_similarity(*map(torch.tensor, pair), dim=0) for pair in hf_embeddings])


# -- offline stand-ins for vLLM's hub models ------------------------------------------------------


def set_chat_template(model_dir: Path, template: str) -> Path:
    """Write ``template`` as the tokenizer's chat template (vLLM's ``--chat-template`` equivalent)."""
    cfg = model_dir / "tokenizer_config.json"
    data = json.loads(cfg.read_text())
    data["chat_template"] = template
    cfg.write_text(json.dumps(data, indent=2))
    return model_dir


def set_model_max_length(model_dir: Path, n: int) -> Path:
    cfg = model_dir / "tokenizer_config.json"
    data = json.loads(cfg.read_text())
    data["model_max_length"] = n
    cfg.write_text(json.dumps(data, indent=2))
    return model_dir


def build_apeach(out: Path) -> Path:
    """Stand-in for jason9693/Qwen2.5-1.5B-apeach: a Qwen2ForSequenceClassification with two
    labels named as apeach's config names them ("Default", "Spoiled")."""
    from tiny_models import build_qwen

    labels = {0: "Default", 1: "Spoiled"}
    build_qwen(out, "qwen2", "classify", num_labels=2, init_range=0.5, id2label=labels,
               label2id={v: k for k, v in labels.items()})
    return set_chat_template(out, CHATML_TEMPLATE)


def build_internlm_reward(out: Path) -> Path:
    """Stand-in for internlm/internlm2-1_8b-reward (a decoder with a one-output ``v_head`` on every
    token): a Qwen2ForTokenClassification with one label and a ChatML chat template of its own (the
    server tests override it with --chat-template, as vLLM's do)."""
    from tiny_models import build_qwen

    build_qwen(out, "qwen2", "token_classify", num_labels=1, init_range=0.5)
    return set_chat_template(out, CHATML_TEMPLATE)


def build_bge_reranker(out: Path, max_len: int = 128) -> Path:
    """Stand-in for BAAI/bge-reranker-base: an XLMRobertaForSequenceClassification with one label
    and ``max_len`` tokens of context."""
    from tiny_models import build_classifier

    return build_classifier(out, "xlm-roberta", num_labels=1, max_len=max_len)


def build_qwen3_seq_cls(out: Path) -> Path:
    """Stand-in for tomaarsen/Qwen3-Reranker-0.6B-seq-cls: a Qwen3ForSequenceClassification with one
    label and a 512-token context (the tiny default, 128, is shorter than vLLM's long documents)."""
    from tiny_models import build_qwen

    build_qwen(out, "qwen3", "classify", num_labels=1, init_range=0.5, max_position_embeddings=512)
    return set_model_max_length(out, 512)


def build_colbert(out: Path, max_len: int = 128) -> Path:
    """Stand-in for answerdotai/answerai-colbert-small-v1 (HF_ColBERT): a tiny BERT under ``bert.``
    plus a 16-wide ``linear`` projection (``tiny_models.build_stanford_colbert``, no
    artifact.metadata); ``max_len`` tokens of context."""
    from tiny_models import build_stanford_colbert

    return build_stanford_colbert(out, max_len=max_len)


# -- sentence-transformers CrossEncoder exports -------------------------------------------------


def build_modular_bert_cross_encoder(
    path: Path, *, structured: bool = False, pooling_mode: str = "mean", chat_template: str | None = None
) -> tuple[str, list[tuple[str, str]], list[float]]:
    """vLLM's tiny modular BERT CrossEncoder (tests/models/language/pooling/
    test_sentence_transformers_cross_encoder.py): Transformer, Pooling (``pooling_mode``) and a
    one-output Dense, 16 tokens of context. ``structured``: its Transformer declares the "message"
    modality and the tokenizer has a chat template (``chat_template``, or vLLM's ``role:text;`` one
    ending in ``[SEP]``). Returns the export's directory, three pairs and sentence-transformers'
    scores of them."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    base_path = path / "base"
    vocab = {
        token: index
        for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "query", "document", ":", ";", "0", "1", "2", "3", "4"])
    }
    config = BertConfig(
        architectures=["BertModel"],
        attention_probs_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
        hidden_size=128,
        intermediate_size=256,
        max_position_embeddings=32,
        num_attention_heads=4,
        num_hidden_layers=1,
        vocab_size=len(vocab),
    )
    torch.manual_seed(0)
    bert = BertModel(config)
    with torch.no_grad():
        token_types = bert.embeddings.token_type_embeddings.weight
        token_types[0].zero_()
        token_types[1].copy_(torch.linspace(-1.0, 1.0, config.hidden_size))
    bert.save_pretrained(base_path)

    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=False, model_max_length=16)
    if structured:
        tokenizer.chat_template = chat_template or (
            "{% for message in messages %}{{ message['role'] }}:"
            "{% for item in message['content'] %}{{ item['text'] }}{% endfor %};"
            "{% endfor %}[SEP]"
        )
    tokenizer.save_pretrained(base_path)

    transformer = Transformer(
        str(base_path),
        max_seq_length=16,
        module_output_name="token_embeddings",
        modality_config={
            "text": {"method": "forward", "method_output_name": "last_hidden_state"},
            "message": {"method": "forward", "method_output_name": "last_hidden_state", "format": "structured"},
        }
        if structured
        else None,
    )
    pooling = Pooling(config.hidden_size, pooling_mode=pooling_mode, include_prompt=True)
    dense = Dense(
        config.hidden_size,
        1,
        activation_function=torch.nn.Identity(),
        init_weight=torch.linspace(-0.5, 0.5, config.hidden_size).unsqueeze(0),
        init_bias=torch.tensor([0.1]),
        module_output_name="scores",
    )
    cross_encoder = CrossEncoder(modules=[transformer, pooling, dense], activation_fn=torch.nn.Identity(), device="cpu")
    export_path = path / "export"
    cross_encoder.save_pretrained(export_path)

    document = " ".join(["document"] * 21)
    pairs = [("query", document), ("query query query", document), ("query", "document")]
    reference_scores = cross_encoder.predict(pairs).tolist()
    return str(export_path), pairs, reference_scores


def build_logit_score_cross_encoder(
    path: Path,
    false_id: int | None,
    tied: bool,
    *,
    multimodal: bool = False,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str = "match",
    words: Sequence[str] = (),
) -> tuple[str, list[Any], list[float], list[float], list[list[int]]]:
    """vLLM's tiny LogitScore CrossEncoder (tests/models/language/pooling/
    test_sentence_transformers_cross_encoder.py): a Qwen3 causal LM (Qwen3-VL with ``multimodal``)
    read through "yes" (and "no" as ``false_id``), a word-level vocabulary, a structured chat template
    with a generation prompt, saved ``prompts`` (default ``{"match": "match"}``) and
    ``default_prompt_name``. ``words`` extend the vocabulary. Returns the export's directory, the
    score pairs, sentence-transformers' scores and raw scores, and its token ids of the pairs."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.modules import LogitScore, Transformer
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import Qwen3Config, Qwen3ForCausalLM, TokenizersBackend

    base_path = path / "base"
    vocab = {
        token: index
        for index, token in enumerate(
            ["[PAD]", "[UNK]", "[EOS]", "query", "document", "no", "yes", "system", "assistant", ":", ";", "match", "extra",
             "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", *words]
        )
    }
    tokenizer_backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer_backend.pre_tokenizer = Whitespace()
    tokenizer = TokenizersBackend(
        tokenizer_object=tokenizer_backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        eos_token="[EOS]",
        model_max_length=64,
        model_input_names=["input_ids", "attention_mask"],
        additional_special_tokens=["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
        chat_template=(
            "{% for message in messages %}{{ message['role'] }}:"
            "{% for item in message['content'] %}"
            "{% if item['type'] == 'image' %}"
            "<|vision_start|><|image_pad|><|vision_end|>"
            "{% else %}{{ item['text'] }}{% endif %}{% endfor %};"
            "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
        ),
    )
    config = Qwen3Config(
        hidden_size=128, intermediate_size=256, head_dim=32, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=1, vocab_size=len(vocab), max_position_embeddings=128, tie_word_embeddings=tied,
        pad_token_id=0, eos_token_id=2,
    )
    torch.manual_seed(123)
    if multimodal:
        from transformers import (
            Qwen2VLImageProcessor,
            Qwen3VLConfig,
            Qwen3VLForConditionalGeneration,
            Qwen3VLProcessor,
            Qwen3VLTextConfig,
            Qwen3VLVideoProcessor,
            Qwen3VLVisionConfig,
        )

        text_config = Qwen3VLTextConfig(
            hidden_size=128, intermediate_size=256, head_dim=32, num_attention_heads=4, num_key_value_heads=2,
            num_hidden_layers=1, vocab_size=len(vocab), max_position_embeddings=128,
            rope_parameters={"rope_type": "default", "mrope_section": [6, 5, 5], "mrope_interleaved": True},
        )
        vision_config = Qwen3VLVisionConfig(
            depth=1, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=128,
            num_position_embeddings=64, deepstack_visual_indexes=[],
        )
        vl_config = Qwen3VLConfig(
            text_config=text_config, vision_config=vision_config, image_token_id=vocab["<|image_pad|>"],
            video_token_id=vocab["<|video_pad|>"], vision_start_token_id=vocab["<|vision_start|>"],
            vision_end_token_id=vocab["<|vision_end|>"], tie_word_embeddings=tied,
        )
        Qwen3VLForConditionalGeneration(vl_config).save_pretrained(base_path)
        processor = Qwen3VLProcessor(
            tokenizer=tokenizer,
            chat_template=tokenizer.chat_template,
            image_processor=Qwen2VLImageProcessor(patch_size=16, size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64}),
            video_processor=Qwen3VLVideoProcessor(),
        )
        processor.save_pretrained(base_path)
    else:
        Qwen3ForCausalLM(config).save_pretrained(base_path)
        tokenizer.save_pretrained(base_path)
    transformer = Transformer(
        str(base_path),
        transformer_task="any-to-any" if multimodal else "text-generation",
        module_output_name="causal_logits",
        modality_config={
            "text": {"method": "forward", "method_output_name": "logits"},
            **({"image": {"method": "forward", "method_output_name": "logits"}} if multimodal else {}),
            "message": {"method": "forward", "method_output_name": "logits", "format": "structured"},
        },
        processing_kwargs={"chat_template": {"add_generation_prompt": True}},
    )
    cross_encoder = CrossEncoder(
        modules=[transformer, LogitScore(true_token_id=6, false_token_id=false_id)],
        num_labels=1,
        device="cpu",
        prompts=prompts or {"match": "match"},
        default_prompt_name=default_prompt_name,
    )
    export_path = path / "export"
    cross_encoder.save_pretrained(export_path)
    pairs = [("query", "document"), ("query extra", "document extra extra"), ("query", " ".join(["document"] * 70))]
    if multimodal:
        from PIL import Image

        image = Image.new("RGB", (64, 64), color=(35, 100, 180))
        pairs = [("query", image), (image, "document")]
    scores = cross_encoder.predict(pairs).tolist()
    raw_scores = cross_encoder.predict(pairs, activation_fn=torch.nn.Identity()).tolist()
    features = cross_encoder.preprocess(pairs, prompt="match")
    token_ids = [ids[mask.bool()].tolist() for ids, mask in zip(features["input_ids"], features["attention_mask"])]
    if multimodal:
        import base64
        import io

        buf = io.BytesIO()
        image.save(buf, format="PNG")
        image_input = {"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}]}
        score_pairs = [("query", image_input), (image_input, "document")]
    else:
        score_pairs = [(query, document) for query, document in pairs]
    return str(export_path), score_pairs, scores, raw_scores, token_ids


def openai_client(test_client: Any) -> Any:
    """The official ``openai`` client, talking to a FastAPI TestClient (an httpx.Client)."""
    import openai

    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=test_client, max_retries=0)


# -- vllm/utils/serial_utils.py: embed_dtype / endianness decoding -------------------------------

EMBED_DTYPE_TO_TORCH_DTYPE = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
EMBED_DTYPES = list(EMBED_DTYPE_TO_TORCH_DTYPE)
ENDIANNESS = ["native", "little", "big"]
#: poolkit does not produce fp8 embed_dtypes (docs/server.md, "Differences from vLLM").


def binary2tensor(binary: bytes, shape: tuple, embed_dtype: str, endianness: str) -> torch.Tensor:
    import sys

    import numpy as np

    itemsize = torch.empty((), dtype=EMBED_DTYPE_TO_TORCH_DTYPE[embed_dtype]).element_size()
    view = {1: np.uint8, 2: np.uint16, 4: np.uint32}[itemsize]
    array = np.frombuffer(binary, dtype=view).copy()
    if endianness != "native" and endianness != sys.byteorder:
        array = array.byteswap()
    raw = torch.from_numpy(array.view({1: np.int8, 2: np.int16, 4: np.int32}[itemsize]))
    return raw.view(EMBED_DTYPE_TO_TORCH_DTYPE[embed_dtype]).reshape(shape)


def build_metadata_items(embed_dtype: str, endianness: str, shape: tuple, n_request: int) -> list[dict]:
    size = torch.empty((), dtype=EMBED_DTYPE_TO_TORCH_DTYPE[embed_dtype]).element_size()
    n = 1
    for s in shape:
        n *= s
    return [
        {"index": i, "embed_dtype": embed_dtype, "endianness": endianness, "start": i * n * size,
         "end": (i + 1) * n * size, "shape": list(shape)}
        for i in range(n_request)
    ]


def decode_pooling_output(items: list[dict], body: bytes) -> list[torch.Tensor]:
    items = sorted(items, key=lambda x: x["index"])
    return [binary2tensor(body[x["start"]:x["end"]], tuple(x["shape"]), x["embed_dtype"], x["endianness"]) for x in items]


def compute_maxsim_score(q_emb: torch.Tensor, d_emb: torch.Tensor) -> torch.Tensor:
    """vllm entrypoints/pooling/scoring/utils.py: for each query token, the best dot product with
    any document token, summed."""
    return (q_emb.float() @ d_emb.float().T).max(dim=-1).values.sum()


class ColBERTScoringHfRunner:
    """vllm tests/entrypoints/pooling/scoring/util.py: transformers' encoder, the checkpoint's
    ``linear`` projection, L2 normalisation, MaxSim."""

    def __init__(self, model_name: str, linear_weights_key: str):
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_name)
        self.model = AutoModel.from_pretrained(model_name, attn_implementation="eager").eval()
        weights = load_file(str(Path(model_name) / "model.safetensors"))
        self.linear_weight = weights[linear_weights_key].float()

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> list[torch.Tensor]:
        embeddings = []
        for text in texts:
            inputs = self.tokenizer(text, return_tensors="pt")
            hidden = self.model(**inputs).last_hidden_state.float()
            projected = F.linear(hidden, self.linear_weight)
            embeddings.append(F.normalize(projected, p=2, dim=-1).squeeze(0))
        return embeddings

    @torch.inference_mode()
    def predict(self, prompts: list[list[str]], *args: Any, **kwargs: Any) -> torch.Tensor:
        hf_embeddings = [self(prompt) for prompt in prompts]
        return torch.as_tensor([compute_maxsim_score(*pair).item() for pair in hf_embeddings])


# vllm examples/pooling/score/template/qwen3_reranker.jinja
QWEN3_RERANKER_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n<Instruct>: "
    "{{ instruction | default(instruct | default(messages | selectattr(\"role\", \"eq\", \"system\") | "
    "map(attribute=\"content\") | first | default(\"Given a web search query, retrieve relevant passages that "
    "answer the query\", true), true), true) }}\n<Query>: {{ messages | selectattr(\"role\", \"eq\", \"query\") | "
    "map(attribute=\"content\") | first }}\n<Document>: {{ messages | selectattr(\"role\", \"eq\", \"document\") | "
    "map(attribute=\"content\") | first }}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)

# vllm examples/pooling/score/template/bge-reranker-v2-gemma.jinja
BGE_GEMMA_TEMPLATE = (
    "A: {{ (messages | selectattr(\"role\", \"eq\", \"query\") | first).content }}\n"
    "B: {{ (messages | selectattr(\"role\", \"eq\", \"document\") | first).content }}\n"
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)


def build_qwen3_lm(out: Path, max_len: int = 512) -> Path:
    """Stand-in for Qwen/Qwen3-Reranker-0.6B (a Qwen3ForCausalLM answering "yes"/"no")."""
    from tiny_models import build_qwen

    build_qwen(out, "qwen3", "lm", init_range=0.5, max_position_embeddings=max_len)
    return set_model_max_length(out, max_len)


def build_deberta_nli(out: Path) -> Path:
    """Stand-in for cross-encoder/nli-deberta-v3-small: a tiny DebertaV2ForSequenceClassification
    with three labels (contradiction, neutral, entailment), WordPiece tokenizer; poolkit serves it
    through its transformers fallback."""
    import transformers as T
    from tiny_models import wordpiece_tokenizer

    tok = wordpiece_tokenizer()
    labels = {0: "contradiction", 1: "entailment", 2: "neutral"}
    config = T.DebertaV2Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, pad_token_id=tok.pad_token_id, num_labels=3, id2label=labels,
        label2id={v: k for k, v in labels.items()}, initializer_range=0.5,
    )
    torch.manual_seed(0)
    model = T.DebertaV2ForSequenceClassification(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


class HfClassifier:
    """vLLM's ``hf_runner(..., auto_cls=AutoModelForSequenceClassification).classify`` on the same
    directory, with transformers."""

    def __init__(self, model_dir: Path, auto_cls: Any = None, dtype: str = "float"):
        import transformers as T

        self.tokenizer = T.AutoTokenizer.from_pretrained(str(model_dir))
        torch_dtype = {"float": torch.float32, "float32": torch.float32, "half": torch.float16, "float16": torch.float16}[dtype]
        model = (auto_cls or T.AutoModelForSequenceClassification).from_pretrained(str(model_dir), dtype=torch_dtype)
        self.model = model.eval()

    @torch.inference_mode()
    def classify(self, prompts: list[str]) -> list[list[float]]:
        # vllm tests/conftest.py HfRunner.classify: raw for regression, sigmoid for multi-label,
        # else models.utils.softmax (sigmoid for one label).
        problem_type = getattr(self.model.config, "problem_type", "")
        outputs = []
        for prompt in prompts:
            inputs = self.tokenizer([prompt], return_tensors="pt")
            logits = self.model(**inputs).logits.float()
            if problem_type == "regression":
                outputs.append(logits[0].tolist())
            elif problem_type == "multi_label_classification":
                outputs.append(logits.sigmoid()[0].tolist())
            else:
                outputs.append(softmax(logits)[0].tolist())
        return outputs


def build_ernie(out: Path, token: bool = False, num_labels: int = 3) -> Path:
    """Stand-in for the Ernie-3.0 checkpoints vLLM tests (Forrest20231206/ernie-3.0-base-zh-cls,
    gyr66/Ernie-3.0-base-chinese-finetuned-ner): a tiny Ernie{Sequence,Token}Classification,
    WordPiece tokenizer; poolkit serves it through its transformers fallback."""
    import transformers as T
    from tiny_models import give_segment_ids, wordpiece_tokenizer

    tok = wordpiece_tokenizer()
    labels = {i: f"class_{i}" for i in range(num_labels)}
    config = T.ErnieConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, pad_token_id=tok.pad_token_id, num_labels=num_labels, id2label=labels,
        label2id={v: k for k, v in labels.items()}, initializer_range=0.5,
    )
    torch.manual_seed(0)
    model = (T.ErnieForTokenClassification if token else T.ErnieForSequenceClassification)(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    give_segment_ids(out)
    return out


STEP_TAG = "<extra_0>"


def build_math_prm(out: Path, arch: str = "Qwen2ForProcessRewardModel", labels: int = 2) -> Path:
    """Stand-in for Qwen/Qwen2.5-Math-PRM-7B (Qwen2ForProcessRewardModel: a two-output ``score`` MLP
    on every token, read at the ``<extra_0>`` step tags): the tiny Qwen2 backbone with ``score.0`` /
    ``score.2`` weights, its byte-level BPE given ``<extra_0>`` as a special token, a 2048-token context.
    ``arch="Qwen2ForRewardModel", labels=1`` gives a Qwen2.5-Math-RM-72B stand-in instead."""
    import transformers as T
    from safetensors.torch import save_file
    from tiny_models import bytelevel_bpe_tokenizer

    tok = bytelevel_bpe_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [STEP_TAG]})
    tok.model_max_length = 2048
    config = T.Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, tie_word_embeddings=True, initializer_range=0.2,
    )
    torch.manual_seed(0)
    backbone = T.Qwen2Model(config)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.5)
    tensors = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    tensors.update({
        "score.0.weight": torch.randn(32, 32, generator=g) * 0.3,
        "score.0.bias": torch.randn(32, generator=g) * 0.3,
        "score.2.weight": torch.randn(labels, 32, generator=g) * 0.3,
        "score.2.bias": torch.randn(labels, generator=g) * 0.3,
    })
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = [arch]
    config.num_labels = labels
    config.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def math_prm_reference_logits(model_dir: Path, input_ids: torch.Tensor) -> torch.Tensor:
    """What Qwen2.5-Math-PRM's remote code returns as ``outputs[0]``: the score MLP on transformers'
    Qwen2Model hidden states, every token."""
    import transformers as T
    from safetensors.torch import load_file

    backbone = T.Qwen2Model.from_pretrained(str(model_dir)).eval()
    w = load_file(str(model_dir / "model.safetensors"))
    with torch.inference_mode():
        hidden = backbone(input_ids=input_ids).last_hidden_state
        h = torch.relu(hidden @ w["score.0.weight"].T + w["score.0.bias"])
        return h @ w["score.2.weight"].T + w["score.2.bias"]


def math_step_prompts() -> list[str]:
    """vllm tests/models/language/pooling/test_reward.py ``math_step_prompts``."""
    data = {
        "system": "Please reason step by step, and put your final answer within \\boxed{}. ",
        "query": "Sue lives in a fun neighborhood.  One weekend, the neighbors decided to play a prank on Sue.  On Friday morning, the neighbors placed 18 pink plastic flamingos out on Sue's front yard.  On Saturday morning, the neighbors took back one third of the flamingos, painted them white, and put these newly painted white flamingos back out on Sue's front yard.  Then, on Sunday morning, they added another 18 pink plastic flamingos to the collection. At noon on Sunday, how many more pink plastic flamingos were out than white plastic flamingos?",  # noqa: E501
        "response": [
            "To find out how many more pink plastic flamingos were out than white plastic flamingos at noon on Sunday, we can break down the problem into steps. First, on Friday, the neighbors start with 18 pink plastic flamingos.",  # noqa: E501
            "On Saturday, they take back one third of the flamingos. Since there were 18 flamingos, (1/3 \\times 18 = 6) flamingos are taken back. So, they have (18 - 6 = 12) flamingos left in their possession. Then, they paint these 6 flamingos white and put them back out on Sue's front yard. Now, Sue has the original 12 pink flamingos plus the 6 new white ones. Thus, by the end of Saturday, Sue has (12 + 6 = 18) pink flamingos and 6 white flamingos.",  # noqa: E501
            "On Sunday, the neighbors add another 18 pink plastic flamingos to Sue's front yard. By the end of Sunday morning, Sue has (18 + 18 = 36) pink flamingos and still 6 white flamingos.",  # noqa: E501
            "To find the difference, subtract the number of white flamingos from the number of pink flamingos: (36 - 6 = 30). Therefore, at noon on Sunday, there were 30 more pink plastic flamingos out than white plastic flamingos. The answer is (\\boxed{30}).",  # noqa: E501
        ],
    }
    answer = "<extra_0>".join(data["response"]) + "<extra_0>"
    prompt = f"<im_start>system\n{data['system']}<im_end>\n<im_start>user\n{data['query']}<im_end>\n<im_start>assistant\n{answer}<im_end><|endoftext|>"  # noqa: E501
    return [prompt]


def write_random_lora(
    save_dir: str | Path, base: str | Path, layers: dict[str, tuple[int, int]], targets: list[str], seed: int,
    rank: int = 8, alpha: int = 16,
) -> None:
    """A synthetic PEFT LoRA adapter as vLLM's LoRA tests of pooling models draw one
    (tests/lora/test_nomic_bert_lora.py, test_gte_new_lora.py): random factors on each checkpoint
    layer of ``layers`` (``name: (out, in)``), B scaled by 0.01, and their adapter_config.json."""
    from safetensors.torch import save_file

    rng = torch.Generator().manual_seed(seed)
    weights = {}
    for layer, (rows, cols) in layers.items():
        weights[f"base_model.model.{layer}.lora_A.weight"] = torch.randn(rank, cols, generator=rng)
        weights[f"base_model.model.{layer}.lora_B.weight"] = torch.randn(rows, rank, generator=rng) * 0.01
    config = {
        "peft_type": "LORA", "auto_mapping": None, "base_model_name_or_path": str(base), "revision": None,
        "task_type": None, "inference_mode": True, "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        "fan_in_fan_out": False, "bias": "none", "modules_to_save": None, "init_lora_weights": True,
        "layers_to_transform": None, "layers_pattern": None, "target_modules": targets,
        "exclude_modules": None, "use_rslora": False, "use_dora": False, "loftq_config": None,
    }
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(weights, save_dir / "adapter_model.safetensors")


#: vLLM's examples/pooling/embed/template/vlm2vec_phi3v.jinja: VLM2Vec's chat template, one message of text and image parts.
VLM2VEC_CHAT_TEMPLATE = """\
{%- if messages | length > 1 -%}
    {{ raise_exception('Embedding models should only embed one message at a time') }}
{%- endif -%}

{% set vars = namespace(parts=[], next_image_id=1) %}
{%- for message in messages -%}
    {%- for content in message['content'] -%}
        {%- if content['type'] == 'text' -%}
            {%- set vars.parts = vars.parts + [content['text']] %}
        {%- elif content['type'] == 'image' -%}
            {%- set vars.parts = vars.parts + ['<|image_{i:d}|>'.format(i=vars.next_image_id)] %}
            {%- set vars.next_image_id = vars.next_image_id + 1 %}
        {%- endif -%}
    {%- endfor -%}
{%- endfor -%}
{{ vars.parts | join(' ') }}
"""


# -- the documentation examples (test_docs_examples*.py) -----------------------------------------

MATRYOSHKA = {"is_matryoshka": True}
#: fp32 parity (DESIGN.md §7): embeddings within 1e-4 and cosine 0.99999, logits and probabilities within 1e-4.
ATOL, MIN_COS = 1e-4, 0.99999
HIDDEN = 384  # all-MiniLM-L6-v2's width (e5-small's too)


def poolkit_serve(monkeypatch, *argv: str):
    """``poolkit serve ARGV`` with uvicorn and the model load replaced: the parsed EngineArgs and
    the keyword arguments the server would have started with."""
    from typer.testing import CliRunner

    import poolkit.api.llm
    import poolkit.entrypoints.server
    from poolkit.entrypoints.cli import app as cli_app

    calls: dict = {}

    def fake_run(loader, **kwargs):
        calls["run"] = kwargs
        loader()

    monkeypatch.setattr(poolkit.entrypoints.server, "run", fake_run)
    monkeypatch.setattr(poolkit.api.llm.LLM, "from_args", classmethod(lambda cls, args: calls.setdefault("args", args)))
    result = CliRunner().invoke(cli_app, ["serve", *argv])
    assert result.exit_code == 0, result.output
    return calls["args"], calls["run"]


def assert_embedding_close(got, want) -> None:
    """One embedding against its reference: same size, within ATOL everywhere and MIN_COS."""
    got, want = torch.as_tensor(got, dtype=torch.float32), torch.as_tensor(want, dtype=torch.float32)
    assert got.shape == want.shape, (got.shape, want.shape)
    diff, cos = float((got - want).abs().max()), float(F.cosine_similarity(got, want, dim=-1))
    assert diff <= ATOL and cos >= MIN_COS, f"max |diff| {diff:.3g}, cosine {cos:.7f}"


def st_embedding(minilm_st, text: str, dimensions: int | None = None) -> torch.Tensor:
    """sentence-transformers' embedding of ``text`` on the same weights; with ``dimensions``, cut and
    normalised again as vLLM's matryoshka ``dimensions`` are (vLLM's ``matryoshka_fy``)."""
    vectors = torch.as_tensor(minilm_st.encode([text]))
    return (matryoshka_fy(vectors, dimensions) if dimensions else vectors)[0]
