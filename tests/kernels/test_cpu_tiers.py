"""The paths of CPUs unlike this one, tested on this one.

The compiled kernels are built for the CPU that runs them (``-march=native``) and take AMX tiles,
AVX512-BF16 or neither; oneDNN picks its own code by the instruction set. A user's CPU may have
less than the machine that runs the suite. So the kernel, bf16 and packing tests run again in a
child process for each tier below: with the compiled kernels off (the torch references every
machine can fall back to), and built for an x86-64 CPU with AVX2 but no AVX-512 or AMX
(``POOLKIT_CPU_ARCH=x86-64-v3``), so a machine with AMX also runs the compiled code an AVX2
machine runs; and, where this CPU has VNNI, built for Cascade Lake (AVX-512 and VNNI without
AVX512-BF16 or AMX), the int8 code most rented CPUs run. (oneDNN's own choice of code by CPU is
torch's, tested by torch.)
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from poolkit.config.cpu import cpu_features

TESTS = Path(__file__).parents[1]
#: The tests of the code that differs by CPU: kernels, their registry's choices, bf16 paths.
FILES = (
    "kernels/test_kernels.py", "kernels/test_kernel_registry.py", "kernels/test_attention_kernels.py",
    "kernels/test_elementwise.py",
    "runtime/test_inference_mode.py", "models/test_bfloat16.py", "models/test_masked_lm_token_classify.py", "kernels/test_int8.py",
    "kernels/test_int8_calibration.py", "kernels/test_int8_gated.py", "kernels/test_attention_int8.py",
    "runtime/test_prefix.py::test_bfloat16_is_within_the_unshared_runs_own_rounding",  # shared prefixes' bf16 by the kernels a CPU runs
)
TIERS = {
    "compiled-kernels-off": {"POOLKIT_C_KERNELS": "0"},
    "avx2-without-avx512": {"POOLKIT_CPU_ARCH": "x86-64-v3"},
    # Cascade Lake's instructions: AVX-512 with VNNI, no AVX512-BF16, no AMX (most rented CPUs), with
    # oneDNN held to the same: the int8 kernels such a CPU runs (the VNNI one-pass layer).
    "avx512-vnni-without-bf16": {"POOLKIT_CPU_ARCH": "cascadelake", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"},
    # Cooper Lake's: AVX512-BF16 and VNNI without AMX (the Zen 4 class), where an int8 model's bf16
    # attention runs in integers (no AMX bf16 attention outruns them).
    "avx512-bf16-without-amx": {"POOLKIT_CPU_ARCH": "cooperlake", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
}
#: The tests a tier runs where not all of FILES: the VNNI tier's build differs from an AVX512-BF16 one's
#: in int8.c (the VNNI layer, the AVX-512 rounding) and attention.c (the float32 build without AVX512-BF16).
TIER_FILES = {
    "avx512-vnni-without-bf16": (
        "kernels/test_int8.py", "kernels/test_int8_calibration.py", "kernels/test_int8_gated.py", "kernels/test_attention_kernels.py",
        "kernels/test_attention_int8.py",
    ),
    "avx512-bf16-without-amx": (
        "kernels/test_attention_int8.py",
        "kernels/test_int8.py::test_calibration_takes_the_attention_in_integers_where_it_keeps_the_budget",
    ),
}


@pytest.mark.parametrize("tier", sorted(TIERS))
def test_the_kernel_tests_pass_on_a_lesser_cpu(tier: str, tmp_path: Path) -> None:
    if tier.startswith("avx") and platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 tiers")
    if tier.startswith("avx512-vnni") and not cpu_features().avx512_vnni:
        pytest.skip("a CPU without AVX512-VNNI cannot run Cascade Lake's code")
    if tier.startswith("avx512-bf16") and not (cpu_features().avx512_bf16 and cpu_features().avx512_vnni):
        pytest.skip("a CPU without AVX512-BF16 and VNNI cannot run Cooper Lake's code")
    env = {**os.environ, **TIERS[tier], "POOLKIT_KERNEL_CACHE": str(tmp_path / "kernels")}
    files = TIER_FILES.get(tier, FILES)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *(str(TESTS / f) for f in files)],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1]
