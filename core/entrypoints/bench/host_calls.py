"""Workload H's guard on the single-text path: the Python calls one request costs, counted, not timed.

A server of small requests is bound by the host's Python work per request, and that work grows a
few calls at a time as checks and surfaces are added (issue 52 measured the single-text path
20% slower than a release before, from per-request and per-batch look-ups nobody had timed).
Seconds on a shared machine swing by more than that; the number of Python calls does not: for the
same code and libraries it is the same on any machine. Two counts are taken with ``cProfile``:

- ``serve_calls_per_request``: the server's event loop per single-text ``/v1/embeddings`` request,
  each handed to the server's guard as its HTTP front hands a plain request (eight at a time, so
  the batcher merges them as under load); the model runs on the batcher's thread, which is not
  counted;
- ``engine_calls_per_batch``: one ``LLM.embed`` of one prompt of token ids, less the calls inside
  the model's forward pass (the architecture's own code, which depends on its depth).

Each has a budget (:data:`BUDGETS`), the count at the last change that looked at it plus a margin;
``poolkit bench -w H`` reports the counts and says which is over its budget.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import pstats
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...api.llm import LLM

#: The most calls each count may reach before the bench calls it a regression: the counts measured
#: when this guard was written and about a tenth more (issue 52, Python 3.11: 514 a request and
#: 463-476 a batch on a tiny BERT and all-MiniLM-L6-v2; the release before had 497 and 1,096, the
#: kernel registry asked again on every batch).
BUDGETS = {"serve_calls_per_request": 560, "engine_calls_per_batch": 520}


def serve_calls(llm: "LLM", requests: int = 400, clients: int = 8) -> dict[str, float]:
    """The server's event-loop calls (and wall microseconds, without the profiler) per single-text
    request on ``llm``, in this process (no sockets): see the module."""
    app = in_process_app(llm)
    body = json.dumps({"input": "a short text of about ten words to embed here"}).encode()

    async def one() -> None:
        await post(app, b"/v1/embeddings", body)

    async def drive(n: int) -> None:
        async def client(k: int) -> None:
            for _ in range(k):
                await one()

        await asyncio.gather(*(client(n // clients) for _ in range(clients)))

    async def main() -> dict[str, float]:
        async with app.router.lifespan_context(app):
            while not app.state.poolkit.first.ready:
                await asyncio.sleep(0.01)
            await drive(requests // 4)  # warm-up: kernels picked, caches made
            start = time.perf_counter()
            await drive(requests)
            wall = time.perf_counter() - start
            profile = cProfile.Profile()
            profile.enable()
            await drive(requests)
            profile.disable()
        done = requests // clients * clients
        return {"serve_calls_per_request": _calls(profile) / done, "serve_us_per_request": wall / done * 1e6}

    return asyncio.run(main())


def in_process_app(llm: "LLM") -> Any:
    """The server's app on ``llm``, served as ``bench``, for :func:`post` (no sockets)."""
    from ..server import create_app

    app = create_app(llm, served_model_name="bench")
    app.middleware_stack = app.build_middleware_stack()  # the guard is made with the middleware
    return app


async def post(app: Any, path: bytes, body: bytes) -> None:
    """One JSON request to ``app``, handed to the server's guard as its HTTP front hands a plain
    request, inside the app's lifespan.

    Raises:
        RuntimeError: the request was not answered 200.
    """
    from ..server.front import plain_scope, whole_body

    headers = [(b"host", b"x"), (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    gone = asyncio.get_running_loop().create_future()
    status: list[int] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = plain_scope(app, path, headers, gone, server=("127.0.0.1", 8000), client=("127.0.0.1", 50000))
    await app.state.poolkit.guard(scope, whole_body(body, gone), send)
    if status != [200]:
        raise RuntimeError(f"the bench's request was answered {status}")


def engine_calls(llm: "LLM", calls: int = 200) -> float:
    """The Python calls of one ``LLM.embed`` of one prompt of token ids, less those of the model's
    forward pass."""
    arch = llm.model.architecture
    ids = [{"prompt_token_ids": [1, 2, 3, 4]}]
    profile = cProfile.Profile()
    forward = arch.forward

    def unprofiled(*args: Any, **kwargs: Any) -> Any:
        profile.disable()
        try:
            return forward(*args, **kwargs)
        finally:
            profile.enable()

    for _ in range(20):
        llm.embed(ids, use_tqdm=False)
    arch.forward = unprofiled  # an instance attribute: nn.Module.__call__ finds it first
    try:
        profile.enable()
        for _ in range(calls):
            llm.embed(ids, use_tqdm=False)
        profile.disable()
    finally:
        del arch.forward
    return (_calls(profile) - calls) / calls  # less the wrapper's own call


def over_budget(stages: dict[str, float]) -> list[str]:
    """The counts in ``stages`` over their :data:`BUDGETS`, each as ``name count > budget``."""
    return [f"{name} {stages[name]:.0f} > {budget}" for name, budget in BUDGETS.items() if stages.get(name, 0) > budget]


def _calls(profile: cProfile.Profile) -> int:
    return pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
