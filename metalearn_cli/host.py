"""Host-side settings that make meta-training fast: the allocator and the precision that pays.

glibc hands large freed blocks back to the kernel (``munmap``) and faults them in again on the next
allocation. Meta-training frees and reallocates the same activation-sized buffers every step, so on
CPU about a third of the time went to the kernel (Conv-4, 60-way Omniglot tasks: 254 -> 160 ms per
meta-iteration once freed memory is kept). The cost: the process keeps its peak memory.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

from metalearn_cli.cpu_kind import bf16_pays as bf16_pays_on
from metalearn_cli.cpu_kind import this_cpu

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BELOW = 1 << 30  # blocks up to 1 GiB are recycled in the heap instead of mmap'd/unmapped


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to recycle large blocks; returns False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BELOW))
    except (OSError, AttributeError):  # not glibc (musl, ...): keep the default allocator
        return False


def available_memory(device: torch.device) -> int:
    """Bytes a run may still allocate on ``device``: free GPU memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (emulated bf16 is slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if not torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512"):
        return False  # no AVX512 kernels, or ATEN_CPU_CAPABILITY=avx2 emulating such a CPU: bf16 would be emulated
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(_torch_cpu_has(name) for name in checks)


def bf16_pays(device: torch.device) -> bool:
    """Whether ``precision=auto`` trains in bf16 on ``device``: native there and faster than fp32
    (not on an Intel CPU without AMX: :mod:`metalearn_cli.cpu_kind` says why)."""
    native = native_bf16(device)
    if device.type == "cuda":
        return native
    return bf16_pays_on(this_cpu(), native=native, amx=_torch_cpu_has("_is_amx_tile_supported"))


def _torch_cpu_has(check: str) -> bool:
    return bool(getattr(torch.cpu, check, lambda: False)())
