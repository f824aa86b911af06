"""``sightline data report``: one span's data as DriftCheck saw it, as an HTML page plus JSON.

The DriftCheck execution is found in ML Metadata (its ``drift`` output and its ``examples``
input, whose ``span`` picks it); its inputs (examples, statistics, schema, and the baseline
span's examples and statistics) are read back from the artifacts it read. The drift numbers
are ``drift.json``'s, never recomputed; the histograms, the baseline's per-class box stats
and the sample images are read from the same examples with DriftCheck's own reader
(``components.drift_check.annotations``).

``build`` returns the JSON-able content (everything but pixels); ``render_html`` adds the
plots, the sample images with their boxes, and TFDV's Facets overview of both statistics.
"""

from __future__ import annotations

import base64
import dataclasses
import glob
import html
import inspect
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components import release
from components.drift_check import annotations
from components.drift_check import executor as drift_executor
from components.drift_check.component import DataDrift
from data import feature_spec as fs
from pipelines.reports import html as html_report
from pipelines.reports import runs
from pipelines.reports.html import STYLE, cell, png, table

NUM_SAMPLES = 6
HISTOGRAM_BINS = 20
NUMERIC_FEATURES = (fs.STATS_BRIGHTNESS, fs.STATS_CONTRAST)
MEASUREMENTS = ("L_inf", "JS", "PSI")
GATE = "AnomalyGate"  # the component that stops a run on drift
# box_fit_changes does not judge classes with fewer boxes than this in either span.
MIN_FIT_BOXES = inspect.signature(annotations.box_fit_changes).parameters["min_boxes"].default
_DONE = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
_FACETS_NOTE = ("TFDV's Facets Overview of the two statistics (current span left, baseline "
                "right). The page embeds the statistics; Facets' JavaScript is loaded from "
                "cdnjs.cloudflare.com and raw.githubusercontent.com when the page is viewed, "
                "so offline this section stays empty (everything else is self-contained).")


class NoDriftCheckError(LookupError):
    """No (finished) DriftCheck execution matches the requested span and run."""


def parse_span(span: str | int) -> int | str:
    """``"latest"`` or a non-negative int (from the command line's SPAN)."""
    if span == "latest" or isinstance(span, int):
        return span
    if not re.fullmatch(r"\d+", str(span)):
        raise ValueError(f"SPAN must be a non-negative integer or 'latest', not {span!r}")
    return int(span)


# --- finding DriftCheck's execution and inputs in MLMD -----------------------------------


@dataclasses.dataclass(frozen=True)
class DriftCheckInputs:
    """One finished DriftCheck execution: what it read and what it wrote."""

    execution: metadata_store_pb2.Execution
    run_id: str
    pipeline: str
    span: int
    drift: metadata_store_pb2.Artifact
    examples: metadata_store_pb2.Artifact
    statistics: metadata_store_pb2.Artifact | None
    schema: metadata_store_pb2.Artifact | None
    baseline_examples: metadata_store_pb2.Artifact | None
    baseline_statistics: metadata_store_pb2.Artifact | None


def _key(event: metadata_store_pb2.Event) -> str:
    return event.path.steps[0].key if event.path.steps else ""


def _finished_drift_checks(store: metadata_store.MetadataStore, run_id: str | None
                           ) -> tuple[list[metadata_store_pb2.Execution], str]:
    """Every finished DriftCheck execution (of one run if given), and where they were sought."""
    drifts = store.get_artifacts_by_type(DataDrift.TYPE_NAME)
    producers = {
        e.execution_id for e in store.get_events_by_artifact_ids([a.id for a in drifts])
        if e.type in runs.OUTPUT_EVENTS and _key(e) == drift_executor.DRIFT_KEY
    } if drifts else set()
    where = "in this store"
    if run_id is not None:
        run = runs.find_run(store, run_id)
        producers &= {e.id for e in store.get_executions_by_context(run.id)}
        where = f"in run {run.name}"
    executions = [e for e in store.get_executions_by_id(sorted(producers))
                  if e.last_known_state in _DONE] if producers else []
    if not executions:
        raise NoDriftCheckError(
            f"no finished DriftCheck execution {where}: run `sightline run` first (a run "
            "that failed before DriftCheck has nothing to report)")
    return executions, where


