"""The replay report as one HTML page (``pipelines.reports.html``), for a release review."""

from __future__ import annotations

import html as escaping
from typing import Any

from pipelines.reports import html


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def replay_page(r: dict[str, Any]) -> str:
    """The page: verdict, headline shares, per-class deltas, the most disagreeing images."""
    verdict = (f"<p class=bad>{'<br>'.join(escaping.escape(p) for p in r['problems'])}</p>"
               if r["problems"] else
               f"<p class=good>agreement at or above {r['min_agreement']:.2%}</p>")
    req, img = r["requests"], r["images"]
    headline = [
        {"measure": "requests replayed / read", "value": f"{req['replayed']} / {req['read']}"},
        {"measure": "not replayable (images redacted)",
         "value": f"{req['not_replayable_redacted']} requests, {img['redacted']} images"},
        {"measure": "failed requests", "value": sum(req["failed"].values())},
        {"measure": "identical outputs", "value": _share(r["identical_share"])},
        {"measure": "agreeing images", "value": _share(r["agreement"])},
        {"measure": "matched detections", "value": r["score_delta"]["matched"]},
        {"measure": "mean score delta", "value": r["score_delta"]["mean"]},
        {"measure": "max |score delta|", "value": r["score_delta"]["max_abs"]},
        {"measure": "served latency p50 ms", "value": r["latency_ms"]["served"]["p50"]},
        {"measure": "replayed latency p50 ms", "value": r["latency_ms"]["replayed"]["p50"]},
    ]
    classes = [{"class": name, **row} for name, row in r["classes"].items()]
    return (
        f"<!doctype html><meta charset=utf-8><title>replay of "
        f"{escaping.escape(r['model']['name'])}</title><style>{html.STYLE}</style>"
        f"<h1>Replay through {escaping.escape(r['model']['name'])}</h1>"
        f"<p>{escaping.escape(r['model']['path'])}; detections scoring at least "
        f"{r['min_score']}, matched by class and IoU &ge; {r['iou']}</p>{verdict}"
        + html.table(headline, ["measure", "value"])
        + "<h2>Per class</h2>"
        + html.table(classes, ["class", "matched", "mean_score_delta", "unmatched_served",
                               "unmatched_replayed"])
        + "<h2>Most disagreeing images</h2>"
        + html.table(r["worst_images"], ["request_id", "index", "served_version", "client_id",
                                         "served", "replayed", "matched", "digest"]))


def write_replay(report: dict[str, Any], out_dir: str) -> tuple[str, str]:
    return html.write(report, replay_page(report), out_dir)
