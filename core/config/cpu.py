"""What this machine's CPU can do, read once: the one place poolkit asks.

The device policy (``dtype="auto"`` is bf16 where the CPU multiplies bf16 natively), the kernels (which
compiled CPU kernel is available, int8's weight range and whether int8 pays at all) and the C kernels'
compiler (its cache key: what ``-march=native`` builds for) all decide from :func:`cpu_features`, so a
CPU tier is one answer, not several readings of ``/proc/cpuinfo`` that could disagree.

The flags are the first processor's in ``/proc/cpuinfo`` (Linux: ``flags`` on x86, ``Features`` on
Arm); torch's dispatch level (``torch.backends.cpu.get_cpu_capability()``: ``"AVX512"``, ``"AVX2"``,
``"DEFAULT"``, ...) comes with them. Without that file (macOS, Windows) the AVX2 and AVX-512 flags are
taken from torch's level and the others are absent, so every path that needs them falls back as it does
on a CPU without them.

A compiled kernel is available where this module says the CPU has its instructions *and* its shared
library says its build holds them (``-march`` decides that: ``POOLKIT_CPU_ARCH`` builds for an older
CPU) and, for AMX, that Linux grants the process the tile state; those checks inside the library are
its own safety, which only it can answer. To see a CPU without a feature, replace the answer: the
callers ask ``cpu.cpu_features()`` through this module, e.g.
``monkeypatch.setattr(cpu, "cpu_features", lambda: features.without("amx_int8"))``.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
from dataclasses import dataclass

import torch

#: The lines of a processor's ``/proc/cpuinfo`` entry that say what ``-march=native`` builds for.
_DESCRIBING = ("model name", "flags", "Features", "CPU part")
#: The flags torch's dispatch levels imply (by the level's prefix), for a machine without ``/proc/cpuinfo``.
_LEVEL_FLAGS = (("AVX512", frozenset({"avx2", "avx512f"})), ("AVX2", frozenset({"avx2"})))


def _flag(name: str) -> property:
    """Whether the CPU has the feature flag ``name``."""
    return property(lambda features: name in features.flags, doc=f"Whether the CPU has {name}.")


@dataclass(frozen=True)
class CpuFeatures:
    """This CPU's instruction sets, as the kernels and the device policy ask for them.

    Attributes:
        flags: the CPU's feature flags, in ``/proc/cpuinfo``'s spelling (``avx512_bf16``, ``amx_int8``).
        capability: torch's dispatch level, ``torch.backends.cpu.get_cpu_capability()`` (``"AVX512"``,
            ``"AVX2"``, ``"DEFAULT"``; ``ATEN_CPU_CAPABILITY`` can lower it).
        signature: the machine, the system and the first processor's model and flag lines: what a
            build for this CPU depends on (the compiled kernels' cache key).
    """

    flags: frozenset[str]
    capability: str
    signature: str

    #: AVX-512 (its foundation): the compiled kernels' AVX-512 builds run here.
    avx512f = _flag("avx512f")
    #: AVX512-BF16 (``vdpbf16ps``; Zen 4, Cooper Lake and later).
    avx512_bf16 = _flag("avx512_bf16")
    #: AVX512-VNNI (``vpdpbusd``, uint8 x int8 products summed into int32; Cascade Lake and later).
    avx512_vnni = _flag("avx512_vnni")
    #: AMX tiles with bf16 products (Sapphire Rapids and later).
    amx_bf16 = _flag("amx_bf16")
    #: AMX tiles with int8 products.
    amx_int8 = _flag("amx_int8")

    @property
    def avx512_dispatch(self) -> bool:
        """torch runs its AVX-512 code here (its dispatch level, not only the CPU's flags)."""
        return self.capability.startswith("AVX512")

    @property
    def multiplies_bf16(self) -> bool:
        """bf16 matrix products in hardware (AVX512-BF16 or AMX-BF16), where bf16 beats float32."""
        return self.avx512_bf16 or self.amx_bf16

    @property
    def int8_dot(self) -> bool:
        """uint8 x int8 products summed into int32 directly (AVX512-VNNI, AVX-VNNI, AMX-INT8)."""
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"})

    def without(self, *flags: str) -> CpuFeatures:
        """These features less ``flags``: a lesser CPU, for tests of the paths it takes."""
        return dataclasses.replace(self, flags=self.flags - set(flags))


def _first_processor() -> list[str] | None:
    """The lines of ``/proc/cpuinfo``'s first processor entry (they describe them all), or ``None``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            lines = []
            for line in info:
                if line.strip() == "":
                    break
                lines.append(line.strip())
            return lines
    except OSError:
        return None


@functools.cache
def cpu_features() -> CpuFeatures:
    """This CPU's features (see the module's docstring), read on first use and kept for the process."""
    capability = torch.backends.cpu.get_cpu_capability()
    lines = _first_processor()
    described = [line for line in lines or () if line.startswith(_DESCRIBING)]
    if lines is None:
        flags = next((implied for level, implied in _LEVEL_FLAGS if capability.startswith(level)), frozenset())
    else:
        listed = next((line for line in described if line.startswith(("flags", "Features"))), "")
        flags = frozenset(listed.partition(":")[2].split())
    signature = "\n".join([platform.machine(), platform.system(), *described])
    return CpuFeatures(flags=flags, capability=capability, signature=signature)