def find_drift_check(
    store: metadata_store.MetadataStore, span: int | str = "latest", run_id: str | None = None
) -> DriftCheckInputs:
    """The newest finished DriftCheck execution that read ``span`` (optionally in one run).

    ``"latest"`` is the highest span DriftCheck has seen (the newest execution among its
    checks), as ExampleGen's ``{SPAN}`` picks the highest span.
    """
    executions, where = _finished_drift_checks(store, run_id)
    linked: dict[int, dict[str, int]] = {e.id: {} for e in executions}
    for event in store.get_events_by_execution_ids(list(linked)):
        if event.type in runs.INPUT_EVENTS or event.type in runs.OUTPUT_EVENTS:
            linked[event.execution_id][_key(event)] = event.artifact_id
    artifacts = {a.id: a for a in store.get_artifacts_by_id(
        sorted({i for keys in linked.values() for i in keys.values()}))}
    checks = []
    for execution in executions:
        examples = artifacts.get(linked[execution.id].get(drift_executor.EXAMPLES_KEY))
        seen = runs.span_of(examples) if examples is not None else None
        if seen is not None:
            checks.append((seen, execution.create_time_since_epoch, execution.id, execution))
    if not checks:
        raise NoDriftCheckError(f"no DriftCheck execution {where} has an Examples input with "
                                "a span")
    if span == "latest":
        chosen = max(checks, key=lambda c: c[:3])
    else:
        matching = [c for c in checks if c[0] == span]
        if not matching:
            seen_spans = sorted({c[0] for c in checks})
            raise NoDriftCheckError(
                f"no DriftCheck execution {where} checked span {span}; spans checked: "
                f"{', '.join(map(str, seen_spans))}")
        chosen = max(matching, key=lambda c: c[:3])
    execution = chosen[3]
    keys = linked[execution.id]
    contexts = store.get_contexts_by_execution(execution.id)
    run_context = next((c.name for c in contexts if c.type == "pipeline_run"), "")
    pipeline = next((c.name for c in contexts if c.type == "pipeline"), "")

    def artifact(key: str) -> metadata_store_pb2.Artifact | None:
        return artifacts.get(keys.get(key))

    return DriftCheckInputs(
        execution=execution, run_id=run_context, pipeline=pipeline, span=chosen[0],
        drift=artifact(drift_executor.DRIFT_KEY), examples=artifact(drift_executor.EXAMPLES_KEY),
        statistics=artifact(drift_executor.STATISTICS_KEY),
        schema=artifact(drift_executor.SCHEMA_KEY),
        baseline_examples=artifact(drift_executor.BASELINE_EXAMPLES_KEY),
        baseline_statistics=artifact(drift_executor.BASELINE_STATISTICS_KEY),
    )


def _split_uri(artifact: metadata_store_pb2.Artifact, split: str) -> str:
    """A split's folder (TFX's ``Split-<name>`` layout), checked against ``split_names``."""
    names = json.loads(artifact.properties["split_names"].string_value or "[]") if (
        "split_names" in artifact.properties) else []
    if names and split not in names:
        raise NoDriftCheckError(f"artifact {artifact.id} ({artifact.uri}) has no split "
                                f"{split!r}, only {names}")
    return os.path.join(artifact.uri, f"Split-{split}")


def _class_names(schema: metadata_store_pb2.Artifact | None) -> list[str]:
    from tfx.utils import io_utils

    from schemas.curate import class_names_of

    if schema is None:
        return []
    return class_names_of(io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(schema.uri)))


# --- the report's content ----------------------------------------------------------------


