"""C kernels compiled on the machine that runs them: a C source shipped with a package, built once
with the system's C compiler for this CPU (``-O3 -march=native``) and loaded with ctypes.

No build step at install time and no torch headers: the source is plain C working on data
pointers, so it compiles in well under a second, and a machine without a compiler simply does
not have the kernels (their ``is_available()`` says so and the registry selects the torch
reference instead). The shared library is cached, keyed by the source (with the headers beside
it, which it may include), the compiler and the CPU (its model and flags:
:func:`poolkit.config.cpu.cpu_features`), in ``$POOLKIT_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/poolkit/kernels``, else ``~/.cache/poolkit/kernels``; ``POOLKIT_C_KERNELS=0``
turns compiled kernels off, ``CC`` picks the compiler, and ``POOLKIT_CPU_ARCH`` builds for an older
CPU than this one (``-march=x86-64-v3``: AVX2 without AVX-512 or AMX, the path such CPUs take), so
every fast path's fallback can be run and tested on the newest machine. Only poolkit's own sources (or a plugin's, through :func:`load_c_library`) are
compiled: nothing from the network or from requests.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from poolkit.config import cpu

logger = logging.getLogger(__name__)

#: Flags of every build; ``-march=...``, then ``-fopenmp``, are dropped if the compiler refuses them.
CFLAGS = ("-O3", "-fPIC", "-shared", "-fopenmp-simd", "-std=c99")
#: OpenMP for the kernels' own thread splits (parallel.h): linked to ``libgomp.so.1``, which resolves
#: to the copy torch loaded, so a kernel's threads are torch's.
OPENMP = ("-fopenmp",)


def arch_flags() -> tuple[str, ...]:
    """``-march=$POOLKIT_CPU_ARCH`` (a CPU older than this one: ``x86-64-v3``, ``x86-64``), else
    ``-march=native``."""
    arch = os.environ.get("POOLKIT_CPU_ARCH", "").strip() or "native"
    return (f"-march={arch}",)


def compiled_kernels_enabled() -> bool:
    """False when ``POOLKIT_C_KERNELS`` is ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get("POOLKIT_C_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """Where compiled libraries are kept (see the module's docstring)."""
    if os.environ.get("POOLKIT_KERNEL_CACHE"):
        return Path(os.environ["POOLKIT_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "poolkit" / "kernels"


def find_compiler() -> str | None:
    """``$CC``, else the first of ``cc``, ``gcc``, ``clang`` on the PATH; ``None`` without one."""
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        path = shutil.which(name)
        if path:
            return path
    return None


def _compiler_version(compiler: str) -> str:
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout


def _build(compiler: str, source: Path, target: Path) -> None:
    """Compile ``source`` into ``target`` (atomically: concurrent builders each write their own file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        for flags in (CFLAGS + OPENMP + arch_flags(), CFLAGS + OPENMP, CFLAGS + arch_flags(), CFLAGS):
            done = subprocess.run(
                [compiler, *flags, "-o", scratch, str(source), "-lm"], capture_output=True, text=True, timeout=120, check=False
            )
            if done.returncode == 0:
                os.replace(scratch, target)
                return
        raise OSError(f"{compiler} failed on {source.name}: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)


@functools.cache
def load_c_library(source: str | os.PathLike) -> ctypes.CDLL | None:
    """The shared library built from the C file ``source`` for this machine, compiled on first use
    and cached (see the module's docstring); ``None`` when compiled kernels are off, no compiler
    is found or the build fails (logged once at INFO: the torch references then run).

    Args:
        source: path of a C file; its functions are then attributes of the returned library. It
            may include headers from its own folder (``#include "name.h"``).
    """
    if not compiled_kernels_enabled():
        return None
    compiler = find_compiler()
    if compiler is None:
        logger.info("no C compiler found: poolkit's compiled CPU kernels are off (the torch references run)")
        return None
    path = Path(source)
    try:
        key = hashlib.sha256()
        headers = [h.read_bytes() for h in sorted(path.parent.glob("*.h"))]
        for part in (path.read_bytes(), *headers, compiler.encode(), _compiler_version(compiler).encode(),
                     cpu.cpu_features().signature.encode(), " ".join(CFLAGS + OPENMP + arch_flags()).encode()):
            key.update(part)
            key.update(b"\0")
        target = cache_dir() / f"{path.stem}-{key.hexdigest()[:20]}.so"
        if not target.exists():
            _build(compiler, path, target)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        logger.info("poolkit's compiled CPU kernels are off: %s", exc)
        return None


def load_typed_library(source: str | os.PathLike, signatures: dict[str, tuple]) -> ctypes.CDLL | None:
    """:func:`load_c_library` of ``source`` with each function of ``signatures`` given its
    ``argtypes`` (the tuple) and an ``int`` result; ``None`` where that gives ``None``."""
    lib = load_c_library(source)
    if lib is None:
        return None
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return lib


_forked = False


def _after_fork_in_child() -> None:
    global _forked
    _forked = True


# A forked child's copy of OpenMP still counts its parent's threads, which the fork did not copy:
# a parallel region there waits for them forever. Its kernels run on its own thread.
os.register_at_fork(after_in_child=_after_fork_in_child)


def workers(parallel: bool = True) -> int:
    """The threads a compiled kernel may split one call over (its ``workers`` argument; the kernel
    splits its rows or heads itself, on OpenMP's threads: ``parallel.h``): torch's intra-op thread
    count when ``parallel`` (a call large enough to pay for waking them), else 1; 1 in a forked child."""
    return torch.get_num_threads() if parallel and not _forked else 1
