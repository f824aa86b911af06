"""The previous span's artifacts: TFX's LatestArtifactStrategy, minus the first-run failure."""

from __future__ import annotations

from tfx import types
from tfx.dsl.input_resolution.strategies import latest_artifact_strategy


class LatestIfAnyStrategy(latest_artifact_strategy.LatestArtifactStrategy):
    """The latest artifact of each channel, or none yet: resolves instead of failing.

    LatestArtifactStrategy returns None (a failed resolver execution, a "failed" run) when a
    channel has no artifact, which is every pipeline's first run. Kubeflow's compiler only
    accepts the built-in class (``kubeflow_runner`` uses it there).
    """

    def resolve_artifacts(
        self, store, input_dict: dict[str, list[types.Artifact]]
    ) -> dict[str, list[types.Artifact]]:
        return self._resolve(input_dict)
