# Port of vllm tests/models/language/pooling/test_gritlm.py
# parasail-ai/GritLM-7B-vllm (hub-only, 7B) -> a tiny GritLM laid out as it is (tiny_published.build_gritlm:
# "GritLM" on a Mistral body, Mistral's SentencePiece pieces for <|user|> and <|embed|>), with vLLM's
# queries, documents and instructions (GritLM's README).
# DEPARTURE: test_find_array: vLLM tests GritLMMeanPool._find_array (start and end indices, a ValueError
# for a negative start); poolkit's GritLM searches from a start index only (decoders._find), so the
# end-index cases and the ValueError are not ported; the start-index cases are, on the same array.
# DEPARTURE: test_gritlm_offline_embedding / test_gritlm_api_server_embedding check the published
# model's cosines (0.609, 0.101, 0.120, 0.534); random weights have other values, so each embedding is
# held to the reference written out in tests/models/test_model_rows.py (transformers' MistralModel run
# bidirectionally, the mean after the instruction), and the server's to the offline ones.
# Not ported: test_gritlm_offline_generate, test_gritlm_api_server_generate (text generation; poolkit
# serves pooling only).
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as T
from scipy.spatial.distance import cosine

from poolkit import LLM
from poolkit.builtin_models.decoders.gritlm import _find

MODEL_NAME = "parasail-ai/GritLM-7B-vllm"
MAX_MODEL_LEN = 2048


def _arr(arr):
    return np.array(arr)


def test_find_array():
    arr = _arr([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]).tolist()

    assert _find(arr, [3, 4, 5], start=0) == 3
    assert _find(arr, [3, 4, 5], start=1) == 3
    assert _find(arr, [3, 4, 5], start=5) == -1
    assert _find(arr, [3, 5], start=0) == -1


@pytest.fixture(scope="module")
def gritlm(tmp_path_factory):
    from tiny_published import build_gritlm

    return build_gritlm(tmp_path_factory.mktemp("gritlm") / "GritLM-7B-vllm")


def run_llm_encode(llm, queries, instruction):
    outputs = llm.embed([instruction + q for q in queries])
    return [output.outputs.embedding for output in outputs]


def gritlm_instruction(instruction):
    return "<|user|>\n" + instruction + "\n<|embed|>\n" if instruction else "<|embed|>\n"


def get_test_data():
    """vLLM's data from README.md in https://github.com/ContextualAI/gritlm, the documents cut to their first sentences."""
    q_instruction = gritlm_instruction("Given a scientific paper title, retrieve the paper's abstract")
    queries = ["Bitcoin: A Peer-to-Peer Electronic Cash System", "Generative Representational Instruction Tuning"]
    d_instruction = gritlm_instruction("")
    documents = [
        "A purely peer-to-peer version of electronic cash would allow online payments to be sent directly from one "
        "party to another without going through a financial institution.",
        "All text-based language problems can be reduced to either generation or embedding. Current models only "
        "perform well at one or the other.",
    ]
    return queries, q_instruction, documents, d_instruction


def reference(path, instruction, texts):
    config = T.AutoConfig.from_pretrained(str(path))
    config.is_causal, config.sliding_window = False, None
    model = T.MistralModel.from_pretrained(str(path), config=config).eval()
    tok = T.AutoTokenizer.from_pretrained(str(path))
    skip = len(tok(instruction)["input_ids"])
    rows = []
    with torch.inference_mode():
        for text in texts:
            hidden = model(input_ids=torch.tensor([tok(instruction + text)["input_ids"]])).last_hidden_state[0]
            rows.append(F.normalize(hidden[skip:].mean(0), dim=-1).tolist())
    return rows


def validate_embed_output(path, q_rep, d_rep):
    queries, q_instruction, documents, d_instruction = get_test_data()
    for got, want in zip(q_rep + d_rep, reference(path, q_instruction, queries) + reference(path, d_instruction, documents)):
        assert 1 - cosine(got, want) == pytest.approx(1.0, abs=1e-5)
        assert np.abs(np.array(got) - np.array(want)).max() <= 1e-4


def test_gritlm_offline_embedding(gritlm):
    queries, q_instruction, documents, d_instruction = get_test_data()
    llm = LLM(str(gritlm), max_model_len=MAX_MODEL_LEN)
    d_rep = run_llm_encode(llm, documents, d_instruction)
    q_rep = run_llm_encode(llm, queries, q_instruction)
    validate_embed_output(gritlm, q_rep, d_rep)


def test_gritlm_api_server_embedding(gritlm):
    import openai
    from served import served

    queries, q_instruction, documents, d_instruction = get_test_data()
    llm = LLM(str(gritlm), max_model_len=MAX_MODEL_LEN)
    with served(llm, served_model_name=MODEL_NAME) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        d_rep = [d.embedding for d in client.embeddings.create(model=MODEL_NAME, input=[d_instruction + d for d in documents]).data]
        q_rep = [d.embedding for d in client.embeddings.create(model=MODEL_NAME, input=[q_instruction + q for q in queries]).data]
    validate_embed_output(gritlm, q_rep, d_rep)
    offline = run_llm_encode(llm, queries, q_instruction)
    assert np.abs(np.array(q_rep) - np.array(offline)).max() <= 1e-6