def build(
    store: metadata_store.MetadataStore, span: int | str = "latest", run_id: str | None = None,
    num_samples: int = NUM_SAMPLES,
) -> dict[str, Any]:
    """The report's content as JSON-able data: everything except the sample images' pixels."""
    found = find_drift_check(store, span, run_id)
    drift_path = os.path.join(found.drift.uri, drift_executor.DRIFT_FILE)
    if not os.path.exists(drift_path):
        raise NoDriftCheckError(f"DriftCheck execution {found.execution.id} recorded no "
                                f"{drift_executor.DRIFT_FILE} at {found.drift.uri}")
    with open(drift_path) as f:
        drift = json.load(f)
    split = drift["split"]
    summary = runs.summarize(store, found.run_id)
    properties = runs.custom_properties(found.execution)
    names = _class_names(found.schema)
    split_uri = _split_uri(found.examples, split)
    images = list(annotations.read_split(split_uri))
    baseline_images = list(annotations.read_split(
        _split_uri(found.baseline_examples, split))) if (
        drift["baseline"] and found.baseline_examples is not None) else []
    failure = summary.get("failure")
    baseline = None
    if drift["baseline"]:
        baseline = {**drift["baseline"], "examples_uri": None, "num_examples": None}
        if found.baseline_examples is not None:
            baseline["examples_uri"] = found.baseline_examples.uri
            baseline["num_examples"] = release.dataset_record(
                found.baseline_examples).get(split, {}).get("num_examples")
    return {
        "span": found.span,
        "run_id": found.run_id,
        "pipeline": found.pipeline,
        "run_status": summary["status"],
        "split": split,
        "num_examples": len(images),
        "drift_check_execution_id": found.execution.id,
        "drift_uri": drift_path,
        "examples_uri": found.examples.uri,
        "statistics_uri": found.statistics.uri if found.statistics is not None else None,
        "baseline": baseline,
        "verdict": _verdict(drift),
        "stopped_at_anomaly_gate": bool(failure and failure["component"] == GATE),
        "failure": failure,
        "thresholds": {k: properties.get(k) for k in (
            drift_executor.PSI_THRESHOLD_KEY, drift_executor.BOX_FIT_TOLERANCE_KEY,
            drift_executor.DUPLICATE_IOU_KEY, drift_executor.MIN_BOX_PIXELS_KEY)},
        "features": [_feature_row(f) for f in drift["features"]],
        "classes": _class_rows(drift, names, baseline_images),
        "duplicate_boxes": drift["duplicate_boxes"],
        "tiny_boxes": drift["tiny_boxes"],
        "histograms": _histograms(images, baseline_images, names),
        "samples": _samples(images, drift, names, num_samples),
        "drift": drift,
    }


def _verdict(drift: dict[str, Any]) -> dict[str, Any]:
    changes = drift["box_fit_changes"]
    moved = drift["drifted_features"] + [
        f"box fit of {name} ×{change['fit_ratio']:.2f}" for name, change in changes.items()]
    if not drift["baseline"]:
        text = "not compared: no baseline (first span)"
    else:
        text = "drift: " + ", ".join(moved) if moved else "no drift"
    return {"drift_detected": bool(moved), "drifted_features": drift["drifted_features"],
            "box_fit_changes": sorted(changes), "text": text}


def _feature_row(feature: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"feature": feature["feature"]}
    for name in MEASUREMENTS:
        row[name] = feature["measurements"].get(name)
        row[f"{name}_threshold"] = feature["thresholds"].get(name)
    row["drifted"] = feature["drifted"]
    return row


def _class_rows(drift: dict[str, Any], names: Sequence[str],
                baseline_images: Sequence[annotations.ImageBoxes]) -> list[dict[str, Any]]:
    current = drift["class_boxes"]
    before = annotations.class_box_stats(baseline_images, names) if baseline_images else {}
    order = [n for n in names if n in current or n in before]
    order += sorted((set(current) | set(before)) - set(order))
    rows = []
    for name in order:
        now, then = current.get(name, {}), before.get(name, {})
        fit, base_fit = now.get("median_fit"), then.get("median_fit")
        change = drift["box_fit_changes"].get(name)
        flagged = None
        if change:
            flagged = "looser" if change["fit_ratio"] < 1 else "tighter"
        elif then and min(now.get("boxes", 0), then["boxes"]) < MIN_FIT_BOXES:
            flagged = f"not judged (< {MIN_FIT_BOXES} boxes)"
        rows.append({
            "class": name, "boxes": now.get("boxes", 0), "median_fit": fit,
            "median_width": now.get("median_width"), "median_height": now.get("median_height"),
            "baseline_boxes": then.get("boxes") if baseline_images else None,
            "baseline_fit": base_fit,
            "fit_ratio": round(fit / base_fit, 4) if fit and base_fit else None,
            "flagged": flagged,
        })
    return rows


