"""Exports of the same weights as bench peers: ``--vs onnx-int8`` (ONNX Runtime) and
``--vs openvino-int8`` (OpenVINO), the int8 paths sentence-transformers users take on a CPU.

Each peer exports the transformer sentence-transformers loads (fp32, from the same directory) and
quantizes it the way that library's own helpers do: ONNX Runtime's dynamic int8 (weights int8 per
output channel, activations quantized per tensor at run time, as ``export_dynamic_quantized_onnx_model``
with the ``avx512_vnni`` configuration), and OpenVINO's static int8 (NNCF post-training
quantization with its transformer preset, calibrated on the texts poolkit calibrates on, as
``export_static_quantized_openvino_model``). They are built with the runtimes' own tools rather
than through optimum, which pins transformers below the version poolkit runs on. The texts are
tokenized, and the modules after the transformer (pooling, normalisation; the cross-encoder's
activation) run, by sentence-transformers itself, in its batches sorted by length: only the
transformer changes hands. ``--peer-dtype float32`` exports without quantizing.

The peers need ``onnxruntime`` and ``onnx``, or ``openvino`` and ``nncf`` (the ``bench-int8``
extra); without them the bench measures poolkit alone, as it does without sentence-transformers.
Their parity reference is sentence-transformers in fp32 on the original weights, and each row
reports the export's own min cosine (or max |diff|) against it beside poolkit's.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ...contracts.errors import InvalidRequest
from .base import Peer
from .measure import _padding_fraction, peer_model

if TYPE_CHECKING:
    from typing import Union

    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from transformers import PreTrainedModel

    from ...config.settings import EngineArgs

    #: What an export is made from: the sentence-transformers model of the workload's kind, in fp32.
    SourceModel = Union[SentenceTransformer, CrossEncoder]

#: The tokenizer outputs the exported graphs take, in this order where present.
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: The precisions an export runs in (``--peer-dtype``).
EXPORT_DTYPES = ("int8", "float32")


class ExportPeer(Peer):
    """An export of the transformer sentence-transformers loads, run by another runtime."""

    #: The Python modules the export needs, the runtime first (its PyPI name, for the implementation string).
    modules: tuple[str, ...] = ()
    #: How the int8 export is made, for the report.
    scheme: str
    own_reference = False
    skipped = {
        "W6": "no model runs in it (the MaxSim kernel against a padded einsum); run it without --vs",
        "W7": "the sparse (SPLADE) encoder is not exported",
        "W9": "the export is built in the bench's process from the fp32 weights: it has no cold start of its own to time",
    }

    @property
    def runtime(self) -> str:
        return self.modules[0]

    def default_dtype(self, dtype: str, device_type: str) -> str:
        """int8: the export's point."""
        return "int8"

    def model(self, cls: str, path: str, device: str, dtype: str) -> Any:
        if device != "cpu":
            raise InvalidRequest(f"--vs {self.key} compares on the CPU: run the bench with --device cpu")
        if dtype not in EXPORT_DTYPES:
            raise InvalidRequest(f"--peer-dtype '{dtype}': the {self.runtime} export runs in {' or '.join(EXPORT_DTYPES)}")
        if any(importlib.util.find_spec(m) is None for m in self.modules):
            return None
        import torch

        model = peer_model(cls, path, "cpu", "float32")
        module = _transformer(model[0].model)
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' tracing warnings
            run = self.build(module, model, dtype, Path(folder), torch.get_num_threads())
        version = importlib.metadata.version(self.runtime)
        how = self.scheme if dtype == "int8" else "float32, not quantized"
        return ExportedModel(model, run, f"{self.runtime} {version} export, {how}")

    def build(self, module: torch.nn.Module, model: SourceModel, dtype: str, folder: Path, threads: int) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        """The export of ``module`` (the transformer of the sentence-transformers ``model``) in
        ``dtype``, built under ``folder``, as a function of the tokenizer's arrays."""
        raise NotImplementedError

    def reference(self, cls: str, path: str, device: str) -> Any:
        """sentence-transformers in fp32 on the original weights."""
        return peer_model(cls, path, device, "float32")

    def padding_fraction(self, lengths: list[int]) -> float:
        return _padding_fraction(lengths)  # sentence-transformers' own batches

    def peak_rss_mb(self, args: EngineArgs, payload: Any, dtype: str, task: str = "embed") -> float:
        return math.nan  # a child would hold the fp32 model it exports from: not the runtime's own footprint

    def implementation(self, encoder: Any) -> str:
        return encoder.implementation


