"""DriftCheck: this span's data against the previous span's, before training."""

from components.drift_check.component import DataDrift, DriftCheck

__all__ = ["DataDrift", "DriftCheck"]
