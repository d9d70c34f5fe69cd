"""Cold start of the server: process start to its first answer (issue 83, item 3).

    python .ci/serve_cold_start.py [ROUNDS]

Times, ``ROUNDS`` times (default 5) in turn, from starting the process to the first embedding it
gives, on the embedded all-MiniLM-L6-v2:

- ``poolkit serve`` (warm-up on, the default): a client posts ``/v1/embeddings`` every 10 ms until
  it gets a 200;
- ``poolkit serve --no-warmup``: the same;
- sentence-transformers in a fresh Python process: import, ``SentenceTransformer(model)``, one
  ``encode`` (no server at all: the least any Python server over it could take).

Also prints when ``/health`` first said 200 and the warm-up's own log line. Prints each figure's
minimum and median.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from poolkit.config.settings import DEFAULT_MODEL
from poolkit.loading.sources import packaged_model_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str) -> int:
    request = urllib.request.Request(url, data=json.dumps({"input": "hello"}).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def serve(model: str, *flags: str) -> tuple[float, float, str]:
    """Seconds to the first 200 of /v1/embeddings and of /health, and the warm-up's log line."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "poolkit", "serve", model, "--port", str(port), *flags],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        healthy = None
        try:
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    sys.exit(f"the server exited with {proc.returncode}:\n{log.read().decode(errors='replace')[-3000:]}")
                if healthy is None and _health(f"{base}/health"):
                    healthy = time.perf_counter() - start
                if healthy is not None and _post(f"{base}/v1/embeddings") == 200:
                    first = time.perf_counter() - start
                    break
                time.sleep(0.01)
        finally:
            proc.terminate()
            proc.wait(60)
        log.seek(0)
        line = next((m.group(0) for m in re.finditer(r"warm-up of .*", log.read().decode(errors="replace"))), "")
    return first, healthy, line


def sentence_transformers(model: str) -> float:
    """Seconds from starting a Python process to its first sentence-transformers embedding."""
    code = (
        "from sentence_transformers import SentenceTransformer\n"
        f"SentenceTransformer({model!r}, device='cpu').encode(['hello'])\n"
        "print('done', flush=True)\n"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if "done" not in out.stdout:
        sys.exit(f"sentence-transformers failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    model = str(packaged_model_dir(DEFAULT_MODEL))
    figures: dict[str, list[float]] = {"serve": [], "serve health": [], "serve --no-warmup": [], "sentence-transformers": []}
    line = ""
    for i in range(rounds):
        order = ["serve", "no-warmup", "st"] if i % 2 == 0 else ["st", "no-warmup", "serve"]
        for which in order:
            if which == "serve":
                first, healthy, line = serve(model)
                figures["serve"].append(first)
                figures["serve health"].append(healthy)
            elif which == "no-warmup":
                figures["serve --no-warmup"].append(serve(model, "--no-warmup")[0])
            else:
                figures["sentence-transformers"].append(sentence_transformers(model))
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in figures.items()), flush=True)
    for name, values in figures.items():
        print(f"{name:24s} min {min(values):.2f} s  median {statistics.median(values):.2f} s")
    print(line)


if __name__ == "__main__":
    main()
