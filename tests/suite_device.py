"""The device the suite runs on (``POOLKIT_TEST_DEVICE``, else the CPU), and Triton kernel checks
in a fresh process: compiled on the GPU when the suite runs there, else interpreted on the CPU.

The check scripts build their inputs and references on the CPU. On the GPU, every ``*_triton``
function of poolkit's kernel modules is wrapped before the script runs: its tensor arguments go to
the GPU and its result comes back, so the same script checks the compiled kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys

_ON_DEVICE = """
import torch
import poolkit.kernels.fused, poolkit.kernels.lora, poolkit.kernels.maxsim, poolkit.kernels.pooling, poolkit.kernels.prefix, poolkit.kernels.splade

def _on_device(fn):
    def run(*args, **kwargs):
        move = lambda a: a.to({device!r}) if isinstance(a, torch.Tensor) else a
        out = fn(*map(move, args), **{{k: move(v) for k, v in kwargs.items()}})
        torch.cuda.synchronize()
        return tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()
    return run

for _module in (poolkit.kernels.fused, poolkit.kernels.lora, poolkit.kernels.maxsim, poolkit.kernels.pooling, poolkit.kernels.prefix, poolkit.kernels.splade):
    for _name in dir(_module):
        if _name.endswith("_triton"):
            setattr(_module, _name, _on_device(getattr(_module, _name)))
"""


def suite_device() -> str:
    """The device the suite runs its models on: ``POOLKIT_TEST_DEVICE``, else the CPU."""
    return os.environ.get("POOLKIT_TEST_DEVICE") or "cpu"


def run_triton_script(script: str) -> subprocess.CompletedProcess:
    device = suite_device()
    env = dict(os.environ)
    if device.startswith("cuda"):
        env.pop("TRITON_INTERPRET", None)
        script = _ON_DEVICE.format(device=device) + script
    else:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
