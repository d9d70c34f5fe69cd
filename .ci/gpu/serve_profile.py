"""Where a served request's time goes: ``poolkit serve`` under the single-text load, every process sampled.

    python .ci/gpu/serve_profile.py [--preset bge-base] [--api-server-counts 1,4] [--seconds 5]
                                    [--device cuda] [--dtype bfloat16]

For each API-process count, the server runs under 256 connections x 1 text (from four client
processes, as ``table.py`` loads it) while ``sampler/sitecustomize.py`` samples the stacks of every
thread of every server process (the engine process, the keeper and the fronts). The samples taken
during the load go to ``$OUT/serve-N.txt``, one line per stack: ``process PID;thread;frames count``.
A summary of each (per thread, its CPU time in cores and the share of samples working; per process,
the busiest frames; with one API process, the batches the engine formed and their size) is printed, so the call's output says where the time went even when the files do not come back. On a
machine without a GPU, ``POOLKIT_STANDIN_TOKENS_PER_S`` with ``--device cpu`` gives the server the
CPU stand-in for one (:mod:`poolkit.runtime.standin`).
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
SAMPLER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sampler")  # its sitecustomize.py

from table import _client  # noqa: E402 (the load table.py runs, from this folder)

from poolkit.config.settings import EngineArgs  # noqa: E402
from poolkit.entrypoints.bench.load import StartedServer  # noqa: E402
from poolkit.entrypoints.bench.presets import resolve_bench_model  # noqa: E402


def read_samples(folder: str) -> collections.Counter:
    """Every process's samples so far, keyed ``process PID;thread;frames``, and each thread's CPU
    seconds, keyed ``#cpu process PID;thread`` (in milliseconds, so that Counter arithmetic keeps them)."""
    counts: collections.Counter = collections.Counter()
    for name in os.listdir(folder):
        if name.endswith(".txt"):
            with open(os.path.join(folder, name)) as f:
                for line in f:
                    if line.startswith("#cpu "):
                        thread, _, seconds = line[5:].rstrip("\n").rpartition(";")
                        counts[f"#cpu process {name[:-4]};{thread}"] += round(float(seconds) * 1000)
                        continue
                    stack, _, n = line.rstrip("\n").rpartition(" ")
                    if n.isdigit():
                        counts[f"process {name[:-4]};{stack}"] += int(n)
    return counts


