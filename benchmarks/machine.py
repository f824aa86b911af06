"""What machine a benchmark ran on, for its JSON and its printed header.

Speed figures depend on the CPU's vector extensions, not just its core count: int8
XNNPACK kernels are ~4x float32 with AVX-512 VNNI and ~1x with AVX2 alone (measured by
``benchmarks.edge_bench``'s conv probe on two such machines), so every result names them.
"""

from __future__ import annotations

import os
import pathlib
import platform

from trainer.hardware import CPUINFO, cpu_flags, cpuinfo_fields

# The extensions that change TF / XNNPACK / oneDNN speed here, in the order printed.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
              "asimddp", "i8mm")  # the last two: ARM dot-product and int8 matmul


def describe(cpuinfo: pathlib.Path = CPUINFO) -> dict[str, object]:
    """CPU model, logical CPUs, Python version and which of ``SIMD_FLAGS`` the CPU has."""
    fields = cpuinfo_fields(cpuinfo)
    flags = cpu_flags(cpuinfo)
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "python": platform.python_version(),
    }


def summary(record: dict[str, object]) -> str:
    """One line for a table header, e.g. ``AMD EPYC 9R14, 2 CPUs, avx2 fma avx512_vnni``."""
    simd = " ".join(record["simd"]) or "no listed SIMD extensions"
    return f"{record['cpu']}, {record['cpus']} CPUs, {simd}"
