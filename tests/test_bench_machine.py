"""The machine record every benchmark writes: results that depend on the CPU say which."""

from __future__ import annotations

from benchmarks import machine

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16

processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16
"""
AVX2_ONLY = """processor\t: 0
model name\t: AMD EPYC 7571
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_names_the_cpu_and_its_vector_extensions(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN4)
    record = machine.describe(cpuinfo)
    assert record["cpu"] == "AMD EPYC 9R14 96-Core Processor"
    assert record["simd"] == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert record["cpus"] >= 1 and record["python"].count(".") == 2
    assert "avx512_vnni" in machine.summary(record)


def test_an_avx2_machine_lists_no_avx512(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AVX2_ONLY)
    record = machine.describe(cpuinfo)
    assert record["cpu"] == "AMD EPYC 7571"
    assert record["simd"] == ["avx2", "fma"]


def test_without_cpuinfo_falls_back_to_the_platform(tmp_path):
    record = machine.describe(tmp_path / "missing")
    assert record["cpu"] and record["simd"] == []
