# Port of vllm tests/entrypoints/pooling/test_offline_params.py
# vLLM builds a scoring LLM with no model behind it (PoolingOfflineMixin, CrossEncoderIOProcessor,
# engine stubbed) to observe the PoolingParams before inference. poolkit has no such seams: the
# same calls run on a real cross-encoder, the tiny one-label XLM-R stand-in (conftest ``bge_reranker``).
import pytest

from poolkit import PoolingParams


def test_score_leaves_caller_pooling_params_untouched(bge_reranker):
    llm = bge_reranker

    params = PoolingParams()
    llm.score("query", "doc", pooling_params=params)

    assert params.task is None, (
        "LLM.score() wrote the model's own pooling task into the caller's "
        "PoolingParams; reusing that object with another pooling model now "
        "fails with 'You cannot overwrite ...' before any inference runs."
    )


def test_score_still_rejects_conflicting_task(bge_reranker):
    llm = bge_reranker

    with pytest.raises(ValueError, match="You cannot overwrite"):
        llm.score("query", "doc", pooling_params=PoolingParams(task="embed"))
