"""``sightline report``: one run's evaluation as an HTML page with plots, plus the same as JSON.

Everything comes from ML Metadata (the run summary) and the Evaluator's TFMA output, read
with ``components.coco_eval.results``; nothing is recomputed. Small slices and rare classes
are shown as "too few", not as numbers.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from components.coco_eval import metric as coco_metric
from components.coco_eval import results as eval_results
from pipelines.reports import html as html_report
from pipelines.reports.html import STYLE, cell, png, table

MIN_CLASS_OBJECTS = 10  # fewer eval objects of a class: its AP is shown as "too few"
_OVERALL_KEYS = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
                 "AR1", "AR10", "AR100", coco_metric.DECE, coco_metric.NUM_IMAGES,
                 coco_metric.NUM_OBJECTS)
_SLICE_KEYS = ("mAP", "mAP50", "AR100", coco_metric.DECE)


class NoEvaluationError(LookupError):
    """The run has no Evaluator output (it failed or stopped before evaluation)."""


def build(summary: dict[str, Any], min_class_objects: int = MIN_CLASS_OBJECTS) -> dict[str, Any]:
    """The report's content as JSON-able data, from a run summary (``runs.summarize``)."""
    evaluation = summary.get("evaluation")
    if not evaluation:
        failure = summary.get("failure") or {}
        where = failure.get("component") or "before the Evaluator"
        why = f": {failure['error']}" if failure.get("error") else ""
        raise NoEvaluationError(
            f"run {summary['run_id']} has no evaluation (status {summary['status']}, "
            f"stopped at {where}{why}): nothing to report")
    loaded = eval_results.load_metrics(evaluation["uri"])
    candidate = loaded[eval_results.CANDIDATE]
    baseline = loaded[eval_results.BASELINE]
    overall = candidate[eval_results.OVERALL]
    base_overall = baseline.get(eval_results.OVERALL, {})
    class_names = sorted(k.split("/", 1)[1] for k in overall
                         if k.startswith(f"{coco_metric.NUM_OBJECTS}/"))
    classes = [_class_row(c, overall, base_overall, min_class_objects) for c in class_names]
    return {
        "run_id": summary["run_id"],
        "pipeline": summary["pipeline"],
        "status": summary["status"],
        "blessed": summary.get("blessed"),
        "pushed": summary.get("pushed", {}).get("pushed", False),
        "pushed_version": summary.get("pushed", {}).get("version"),
        "has_baseline": bool(base_overall),
        "failed_thresholds": evaluation["failed_thresholds"],
        "blocked_because": evaluation.get("blocked_because"),
        "overall": _rows(_OVERALL_KEYS, overall, base_overall),
        "slices": [_slice_row(name, metrics, baseline.get(name, {}))
                   for name, metrics in sorted(candidate.items())
                   if name != eval_results.OVERALL],
        "classes": classes,
        "sizes": [_size_row(size, overall) for size in coco_metric.SIZE_NAMES],
        "pr_curves": {row["class"]: _list(overall[coco_metric.PR50_PREFIX + row["class"]])
                      for row in classes if "too_few" not in row},
        "reliability": {
            "count": _list(overall.get(coco_metric.RELIABILITY_COUNT)),
            "score": _list(overall.get(coco_metric.RELIABILITY_SCORE)),
            "precision": _list(overall.get(coco_metric.RELIABILITY_PRECISION)),
        },
        "evaluation_uri": evaluation["uri"],
    }


def _list(value: Any) -> list[float] | None:
    return None if value is None else np.asarray(value, float).round(4).tolist()


def _number(value: Any) -> float | None:
    """A reportable number; None for absent and for COCO's -1 ("nothing to evaluate")."""
    if value is None or value == -1:
        return None
    return round(float(value), 4)


def _rows(keys: tuple[str, ...], metrics: dict, base: dict) -> list[dict[str, Any]]:
    rows = []
    for key in keys:
        value, before = _number(metrics.get(key)), _number(base.get(key))
        change = None if value is None or before is None else round(value - before, 4)
        rows.append({"metric": key, "value": value, "baseline": before, "change": change})
    return rows


def _slice_row(name: str, metrics: dict, base: dict) -> dict[str, Any]:
    images = int(metrics.get(coco_metric.NUM_IMAGES, 0))
    row: dict[str, Any] = {"slice": name, "images": images}
    if not metrics.get(coco_metric.ENOUGH_IMAGES, 1):
        row["too_few"] = f"too few examples ({images} images)"
        return row
    for key in _SLICE_KEYS:
        row[key] = _number(metrics.get(key))
    if base:
        before = _number(base.get("mAP"))
        row["baseline_mAP"] = before
        row["change_mAP"] = None if before is None or row["mAP"] is None else round(
            row["mAP"] - before, 4)
    return row


def _class_row(name: str, metrics: dict, base: dict, min_objects: int) -> dict[str, Any]:
    objects = int(metrics.get(f"{coco_metric.NUM_OBJECTS}/{name}", 0))
    row: dict[str, Any] = {"class": name, "objects": objects}
    if objects < min_objects:
        row["too_few"] = f"too few objects ({objects} < {min_objects})"
        return row
    row.update({
        "AP": _number(metrics.get(coco_metric.CLASS_AP_PREFIX + name)),
        "AP50": _number(metrics.get(coco_metric.CLASS_AP50_PREFIX + name)),
        "score_threshold": _number(metrics.get(coco_metric.THRESHOLD_PREFIX + name)),
        "F1": _number(metrics.get(coco_metric.F1_PREFIX + name)),
        "D-ECE": _number(metrics.get(f"{coco_metric.DECE}/{name}")),
        "baseline_AP": _number(base.get(coco_metric.CLASS_AP_PREFIX + name)),
    })
    return row


