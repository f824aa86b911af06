"""What ML Metadata says of a pipeline run, readable without TensorFlow or TFX.

The names of the custom properties Sightline keeps on a ``pipeline_run`` context and the
rule that turns them (and the run's executions) into a status live here, not in
``run_record`` (which imports TFX, and so TensorFlow): ``sightline run --when-new-span``
decides "nothing new" from them in well under a second, before anything heavy loads.
"""

from __future__ import annotations

from collections.abc import Iterable

from ml_metadata.proto import metadata_store_pb2

PIPELINE_CONTEXT = "pipeline"  # TFX's context type names (tfx.dsl.compiler.constants)
RUN_CONTEXT = "pipeline_run"
# Custom properties of a pipeline_run context.
FINGERPRINT = "sightline_fingerprint"  # the compiled pipeline and its data
OUTCOME = "sightline_outcome"  # RUNNING, SUCCEEDED, FAILED or INTERRUPTED
ATTEMPTS = "sightline_attempts"  # JSON list: each process that ran it, how it started
ERROR = "sightline_error"  # a failure no execution holds (e.g. in a driver)
SPAN = "sightline_span"  # the span a scheduled run was started for (an int)
TRIGGER = "sightline_trigger"  # why a scheduled run ran, e.g. "new span 3"
# Custom property of an execution that a run's process left unfinished: why it stopped.
INTERRUPTED = "sightline_interrupted"
RUNNING, SUCCEEDED, FAILED, INTERRUPTED_OUTCOME = "running", "succeeded", "failed", "interrupted"
EXECUTION_STATES = {v: k.lower() for k, v in metadata_store_pb2.Execution.State.items()}


def property_of(item: metadata_store_pb2.Context | metadata_store_pb2.Execution,
                name: str) -> str | None:
    """A string custom property, or None."""
    value = item.custom_properties.get(name)
    return value.string_value if value is not None else None


def run_status(run: metadata_store_pb2.Context,
               executions: Iterable[metadata_store_pb2.Execution], live: bool) -> str:
    """failed, running (``live``: a live process runs it), interrupted or succeeded.

    A run Sightline started records its outcome on its context; one whose process died
    says "running" there until the next run notices, so the caller decides from the home's
    lock or the process (``reports.runs``). Runs recorded before that have only their
    executions to go by.
    """
    states = {EXECUTION_STATES[e.last_known_state] for e in executions}
    outcome = property_of(run, OUTCOME)
    if "failed" in states or outcome == FAILED:
        return FAILED
    if live:
        return RUNNING
    if states - {"complete", "cached"} or outcome in (RUNNING, INTERRUPTED_OUTCOME):
        return INTERRUPTED_OUTCOME
    return SUCCEEDED
