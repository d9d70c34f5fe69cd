"""How much of its speed an engine keeps while other processes keep every core busy (issue 29, item 5).

    python .ci/contention.py poolkit|openvino [ROUNDS]        # HOGS=N busy processes (default: one a core)

all-MiniLM-L6-v2 (the embedded default model) over 1,000 texts of about 49 tokens: texts per
second on a quiet machine, then with ``HOGS`` pure-Python busy loops running, in turn, ``ROUNDS``
times (default 3); the medians and their ratio, the share of its speed the engine keeps.
``openvino`` converts the same weights with ``openvino.convert_model`` and runs them in
length-sorted batches of 32, padded, with mean pooling and L2 normalisation (``pip install
openvino``); ``poolkit`` runs ``LLM().embed``. Thread settings come from the environment
(``OMP_WAIT_POLICY``, ``OMP_NUM_THREADS``), so each variant is one run of this script.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from poolkit.entrypoints.bench.corpus import make_corpus


def _poolkit(texts: list[str]):
    from poolkit import LLM

    llm = LLM()
    return lambda: llm.embed(texts)


def _openvino(texts: list[str]):
    try:
        import openvino as ov
    except ImportError:
        sys.exit("the openvino peer needs OpenVINO: pip install openvino")
    import transformers

    from poolkit.plugins import get_manager

    path = str(get_manager().resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    compiled = ov.Core().compile_model(ov.convert_model(model, example_input=dict(tok(["hello world"], return_tensors="pt"))), "CPU")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))

    def run() -> list[np.ndarray]:
        out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        for start in range(0, len(order), 32):
            members = order[start : start + 32]
            enc = tok([texts[i] for i in members], padding=True, truncation=True, max_length=256, return_tensors="np")
            hidden = compiled(dict(enc))[0]
            mask = enc["attention_mask"][..., None]
            vectors = (hidden * mask).sum(1) / mask.sum(1)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            for k, i in enumerate(members):
                out[i] = vectors[k]
        return out

    return run


def main() -> None:
    engine = sys.argv[1] if len(sys.argv) > 1 else "poolkit"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    hogs = int(os.environ.get("HOGS", os.cpu_count() or 2))
    texts = make_corpus(1000, 33, 0.1, seed=5)
    run = {"poolkit": _poolkit, "openvino": _openvino}[engine](texts)
    run()  # warm-up

    def rate() -> float:
        start = time.perf_counter()
        run()
        return len(texts) / (time.perf_counter() - start)

    quiet, loaded = [], []
    for _ in range(rounds):
        quiet.append(rate())
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
        time.sleep(0.5)
        try:
            loaded.append(rate())
        finally:
            for p in busy:
                p.kill()
                p.wait()
        time.sleep(0.5)
    q, l = float(np.median(quiet)), float(np.median(loaded))
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    print(f"{engine} (OMP_WAIT_POLICY {policy}, {hogs} busy processes): quiet {q:.0f} texts/s, loaded {l:.0f}, share kept {l / q:.2f}")


if __name__ == "__main__":
    main()
