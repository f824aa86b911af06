"""``sightline monitor``: one pass over the request logs, its verdict and its record.

Reads the newest window of one served version's traffic (and the window before it),
finds that version's training statistics, schema, evaluation and thresholds in ML
Metadata (``baseline``), runs the comparisons (``checks``, ``labels``), and records the
result as a ``sightline.MonitorRun`` execution with INPUT events to the PushedModel, the
training statistics and the evaluation, and an OUTPUT ``sightline.MonitoringReport``
artifact (the report's folder), so monitoring results sit in the model's lineage.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow_data_validation as tfdv
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

from components.coco_eval import offline
from components.coco_eval import results as eval_results
from components.drift_check import annotations, drift
from data import feature_spec as fs
from pipelines.monitoring import baseline as baselines
from pipelines.monitoring import checks, labels, traffic
from pipelines.settings import MonitorSettings
from serving.log_reader import Detections, detections_of

MONITOR_RUN = "sightline.MonitorRun"
MONITORING_REPORT = "sightline.MonitoringReport"
log = logging.getLogger("sightline.monitor")
_NO_DETECTIONS = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))  # training rows


@dataclasses.dataclass(frozen=True)
class Request:
    """What to monitor (the command line)."""

    logs: Sequence[str]
    window_seconds: int
    model: str | None = None  # default: the model that answered most in the window
    version: int | None = None  # default: the version that answered most
    labels: str | None = None  # a COCO file of labelled logged images
    images_root: str | None = None  # where its file_name entries are (default: beside it)
    end: int | None = None  # the window's end, seconds since the epoch (default: newest)


def _training_images(baseline: baselines.Baseline) -> list[traffic.ServedImage]:
    """The training split's per-image statistics and meta (DriftCheck's reader)."""
    rows = []
    for image in annotations.read_split(baselines.split_uri(baseline.examples_uri, "train")):
        stats = {k: float(image.values[k]) for k in (fs.STATS_BRIGHTNESS, fs.STATS_CONTRAST)}
        stats.update({fs.IMAGE_HEIGHT: float(image.height), fs.IMAGE_WIDTH: float(image.width)})
        meta = {k.removeprefix(fs.META_PREFIX): image.values[k] for k in fs.META_KEYS}
        rows.append(traffic.ServedImage(0, image.source_id, stats, meta, _NO_DETECTIONS))
    return rows


def reference_predictions(baseline: baselines.Baseline) -> list[traffic.ServedImage]:
    """The served version's own detections on its eval split: evaluation-time predictions."""
    files = os.path.join(baselines.split_uri(baseline.examples_uri, "eval"), "*")
    detect = offline.saved_model_detector(baseline.serving_dir)
    features = [offline.example_features(s) for s in offline.read_examples([files])]
    rows = []
    for first in range(0, len(features), offline.BATCH_SIZE):
        batch = features[first:first + offline.BATCH_SIZE]
        found = detections_of(detect([f[fs.IMAGE_ENCODED][0] for f in batch]))
        for feature, detections in zip(batch, found, strict=True):
            meta = {k.removeprefix(fs.META_PREFIX): feature[k][0].decode()
                    for k in fs.META_KEYS if k in feature}
            rows.append(traffic.ServedImage(0, "", None, meta, detections))
    return rows


