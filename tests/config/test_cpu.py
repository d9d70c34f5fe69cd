"""The CPU's features, read in one place (poolkit.config.cpu), and the policies that decide from them:
forcing a feature off there is what a CPU without it gets (float32 for ``dtype="auto"``, int8 declined,
the AMX and VNNI kernels unavailable)."""

from __future__ import annotations

import platform

import pytest
import torch

from poolkit.config import cpu
from poolkit.config.devices import resolve_dtype
from poolkit.kernels import attention, int8, linear
from poolkit.plugins.lookup import select_kernel

#: The cached answers that ask the module: cleared around each test, so none keeps a forced one.
CACHED = (
    cpu.cpu_features, int8.has_int8_dot, int8._amx_library, int8._vnni_library, linear._amx_library,
    attention._amx_available, attention._avx512_available, attention._f32_available,
)


@pytest.fixture(autouse=True)
def _fresh_answers():
    for fn in CACHED:
        fn.cache_clear()
    yield
    for fn in CACHED:
        fn.cache_clear()


def _first_flags_line() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            return set(next((line for line in info if line.startswith(("flags", "Features"))), "").partition(":")[2].split())
    except OSError:
        return None


def test_the_features_are_proc_cpuinfo_s_flags_and_torch_s_level() -> None:
    features = cpu.cpu_features()
    flags = _first_flags_line()
    if flags is None:
        pytest.skip("no /proc/cpuinfo here")
    assert features.flags == flags
    assert features.capability == torch.backends.cpu.get_cpu_capability()
    assert features.avx512f == ("avx512f" in flags) and features.amx_int8 == ("amx_int8" in flags)
    assert features.multiplies_bf16 == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert features.int8_dot == bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    assert features.signature.splitlines()[:2] == [platform.machine(), platform.system()]
    assert cpu.cpu_features() is features  # read once


def test_without_proc_cpuinfo_the_flags_follow_torch_s_level(monkeypatch) -> None:
    monkeypatch.setattr(cpu, "_first_processor", lambda: None)
    for level, flags in (("AVX512", {"avx2", "avx512f"}), ("AVX2", {"avx2"}), ("DEFAULT", set())):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda level=level: level)
        cpu.cpu_features.cache_clear()
        features = cpu.cpu_features()
        assert features.flags == flags and features.capability == level
        assert not (features.multiplies_bf16 or features.int8_dot or features.amx_bf16)


def test_a_cpu_without_bf16_products_resolves_auto_to_float32(monkeypatch) -> None:
    monkeypatch.delenv("POOLKIT_DTYPE", raising=False)
    features = cpu.cpu_features()
    expected = torch.bfloat16 if features.multiplies_bf16 else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    monkeypatch.setattr(cpu, "cpu_features", lambda: features.without("avx512_bf16", "amx_bf16"))
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16  # a GPU's answer is not the CPU's


def test_a_cpu_without_int8_dot_products_declines_int8_and_has_no_one_pass_kernel(monkeypatch) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    lesser = cpu.cpu_features().without("avx512_vnni", "avx_vnni", "amx_int8")
    monkeypatch.setattr(cpu, "cpu_features", lambda: lesser)
    assert not int8.has_int8_dot() and "no int8 dot product" in int8.declines()
    assert int8._amx_library() is None and int8._vnni_library() is None
    assert select_kernel("linear_int8", "cpu") in (int8.linear_int8_onednn, int8.linear_int8)


def test_a_cpu_without_amx_or_avx512_gets_no_kernel_that_needs_them(monkeypatch) -> None:
    lesser = cpu.cpu_features().without("amx_bf16", "amx_int8", "avx512_bf16", "avx512f")
    monkeypatch.setattr(cpu, "cpu_features", lambda: lesser)
    assert not (linear._amx_available() or attention._amx_available() or attention._avx512_available())
    assert not attention._f32_available()
    assert select_kernel("linear_act", "cpu") is not linear.linear_act_amx
    assert select_kernel("varlen_attention", "cpu") is attention.varlen_attention
