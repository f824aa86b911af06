"""The ``sightline`` command: one entry point for runs, data, schema, lineage, compile, models,
monitor, serve.

This is where a ``sightline`` process starts, so the process-wide environment is set here,
before anything imports TensorFlow: tfmot (QAT) and TFMA need Keras 2 (``tf_keras``),
which ``TF_USE_LEGACY_KERAS`` selects, and TensorFlow's C++ start-up INFO lines are not
for the console.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from typing import Any

import click

from pipelines.cli import data, feedback, inspect, models, monitor, run
from serving.cli import serve


class _Main(click.Group):
    """Reports "nothing recorded yet" (no store, no such run) as a message, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LookupError as e:
            from pipelines.reports.runs import NoRunsError  # MLMD imports: only when it happened

            if isinstance(e, NoRunsError):
                raise click.ClickException(str(e)) from e
            raise


@click.group(cls=_Main)
def main() -> None:
    """Sightline: a TFX pipeline from labelled COCO images to a served object detector."""


for command in (run.run, run.compile_cmd, run.config_cmd, inspect.runs_group, inspect.report,
                inspect.lineage, data.data_group, data.schema_group, models.models_group,
                serve, monitor.monitor, feedback.replay_cmd, feedback.index_cmd,
                feedback.similar_cmd, feedback.select_cmd):
    main.add_command(command)