def batch_counters(url: str) -> tuple[float, float]:
    """The batcher's batches and tokens so far, from ``/metrics`` (one process's: with several API
    processes, whichever answers)."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    totals = {"poolkit_batches_total": 0.0, "poolkit_batch_tokens_total": 0.0}
    for line in text.splitlines():
        name, _, value = line.partition("{")
        if name in totals:
            totals[name] += float(value.rpartition(" ")[2])
    return totals["poolkit_batches_total"], totals["poolkit_batch_tokens_total"]


#: Innermost functions where a thread waits rather than works (the samples are wall-clock);
#: ``Runner.run`` innermost is the event loop in C (uvloop), waiting or moving bytes.
WAITS = {"select", "wait", "acquire", "sleep", "_recv", "recv_bytes", "accept", "get", "poll", "_wait_for_tstate_lock",
         "Runner.run", "_reap"}


def waits(frame: str) -> bool:
    name = frame.partition(" (")[0]
    return name in WAITS or name.rpartition(".")[2] in WAITS


def summarize(path: str, seconds: float, top: int = 20) -> list[str]:
    """Per process and thread: the CPU time used (in cores over the load) and the share of samples
    at work (the innermost frame not a wait); then the process's busiest working frames, by self
    and by inclusive samples."""
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    threads: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    cores: dict[str, dict[str, float]] = collections.defaultdict(dict)
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            if stack.startswith("#cpu ") and count.isdigit():
                cores[frames[0][5:]][frames[1]] = int(count) / 1000 / seconds
                continue
            if len(frames) < 3 or not count.isdigit():
                continue
            process, thread, calls, n = frames[0], frames[1], frames[2:], int(count)
            working = not waits(calls[-1])
            threads[process][(thread, working)] += n
            if working:
                own[process][calls[-1]] += n
                for frame in set(calls):
                    inclusive[process][frame] += n
    lines = []
    for process in sorted(threads, key=lambda p: -cores[p].get("(all threads)", sum(cores[p].values()))):
        whole = cores[process].pop("(all threads)", None)
        names = sorted({t for t, _ in threads[process]} | set(cores[process]))
        busy = sum(own[process].values())
        python = sum(cores[process].values())
        native = f", native threads {max(0.0, whole - python):.2f}" if whole is not None else ""
        lines.append(f"{process}: {whole if whole is not None else python:.2f} cores (Python threads {python:.2f}{native}); " + ", ".join(
            f"{t} {cores[process].get(t, 0):.2f} cores "
            f"({threads[process][(t, True)] / max(1, threads[process][(t, True)] + threads[process][(t, False)]):.0%} of samples at work)"
            for t in names if cores[process].get(t, 0) >= 0.005 or threads[process][(t, True)]))
        if not busy:
            continue
        lines.append("  self (share of the process's working samples):")
        lines += [f"    {n / busy:6.1%}  {fr[:150]}" for fr, n in own[process].most_common(top)]
        lines.append("  inclusive:")
        lines += [f"    {n / busy:6.1%}  {fr[:150]}" for fr, n in inclusive[process].most_common(top)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="bge-base")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--api-server-counts", default="1,4")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--inputs", type=int, default=1)
    parser.add_argument("--processes", type=int, default=4)
    options = parser.parse_args()
    out = os.environ.get("OUT", "/tmp/poolkit-gpu")
    os.makedirs(out, exist_ok=True)
    path, _ = resolve_bench_model(options.preset)
    for count in [int(c) for c in options.api_server_counts.split(",")]:
        samples = os.path.join(out, f"serve-{count}.txt")
        folder = tempfile.mkdtemp(prefix=f"poolkit-samples-{count}-")
        env = dict(os.environ, POOLKIT_SAMPLE_TO=folder, PYTHONPATH=os.pathsep.join(filter(None, [SAMPLER, os.environ.get("PYTHONPATH")])))
        server = StartedServer(EngineArgs(model=path, device=options.device, dtype=options.dtype),
                               serve_flags=["--api-server-count", str(count)], env=env)
        try:
            each = max(1, options.connections // options.processes)
            # one untimed load: connections opened, the batch shapes seen
            with multiprocessing.get_context("spawn").Pool(options.processes) as pool:
                pool.map(_client, [(server.url, each, 1.0, options.inputs, k) for k in range(options.processes)])
            before, counted = read_samples(folder), batch_counters(server.url)
            with multiprocessing.get_context("spawn").Pool(options.processes) as pool:
                reports = pool.map(_client, [(server.url, each, options.seconds, options.inputs, k) for k in range(options.processes)])
            time.sleep(1.5)  # each process rewrites its samples every second
            during = read_samples(folder) - before
            batches, tokens = (b - a for a, b in zip(counted, batch_counters(server.url)))
            requests = sum(r["requests"] for r in reports)
            p99 = max(r["p99_ms"] for r in reports)
            print(f"{options.preset} serve ({count} API processes) {options.connections} x {options.inputs}: "
                  f"{requests / options.seconds:,.0f} req/s, p99 {p99} ms (sampled)", flush=True)
            if count == 1 and batches:  # one process: its counters are the server's
                print(f"  {batches:,.0f} batches, {tokens / batches:,.0f} tokens and {requests / batches:,.1f} requests a batch", flush=True)
            with open(samples, "w") as f:
                f.writelines(f"{stack} {n}\n" for stack, n in during.items())
            print("\n".join(summarize(samples, options.seconds + 1.5)), flush=True)
        finally:
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
