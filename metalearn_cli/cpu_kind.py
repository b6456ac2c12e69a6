"""Which kind of CPU this is, read from ``/proc/cpuinfo`` without importing torch, and whether bf16 pays on it.

Native bf16 is not always faster than fp32. AMD's AVX512-BF16 (Zen 4 and later) and Intel's AMX run
bf16 matrix products at about twice the fp32 rate. Intel's AVX512-BF16 without AMX (Cooper Lake, or a
Sapphire Rapids whose AMX a virtual machine hides) has one dot-product port against two fp32 FMA ports:
measured there (docs/benchmarks.md, "The default run"), oneDNN's bf16 products ran at 121 GFLOP/s
against 221 for fp32, and the default run of then (dataset=omniglot encoder=conv4) took 20 min 0 s in bf16 against 19 min 1 s in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

INTEL = "GenuineIntel"


@dataclass(frozen=True)
class CpuKind:
    vendor: str = ""  # /proc/cpuinfo's vendor_id ("GenuineIntel", "AuthenticAMD"); "" where unreadable
    flags: frozenset[str] = field(default_factory=frozenset)


@lru_cache(maxsize=1)
def this_cpu() -> CpuKind:
    """The first processor's vendor and flags; an empty kind off Linux or where the file cannot be read."""
    vendor, flags = "", frozenset[str]()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:
        pass
    return CpuKind(vendor, flags)


def bf16_pays(kind: CpuKind, native: bool, amx: bool) -> bool:
    """Whether ``precision=auto`` should pick bf16 on a CPU: where it is native and faster than fp32.
    ``native``/``amx``: what torch says the CPU computes (AVX512-BF16 kernels, AMX tiles)."""
    return native and (amx or kind.vendor != INTEL)


def version_bf16(kind: CpuKind) -> str:
    """``metalearn --version``'s word on bf16, from the flags alone (the version line does not import torch)."""
    if not kind.flags:
        return "unknown"
    amx = "amx_bf16" in kind.flags
    native = amx or "avx512_bf16" in kind.flags
    if bf16_pays(kind, native, amx):
        return "yes (precision=auto: bf16)"
    if native:
        return "yes, but no faster than fp32 on an Intel CPU without AMX (precision=auto: fp32)"
    return "no (precision=auto: fp32)"
