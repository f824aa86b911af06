"""The monitor's comparisons: serving statistics, skew, window drift, predictions, slices.

* **Serving statistics** are TFDV statistics of the served images' features the schema
  keeps in its ``SERVING`` environment and the logs can give: ``stats/brightness``,
  ``stats/contrast``, ``image/height``, ``image/width`` and ``meta/*`` where requests carry
  them. The schema is the model's own (the Trainer's input), narrowed to those features,
  with ``MonitorSettings``' thresholds as its skew and drift comparators.
* **Skew**: ``tfdv.validate_statistics`` of the training statistics with
  ``serving_statistics`` in the ``SERVING`` environment (L∞ / JS), plus PSI from the
  values, read by DriftCheck's ``drift.verdicts``; schema anomalies of the serving data
  (a camera outside the domain) are reported too.
* **Drift**: the current window against the previous one with DriftCheck's ``compare``.
* **Predictions**: detections per image above the per-class threshold, the score
  distribution, the class mix and the share of images with no detection above
  threshold, against the model's evaluation-time predictions (or a previous window).
* **Slices**: per value of a ``meta`` field, images from a value never seen in training,
  and brightness / contrast against the training images of that value.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pyarrow as pa
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.statistics import stats_impl
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from components.drift_check import drift
from components.drift_check.drift import FeatureDrift
from data import feature_spec as fs
from pipelines.monitoring.traffic import ServedImage
from pipelines.settings import MonitorSettings
from serving.log_reader import Detections

SERVING = "SERVING"
NUMERIC_FEATURES = (fs.STATS_BRIGHTNESS, fs.STATS_CONTRAST, fs.IMAGE_HEIGHT, fs.IMAGE_WIDTH)
_INT_FEATURES = (fs.IMAGE_HEIGHT, fs.IMAGE_WIDTH)
SLICE_NUMERIC = (fs.STATS_BRIGHTNESS, fs.STATS_CONTRAST)
# Prediction "features": names in the report and in alarms.
DETECTIONS_PER_IMAGE = "predictions/detections_per_image"
SCORES = "predictions/scores"
CLASS_MIX = "predictions/class"
EMPTY_SHARE = "predictions/empty_share"


def monitor_schema(schema: schema_pb2.Schema, settings: MonitorSettings,
                   present: Collection[str] | None = None) -> schema_pb2.Schema:
    """The model's schema narrowed to what the monitor computes, with its thresholds.

    Meta fields may be absent from a request (a client that sends no camera), so their
    presence is not required, and a field no request carried (``present``: the features
    the window has values of) is left out instead of reported as a missing column.
    """
    keep = (set(NUMERIC_FEATURES) | set(fs.META_KEYS)) & set(
        present if present is not None else (*NUMERIC_FEATURES, *fs.META_KEYS))
    narrowed = schema_pb2.Schema()
    narrowed.CopyFrom(schema)
    del narrowed.feature[:]
    for feature in schema.feature:
        if feature.name not in keep:
            continue
        copy = narrowed.feature.add()
        copy.CopyFrom(feature)
        comparator = schema_pb2.FeatureComparator()
        if feature.name in fs.META_KEYS:
            comparator.infinity_norm.threshold = settings.linf_threshold
            copy.presence.min_fraction = 0.0
        else:
            comparator.jensen_shannon_divergence.threshold = settings.js_threshold
        copy.skew_comparator.CopyFrom(comparator)
        copy.drift_comparator.CopyFrom(comparator)
    return narrowed


def feature_values(images: Sequence[ServedImage]) -> dict[str, np.ndarray]:
    """Per feature, the values of the images that have it (what PSI is computed on)."""
    logged = [i for i in images if i.stats is not None]
    values = {k: np.array([i.stats[k] for i in logged]) for k in NUMERIC_FEATURES}
    for key in fs.META_KEYS:
        field = key.removeprefix(fs.META_PREFIX)
        values[key] = np.array([i.meta[field] for i in images if field in i.meta], dtype=object
                               ).astype(str)
    return values


def statistics(values: Mapping[str, np.ndarray], count: int, schema: schema_pb2.Schema
               ) -> statistics_pb2.DatasetFeatureStatisticsList:
    """TFDV statistics of the values in memory (no Beam): one row per image."""
    columns, names = [], []
    for key, array in values.items():
        if not len(array):
            continue
        if key in fs.META_KEYS:
            rows, kind = [[v.encode()] for v in array], pa.large_binary()
        elif key in _INT_FEATURES:
            rows, kind = [[int(v)] for v in array], pa.int64()
        else:
            rows, kind = [[float(v)] for v in array], pa.float32()
        rows += [None] * (count - len(rows))  # images without the feature
        columns.append(pa.array(rows, pa.large_list(kind)))
        names.append(key)
    if not columns:
        columns, names = [pa.array([None] * count, pa.large_list(pa.float32()))], ["none"]
    batch = pa.RecordBatch.from_arrays(columns, names)
    return stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions(schema=schema))


def schema_anomalies(serving: statistics_pb2.DatasetFeatureStatisticsList,
                     schema: schema_pb2.Schema) -> dict[str, str]:
    """{feature: TFDV's description} of the serving data against the schema (SERVING)."""
    anomalies = tfdv.validate_statistics(serving, schema, environment=SERVING)
    return {name: info.description for name, info in sorted(anomalies.anomaly_info.items())}


def skew(training: statistics_pb2.DatasetFeatureStatisticsList,
         serving: statistics_pb2.DatasetFeatureStatisticsList, schema: schema_pb2.Schema,
         training_values: Mapping[str, np.ndarray], serving_values: Mapping[str, np.ndarray],
         settings: MonitorSettings) -> list[FeatureDrift]:
    """Training/serving skew per feature: TFDV's skew comparators, plus PSI."""
    anomalies = tfdv.validate_statistics(training, schema, environment=SERVING,
                                         serving_statistics=serving)
    return judged_all(drift.verdicts(anomalies, schema, "skew_comparator",
                                     settings.psi_threshold, serving_values, training_values),
                      serving_values, training_values)


# Chance level of each distance between two samples of one distribution, at the 99.9th
# percentile: two-sample PSI on 10 bins ~ chi2(9) x (1/n + 1/m) (27.88 is chi2(9)'s 99.9th
# percentile); JS (bits) ~ PSI / (8 ln 2) for small differences; a share's L∞ ~ 3.29
# standard errors at p = 0.5. A threshold below chance would alarm on noise alone (a
# 54-image slice against 71 training images: PSI 0.71), so thresholds are raised to it.
_CHI2_9_999, _Z_9995 = 27.88, 3.29


def noise_floor(n: int, m: int) -> dict[str, float]:
    """The smallest thresholds samples of ``n`` and ``m`` values can be judged by."""
    if not n or not m:
        return {}
    psi = _CHI2_9_999 * (1 / n + 1 / m)
    return {"PSI": psi, "JS": psi / (8 * np.log(2)),
            "L_inf": _Z_9995 * 0.5 * np.sqrt(1 / n + 1 / m)}


def judged(found: FeatureDrift, n: int, m: int) -> FeatureDrift:
    """``found`` with each threshold raised to the noise floor of ``n`` vs ``m`` values."""
    floor = noise_floor(n, m)
    thresholds = {k: float(max(t, floor.get(k, 0.0))) for k, t in found.thresholds.items()}
    return _verdict(found.feature, found.measurements, thresholds)


def judged_all(found: Sequence[FeatureDrift], current: Mapping[str, np.ndarray],
               baseline: Mapping[str, np.ndarray]) -> list[FeatureDrift]:
    """``judged`` per feature, with each feature's sample sizes."""
    return [judged(f, len(current.get(f.feature, ())), len(baseline.get(f.feature, ())))
            for f in found]


def _verdict(name: str, values: dict[str, float], thresholds: dict[str, float]
             ) -> FeatureDrift:
    return FeatureDrift(name, values, thresholds,
                        sorted(k for k, v in values.items() if v > thresholds[k]))


@dataclasses.dataclass(frozen=True)
class Predictions:
    """A set of images' served detections, summarised for drift checks."""

    per_image: np.ndarray  # detections at or above their class's threshold, per image
    scores: np.ndarray  # every served detection's score
    classes: np.ndarray  # class names of the detections above threshold

    @property
    def empty_share(self) -> float:
        """Share of images with no detection above its class's threshold."""
        return float(np.mean(self.per_image == 0)) if len(self.per_image) else 0.0

    def to_json(self) -> dict:
        mix = collections.Counter(self.classes.tolist())
        return {"images": len(self.per_image), "empty_share": self.empty_share,
                "mean_detections_per_image": float(np.mean(self.per_image))
                if len(self.per_image) else 0.0,
                "mean_score": float(np.mean(self.scores)) if len(self.scores) else None,
                "class_mix": {k: v / max(len(self.classes), 1) for k, v in sorted(mix.items())}}


def predictions(detections: Sequence[Detections], class_names: Sequence[str],
                thresholds: Mapping[str, float]) -> Predictions:
    """Detections above the per-class score thresholds (a class without one: all of them)."""
    def name(label: int) -> str:
        return class_names[label - 1] if 0 < label <= len(class_names) else str(label)

    per_image, scores, classes = [], [], []
    for found in detections:
        names = [name(int(c)) for c in found.classes]
        kept = [n for n, score in zip(names, found.scores, strict=True)
                if score >= thresholds.get(n, 0.0)]
        per_image.append(len(kept))
        scores += found.scores.tolist()
        classes += kept
    return Predictions(np.array(per_image, float), np.array(scores, float),
                       np.array(classes, dtype=object).astype(str))


def compare_predictions(current: Predictions, reference: Predictions,
                        settings: MonitorSettings) -> list[FeatureDrift]:
    """Each prediction summary's distance to the reference, with its threshold."""
    psi = settings.prediction_psi_threshold
    images = len(current.per_image), len(reference.per_image)
    results = [judged(_verdict(DETECTIONS_PER_IMAGE, {
        "PSI": drift.numeric_psi(reference.per_image, current.per_image)}, {"PSI": psi}),
        *images)]
    # A share's change is judged like L∞: its tolerance raised to chance.
    floor = noise_floor(*images).get("L_inf", 0.0)
    results.append(_verdict(EMPTY_SHARE, {"abs_change": abs(current.empty_share
                                                            - reference.empty_share)},
                            {"abs_change": max(settings.empty_share_tolerance, floor)}))
    if len(current.scores) and len(reference.scores):
        results.append(judged(_verdict(
            SCORES, {"JS": drift.jensen_shannon(reference.scores, current.scores),
                     "PSI": drift.numeric_psi(reference.scores, current.scores)},
            {"JS": settings.prediction_js_threshold, "PSI": psi}),
            len(current.scores), len(reference.scores)))
    if len(current.classes) and len(reference.classes):
        results.append(judged(_verdict(
            CLASS_MIX, {"L_inf": _linf(reference.classes, current.classes),
                        "PSI": drift.categorical_psi(reference.classes, current.classes)},
            {"L_inf": settings.class_mix_linf_threshold, "PSI": psi}),
            len(current.classes), len(reference.classes)))
    return results


def _linf(baseline: np.ndarray, current: np.ndarray) -> float:
    """Largest difference of a value's share between two categorical samples."""
    base, cur = collections.Counter(baseline.tolist()), collections.Counter(current.tolist())
    return max(abs(cur[v] / len(current) - base[v] / len(baseline)) for v in base | cur)


@dataclasses.dataclass(frozen=True)
class SliceCheck:
    """One slice (a meta field's value) of the current window."""

    name: str  # e.g. meta/camera=cam-d
    images: int
    training_images: int
    findings: list[FeatureDrift]

    @property
    def new(self) -> bool:
        """A value the training data never had."""
        return self.training_images == 0

    def to_json(self) -> dict:
        return {"slice": self.name, "images": self.images, "training_images": self.training_images,
                "new_in_serving": self.new, "features": [f.to_dict() for f in self.findings]}


def slices(current: Sequence[ServedImage], training: Sequence[ServedImage],
           reference: Sequence[ServedImage], class_names: Sequence[str],
           thresholds: Mapping[str, float], settings: MonitorSettings) -> list[SliceCheck]:
    """Every meta value with at least ``min_slice_images`` images in the window.

    A value absent from training is a finding by itself; otherwise brightness and
    contrast are compared with the training images of that value, and the predictions
    with the evaluation-time predictions of that value, each where that side has
    ``min_slice_images`` images too.
    """
    checks = []
    for key in fs.META_KEYS:
        field = key.removeprefix(fs.META_PREFIX)
        counts = collections.Counter(i.meta[field] for i in current if field in i.meta)
        for value, count in sorted(counts.items()):
            if count < settings.min_slice_images:
                continue
            mine = [i for i in current if i.meta.get(field) == value]
            trained = [i for i in training if i.meta.get(field) == value]
            findings = []
            if len(trained) >= settings.min_slice_images:
                cur, base = feature_values(mine), feature_values(trained)
                findings = [judged(_verdict(feature, {
                    "JS": drift.jensen_shannon(base[feature], cur[feature]),
                    "PSI": drift.numeric_psi(base[feature], cur[feature])},
                    {"JS": settings.js_threshold, "PSI": settings.psi_threshold}),
                    len(cur[feature]), len(base[feature]))
                    for feature in SLICE_NUMERIC if len(cur[feature]) and len(base[feature])]
            evaluated = [i for i in reference if i.meta.get(field) == value]
            if len(evaluated) >= settings.min_slice_images:
                findings += compare_predictions(
                    predictions([i.detections for i in mine], class_names, thresholds),
                    predictions([i.detections for i in evaluated], class_names, thresholds),
                    settings)
            checks.append(SliceCheck(f"{key}={value}", count, len(trained), findings))
    return checks