def _histograms(images: Sequence[annotations.ImageBoxes],
                baseline_images: Sequence[annotations.ImageBoxes],
                names: Sequence[str]) -> dict[str, Any]:
    """Box counts per class, numeric features on shared bins, categorical value counts."""
    labels = {int(label) for image in [*images, *baseline_images] for label in image.labels}
    unknown = sorted(label for label in labels if not 1 <= label <= len(names))
    order = [*range(1, len(names) + 1), *unknown]  # labels, in the order of the names below

    def class_counts(imgs: Sequence[annotations.ImageBoxes]) -> list[int]:
        counts = Counter(int(label) for image in imgs for label in image.labels)
        return [counts.get(label, 0) for label in order]

    result: dict[str, Any] = {"classes": {
        "names": [*names, *map(str, unknown)], "current": class_counts(images),
        "baseline": class_counts(baseline_images) if baseline_images else None}}
    now = annotations.feature_values(images) if images else {}
    then = annotations.feature_values(baseline_images) if baseline_images else {}
    result["numeric"] = {}
    for key in NUMERIC_FEATURES:
        values = [v for v in (now.get(key), then.get(key)) if v is not None and len(v)]
        if not values:
            continue
        lo, hi = float(min(v.min() for v in values)), float(max(v.max() for v in values))
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, HISTOGRAM_BINS + 1)
        result["numeric"][key] = {
            "edges": edges.round(6).tolist(),
            "current": np.histogram(now[key], edges)[0].tolist() if key in now else None,
            "baseline": np.histogram(then[key], edges)[0].tolist() if key in then else None,
        }
    result["categorical"] = {}
    for key in annotations.CATEGORY_FEATURES:
        cur = Counter(now[key].tolist()) if key in now else Counter()
        base = Counter(then[key].tolist()) if key in then else None
        values = sorted(set(cur) | set(base or {}))
        result["categorical"][key] = {
            "values": values, "current": [cur[v] for v in values],
            "baseline": [base[v] for v in values] if base is not None else None}
    return result


def _samples(images: Sequence[annotations.ImageBoxes], drift: dict[str, Any],
             names: Sequence[str], count: int) -> list[dict[str, Any]]:
    """``count`` examples to look at: those the findings name first (round-robin over the
    findings, so each shows), then the split's first ones."""
    findings = [(f"box fit of {name} ×{change['fit_ratio']:.2f}", change["example_ids"])
                for name, change in drift["box_fit_changes"].items()]
    findings += [(kind.replace("_", " "), drift[kind]["example_ids"])
                 for kind in ("duplicate_boxes", "tiny_boxes")]
    by_id = {image.source_id: image for image in images}
    reasons: dict[str, list[str]] = {}
    queues = [(reason, [i for i in ids if i in by_id]) for reason, ids in findings]
    queues = [(reason, ids) for reason, ids in queues if ids]
    while queues and len(reasons) < count:
        for reason, ids in queues:
            while ids:
                source_id = ids.pop(0)
                if source_id in reasons:
                    reasons[source_id].append(reason)
                    continue
                if len(reasons) < count:
                    reasons[source_id] = [reason]
                break
        queues = [(reason, ids) for reason, ids in queues if ids]
    for image in images:
        if len(reasons) >= count:
            break
        reasons.setdefault(image.source_id, ["first in the split"])
    samples = []
    for source_id, why in reasons.items():
        image = by_id[source_id]
        samples.append({
            "source_id": source_id, "reasons": why, "width": image.width,
            "height": image.height,
            **{key: image.values.get(key) for key in annotations.CATEGORY_FEATURES},
            "boxes": image.boxes.round(4).tolist(),  # data.boxes.XYXY
            "classes": [names[i - 1] if 1 <= i <= len(names) else str(i)
                        for i in image.labels.tolist()],
        })
    return samples


