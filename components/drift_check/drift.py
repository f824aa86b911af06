"""Span-over-span drift from two TFDV statistics: the schema's comparators, plus PSI.

* **L∞ / Jensen–Shannon** come from TFDV itself: ``validate_statistics`` with
  ``previous_statistics`` applies each feature's ``drift_comparator`` in the curated schema
  (L∞ on categorical features, JS on numeric ones) and reports the measured distance.
* **Box aspect** (``BOX_ASPECT``) is no tf.Example feature, so TFDV cannot compare it:
  its JS divergence (on the baseline's decile bins) and PSI are computed here.
* **PSI** (population stability index) is computed here from the features' values,
  because TFDV has none: for a numeric feature 10 bins cut at the baseline's deciles, for a
  categorical one its values. PSI = Σ (a − e) · ln(a / e) over bins, with shares floored
  at ``PSI_FLOOR`` so an empty bin counts, but finitely. (Statistics alone cannot give it
  exactly: they hold each span's own quantiles, not shares of the other's bins.)
  Rule of thumb: < 0.1 stable, 0.1–0.25 moderate, > 0.25 a real shift.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

PSI_FLOOR = 1e-4
BOX_ASPECT = "box/log2_aspect"  # log2 of each box's width / height in pixels (0: square)
# Checked like the schema's numeric comparators, with these JS thresholds.
DERIVED_NUMERIC = {BOX_ASPECT: 0.1}
_MEASUREMENT_NAMES = {
    anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY: "L_inf",
    anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE: "JS",
}


@dataclasses.dataclass(frozen=True)
class FeatureDrift:
    """One feature's distances to the baseline and whether any crossed its threshold."""

    feature: str
    measurements: dict[str, float]  # "L_inf" / "JS" (TFDV) and "PSI"
    thresholds: dict[str, float]
    drifted: list[str]  # the measurement names above their threshold

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def psi(expected: Iterable[float], actual: Iterable[float]) -> float:
    """PSI between two distributions over the same bins (counts or shares)."""
    e, a = np.asarray(list(expected), float), np.asarray(list(actual), float)
    e = np.maximum(e / e.sum(), PSI_FLOOR) if e.sum() > 0 else np.full_like(e, PSI_FLOOR)
    a = np.maximum(a / a.sum(), PSI_FLOOR) if a.sum() > 0 else np.full_like(a, PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def _decile_counts(baseline: np.ndarray, current: np.ndarray, bins: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Counts of both spans in ``bins`` bins cut at the baseline's quantiles.

    Tied quantiles (a discrete feature such as objects per image) merge into one edge;
    values equal to an edge fall in the bin to its right, the same for both spans.
    """
    edges = np.unique(np.quantile(baseline, np.linspace(0, 1, bins + 1)[1:-1]))
    count = lambda values: np.bincount(  # noqa: E731
        np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return count(baseline), count(current)


def numeric_psi(baseline: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI on ``bins`` bins cut at the baseline's quantiles (outer bins open-ended)."""
    return psi(*_decile_counts(baseline, current, bins))


def jensen_shannon(baseline: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """JS divergence (log base 2, in [0, 1], like TFDV's) on the baseline's decile bins."""
    p, q = (c / c.sum() for c in _decile_counts(baseline, current, bins))
    m = (p + q) / 2
    kl = lambda a: np.sum(np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / m), 0.0))  # noqa: E731
    return float((kl(p) + kl(q)) / 2)


def categorical_psi(baseline: np.ndarray, current: np.ndarray) -> float:
    """PSI over the union of both spans' values (a new value is a bin the baseline lacks)."""
    values = sorted(set(baseline.tolist()) | set(current.tolist()))
    base, cur = Counter(baseline.tolist()), Counter(current.tolist())
    return psi([base[v] for v in values], [cur[v] for v in values])


def compare(
    current: statistics_pb2.DatasetFeatureStatisticsList,
    baseline: statistics_pb2.DatasetFeatureStatisticsList,
    schema: schema_pb2.Schema,
    psi_threshold: float,
    current_values: Mapping[str, np.ndarray],
    baseline_values: Mapping[str, np.ndarray],
) -> list[FeatureDrift]:
    """Every feature with a drift comparator in ``schema``: its distances and verdict.

    L∞ / JS come from the statistics; PSI from the features' raw values (``*_values``:
    ``annotations.feature_values``), numeric for JS features, categorical for L∞ ones.
    """
    anomalies = tfdv.validate_statistics(current, schema, previous_statistics=baseline)
    results = verdicts(anomalies, schema, "drift_comparator", psi_threshold, current_values,
                       baseline_values)
    # Derived features (not in tf.Examples, so not in TFDV's statistics): JS and PSI here.
    for name, js_threshold in DERIVED_NUMERIC.items():
        base, cur = baseline_values.get(name), current_values.get(name)
        if base is None or cur is None or not len(base) or not len(cur):
            continue
        values = {"JS": jensen_shannon(base, cur), "PSI": numeric_psi(base, cur)}
        thresholds = {"JS": js_threshold, "PSI": psi_threshold}
        drifted = sorted(k for k, v in values.items() if v > thresholds[k])
        results.append(FeatureDrift(name, values, thresholds, drifted))
    return results


def verdicts(
    anomalies: anomalies_pb2.Anomalies,
    schema: schema_pb2.Schema,
    comparator: str,
    psi_threshold: float,
    current_values: Mapping[str, np.ndarray],
    baseline_values: Mapping[str, np.ndarray],
) -> list[FeatureDrift]:
    """Per feature with a ``comparator`` (``drift_comparator`` or ``skew_comparator``) in
    ``schema``: TFDV's measured L∞ / JS from ``anomalies``, PSI from the raw values.

    Shared by span-over-span drift (``compare``) and training/serving skew (monitoring),
    so both read TFDV's measurements and compute PSI the same way.
    """
    measured: dict[str, dict[str, tuple[float, float]]] = {}
    for info in anomalies.drift_skew_info:
        name = ".".join(info.path.step)
        found = info.drift_measurements if comparator == "drift_comparator" else (
            info.skew_measurements)
        for m in found:
            label = _MEASUREMENT_NAMES.get(m.type)
            if label:
                measured.setdefault(name, {})[label] = (m.value, m.threshold)
    results = []
    for feature in schema.feature:
        if not feature.HasField(comparator):
            continue
        name = feature.name
        values = {k: v for k, (v, _) in measured.get(name, {}).items()}
        thresholds = {k: t for k, (_, t) in measured.get(name, {}).items()}
        base, cur = baseline_values.get(name), current_values.get(name)
        if base is not None and cur is not None and len(base) and len(cur):
            categorical = getattr(feature, comparator).HasField("infinity_norm")
            values["PSI"] = categorical_psi(base, cur) if categorical else numeric_psi(base, cur)
            thresholds["PSI"] = psi_threshold
        drifted = sorted(k for k, v in values.items() if v > thresholds[k])
        results.append(FeatureDrift(name, values, thresholds, drifted))
    return results
