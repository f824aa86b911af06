"""DriftCheck component: span-over-span drift and annotation quality, recorded in MLMD."""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import artifact, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.drift_check import executor


class DataDrift(artifact.Artifact):
    """Drift and annotation findings of one span versus its baseline (``drift.json``)."""

    TYPE_NAME = "sightline.DataDrift"  # <namespace>.<Name>: what Kubeflow's compiler accepts


class DriftCheckSpec(ComponentSpec):
    PARAMETERS = {
        executor.SPLIT_KEY: ExecutionParameter(type=str),
        executor.PSI_THRESHOLD_KEY: ExecutionParameter(type=float),
        executor.BOX_FIT_TOLERANCE_KEY: ExecutionParameter(type=float),
        executor.DUPLICATE_IOU_KEY: ExecutionParameter(type=float),
        executor.MIN_BOX_PIXELS_KEY: ExecutionParameter(type=float),
    }
    INPUTS = {
        executor.STATISTICS_KEY: ChannelParameter(type=standard_artifacts.ExampleStatistics),
        executor.BASELINE_STATISTICS_KEY: ChannelParameter(
            type=standard_artifacts.ExampleStatistics, optional=True),
        executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        executor.BASELINE_EXAMPLES_KEY: ChannelParameter(
            type=standard_artifacts.Examples, optional=True),
        executor.SCHEMA_KEY: ChannelParameter(type=standard_artifacts.Schema),
    }
    OUTPUTS = {executor.DRIFT_KEY: ChannelParameter(type=DataDrift)}


class DriftCheck(base_component.BaseComponent):
    """Compares a split's statistics and boxes with the baseline span's; never fails itself.

    Drift per feature comes from the schema's ``drift_comparator`` thresholds (L∞, JS,
    through TFDV) plus PSI; annotation checks flag classes whose median box fit (object
    area / box area) moved by more than ``box_fit_tolerance``, duplicate boxes and tiny
    boxes. Results are custom properties of the ``drift`` artifact (``drift_detected``,
    ``drifted_features``, ``PSI:<feature>``, ...) and ``drift.json``; AnomalyGate decides
    whether drift stops the run (``on_drift``). Without a baseline (the first span) nothing
    is compared.
    """

    SPEC_CLASS = DriftCheckSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        statistics: types.BaseChannel,
        examples: types.BaseChannel,
        schema: types.BaseChannel,
        baseline_statistics: types.BaseChannel | None = None,
        baseline_examples: types.BaseChannel | None = None,
        split: str = "train",
        psi_threshold: float = 0.25,
        box_fit_tolerance: float = 0.3,
        duplicate_iou: float = 0.9,
        min_box_pixels: float = 4.0,
    ):
        super().__init__(spec=DriftCheckSpec(
            statistics=statistics, baseline_statistics=baseline_statistics,
            examples=examples, baseline_examples=baseline_examples, schema=schema,
            split=split, psi_threshold=psi_threshold, box_fit_tolerance=box_fit_tolerance,
            duplicate_iou=duplicate_iou, min_box_pixels=min_box_pixels,
            drift=types.Channel(type=DataDrift),
        ))