# --- rendering ---------------------------------------------------------------------------


def plots(report: dict[str, Any]) -> dict[str, str]:
    """Class histogram, numeric and categorical feature histograms: base64 PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    hist = report["histograms"]
    images = {}
    classes = hist["classes"]
    fig, ax = plt.subplots(figsize=(6, 3))
    x = np.arange(len(classes["names"]))
    ax.bar(x - 0.2, classes["current"], 0.4, label=f"span {report['span']} (current)")
    if classes["baseline"] is not None:
        ax.bar(x + 0.2, classes["baseline"], 0.4, label=_baseline_name(report))
    ax.set_xticks(x, classes["names"])
    ax.set_ylabel("boxes")
    ax.legend(fontsize=8)
    images["classes"] = png(fig)
    plt.close(fig)

    def stairs(ax: Any, h: dict[str, Any]) -> None:
        for counts, label, fill in ((h["current"], "current", True),
                                    (h["baseline"], "baseline", False)):
            if counts is not None and sum(counts):
                ax.stairs(np.asarray(counts) / sum(counts), np.asarray(h["edges"]), fill=fill,
                          alpha=0.5 if fill else 1, label=label, linewidth=1.5)

    def bars(ax: Any, h: dict[str, Any]) -> None:
        x = np.arange(len(h["values"]))
        for offset, counts, label in ((-0.2, h["current"], "current"),
                                      (0.2, h["baseline"], "baseline")):
            if counts is not None and sum(counts):
                ax.bar(x + offset, np.asarray(counts) / sum(counts), 0.4, label=label)
        ax.set_xticks(x, h["values"], fontsize=8)

    for kind, draw in (("numeric", stairs), ("categorical", bars)):
        if hist[kind]:
            images[kind] = _share_of_images_plot(plt, hist[kind], draw)
    return images


def _share_of_images_plot(plt: Any, features: dict[str, Any], draw: Any) -> str:
    """One panel per feature, its current and baseline shares drawn by ``draw(ax, h)``."""
    fig, axes = plt.subplots(1, len(features), figsize=(4.5 * len(features), 3), squeeze=False)
    for ax, (key, h) in zip(axes[0], features.items(), strict=True):
        draw(ax, h)
        ax.set_title(key, fontsize=10)
        ax.set_ylabel("share of images")
        ax.legend(fontsize=8)
    fig.tight_layout()
    image = png(fig)
    plt.close(fig)
    return image


def _baseline_name(report: dict[str, Any]) -> str:
    return f"span {report['baseline']['span']} (baseline)" if report["baseline"] else "baseline"


def _encoded_images(split_uri: str, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    """(source id, encoded image) of the wanted examples of a split; stops when all are read."""
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(split_uri, "*")))
    spec = {fs.IMAGE_SOURCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
            fs.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)}
    left = set(wanted)
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(64):
        parsed = tf.io.parse_example(batch, spec)
        for source_id, encoded in zip(parsed[fs.IMAGE_SOURCE_ID].numpy(),
                                      parsed[fs.IMAGE_ENCODED].numpy(), strict=True):
            if source_id.decode() in left:
                left.discard(source_id.decode())
                yield source_id.decode(), encoded
        if not left:
            return


_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
            "#bfef45", "#fabed4", "#469990")


def draw_samples(report: dict[str, Any]) -> dict[str, str]:
    """The sample images with their boxes and class names drawn: source id -> base64 JPEG."""
    from PIL import Image, ImageDraw, ImageFont

    samples = report["samples"]
    split_uri = os.path.join(report["examples_uri"], f"Split-{report['split']}")
    encoded = dict(_encoded_images(split_uri, {s["source_id"] for s in samples}))
    names = report["histograms"]["classes"]["names"]
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    drawn = {}
    for sample in samples:
        if sample["source_id"] not in encoded:
            continue
        image = Image.open(io.BytesIO(encoded[sample["source_id"]])).convert("RGB")
        draw = ImageDraw.Draw(image)
        w, h = image.size
        for box, name in zip(sample["boxes"], sample["classes"], strict=True):
            colour = _COLOURS[(names.index(name) if name in names else 0) % len(_COLOURS)]
            x0, y0, x1, y1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
            draw.rectangle((x0, y0, x1, y1), outline=colour, width=2)
            left, top, right, bottom = draw.textbbox((0, 0), name, font=font)
            ty = y0 - (bottom - top) - 3 if y0 - (bottom - top) - 3 >= 0 else y0 + 1
            draw.rectangle((x0, ty, x0 + right - left + 4, ty + bottom - top + 3), fill=colour)
            draw.text((x0 + 2, ty - top + 1), name, fill="white", font=font)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=88)
        drawn[sample["source_id"]] = base64.b64encode(buffer.getvalue()).decode()
    return drawn


def facets_html(report: dict[str, Any]) -> str | None:
    """TFDV's Facets overview HTML of the current span's statistics versus the baseline's."""
    if not report["statistics_uri"]:
        return None
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.utils import display_util

    def load(uri: str):
        return tfdv.load_stats_binary(
            os.path.join(uri, f"Split-{report['split']}", "FeatureStats.pb"))

    baseline = report["baseline"]
    return display_util.get_statistics_html(
        load(report["statistics_uri"]),
        load(baseline["statistics_uri"]) if baseline else None,
        lhs_name=f"span {report['span']} (current)",
        rhs_name=_baseline_name(report))


