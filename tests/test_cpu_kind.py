"""precision=auto's rule for CPUs: bf16 where it is native and faster than fp32, read from the CPU's kind."""

from __future__ import annotations

import pytest

from metalearn_cli import cpu_kind
from metalearn_cli.cpu_kind import CpuKind, bf16_pays, this_cpu, version_bf16

INTEL_NO_AMX = CpuKind("GenuineIntel", frozenset({"avx512f", "avx512_bf16", "avx512_fp16"}))
INTEL_AMX = CpuKind("GenuineIntel", frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}))
AMD_ZEN4 = CpuKind("AuthenticAMD", frozenset({"avx512f", "avx512_bf16"}))
AVX2 = CpuKind("GenuineIntel", frozenset({"avx2", "fma"}))


@pytest.mark.parametrize("kind,native,amx,pays", [
    (INTEL_NO_AMX, True, False, False),  # measured: bf16 products at 121 against 221 GFLOP/s for fp32
    (INTEL_AMX, True, True, True),
    (AMD_ZEN4, True, False, True),  # the reference machine: bf16 about 1.6x faster than fp32
    (AVX2, False, False, False),
    (AMD_ZEN4, False, False, False),  # torch computing without AVX512 kernels (ATEN_CPU_CAPABILITY=avx2)
])
def test_bf16_pays_where_native_and_not_on_an_intel_cpu_without_amx(kind, native, amx, pays):
    assert bf16_pays(kind, native, amx) is pays


def test_the_version_line_says_what_auto_picks_on_each_kind():
    assert version_bf16(INTEL_NO_AMX) == "yes, but no faster than fp32 on an Intel CPU without AMX (precision=auto: fp32)"
    assert version_bf16(INTEL_AMX) == version_bf16(AMD_ZEN4) == "yes (precision=auto: bf16)"
    assert version_bf16(AVX2) == "no (precision=auto: fp32)"
    assert version_bf16(CpuKind()) == "unknown"


def test_this_cpu_reads_the_vendor_and_the_flags(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                    "processor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu\n", encoding="ascii")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path, *a, **k))
    this_cpu.cache_clear()
    try:
        assert this_cpu() == CpuKind("AuthenticAMD", frozenset({"fpu", "avx512f", "avx512_bf16"}))
    finally:
        this_cpu.cache_clear()


def test_an_unreadable_cpuinfo_is_an_unknown_kind(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr("builtins.open", refuse)
    this_cpu.cache_clear()
    try:
        assert cpu_kind.this_cpu() == CpuKind() and version_bf16(cpu_kind.this_cpu()) == "unknown"
    finally:
        this_cpu.cache_clear()
