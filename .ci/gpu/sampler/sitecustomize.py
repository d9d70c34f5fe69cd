"""A wall-clock stack sampler for every process of ``poolkit serve``, for ``.ci/gpu/serve_profile.py``.

With this folder on ``PYTHONPATH`` and ``POOLKIT_SAMPLE_TO`` naming a folder, each Python process
that starts (the engine process) and each one it forks (the keeper and the API processes) samples
the stacks of all its threads every ``POOLKIT_SAMPLE_MS`` milliseconds (default 4) from a thread of
its own, and rewrites ``<folder>/<pid>.txt`` each second: one line per distinct stack,
``thread;frame;frame... count``, outermost frame first, each frame ``function (file)``, then one
line per Python thread, ``#cpu thread;seconds``, its CPU time so far (from /proc), and one for the
whole process, ``#cpu (all threads);seconds`` (native threads too). Samples are
wall-clock: a thread waiting (in ``select``, on a lock, in an event loop's C code) is sampled where
it waits; the CPU times say how busy each thread was. No package is needed (py-spy could not read the
GPU machine's processes), and sampling starts only when ``POOLKIT_SAMPLE_TO`` is set.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time


def _start() -> None:
    folder = os.environ["POOLKIT_SAMPLE_TO"]
    every = float(os.environ.get("POOLKIT_SAMPLE_MS", "4")) / 1000
    os.makedirs(folder, exist_ok=True)
    counts: collections.Counter = collections.Counter()
    me = threading.get_ident

    def frames(frame) -> str:
        names = []
        while frame is not None:
            code = frame.f_code
            names.append(f"{getattr(code, 'co_qualname', code.co_name)} ({os.path.basename(code.co_filename)})")
            frame = frame.f_back
        return ";".join(reversed(names))

    tick = os.sysconf("SC_CLK_TCK")

    def cpu_seconds() -> dict[str, float]:
        """Each live Python thread's CPU time so far (user and system), from /proc, and the whole
        process's as ``(all threads)``: the difference is native threads' (the Rust tokenizer's
        pool, CUDA's and torch's own)."""
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        seconds: dict[str, float] = {"(all threads)": (int(fields[11]) + int(fields[12])) / tick}
        for thread in threading.enumerate():
            # a forked child's main thread (the one that forked) keeps its parent's native_id; its id is the pid
            tid = os.getpid() if thread is threading.main_thread() else thread.native_id
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except (OSError, TypeError):
                continue
            name = thread.name if thread.name not in seconds else f"{thread.name}-{thread.native_id}"
            seconds[name] = (int(fields[11]) + int(fields[12])) / tick
        return seconds

    def run() -> None:
        own = me()
        path = os.path.join(folder, f"{os.getpid()}.txt")
        written = time.monotonic()
        while True:
            time.sleep(every)
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != own:
                    counts[f"{names.get(ident, ident)};{frames(frame)}"] += 1
            if time.monotonic() - written > 1.0:
                written = time.monotonic()
                with open(path + ".part", "w") as f:
                    f.writelines(f"{stack} {n}\n" for stack, n in counts.items())
                    f.writelines(f"#cpu {name};{seconds:.4f}\n" for name, seconds in cpu_seconds().items())
                os.replace(path + ".part", path)

    def begin() -> None:
        counts.clear()
        threading.Thread(target=run, name="poolkit-sampler", daemon=True).start()

    os.register_at_fork(after_in_child=begin)
    begin()


if os.environ.get("POOLKIT_SAMPLE_TO"):
    _start()
