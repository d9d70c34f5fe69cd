"""The device the suite runs on (``POOLKIT_TEST_DEVICE``, else the CPU), and Triton kernel checks
in a fresh process: compiled on the GPU when the suite runs there, else interpreted on the CPU.

The check scripts build their inputs and references on the CPU. On the GPU, every ``*_triton``
function of poolkit's kernel modules is wrapped before the script runs: its tensor arguments go to
the GPU as the same views of their storages, and its result comes back (an argument returned, or
written in place, as that argument), so the same script checks the compiled kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys

_ON_DEVICE = """
import torch
import poolkit.kernels.fused, poolkit.kernels.lora, poolkit.kernels.maxsim, poolkit.kernels.pooling, poolkit.kernels.prefix, poolkit.kernels.splade

def _on_device(fn):
    # Each argument's whole storage goes to the GPU once and the argument is rebuilt there with its
    # own offset and strides, so a strided view stays that view (views of one storage stay views of
    # one storage); after the call the storages come back, so what the kernel wrote in place is seen,
    # and a result that is an argument (or a view of one) comes back as that very CPU tensor or view.
    def run(*args, **kwargs):
        storages = {{}}

        def move(a):
            if not isinstance(a, torch.Tensor) or a.device.type != "cpu":
                return a
            if a.requires_grad:  # autograd's graph back to the argument
                return a.to({device!r})
            key = a.untyped_storage().data_ptr()
            if key not in storages:
                storages[key] = (a.untyped_storage(), a.untyped_storage().to(device={device!r}))
            return torch.empty(0, dtype=a.dtype, device={device!r}).set_(storages[key][1], a.storage_offset(), a.size(), a.stride())

        moved_args = [move(a) for a in args]
        moved_kwargs = {{k: move(v) for k, v in kwargs.items()}}
        out = fn(*moved_args, **moved_kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        back = {{dev.data_ptr(): host for host, dev in storages.values()}}
        for host, dev in storages.values():
            host.copy_(dev)

        def home(o):
            if not isinstance(o, torch.Tensor):
                return o
            if o.requires_grad:
                return o.cpu()
            host = back.get(o.untyped_storage().data_ptr())
            if host is None:
                return o.cpu()
            for a in [*args, *kwargs.values()]:  # the argument itself, as the CPU kernel returns it
                if isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == host.data_ptr() and a.storage_offset() == o.storage_offset() and a.size() == o.size() and a.stride() == o.stride():
                    return a
            return torch.empty(0, dtype=o.dtype).set_(host, o.storage_offset(), o.size(), o.stride())

        return tuple(home(o) for o in out) if isinstance(out, tuple) else home(out)
    return run

for _module in (poolkit.kernels.fused, poolkit.kernels.lora, poolkit.kernels.maxsim, poolkit.kernels.pooling, poolkit.kernels.prefix, poolkit.kernels.splade):
    for _name in dir(_module):
        if _name.endswith("_triton"):
            setattr(_module, _name, _on_device(getattr(_module, _name)))
"""


def suite_device() -> str:
    """The device the suite runs its models on: ``POOLKIT_TEST_DEVICE``, else the CPU."""
    return os.environ.get("POOLKIT_TEST_DEVICE") or "cpu"


def run_triton_script(script: str, wrap_on: str | None = None) -> subprocess.CompletedProcess:
    """Run a check script: compiled on the suite's GPU through the wrapper above, else in Triton's
    interpreter. ``wrap_on="cpu"`` runs the wrapper's moves and returns around the interpreted
    kernels, so its own code is checked on a machine without a GPU."""
    device = suite_device()
    env = dict(os.environ)
    if device.startswith("cuda"):
        env.pop("TRITON_INTERPRET", None)
        script = _ON_DEVICE.format(device=device) + script
    else:
        env["TRITON_INTERPRET"] = "1"
        if wrap_on is not None:
            script = _ON_DEVICE.format(device=wrap_on) + script
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
