"""What every benchmark ends with: its table on stdout and its report as JSON."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable
from typing import Any


def print_table(header: Iterable[str], rows: Iterable[Iterable]) -> None:
    """A header line and a line per row, cells separated by " | "."""
    for cells in (header, *rows):
        print(" | ".join(str(v) for v in cells))


def write_report(report: dict[str, Any], out: str) -> None:
    """Writes ``report`` as JSON to ``out`` (its folder made) and says where."""
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(out).write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
