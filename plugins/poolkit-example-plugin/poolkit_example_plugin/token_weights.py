"""An IO processor that uses its model's context: each token of a text, with its text and weight.

It serves ``pooling_task="plugin"`` for a model loaded with
``io_processor_plugin="token_weights"``. The token ids and positions come from the outputs; the
token text needs the model's tokenizer, which the processor reads from ``self.context`` (the
:class:`poolkit.IOContext` of the model it was bound to).
"""

from __future__ import annotations

from typing import Any, Sequence

from poolkit import InvalidRequest, IOProcessor, PoolingParams, Prompt


class TokenWeights(IOProcessor):
    """A text or a list of texts in; per text, its tokens with their weights out.

    A token's weight is the L2 norm of its vector before normalization (``token_embed`` with
    ``use_activation=False``): in a static model it is the token's importance, as model2vec
    uses it.

    Example:
        >>> llm = poolkit.LLM(model=str(path), io_processor_plugin="token_weights")
        >>> (out,) = llm.encode({"data": "hello world"}, pooling_task="plugin")
        >>> out.outputs[0]["tokens"][0]
        {'position': 0, 'id': 1, 'token': 'hello', 'weight': 2.34}
    """

    def parse_data(self, data: Any) -> list[str]:
        texts = [data] if isinstance(data, str) else data
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise InvalidRequest("token_weights data must be a non-empty string or a non-empty list of them")
        return texts

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        return [Prompt(text=text) for text in data]

    def merge_pooling_params(self, params: PoolingParams | None, task: str) -> PoolingParams:
        return (params or PoolingParams()).model_copy(update={"task": "token_embed", "use_activation": False})

    def post_process(self, outputs: Sequence[Any], request_id: str | None = None, data: Any = None) -> list[dict]:
        results = []
        for text, output in zip(data, outputs):
            ids = output.prompt_token_ids
            tokens = self.context.tokenizer.convert_ids_to_tokens(ids)
            weights = output.outputs.data.float().norm(dim=-1).tolist()
            results.append({
                "text": text,
                "tokens": [
                    {"position": i, "id": token_id, "token": token, "weight": weight}
                    for i, (token_id, token, weight) in enumerate(zip(ids, tokens, weights))
                ],
            })
        return results
