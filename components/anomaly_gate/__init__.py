"""AnomalyGate: stops a run before training when ExampleValidator found data anomalies."""

from components.anomaly_gate.component import AnomalyGate

__all__ = ["AnomalyGate"]