class OnnxInt8Peer(ExportPeer):
    """ONNX Runtime: the transformer exported to ONNX, its weights int8 per output channel and its
    activations quantized at run time (dynamic)."""

    key = "onnx-int8"
    name = "ONNX Runtime export"
    modules = ("onnxruntime", "onnx")
    scheme = "int8 dynamic (weights per output channel, activations per tensor at run time)"

    def build(self, module: torch.nn.Module, model: SourceModel, dtype: str, folder: Path, threads: int) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        import onnxruntime
        import torch

        example = _example(model)
        names = list(example)
        axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "output"]}
        exported = folder / "model.onnx"
        torch.onnx.export(
            module, tuple(torch.from_numpy(example[n]) for n in names), str(exported), input_names=names,
            output_names=["output"], dynamic_axes=axes, opset_version=17, dynamo=False,
        )
        if dtype == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(exported), str(folder / "model_int8.onnx"), weight_type=QuantType.QInt8, per_channel=True)
            exported = folder / "model_int8.onnx"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(exported), options, providers=["CPUExecutionProvider"])
        return lambda inputs: session.run(None, inputs)[0]


class OpenVinoInt8Peer(ExportPeer):
    """OpenVINO: the transformer converted from torch, quantized by NNCF (static int8, its
    transformer preset) on poolkit's calibration texts."""

    key = "openvino-int8"
    name = "OpenVINO export"
    modules = ("openvino", "nncf")
    scheme = "int8 static (NNCF, calibrated on poolkit's calibration texts)"

    def build(self, module: torch.nn.Module, model: SourceModel, dtype: str, folder: Path, threads: int) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        import openvino
        import torch

        from ...loading.load import calibration_texts

        converted = openvino.convert_model(module, example_input={k: torch.from_numpy(v) for k, v in _example(model).items()})
        config = {"INFERENCE_NUM_THREADS": threads}
        if dtype == "int8":
            import contextlib
            import sys

            import nncf

            texts = calibration_texts(self.args.calibration)
            samples = [_arrays(model.preprocess([text])) for text in texts]
            with contextlib.redirect_stdout(sys.stderr):  # its progress bars, not into the bench's report
                converted = nncf.quantize(
                    converted, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples)
                )
        else:
            config["INFERENCE_PRECISION_HINT"] = "f32"  # not the bf16 it picks on a CPU with AMX
        compiled = openvino.Core().compile_model(converted, "CPU", config)
        return lambda inputs: compiled(inputs)[0]


def _transformer(model: PreTrainedModel) -> torch.nn.Module:
    """The transformer ``model`` of a sentence-transformers model as a module of the tokenizer's
    tensors, returning its first output (the token embeddings, or a cross-encoder's logits)."""
    import torch

    class Transformer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.eval()

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            given = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                given["token_type_ids"] = token_type_ids
            return self.model(**given, return_dict=True)[0]

    return Transformer()


def _arrays(features: dict[str, Any]) -> dict[str, np.ndarray]:
    """The tokenizer's tensors the export takes, as int64 arrays."""
    return {name: features[name].numpy().astype(np.int64) for name in INPUTS if name in features}


def _example(model: SourceModel) -> dict[str, np.ndarray]:
    """A batch to trace the export with: two texts (or pairs) of different lengths."""
    pair = model[0].module_output_name == "scores"
    texts = [("a query", "a short document"), ("another query", "a document of a few more words")] if pair else ["a text", "a text of a few more words"]
    return _arrays(model.preprocess(texts))


class ExportedModel:
    """A sentence-transformers model whose transformer runs as an export (``run``), with the
    methods the workloads call: the tokenization, the length-sorted batches and the modules after
    the transformer stay sentence-transformers' own."""

    def __init__(self, model: SourceModel, run: Callable[[dict[str, np.ndarray]], np.ndarray], implementation: str) -> None:
        self.model = model
        self.run = run
        self.implementation = implementation

    def _outputs(self, inputs: list[Any], batch_size: int, key: str) -> Any:
        """``features[key]`` of every input, in input order, batched as sentence-transformers does."""
        import torch

        length = lambda i: sum(map(len, inputs[i])) if isinstance(inputs[i], tuple) else len(inputs[i])  # noqa: E731
        order = sorted(range(len(inputs)), key=length, reverse=True)
        rows: list[Any] = [None] * len(inputs)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                features = self.model.preprocess([inputs[i] for i in batch])
                features[self.model[0].module_output_name] = torch.from_numpy(self.run(_arrays(features)))
                for module in list(self.model)[1:]:
                    features = module(features)
                for i, row in zip(batch, features[key]):
                    rows[i] = row
        return torch.stack(rows)

    def encode(self, texts: str | list[str], batch_size: int = 32, convert_to_tensor: bool = False) -> Any:
        """Embeddings of ``texts`` (one vector for one string)."""
        vectors = self._outputs([texts] if isinstance(texts, str) else list(texts), batch_size, "sentence_embedding")
        vectors = vectors[0] if isinstance(texts, str) else vectors
        return vectors if convert_to_tensor else vectors.numpy()

    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> list[float]:
        """Cross-encoder scores of (query, document) pairs, through the model's activation."""
        scores = self.model.activation_fn(self._outputs([tuple(p) for p in pairs], batch_size, "scores").float())
        return scores.squeeze(-1).tolist() if scores.ndim > 1 and scores.shape[-1] == 1 else scores.tolist()
