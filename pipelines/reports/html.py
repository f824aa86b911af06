"""Shared pieces of Sightline's HTML reports: embedded PNG plots, tables, cells, the style.

Used by ``evaluation.py`` (the evaluation report) and ``data.py`` (data and drift):
one self-contained page each, plots embedded as base64 PNG.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Any


def png(figure: Any) -> str:
    """A matplotlib figure as a base64 PNG (for ``<img src='data:image/png;base64,...'>``)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def cell(value: Any) -> str:
    """A table cell's text: "–" for None, 4 decimals for floats, everything escaped."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:+.4f}" if value < 0 else f"{value:.4f}"
    return html.escape(str(value))


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """An HTML table of ``rows`` (dicts) by ``columns``.

    A row with a ``too_few`` message shows its first two columns and the message instead
    of numbers.
    """
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        if "too_few" in row:
            cells = (f"<td>{cell(row[columns[0]])}</td><td>{cell(row[columns[1]])}</td>"
                     f"<td class=few colspan={len(columns) - 2}>{html.escape(row['too_few'])}</td>")
        else:
            cells = "".join(f"<td>{cell(row.get(c))}</td>" for c in columns)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


STYLE = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}.few{color:#888;
text-align:center;font-style:italic}.bad{color:#b00}.good{color:#070}img{max-width:100%}"""


def write(report: dict[str, Any], page: str, out_dir: str) -> tuple[str, str]:
    """Writes ``report.html`` (``page``) and ``report.json`` (``report``); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    html_path, json_path = (os.path.join(out_dir, f"report.{ext}") for ext in ("html", "json"))
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    with open(html_path, "w") as f:
        f.write(page)
    return html_path, json_path
