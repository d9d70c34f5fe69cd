"""``poolkit bench-standin``: the host/device overlap on the CPU stand-in for an accelerator.

The stand-in (:mod:`poolkit.runtime.standin`) runs each batch in ``tokens / rate`` seconds of a
device clock while the host goes on, so its device-bound rate is ``rate`` tokens per second and
anything below it is the host's doing. One run measures, on the same texts and model:

- ``from_ids``: ``embed`` of the texts' token ids (no tokenization), with the stand-in: the
  device-bound rate as the engine reaches it (queueing and packing only);
- ``tokenize``: the engine's tokenization alone (no model);
- ``from_text``: ``embed`` of the texts with the stand-in, tokenization included: the issue's
  target is at least 0.9 x the slower of the two above (tokenization overlapping the device);
- ``served`` (unless ``--no-server``): ``poolkit serve`` with the stand-in under ``--clients``
  closed-loop clients of ``--inputs`` texts a request, tokens per second of its answers: the target
  is at least 0.8 x ``from_text``.

Rates are tokens per second of the texts' own token counts; ratios compare figures of one run.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ...contracts.io import Prompt
from ...contracts.params import PoolingParams
from ...runtime.standin import ENV, attach
from .corpus import make_corpus

#: Truncated to the model's limit, as every figure here is.
TRUNCATE = {"truncate_prompt_tokens": -1}


def _best(fn: Any, reps: int) -> float:
    """The fastest of ``reps`` timed calls, after one untimed call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(
    model: str,
    rate: float,
    *,
    texts: int = 4000,
    words: float = 40.0,
    reps: int = 2,
    server: bool = True,
    clients: int = 32,
    inputs: int = 8,
    seconds: float = 20.0,
    seed: int = 0,
) -> dict[str, Any]:
    """The figures of the module docstring, as one dict (rates in tokens per second)."""
    from ...api.llm import LLM

    corpus = make_corpus(texts, words, 0.8, seed)
    llm = LLM(model)
    device = attach(llm, rate)
    outputs = llm.embed(corpus, tokenization_kwargs=TRUNCATE)
    tokens = sum(len(o.prompt_token_ids) for o in outputs)
    ids = [{"prompt_token_ids": o.prompt_token_ids} for o in outputs]
    params = PoolingParams(truncate_prompt_tokens=-1)
    prompts = [Prompt(text=t) for t in corpus]
    report: dict[str, Any] = {
        "model": model, "texts": texts, "tokens_per_text": round(tokens / texts, 1), "standin_rate": rate,
        "max_batch_tokens": llm.engine.max_batch_tokens,
    }
    report["from_ids"] = tokens / _best(lambda: llm.embed(ids), reps)
    report["tokenize"] = tokens / _best(lambda: llm.engine.tokenize(prompts, [params] * len(prompts)), reps)
    busy = device.busy_seconds
    whole = _best(lambda: llm.embed(corpus, tokenization_kwargs=TRUNCATE), reps)
    report["from_text"] = tokens / whole
    report["device_busy_from_text"] = round((device.busy_seconds - busy) / (reps + 1) / whole, 3)
    floor = min(report["from_ids"], report["tokenize"])
    report["from_text_vs_slower_stage"] = round(report["from_text"] / floor, 3)
    report["from_ids_vs_rate"] = round(report["from_ids"] / rate, 3)
    if server:
        report.update(_served(model, rate, clients, inputs, seconds, tokens / texts))
        report["served_vs_from_text"] = round(report["served"] / report["from_text"], 3)
    for key in ("from_ids", "tokenize", "from_text", "served"):
        if key in report:
            report[key] = round(report[key])
    return report


def _served(model: str, rate: float, clients: int, inputs: int, seconds: float, tokens_per_text: float) -> dict[str, Any]:
    from ...config.settings import EngineArgs
    from .load import StartedServer, run_load

    env = dict(os.environ, **{ENV: str(rate)})
    started = StartedServer(EngineArgs(model=model), env=env)
    try:
        cpu, wall = _cpu_seconds(started.proc.pid), time.perf_counter()
        load = run_load(started.url, clients=clients, seconds=seconds, inputs_per_request=inputs).as_dict()
        cpu_after, wall_after = _cpu_seconds(started.proc.pid), time.perf_counter()
    finally:
        started.stop()
    report = {
        "served": load["inputs_per_s"] * tokens_per_text,
        "served_requests_per_s": load["requests_per_s"],
        "served_p99_ms": load["p99_ms"],
        "served_status_codes": load["status_codes"],
    }
    if cpu is not None and cpu_after is not None:
        report["served_server_cores"] = round((cpu_after - cpu) / (wall_after - wall), 2)
    return report


def _cpu_seconds(pid: int) -> float | None:
    """The CPU seconds a process has used, all its threads together (Linux's ``/proc``), or ``None``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def format_standin(report: dict[str, Any]) -> str:
    """The report as lines of text."""
    rate = report["standin_rate"]
    lines = [
        f"{report['model']}: {report['texts']} texts of {report['tokens_per_text']} tokens, stand-in at {rate:,.0f} tokens/s",
        f"  from token ids  {report['from_ids']:>12,} tok/s  ({report['from_ids_vs_rate']:.2f} x the stand-in's rate)",
        f"  tokenize only   {report['tokenize']:>12,} tok/s",
        f"  from text       {report['from_text']:>12,} tok/s  ({report['from_text_vs_slower_stage']:.2f} x the slower stage; "
        f"device busy {report['device_busy_from_text']:.0%})",
    ]
    if "served" in report:
        lines.append(
            f"  served          {report['served']:>12,.0f} tok/s  ({report['served_vs_from_text']:.2f} x from text; "
            f"{report['served_requests_per_s']} req/s, p99 {report['served_p99_ms']} ms, {report['served_status_codes']}"
            + (f"; the server busy on {report['served_server_cores']} cores" if "served_server_cores" in report else "") + ")"
        )
    return "\n".join(lines)