def _measurement_cell(row: dict[str, Any], name: str) -> str:
    value = row[name]
    if value is None:
        return "<td>–</td>"
    marked = " class=bad" if name in row["drifted"] else ""
    return f"<td{marked}>{cell(float(value))}</td>"


def _drift_table(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (
        "feature", "L∞", "threshold", "Jensen–Shannon", "threshold", "PSI", "threshold",
        "drifted"))
    body = []
    for row in rows:
        cells = [f"<td>{cell(row['feature'])}</td>"]
        for name in MEASUREMENTS:
            cells += [_measurement_cell(row, name), f"<td>{cell(row[f'{name}_threshold'])}</td>"]
        cells.append(f"<td class=bad>{cell(', '.join(row['drifted']))}</td>" if row["drifted"]
                     else "<td class=good>no</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:g}"


def _percent(value: Any) -> str:
    return "–" if value is None else f"±{100 * value:g} %"


def _boxes(count: int) -> str:
    return f"{count} box" if count == 1 else f"{count} boxes"


def _ids(finding: dict[str, Any]) -> str:
    if not finding["count"]:
        return "none"
    shown = ", ".join(finding["example_ids"])
    return f"{finding['count']} (in examples {html.escape(shown)})"


_EXTRA_STYLE = """.samples{display:grid;grid-template-columns:repeat(3,1fr);gap:12px}
figure{margin:0}figcaption{font-size:.85em;color:#444}pre{white-space:pre-wrap;background:#f7f7f7;
padding:.5em}iframe.facets{width:100%;height:800px;border:1px solid #ccc}"""


def _verdict_html(report: dict[str, Any]) -> tuple[str, str, str]:
    """The baseline line, the verdict and what the gate did, as HTML fragments."""
    e = html.escape
    baseline = report["baseline"]
    if baseline:
        count = (f", {baseline['num_examples']} examples" if baseline["num_examples"] is not None
                 else "")
        base_text = (f"span {baseline['span']}{count}, statistics "
                     f"<code>{e(baseline['statistics_uri'])}</code>")
    else:
        base_text = "no baseline: first span (nothing was compared)"
    verdict = report["verdict"]
    verdict_html = (f"<span class={'bad' if verdict['drift_detected'] else 'good'}>"
                    f"{e(verdict['text'])}</span>")
    failure = report["failure"]
    if report["stopped_at_anomaly_gate"]:
        gate = f"<p class=bad>The run stopped at {GATE}:</p><pre>{e(failure['error'])}</pre>"
    elif failure:
        gate = (f"<p>The run did not stop at {GATE}; it failed at {e(failure['component'])}:"
                f"</p><pre>{e(failure['error'])}</pre>")
    else:
        gate = f"<p>The run did not stop at {GATE} (status {e(report['run_status'])}).</p>"
    return base_text, verdict_html, gate


def render_html(report: dict[str, Any]) -> str:
    """The report as one HTML page (plots as PNG, samples as JPEG, Facets in an iframe)."""
    images = plots(report)
    samples = draw_samples(report)
    facets = facets_html(report)
    e = html.escape
    base_text, verdict_html, gate = _verdict_html(report)
    thresholds = report["thresholds"]

    def img(key: str, title: str) -> str:
        return f"<h3>{title}</h3><img src='data:image/png;base64,{images[key]}'>" if (
            key in images) else ""

    figures = "".join(
        f"<figure><img src='data:image/jpeg;base64,{samples[s['source_id']]}'>"
        f"<figcaption>{e(s['source_id'])} · {e(str(s.get(fs.meta_key('lighting'))))} · "
        f"{e(str(s.get(fs.meta_key('camera'))))} · {_boxes(len(s['boxes']))}<br>"
        f"{e('; '.join(s['reasons']))}</figcaption></figure>"
        for s in report["samples"] if s["source_id"] in samples)
    facets_section = (
        f"<p>{e(_FACETS_NOTE)}</p><iframe class=facets title='Facets Overview' "
        f"srcdoc=\"{html.escape(facets, quote=True)}\"></iframe>" if facets
        else "<p>No statistics recorded for this DriftCheck.</p>")
    title = f"span {report['span']} · run {report['run_id']}"
    return f"""<!doctype html><html><head><meta charset=utf-8>
<title>Sightline data · {e(title)}</title><style>{STYLE}{_EXTRA_STYLE}</style></head>
<body><h1>Data of span {report['span']} as DriftCheck saw it</h1>
<p>run {e(report['run_id'])} · {e(report['pipeline'])} · split {e(report['split'])} ·
{report['num_examples']} examples · DriftCheck execution {report['drift_check_execution_id']}</p>
<p>Baseline: {base_text}</p>
<p>Verdict: {verdict_html}</p>{gate}
<h2>Drift per feature</h2>
<p>L∞ (categorical) and Jensen–Shannon (numeric) from TFDV with the schema's thresholds; PSI
on the baseline's deciles (values for categorical features), threshold
{_num(thresholds['psi_threshold'])}. Red: above its threshold.</p>
{_drift_table(report['features']) if report['features'] else '<p>Nothing compared.</p>'}
<h2>Annotation quality</h2>
<p>Box fit: object area / box area (looser boxes lower it). A class is flagged when its
median fit moves by more than {_percent(thresholds['box_fit_tolerance'])} from the
baseline's; classes with fewer than {MIN_FIT_BOXES} boxes in either span are not judged.</p>
{table(report['classes'], ['class', 'boxes', 'median_fit', 'median_width', 'median_height',
                           'baseline_boxes', 'baseline_fit', 'fit_ratio', 'flagged'])}
<p>Duplicate boxes (same class, IoU &gt; {_num(thresholds['duplicate_iou'])}):
{_ids(report['duplicate_boxes'])}.<br>Tiny boxes (under {_num(thresholds['min_box_pixels'])}
px a side): {_ids(report['tiny_boxes'])}.</p>
<h2>Distributions</h2>
{img('classes', 'Boxes per class')}{img('numeric', 'Image statistics (share of images)')}
{img('categorical', 'Metadata (share of images)')}
<h2>Sample images</h2><p>Examples the findings name first, then the split's first ones.</p>
<div class=samples>{figures}</div>
<h2>Statistics (TFDV Facets Overview)</h2>{facets_section}
<p>Source: <code>{e(report['drift_uri'])}</code></p></body></html>"""


def default_dir_name(report: dict[str, Any]) -> str:
    """``data-span-<span>-<run id>``, the run id made safe for a folder name."""
    return f"data-span-{report['span']}-{re.sub(r'[^A-Za-z0-9._-]+', '-', report['run_id'])}"


def write(report: dict[str, Any], out_dir: str) -> tuple[str, str]:
    """Writes ``report.html`` and ``report.json``; returns their paths."""
    return html_report.write(report, render_html(report), out_dir)
