"""The monitoring report: one self-contained HTML page and its JSON, for the on-call reader.

Verdict and alarms first, then input skew against training, window-over-window drift,
predictions against evaluation time, slices and the labelled sample, each with the
thresholds it was judged by. Every string from logs, labels or MLMD is escaped.
"""

from __future__ import annotations

import datetime
import html
from typing import Any

from pipelines.reports.html import STYLE, png, table
from pipelines.reports.html import write as write_files

_NO_BYTES = ("No image bytes in the logs: serve with --request_log_include_images to monitor "
             "inputs.")
_NOT_JUDGED = ("Not judged: fewer than {} images of this value in training (or no image "
               "bytes logged).")
_SUMMARY_COLUMNS = ["source", "images", "empty_share", "mean_detections_per_image", "mean_score"]


def _when(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _histogram(ax: Any, spec: dict[str, Any], title: str) -> None:
    if "categories" in spec:  # a meta field: shares side by side
        width = 0.8 / max(len(spec["counts"]), 1)
        for i, (name, counts) in enumerate(spec["counts"].items()):
            total = sum(counts) or 1
            ax.bar([k + i * width for k in range(len(counts))], [c / total for c in counts],
                   width, label=name)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(spec["categories"]))],
                      spec["categories"], fontsize=7, rotation=30)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        return
    edges = spec["edges"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    for name, counts in spec["counts"].items():
        total = sum(counts) or 1
        ax.step(centres, [c / total for c in counts], where="mid", label=name)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("share", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)


def plots(report: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs: input histograms, prediction histograms, reliability diagrams."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out = {}
    specs = report.get("histograms", {})
    inputs = [k for k in specs if not k.startswith("predictions/")]
    outputs = [k for k in specs if k.startswith("predictions/")]
    for key, names in (("inputs", inputs), ("predictions", outputs)):
        if not names:
            continue
        columns = min(len(names), 3)
        rows = -(-len(names) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows),
                                 squeeze=False)
        for ax, name in zip(axes.ravel(), names, strict=False):
            _histogram(ax, specs[name], name)
        for ax in axes.ravel()[len(names):]:
            ax.axis("off")
        fig.tight_layout()
        out[key] = png(fig)
        plt.close(fig)
    rows = [r for r in (report.get("labels") or {}).get("slices", []) if r["images"]]
    if rows:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.plot([0, 1], [0, 1], color="#999", linewidth=0.8, label="calibrated")
        overall = rows[0]
        for name, bins in (("production", overall["reliability"]),
                           ("evaluation", overall.get("eval_reliability"))):
            if not bins:
                continue
            points = [(s, p) for s, p in zip(bins["reliability/score"],
                                             bins["reliability/precision"], strict=True)
                      if s >= 0]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set_xlabel("score")
        ax.set_ylabel("precision (IoU 0.5)")
        ax.set_title(f"reliability, {overall['slice']}", fontsize=9)
        ax.legend(fontsize=8)
        out["reliability"] = png(fig)
        plt.close(fig)
    return out


def _label_status(row: dict[str, Any]) -> str:
    if not row["enough_images"]:
        return "too few images to judge"
    return "no evaluation of this slice" if row["eval_mAP"] is None else "ok"


def _feature_rows(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for f in features:
        row = {"feature": f["feature"], "verdict": ", ".join(f["drifted"]) or "ok"}
        for name, value in f["measurements"].items():
            row[name] = value
            row[f"{name} max"] = f["thresholds"][name]
        rows.append(row)
    return rows


def _feature_table(features: list[dict[str, Any]], empty: str) -> str:
    rows = _feature_rows(features)
    if not rows:
        return f"<p>{html.escape(empty)}</p>"
    measures = sorted({k for r in rows for k in r if k not in ("feature", "verdict")},
                      key=lambda k: (k.removesuffix(" max"), k.endswith(" max")))
    return table(rows, ["feature", *measures, "verdict"])


def render_html(report: dict[str, Any]) -> str:
    images = plots(report)
    window = report["window"]
    name = f"{report['model']} version {report['version']}"
    if report["alarms"]:
        verdict = (f"<p class=bad><b>ALARM</b>: {len(report['alarms'])} finding(s)</p><ul>"
                   + "".join(f"<li>{html.escape(a)}</li>" for a in report["alarms"]) + "</ul>")
    else:
        verdict = "<p class=good><b>OK</b>: nothing crossed its threshold</p>"
    if not window["enough_images"]:
        verdict += (f"<p>Only {window['images']} images in the window (fewer than "
                    f"{report['settings']['min_window_images']}): distances are shown, "
                    "not judged.</p>")

    def img(key: str) -> str:
        return f"<img src='data:image/png;base64,{images[key]}'>" if key in images else ""

    predictions = report["predictions"]
    summary_rows = [{"source": source, **{k: v for k, v in (predictions.get(source) or {})
                                          .items() if k != "class_mix"}}
                    for source in ("evaluation", "previous", "current")
                    if predictions.get(source)]
    slices = "".join(
        f"<h3>{html.escape(s['slice'])} · {s['images']} images "
        f"({s['training_images']} in training)</h3>"
        + ("<p class=bad>A value the training data never had.</p>" if s["new_in_serving"]
           else _feature_table(s["features"], _NOT_JUDGED.format(
               report["settings"]["min_slice_images"])))
        for s in report["slices"]) or "<p>No slice has enough images in the window.</p>"
    labels = report.get("labels")
    if labels:
        label_rows = [{k: r[k] for k in ("slice", "images", "mAP", "eval_mAP", "D-ECE",
                                         "eval_D-ECE")}
                      | {"problems": "; ".join(r["problems"]) or _label_status(r)}
                      for r in labels["slices"]]
        labels_html = (f"<p>{labels['matched']} of {labels['listed']} labelled images in "
                       f"{html.escape(labels['path'])} matched logged images by SHA-256 "
                       f"({labels['quarantined']} unusable).</p>"
                       + table(label_rows, ["slice", "images", "mAP", "eval_mAP", "D-ECE",
                                            "eval_D-ECE", "problems"]) + img("reliability"))
    else:
        labels_html = "<p>No labelled sample (<code>--labels</code>).</p>"
    anomalies = report["schema_anomalies"]
    anomalies_html = ("<ul>" + "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>"
                                       for k, v in anomalies.items()) + "</ul>"
                      if anomalies else "<p>None.</p>")
    baseline = report["baseline"]
    return f"""<!doctype html><html><head><meta charset=utf-8>
<title>Sightline monitor · {html.escape(name)}</title><style>{STYLE}</style></head><body>
<h1>Monitor: {html.escape(name)}</h1>
<p>Window {_when(window['start'])} – {_when(window['end'])}: {window['images']} images
({window['images_with_bytes']} with image bytes logged), {window['previous_images']} in the
previous window; {report['logs']['records']} records in {report['logs']['files']} file(s).
Images answered per model/version in both windows:
{html.escape(', '.join(f'{k}: {v}' for k, v in report['logs']['answers_seen'].items()))}.</p>
{verdict}
<h2>Inputs against training (skew, SERVING environment)</h2>
<p>Training statistics: {html.escape(baseline['training_statistics'])}</p>
{_feature_table(report['skew'], _NO_BYTES)}
{img('inputs')}
<h3>Schema anomalies of the serving data</h3>{anomalies_html}
<h2>Inputs against the previous window (drift)</h2>
{_feature_table(report['drift'], 'No previous window with image bytes.')}
<h2>Predictions</h2>
<p>Per-class score thresholds: {html.escape(str(baseline['score_thresholds']) or 'none')}</p>
{table(summary_rows, _SUMMARY_COLUMNS)}
<h3>Against evaluation-time predictions</h3>
{_feature_table(predictions['vs_evaluation'], 'nothing to compare')}
<h3>Against the previous window</h3>
{_feature_table(predictions['vs_previous'], 'No previous window.')}
{img('predictions')}
<h2>Slices</h2>{slices}
<h2>Labelled sample</h2>{labels_html}
</body></html>"""


def write(report: dict[str, Any], out_dir: str) -> tuple[str, str]:
    """report.html and report.json in ``out_dir``; their paths."""
    return write_files(report, render_html(report), out_dir)