def run(store: metadata_store.MetadataStore, request: Request, settings: MonitorSettings,
        progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Everything the report shows, as a JSON-able dict; ``alarms`` lists what tripped.

    Raises:
      FileNotFoundError / ValueError: unusable logs or labels (the message names them).
      baseline.BaselineError: the served version is not traceable in ML Metadata.
    """
    progress(f"reading request logs under {', '.join(request.logs)}")
    seen = traffic.read(request.logs, request.window_seconds, request.model, request.version,
                        settings.client_id_field, request.end)
    progress(f"{len(seen.current)} images of {seen.model} version {seen.version} in the "
             f"window, {len(seen.previous)} in the previous one")
    base = baselines.find(store, seen.model, str(seen.version))
    progress("reading the training split and running the model on its eval split")
    training = _training_images(base)
    reference = reference_predictions(base)
    logged_images = sum(i.stats is not None for i in seen.current)
    report: dict[str, Any] = {
        "model": seen.model, "version": seen.version, "baseline": base.to_json(),
        "window": {"seconds": seen.window_seconds, "start": seen.start, "end": seen.end,
                   "images": len(seen.current), "images_with_bytes": logged_images,
                   "previous_images": len(seen.previous), "older_images": seen.older_images,
                   "enough_images": len(seen.current) >= settings.min_window_images},
        "logs": {"files": len(seen.files), "records": seen.records,
                 "unreadable": seen.unreadable, "answers_seen": seen.versions_seen},
        "settings": dataclasses.asdict(settings),
        **_input_checks(seen, base, training, settings),
        "predictions": _prediction_checks(seen, base, reference, settings),
        "slices": [s.to_json() for s in checks.slices(
            seen.current, training, reference, base.class_names, base.thresholds, settings)],
        "labels": None,
    }
    if request.labels:
        progress(f"matching the labelled images of {request.labels} to logged images")
        report["labels"] = _labelled(request, seen, base, settings)
    report["histograms"] = histograms(
        {"training": training, "window": seen.current, "previous window": seen.previous},
        {"evaluation": reference, "window": seen.current, "previous window": seen.previous},
        base.class_names, base.thresholds)
    report["alarms"] = alarms(report, settings)
    report["alarm"] = bool(report["alarms"])
    return report


def _input_checks(seen: traffic.Traffic, base: baselines.Baseline,
                  training: list[traffic.ServedImage], settings: MonitorSettings
                  ) -> dict[str, Any]:
    """Skew against training, TFDV's schema anomalies, drift against the previous window."""
    found: dict[str, Any] = {"skew": [], "schema_anomalies": {}, "drift": []}
    current_values = checks.feature_values(seen.current)
    if not any(i.stats is not None for i in seen.current):
        return found  # the server redacted the images: inputs cannot be monitored
    schema = checks.monitor_schema(tfdv.load_schema_text(base.schema_path), settings,
                                   [k for k, v in current_values.items() if len(v)])
    serving_stats = checks.statistics(current_values, len(seen.current), schema)
    found["skew"] = [f.to_dict() for f in checks.skew(
        tfdv.load_stats_binary(base.training_statistics_path), serving_stats, schema,
        checks.feature_values(training), current_values, settings)]
    found["schema_anomalies"] = checks.schema_anomalies(serving_stats, schema)
    if any(i.stats is not None for i in seen.previous):
        previous_values = checks.feature_values(seen.previous)
        previous_stats = checks.statistics(previous_values, len(seen.previous), schema)
        found["drift"] = [f.to_dict() for f in checks.judged_all(drift.compare(
            serving_stats, previous_stats, schema, settings.psi_threshold, current_values,
            previous_values), current_values, previous_values)]
    return found


def _prediction_checks(seen: traffic.Traffic, base: baselines.Baseline,
                       reference: list[traffic.ServedImage], settings: MonitorSettings
                       ) -> dict[str, Any]:
    """The window's predictions against evaluation time and against the previous window."""
    def summarize(images: list[traffic.ServedImage]) -> checks.Predictions:
        return checks.predictions([i.detections for i in images], base.class_names,
                                  base.thresholds)

    current, evaluation = summarize(seen.current), summarize(reference)
    previous = summarize(seen.previous) if seen.previous else None
    return {
        "current": current.to_json(),
        "evaluation": evaluation.to_json(),
        "vs_evaluation": [f.to_dict() for f in checks.compare_predictions(
            current, evaluation, settings)],
        "previous": previous.to_json() if previous else None,
        "vs_previous": [f.to_dict() for f in checks.compare_predictions(
            current, previous, settings)] if previous else [],
    }


def _labelled(request: Request, seen: traffic.Traffic, base: baselines.Baseline,
              settings: MonitorSettings) -> dict[str, Any]:
    """The labelled sample's metrics per slice against the Evaluator's."""
    sample = labels.match(request.labels, seen.current + seen.previous, base.class_names,
                          request.images_root)
    evaluation = (eval_results.load_metrics(base.evaluation.uri)[eval_results.CANDIDATE]
                  if base.evaluation is not None else {})
    return {"path": request.labels, "listed": sample.listed, "matched": sample.matched,
            "quarantined": sample.quarantined,
            "slices": labels.compare(sample, base.class_names, evaluation, settings)}


HISTOGRAM_BINS = 20


def histograms(inputs: dict[str, list[traffic.ServedImage]],
               outputs: dict[str, list[traffic.ServedImage]], class_names: Sequence[str],
               thresholds: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Counts on shared bins per feature and source, for the report's plots."""
    result: dict[str, dict[str, Any]] = {}
    for key in checks.NUMERIC_FEATURES:
        per_source = {name: checks.feature_values(images)[key]
                      for name, images in inputs.items() if images}
        values = np.concatenate([v for v in per_source.values() if len(v)] or [np.zeros(1)])
        edges = np.histogram_bin_edges(values, HISTOGRAM_BINS)
        result[key] = {"edges": edges.tolist(), "counts": {
            name: np.histogram(v, edges)[0].tolist() for name, v in per_source.items()}}
    for key in fs.META_KEYS:
        per_source = {name: checks.feature_values(images)[key]
                      for name, images in inputs.items() if images}
        values = sorted({str(v) for found in per_source.values() for v in found})
        if values:
            result[key] = {"categories": values, "counts": {
                name: [int(np.sum(found == v)) for v in values]
                for name, found in per_source.items()}}
    summaries = {name: checks.predictions([i.detections for i in images], class_names,
                                          thresholds)
                 for name, images in outputs.items() if images}
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    result[checks.SCORES] = {"edges": edges.tolist(), "counts": {
        name: np.histogram(p.scores, edges)[0].tolist() for name, p in summaries.items()}}
    most = int(max((p.per_image.max(initial=0) for p in summaries.values()), default=0))
    edges = np.arange(most + 2) - 0.5
    result[checks.DETECTIONS_PER_IMAGE] = {"edges": edges.tolist(), "counts": {
        name: np.histogram(p.per_image, edges)[0].tolist() for name, p in summaries.items()}}
    return result


def alarms(report: dict[str, Any], settings: MonitorSettings) -> list[str]:
    """One line per finding that should page someone (empty: all is well).

    Distribution checks count only when the window has ``min_window_images`` images
    (``min_window_images`` in the previous window too for window-over-window drift).
    """
    found = []

    def tripped(kind: str, features: list[dict], where: str = "") -> None:
        for f in features:
            for m in f["drifted"]:
                found.append(f"{kind}{where}: {f['feature']} {m} "
                             f"{f['measurements'][m]:.3f} > {f['thresholds'][m]:.3g}")

    window = report["window"]
    if window["enough_images"]:
        tripped("skew", report["skew"])
        found += [f"schema ({checks.SERVING}): {k}: {v}"
                  for k, v in report["schema_anomalies"].items()]
        tripped("predictions vs evaluation", report["predictions"]["vs_evaluation"])
        if window["previous_images"] >= settings.min_window_images:
            tripped("drift vs previous window", report["drift"])
            tripped("predictions vs previous window", report["predictions"]["vs_previous"])
        for s in report["slices"]:
            if s["new_in_serving"]:
                found.append(f"slice {s['slice']}: {s['images']} images from a value the "
                             "training data never had")
            tripped("slice", s["features"], f" {s['slice']}")
    for row in (report["labels"] or {}).get("slices", []):
        found += [f"labels {row['slice']}: {p}" for p in row["problems"]]
    return found


def default_out_dir(home: str, report: dict[str, Any]) -> str:
    end = datetime.datetime.fromtimestamp(report["window"]["end"], datetime.UTC)
    return os.path.join(home, "reports", f"monitor-{report['model']}-v{report['version']}-"
                        f"{end:%Y%m%dT%H%M%SZ}")


def record(store: metadata_store.MetadataStore, report: dict[str, Any], out_dir: str) -> int:
    """Records the run in ML Metadata, linked to the model it watched; the execution id."""
    execution_type = pb.ExecutionType(name=MONITOR_RUN)
    for key, kind in (("model", pb.STRING), ("version", pb.STRING), ("window_start", pb.INT),
                      ("window_end", pb.INT), ("images", pb.INT), ("alarm", pb.INT),
                      ("alarms", pb.STRING), ("report", pb.STRING)):
        execution_type.properties[key] = kind
    type_id = store.put_execution_type(execution_type, can_add_fields=True)
    execution = pb.Execution(type_id=type_id, last_known_state=pb.Execution.COMPLETE)
    props = {"model": report["model"], "version": str(report["version"]),
             "window_start": report["window"]["start"], "window_end": report["window"]["end"],
             "images": report["window"]["images"], "alarm": int(report["alarm"]),
             "alarms": json.dumps(report["alarms"]), "report": out_dir}
    for key, value in props.items():
        if isinstance(value, int):
            execution.properties[key].int_value = value
        else:
            execution.properties[key].string_value = value
    artifact_type = pb.ArtifactType(name=MONITORING_REPORT)
    artifact_type.properties["alarm"] = pb.INT
    artifact = pb.Artifact(type_id=store.put_artifact_type(artifact_type, can_add_fields=True),
                           uri=out_dir, state=pb.Artifact.LIVE)
    artifact.properties["alarm"].int_value = int(report["alarm"])
    inputs = {"pushed_model": report["baseline"]["pushed_model_artifact_id"],
              "training_statistics": report["baseline"]["statistics_artifact_id"],
              "evaluation": report["baseline"]["evaluation_artifact_id"]}
    edges = []
    for key, artifact_id in inputs.items():
        if artifact_id is not None:
            event = pb.Event(artifact_id=artifact_id, type=pb.Event.INPUT)
            event.path.steps.add().key = key
            edges.append((0, None, event))
    output = pb.Event(type=pb.Event.OUTPUT)
    output.path.steps.add().key = "report"
    edges.append((0, 0, output))
    [execution_id], _, _ = store.put_lineage_subgraph([execution], [artifact], [], edges)
    return execution_id
