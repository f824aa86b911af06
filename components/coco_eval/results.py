"""Reads an Evaluator's TFMA output back as plain dicts: one reader for summary, pusher, report."""

from __future__ import annotations

from typing import Any

import numpy as np

CANDIDATE, BASELINE, CHANGE = "candidate", "baseline", "change"
OVERALL = "overall"
# With a baseline TFMA names the models "candidate" and "baseline"; alone the model is "".
_BASELINE_MODEL_NAME = "baseline"

Metrics = dict[str, Any]  # metric name -> float, or np.ndarray for curves and bins


def slice_name(slice_key: Any) -> str:
    """``meta/camera=cam-a`` style names (joined by "," when crossed); "overall" if unsliced."""
    parts = []
    for single in slice_key.single_slice_keys:
        value = getattr(single, single.WhichOneof("kind"))
        parts.append(f"{single.column}={value.decode() if isinstance(value, bytes) else value}")
    return ",".join(parts) or OVERALL


def _value(proto: Any) -> Any:
    if proto.HasField("double_value"):
        return proto.double_value.value
    if proto.HasField("array_value"):
        array = proto.array_value
        values = array.float64_values or array.float32_values or array.int64_values or (
            array.int32_values)
        return np.asarray(values, np.float64).reshape(tuple(array.shape))
    return None


def load_metrics(uri: str) -> dict[str, dict[str, Metrics]]:
    """{"candidate" | "baseline" | "change": {slice name: {metric: value}}} of an evaluation.

    "change" is candidate minus baseline, present when the Evaluator had a baseline.
    """
    import tensorflow_model_analysis as tfma  # slow import: only when reading an evaluation

    result: dict[str, dict[str, Metrics]] = {CANDIDATE: {}, BASELINE: {}, CHANGE: {}}
    for metrics in tfma.load_metrics(uri):
        name = slice_name(metrics.slice_key)
        for kv in metrics.metric_keys_and_values:
            value = _value(kv.value)
            if kv.key.HasField("sub_key") or value is None:
                continue
            if kv.key.is_diff:
                model = CHANGE
            else:
                model = BASELINE if kv.key.model_name == _BASELINE_MODEL_NAME else CANDIDATE
            result[model].setdefault(name, {})[kv.key.name] = value
    return result
