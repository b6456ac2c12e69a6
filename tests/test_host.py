"""host.bf16_pays: what precision=auto computes in on the CPU torch runs on."""

from __future__ import annotations

import pytest
import torch

from metalearn_cli import host
from metalearn_cli.cpu_kind import CpuKind
from metalearn_cli.model import resolve_precision


@pytest.mark.parametrize("vendor,amx,expected", [("GenuineIntel", False, "fp32"), ("GenuineIntel", True, "bf16"),
                                                 ("AuthenticAMD", False, "bf16")])
def test_auto_trains_in_bf16_only_where_it_pays(monkeypatch, vendor, amx, expected):
    monkeypatch.setattr(host, "native_bf16", lambda device: True)
    monkeypatch.setattr(host, "this_cpu", lambda: CpuKind(vendor, frozenset({"avx512_bf16"})))
    monkeypatch.setattr(host, "_torch_cpu_has", lambda check: amx and check == "_is_amx_tile_supported")
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, second_order=False) == expected
    assert resolve_precision("auto", cpu, second_order=True) == "fp32"  # second-order meta-gradients stay fp32
    assert resolve_precision("bf16", cpu, second_order=False) == "bf16"  # asked for, it is used


def test_no_native_bf16_means_fp32_whatever_the_vendor(monkeypatch):
    monkeypatch.setattr(host, "native_bf16", lambda device: False)
    monkeypatch.setattr(host, "this_cpu", lambda: CpuKind("AuthenticAMD", frozenset()))
    assert resolve_precision("auto", torch.device("cpu"), second_order=False) == "fp32"


def test_the_start_up_line_says_why_auto_keeps_fp32_on_an_intel_cpu_without_amx(monkeypatch):
    from types import SimpleNamespace

    from metalearn_cli import assemble

    monkeypatch.setattr(host, "native_bf16", lambda device: True)
    monkeypatch.setattr(assemble, "native_bf16", lambda device: True)
    monkeypatch.setattr(host, "this_cpu", lambda: CpuKind("GenuineIntel", frozenset({"avx512_bf16"})))
    monkeypatch.setattr(host, "_torch_cpu_has", lambda check: False)
    reason = assemble.precision_reason("auto", torch.device("cpu"), SimpleNamespace(second_order=False))
    assert reason == "fp32 (auto: bf16 is native on this Intel CPU but, without AMX, no faster than fp32)"
