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
    }
    INPUTS = {
        executor.ANOMALIES_KEY: ChannelParameter(type=standard_artifacts.ExampleAnomalies),
        executor.DRIFT_KEY: ChannelParameter(type=DataDrift, optional=True),
    }
    OUTPUTS = {}


class AnomalyGate(base_component.BaseComponent):
    """Fails the run, naming every anomaly, if a gated split has any (and on drift, if asked).

    TFX 1.16's ExampleValidator only records anomalies (a ``blessed`` custom property);
    nothing downstream stops. Make the Trainer depend on this gate
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
    ):
        """
        Args:
          anomalies: ExampleValidator's ``anomalies`` output.
          splits: the splits whose anomalies stop the run.
          drift: DriftCheck's ``drift`` output, if drift should be gated.
          on_drift: "fail" or "warn".
        """
        if not splits:
            raise ValueError("AnomalyGate needs at least one split to gate, e.g. ('train', 'eval')")
        if on_drift not in executor.DRIFT_ACTIONS:
            raise ValueError(f"on_drift must be one of {executor.DRIFT_ACTIONS}, got {on_drift!r}")
        super().__init__(spec=AnomalyGateSpec(
            anomalies=anomalies, splits=",".join(splits), drift=drift, on_drift=on_drift))
