"""What the CPU can do, read from /proc/cpuinfo: picks the training precision.

bf16 pays only where the CPU multiplies bf16 natively: AMX tiles (``amx_bf16``) or
AVX-512 BF16 dot products (``avx512_bf16``). Elsewhere (e.g. AVX2 only) oneDNN emulates
it, slower than float32 (docs/training.md has the measurements).
"""

from __future__ import annotations

import pathlib

CPUINFO = pathlib.Path("/proc/cpuinfo")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpuinfo_fields(cpuinfo: pathlib.Path = CPUINFO) -> dict[str, str]:
    """The first processor's ``key: value`` fields, keys lower-cased; {} without the file."""
    fields: dict[str, str] = {}
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_flags(cpuinfo: pathlib.Path = CPUINFO) -> set[str]:
    """The CPU's feature flags (x86 ``flags``, ARM ``Features``)."""
    fields = cpuinfo_fields(cpuinfo)
    return set(fields.get("flags", fields.get("features", "")).split())


def resolve_precision(requested: str, flags: set[str]) -> str:
    """``auto`` -> ``bfloat16`` if the CPU has one of BF16_FLAGS, else ``float32``;
    an explicit ``float32``/``bfloat16`` is kept (forcing bf16 on AVX2 runs, emulated)."""
    if requested != "auto":
        return requested
    return "bfloat16" if flags & set(BF16_FLAGS) else "float32"
