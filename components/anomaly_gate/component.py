"""AnomalyGate component: ExampleValidator reports anomalies, this one acts on them."""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.anomaly_gate import executor


class AnomalyGateSpec(ComponentSpec):
    PARAMETERS = {executor.SPLITS_KEY: ExecutionParameter(type=str)}
    INPUTS = {executor.ANOMALIES_KEY: ChannelParameter(type=standard_artifacts.ExampleAnomalies)}
    OUTPUTS = {}


class AnomalyGate(base_component.BaseComponent):
    """Fails the run, naming every anomaly, if a gated split has any.

    TFX 1.16's ExampleValidator only records anomalies (a ``blessed`` custom property);
    nothing downstream stops. Make the Trainer depend on this gate
    (``trainer.add_upstream_node(gate)``) so bad data never reaches training, and the
    failed execution in ML Metadata carries the reason.
    """

    SPEC_CLASS = AnomalyGateSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, anomalies: types.BaseChannel, splits: tuple[str, ...] = ("train", "eval")):
        """
        Args:
          anomalies: ExampleValidator's ``anomalies`` output.
          splits: the splits whose anomalies stop the run.
        """
        if not splits:
            raise ValueError("AnomalyGate needs at least one split to gate, e.g. ('train', 'eval')")
        super().__init__(spec=AnomalyGateSpec(anomalies=anomalies, splits=",".join(splits)))