def _size_row(size: str, metrics: dict) -> dict[str, Any]:
    return {
        "size": size,
        "objects": int(metrics.get(f"{coco_metric.NUM_OBJECTS}_{size}", 0)),
        "AP": _number(metrics.get(f"mAP_{size}")),
        "AR100": _number(metrics.get(f"AR_{size}")),
    }


# --- rendering ---------------------------------------------------------------------------


def plots(report: dict[str, Any]) -> dict[str, str]:
    """Per-class AP bars, PR curves, reliability diagram, slice mAP: base64 PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    images = {}
    classes = [r for r in report["classes"] if "too_few" not in r]
    fig, ax = plt.subplots(figsize=(6, 3))
    x = np.arange(len(classes))
    ax.bar(x - 0.2, [r["AP"] or 0 for r in classes], 0.4, label="candidate")
    if report["has_baseline"]:
        ax.bar(x + 0.2, [r["baseline_AP"] or 0 for r in classes], 0.4, label="baseline")
    ax.set_xticks(x, [r["class"] for r in classes])
    ax.set_ylabel("AP@[.5:.95]")
    ax.set_ylim(0, 1)
    ax.legend()
    images["class_ap"] = png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    recall = np.linspace(0, 1, 101)
    for name, precision in report["pr_curves"].items():
        ax.plot(recall, np.maximum(precision, 0), label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (IoU 0.5)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    images["pr_curves"] = png(fig)
    plt.close(fig)

    reliability = report["reliability"]
    fig, ax = plt.subplots(figsize=(5, 4))
    if reliability["count"]:
        centers = (np.arange(len(reliability["count"])) + 0.5) / len(reliability["count"])
        filled = np.asarray(reliability["count"]) > 0
        precision = np.asarray(reliability["precision"])
        ax.bar(centers[filled], precision[filled], width=1 / len(centers), edgecolor="k",
               alpha=0.7, label="precision per score bin")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlabel("detection score")
    ax.set_ylabel("precision (IoU 0.5)")
    ax.legend(fontsize=8)
    images["reliability"] = png(fig)
    plt.close(fig)

    slices = [r for r in report["slices"] if "too_few" not in r]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(slices) + 1))
    y = np.arange(len(slices))
    ax.barh(y + 0.2, [r["mAP"] or 0 for r in slices], 0.4, label="candidate")
    if report["has_baseline"]:
        ax.barh(y - 0.2, [r.get("baseline_mAP") or 0 for r in slices], 0.4, label="baseline")
    ax.set_yticks(y, [r["slice"] for r in slices])
    ax.set_xlabel("mAP")
    ax.legend(fontsize=8)
    images["slices"] = png(fig)
    plt.close(fig)
    return images


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (plots embedded as PNG)."""
    images = plots(report)
    verdict = ("<span class=good>blessed</span>" if report["blessed"]
               else "<span class=bad>not blessed</span>")
    pushed = (f"pushed as version {html.escape(str(report['pushed_version']))}"
              if report["pushed"] else "not pushed")
    blocked = (f"<p class=bad>Blocked: {html.escape(report['blocked_because'])}</p>"
               if report["blocked_because"] else "")
    baseline = ("compared with the latest blessed model" if report["has_baseline"]
                else "no blessed baseline yet: change gates did not apply")
    dece = next(r["value"] for r in report["overall"] if r["metric"] == coco_metric.DECE)

    def img(key: str, title: str) -> str:
        return f"<h3>{title}</h3><img src='data:image/png;base64,{images[key]}'>"

    return f"""<!doctype html><html><head><meta charset=utf-8>
<title>Sightline evaluation · {html.escape(report['run_id'])}</title><style>{STYLE}</style></head>
<body><h1>Evaluation of run {html.escape(report['run_id'])}</h1>
<p>{html.escape(report['pipeline'])} · status {html.escape(report['status'])} · {verdict} ·
{pushed} · {baseline}</p>{blocked}
<h2>Overall</h2>{table(report['overall'], ['metric', 'value', 'baseline', 'change'])}
<h2>Slices</h2>{table(report['slices'], ['slice', 'images', *_SLICE_KEYS,
                                          'baseline_mAP', 'change_mAP'])}
{img('slices', 'mAP per slice')}
<h2>Per class</h2>{table(report['classes'], ['class', 'objects', 'AP', 'AP50',
                                              'score_threshold', 'F1', 'D-ECE', 'baseline_AP'])}
{img('class_ap', 'AP per class')}{img('pr_curves', 'Precision-recall at IoU 0.5')}
<h2>Per object size (COCO area ranges)</h2>{table(report['sizes'],
                                                ['size', 'objects', 'AP', 'AR100'])}
<h2>Calibration</h2><p>D-ECE (IoU 0.5): {cell(dece)}.
Bars below the diagonal: scores overstate precision.</p>{img('reliability', 'Reliability')}
<p>Source: <code>{html.escape(report['evaluation_uri'])}</code></p></body></html>"""


def write(summary: dict[str, Any], out_dir: str) -> tuple[str, str]:
    """Writes ``report.html`` and ``report.json`` for a run; returns their paths."""
    report = build(summary)
    return html_report.write(report, render_html(report), out_dir)
