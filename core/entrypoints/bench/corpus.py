"""The bench's corpus: texts of seeded lengths made from the docstrings of Python's standard library.

Nothing is downloaded, and a seed gives the same texts on every run with the same Python, so
both libraries, and every round, embed exactly the same inputs.
"""

from __future__ import annotations

import math
import random
import warnings

_STDLIB = ("os", "json", "re", "collections", "itertools", "functools", "pathlib", "typing", "random", "statistics",
           "argparse", "logging", "subprocess", "threading", "unittest", "email", "http.client", "csv", "decimal")


def _words() -> list[str]:
    import importlib

    words: list[str] = []
    for name in _STDLIB:
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            with warnings.catch_warnings():  # typing.re and friends warn when touched
                warnings.simplefilter("ignore", DeprecationWarning)
                doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str):
                words += [w.strip(".,:;()`'\"") for w in doc.split() if w.isascii() and 1 < len(w) < 15]
    return sorted({w for w in words if w.isalpha()})



def make_corpus(n: int, mean_words: float, sigma: float, seed: int, max_words: int = 2000) -> list[str]:
    """``n`` texts whose lengths in words follow a lognormal around ``mean_words`` (seeded)."""
    rng = random.Random(seed)
    words = _words()
    texts = []
    for _ in range(n):
        length = max(1, min(max_words, int(rng.lognormvariate(math.log(mean_words), sigma))))
        texts.append(" ".join(rng.choice(words) for _ in range(length)).capitalize() + ".")
    return texts
