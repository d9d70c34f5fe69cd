# Port of sentence-transformers tests/cross_encoder/test_pretrained.py
# ADAPTED: upstream pins the scores of four hub cross-encoders (ms-marco-MiniLM-L6-v2 and
# ms-marco-TinyBERT-L2-v2: BERT; stsb-distilroberta-base: RoBERTa; mxbai-rerank-xsmall-v1: DeBERTa-v2)
# on one query and three answers, rel=1e-4. Offline, the stand-ins are the tiny random BERT and
# RoBERTa classifiers (1 label) and the XLM-R one (3 labels; no DeBERTa-v2 builder here), and the
# pinned scores are sentence-transformers' on the same weights, computed in the test.
from __future__ import annotations

import numpy as np
import pytest
import torch
from st_port_utils import assert_close

QUERY = "is toprol xl the same as metoprolol?"
ANSWERS = [
    "Metoprolol succinate is also known by the brand name Toprol XL. It is the extended-release form of metoprolol. "
    "Metoprolol succinate is approved to treat high blood pressure, chronic chest pain, and congestive heart failure.",
    "Pill with imprint 1 is White, Round and has been identified as Metoprolol Tartrate 25 mg.",
    "Interactions between your drugs No interactions were found between Allergy Relief and metoprolol. "
    "This does not necessarily mean no interactions exist. Always consult your healthcare provider.",
]


@pytest.mark.parametrize("model_name", ["reranker", "stsb_ce", "nli"])
def test_pretrained_model(request: pytest.FixtureRequest, model_name: str) -> None:
    model = request.getfixturevalue(f"{model_name}_model")
    reference = request.getfixturevalue(f"{model_name}_reference")
    pairs = [(QUERY, answer) for answer in ANSWERS]
    expected_score = reference.predict(pairs)
    scores = model.predict(pairs)
    np.testing.assert_allclose(scores, expected_score, rtol=0, atol=1e-4)  # DESIGN.md §7 for logits; a label column each for nli
    # POOLKIT (beyond upstream): the raw logits too, and a batch that splits the pairs.
    assert_close(
        model.predict(pairs, activation_fn=torch.nn.Identity(), batch_size=2),
        reference.predict(pairs, activation_fn=torch.nn.Identity(), batch_size=2),
    )
