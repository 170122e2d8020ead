"""The same numbers on every x86-64 CPU and thread count: pin the CPU kernels and BLAS threads.

Float results on a CPU depend on the code the math libraries pick for it. torch's ATen ops
(element-wise, reductions, softmax) come in ``default`` / ``avx2`` / ``avx512`` builds
(``ATEN_CPU_CAPABILITY``); MKL's matrix products choose a code path per CPU (``MKL_CBWR``); numpy's
and scipy's OpenBLAS, which fit the features' PCA and project the embeddings, choose kernels per
CPU (``OPENBLAS_CORETYPE``) and split a factorisation between threads. Each rounds differently;
a fine-tuning run amplifies the difference to about 1e-4, and a selector training, which samples
its decisions from probabilities, turns it into another selector after a few dozen episodes.

``model.cpu_kernels=portable`` (the default) pins them: ATen and MKL to the AVX2 set, which every
x86-64 CPU since 2013-2015 runs, and numpy's BLAS to one thread (the command line also starts it
with its Haswell kernels, the AVX2 ones, unless ``OPENBLAS_CORETYPE`` is set). A testbed run then
gives the same ``results.json`` with any thread count, here and on a machine with AVX-512.
``native`` keeps every library's own choice (faster on AVX-512 machines, other numbers).

Each library reads its setting once per process: ATen when torch first dispatches a CPU op, MKL
when it first runs, OpenBLAS when numpy is imported. :func:`pin_cpu_kernels` must run before the
first two, which the command line and :meth:`Workbench.build` do; where it comes too late, it says
so in one warning line. On a CPU without AVX2, and on other architectures (ARM: no MKL, other
kernel sets), the libraries' own choice stays, and :func:`cpu_kernels` records what ran.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

logger = logging.getLogger(__name__)

PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
OPENBLAS_CORE = "Haswell"  # OpenBLAS's AVX2 kernels
_WARNED: set[str] = set()
_BLAS_LIMITS: list = []  # keeps threadpoolctl's limit in force for the process


def is_x86() -> bool:
    """Whether this is an x86-64 machine (the CPUs whose kernel sets and bf16 instructions we know)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def _x86_flags() -> set[str]:
    """The CPU's feature flags on Linux x86-64 (empty elsewhere), read without importing numpy or torch."""
    if not is_x86():
        return set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def set_openblas_core() -> None:
    """Start OpenBLAS with its AVX2 (Haswell) kernels on a CPU that has them, unless the user chose.

    Read when numpy loads OpenBLAS, so the command line calls this before numpy is imported.
    """
    if "OPENBLAS_CORETYPE" not in os.environ and {"avx2", "fma"} <= _x86_flags():
        os.environ["OPENBLAS_CORETYPE"] = OPENBLAS_CORE


def _x86_with_avx2() -> bool:
    if not is_x86():
        return False
    import torch

    return bool(torch.cpu._is_avx2_supported())


def warn_once(key: str, message: str, *args, log: logging.Logger = logger) -> None:
    """``log.warning(message, *args)`` the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message, *args)


def pin_cpu_kernels(setting: str) -> None:
    """Pin the CPU kernels and BLAS threads for ``model.cpu_kernels=setting`` (``native``: nothing).

    An environment variable the user set to another value is overridden with a warning that names
    it, since the setting asked for portable numbers; ``model.cpu_kernels=native`` honours it.
    """
    if setting != "portable":
        return
    _limit_blas_threads()
    if not _x86_with_avx2():
        return
    import torch

    for name, value in PORTABLE.items():
        given = os.environ.get(name)
        if given is not None and given.strip().lower() != value.lower():
            warn_once(
                name,
                "warning: %s=%s is overridden by model.cpu_kernels=portable (%s=%s, the same numbers on every "
                "x86-64 CPU); set model.cpu_kernels=native to use it",
                name,
                given,
                name,
                value,
            )
        os.environ[name] = value
    chosen = torch.backends.cpu.get_cpu_capability()  # fixes ATen's set for this process if nothing did yet
    if chosen != "AVX2":
        warn_once(
            "chosen",
            "warning: torch chose its %s CPU kernels before model.cpu_kernels=portable could pin AVX2 (an op ran "
            "first in this process), so numbers may differ from other machines; set it before running torch ops, "
            "or set model.cpu_kernels=native to silence this",
            chosen,
        )


def _limit_blas_threads() -> None:
    """numpy's and scipy's BLAS on one thread: a factorisation split between threads rounds by their count.

    The features' PCA (1000 x 64 on the testbed) differed between 1 and 2 threads. Our numpy BLAS
    work is small, so one thread costs little.
    """
    if _BLAS_LIMITS:
        return
    import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS, so that the limit reaches it too)
    from threadpoolctl import threadpool_limits

    _BLAS_LIMITS.append(threadpool_limits(limits=1, user_api="blas"))


def cpu_kernels(setting: str) -> dict:
    """What ran: the setting, ATen's kernel set, MKL's code path (``None``: MKL's own choice for the CPU)
    and numpy's BLAS (its kernels and threads)."""
    import numpy  # noqa: F401  (threadpoolctl reports the libraries loaded)
    import torch
    from threadpoolctl import threadpool_info

    blas = [entry for entry in threadpool_info() if entry.get("user_api") == "blas"]
    return {
        "setting": setting,
        "aten": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "numpy_blas": sorted({f"{entry.get('internal_api')} {entry.get('architecture')}" for entry in blas}),
        "numpy_blas_threads": max((entry.get("num_threads", 0) for entry in blas), default=None),
        "machine": platform.machine(),
    }
