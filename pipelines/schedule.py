"""Scheduled runs over new spans: which span is latest, and whether it still needs a run.

A cron line or a Kubeflow recurring run calls ``sightline run --when-new-span`` every few
minutes; most calls find nothing to do and must say so in well under a second. So nothing
here imports TensorFlow or TFX (ML Metadata's own client is light): the latest span is
found with a glob, as TFX's ExampleGen driver finds it, and the span's last run is read
from ML Metadata.

A span's run is final once it succeeded or failed: a failed span is not retried by every
tick of a scheduler (it would fail the same way, e.g. at the drift gate); fix the cause and
run it by hand. An interrupted run (killed, rebooted) is not final: the next call runs
again and ``run_record`` resumes it when neither the settings nor the data changed.
"""

from __future__ import annotations

import dataclasses
import glob
import re

from ml_metadata import errors
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipelines import run_status

_SPEC = re.compile(r"\{(SPAN|VERSION)(?::(\d+))?\}")
_DATE_SPECS = ("{YYYY}", "{MM}", "{DD}")
_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
_FINAL = (run_status.SUCCEEDED, run_status.FAILED)


class ScheduleError(ValueError):
    """The pattern or data cannot be scheduled on; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Decision:
    """Whether the latest span needs a run, and the sentence that says why."""

    span: int
    run: bool
    message: str  # the trigger when ``run``, else "nothing new: ..."
    last_run: str | None = None
    last_status: str | None = None

    def labels(self) -> dict[str, str]:
        """Custom properties of the run's context: what it was started for, and why."""
        return {run_status.SPAN: str(self.span), run_status.TRIGGER: self.message}


def latest_span(data_root: str, pattern: str) -> int:
    """The highest ``{SPAN}`` number among files matching ``pattern`` under ``data_root``.

    Raises:
      ScheduleError: the pattern has no ``{SPAN}`` (or uses date specs), or no file matches.
    """
    if any(spec in pattern for spec in _DATE_SPECS):
        raise ScheduleError(f"pattern {pattern!r} uses {{YYYY}}/{{MM}}/{{DD}}; --when-new-span "
                            "works with '{SPAN}' patterns, e.g. 'span-{SPAN}/annotations.json'")
    if not any(m.group(1) == "SPAN" for m in _SPEC.finditer(pattern)):
        raise ScheduleError(f"pattern {pattern!r} has no '{{SPAN}}', so there is never a new "
                            "span; use e.g. --pattern 'span-{SPAN}/annotations.json'")
    matcher = re.compile(_regex_of(pattern))
    root = data_root.rstrip("/")
    spans = [int(m["SPAN"]) for path in _glob(f"{root}/{_SPEC.sub('*', pattern)}")
             if (m := matcher.fullmatch(path[len(root) + 1:]))]
    if not spans:
        raise ScheduleError(f"no file matches {pattern!r} under {data_root}")
    return max(spans)


def decide(store: metadata_store.MetadataStore | None, pipeline: str, span: int) -> Decision:
    """Runs ``span`` unless its last run of ``pipeline`` succeeded or failed.

    Only call with the home's run lock held: then a run recorded as running is dead, and
    no other scheduler can start the span between this answer and the run.
    """
    last = _last_run_of_span(store, pipeline, span) if store is not None else None
    if last is None:
        return Decision(span, run=True, message=f"new span {span}")
    run_id, status = last
    if status in _FINAL:
        return Decision(span, run=False, last_run=run_id, last_status=status,
                        message=f"nothing new: span {span} already {status} in run {run_id}")
    return Decision(span, run=True, last_run=run_id, last_status=status,
                    message=f"span {span} again: its run {run_id} was {status}")


def _last_run_of_span(store: metadata_store.MetadataStore, pipeline: str,
                      span: int) -> tuple[str, str] | None:
    """(run id, status) of the newest run of ``pipeline`` over ``span``, or None."""
    parent = store.get_context_by_type_and_name(run_status.PIPELINE_CONTEXT, pipeline)
    if parent is None:
        return None
    runs = sorted((c for c in store.get_children_contexts_by_context(parent.id)
                   if c.type == run_status.RUN_CONTEXT),
                  key=lambda c: (c.create_time_since_epoch, c.id), reverse=True)
    for run in runs:
        executions = store.get_executions_by_context(run.id)
        if _span_of(store, run, executions) == span:
            return run.name, run_status.run_status(run, executions, live=False)
    return None


def _span_of(store: metadata_store.MetadataStore, run: metadata_store_pb2.Context,
             executions: list[metadata_store_pb2.Execution]) -> int | None:
    """The span a run ingested (its Examples), else the span it was started for."""
    events = store.get_events_by_execution_ids([e.id for e in executions]) if executions else []
    outputs = [e.artifact_id for e in events if e.type in _OUTPUT_EVENTS]
    examples = _examples_type_id(store)
    for artifact in store.get_artifacts_by_id(outputs) if outputs else ():
        # ExampleGen's driver records the span as a custom property; the type's ``span``
        # property stays unset (as components/drift_check/executor.span_of reads it).
        for recorded in (artifact.custom_properties, artifact.properties):
            if artifact.type_id == examples and "span" in recorded:
                return recorded["span"].int_value
    started_for = run_status.property_of(run, run_status.SPAN)
    return int(started_for) if started_for else None


def _examples_type_id(store: metadata_store.MetadataStore) -> int | None:
    try:
        return store.get_artifact_type("Examples").id
    except errors.NotFoundError:  # no Examples recorded yet
        return None


def _regex_of(pattern: str) -> str:
    """The pattern as a regex over paths relative to the data root; the span a group."""
    parts, at, seen = [], 0, set()
    for m in _SPEC.finditer(pattern):
        parts.append(_glob_literal(pattern[at:m.start()]))
        name, width = m.group(1), m.group(2)
        digits = rf"\d{{{width}}}" if width else r"\d+"
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>{digits})")
        seen.add(name)
        at = m.end()
    parts.append(_glob_literal(pattern[at:]))
    return "".join(parts)


def _glob_literal(text: str) -> str:
    return re.escape(text).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")


def _glob(pattern: str) -> list[str]:
    if "://" not in pattern:
        return glob.glob(pattern)
    from tfx.dsl.io import fileio  # imports TensorFlow: only for gs:// and the like

    return fileio.glob(pattern)
