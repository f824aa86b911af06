"""AnomalyGate component: ExampleValidator reports anomalies, this one acts on them."""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.anomaly_gate import executor
from components.drift_check import DataDrift


class AnomalyGateSpec(ComponentSpec):
    PARAMETERS = {
        executor.SPLITS_KEY: ExecutionParameter(type=str),
        executor.ON_DRIFT_KEY: ExecutionParameter(type=str),
        executor.MIN_EXAMPLES_KEY: ExecutionParameter(type=int),
        executor.MAX_QUARANTINED_KEY: ExecutionParameter(type=float),
    }
    INPUTS = {
        executor.ANOMALIES_KEY: ChannelParameter(type=standard_artifacts.ExampleAnomalies),
        executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
        executor.DRIFT_KEY: ChannelParameter(type=DataDrift, optional=True),
    }
    OUTPUTS = {}


class AnomalyGate(base_component.BaseComponent):
    """Fails the run before training, naming every problem: too little data, anomalies, drift.

    TFX 1.16's ExampleValidator only records anomalies (a ``blessed`` custom property);
    nothing downstream stops. With the ``examples``, a split with fewer than
    ``min_examples_per_split`` examples or more than ``max_quarantined_fraction`` of the
    listed images quarantined stops the run too (a wrong images root quarantines nearly
    everything). Make the Trainer depend on this gate
    (``trainer.add_upstream_node(gate)``) so bad data never reaches training, and the
    failed execution in ML Metadata carries the reason. With DriftCheck's ``drift``,
    ``on_drift="fail"`` also stops the run when the span drifted; "warn" lets it train
    (the drift stays recorded in MLMD and in the run summary).
    """

    SPEC_CLASS = AnomalyGateSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        anomalies: types.BaseChannel,
        splits: tuple[str, ...] = ("train", "eval"),
        drift: types.BaseChannel | None = None,
        on_drift: str = "fail",
        examples: types.BaseChannel | None = None,
        min_examples_per_split: int = 1,
        max_quarantined_fraction: float = 1.0,
    ):
        """
        Args:
          anomalies: ExampleValidator's ``anomalies`` output.
          splits: the splits whose anomalies stop the run.
          drift: DriftCheck's ``drift`` output, if drift should be gated.
          on_drift: "fail" or "warn".
          examples: CocoExampleGen's ``examples``, to gate on their counts and quarantine.
          min_examples_per_split / max_quarantined_fraction: those gates.
        """
        if not splits:
            raise ValueError("AnomalyGate needs at least one split to gate, e.g. ('train', 'eval')")
        if on_drift not in executor.DRIFT_ACTIONS:
            raise ValueError(f"on_drift must be one of {executor.DRIFT_ACTIONS}, got {on_drift!r}")
        if min_examples_per_split < 0 or not 0 <= max_quarantined_fraction <= 1:
            raise ValueError("min_examples_per_split must be >= 0 and max_quarantined_fraction "
                             f"in [0, 1], got {min_examples_per_split}, "
                             f"{max_quarantined_fraction}")
        super().__init__(spec=AnomalyGateSpec(
            anomalies=anomalies, splits=",".join(splits), drift=drift, on_drift=on_drift,
            examples=examples, min_examples_per_split=min_examples_per_split,
            max_quarantined_fraction=max_quarantined_fraction))
