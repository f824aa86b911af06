"""Run summaries and lineage, read back from ML Metadata: the record of what happened.

Nothing here keeps its own bookkeeping: every number comes from MLMD (executions,
artifacts, their custom properties) or from the artifacts those records point at.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components import release
from components.coco_eval import metric as coco_metric
from components.coco_eval import results as eval_results
from components.coco_example_gen import executor as coco_executor
from components.drift_check import DataDrift
from components.drift_check import executor as drift_executor
from components.edge_optimizer import TFLiteModel
from components.edge_pusher import EdgeBundle
from pipelines import metadata_store as stores
from pipelines import run_record, run_status
from trainer import executor as trainer_executor

OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
INPUT_EVENTS = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)
# The Evaluator's baseline is an earlier run's model: lineage does not follow it.
# Custom properties the EdgeOptimizer sets on each TFLiteModel, shown per variant.
EDGE_VARIANT_PROPERTIES = ("size_bytes", "mAP", "mAP50", "D-ECE", "mAP_change")
_NOT_LINEAGE_INPUTS = {"baseline_model"}


class NoRunsError(LookupError):
    """There is nothing to show yet (or the requested run does not exist)."""


def connect(metadata: str | metadata_store_pb2.ConnectionConfig,
            writable: bool = False) -> metadata_store.MetadataStore:
    """Opens a Sightline home's SQLite store (a path), or a shared MySQL store; a SQLite
    store read-only unless ``writable`` (the release registry writes).

    Raises:
      NoRunsError: the SQLite file does not exist yet.
      metadata_store.MetadataStoreError (of ``pipelines``): the MySQL store cannot be
        used, said in one line.
    """
    store = stores.open_existing(metadata, writable)
    if store is None:
        path = metadata if isinstance(metadata, str) else metadata.sqlite.filename_uri
        raise NoRunsError(f"no ML Metadata store at {path}: run `sightline run` first")
    return store


def list_runs(store: metadata_store.MetadataStore,
              running: str | None = None) -> list[dict[str, Any]]:
    """Pipeline runs, newest first: run id, pipeline, status.

    Args:
      running: the run id of the run holding the home's lock now, if any
        (``run_control.running_run``); other runs are "running" only while the process
        their last attempt recorded runs (``run_record.attempt_alive``).
    """
    runs = []
    for context in _run_contexts(store):
        executions = store.get_executions_by_context(context.id)
        runs.append({
            "run_id": context.name,
            "pipeline": _pipeline_of(store, context),
            "status": run_status.run_status(context, executions, _is_live(context, running)),
            "started": context.create_time_since_epoch / 1000.0,
        })
    return runs


def _run_contexts(store: metadata_store.MetadataStore) -> list[metadata_store_pb2.Context]:
    contexts = store.get_contexts_by_type("pipeline_run")
    return sorted(contexts, key=lambda c: (c.create_time_since_epoch, c.id), reverse=True)


def _pipeline_of(store: metadata_store.MetadataStore, run: metadata_store_pb2.Context) -> str:
    parents = store.get_parent_contexts_by_context(run.id)
    return next((p.name for p in parents), "")


def _is_live(run: metadata_store_pb2.Context, running: str | None) -> bool:
    """The run holding this home's lock, or one whose process runs (on another host, or in
    another home sharing the store): ``attempt_alive`` is None when it cannot tell."""
    if run.name == running:
        return True
    return (run_status.property_of(run, run_status.OUTCOME) == run_status.RUNNING
            and run_record.attempt_alive(run) is not False)


def find_run(
    store: metadata_store.MetadataStore, run_id: str = "latest"
) -> metadata_store_pb2.Context:
    """The pipeline_run context of a run id, or of the newest run for "latest"."""
    contexts = _run_contexts(store)
    if not contexts:
        raise NoRunsError("no pipeline runs recorded yet: run `sightline run` first")
    if run_id == "latest":
        return contexts[0]
    for context in contexts:
        if context.name == run_id:
            return context
    raise NoRunsError(f"no run {run_id!r}; known runs: {[c.name for c in contexts[:5]]} ...")


def summarize(store: metadata_store.MetadataStore, run_id: str = "latest",
              running: str | None = None) -> dict[str, Any]:
    """Everything a person asks after a run, as one JSON-able dict.

    Args:
      running: the run id holding the home's lock now, if any (see ``list_runs``).
    """
    run = find_run(store, run_id)
    executions = sorted(
        store.get_executions_by_context(run.id), key=lambda e: (e.create_time_since_epoch, e.id)
    )
    outputs = _output_artifacts(store, [e.id for e in executions])
    live = _is_live(run, running)
    summary: dict[str, Any] = {
        "run_id": run.name,
        "pipeline": _pipeline_of(store, run),
        "status": run_status.run_status(run, executions, live),
        "components": [_component(store, e, live) for e in executions],
    }
    summary.update(_how_it_started_and_ended(run, summary["components"]))
    for artifact, type_name in outputs:
        if type_name == "Examples":
            summary["examples"] = examples_record(artifact)
        elif type_name == "ModelEvaluation":
            summary["evaluation"] = {"uri": artifact.uri, **evaluation_record(artifact.uri)}
        elif type_name == "ModelBlessing":
            summary["blessed"] = bool(custom_properties(artifact).get("blessed", 0))
        elif type_name == "PushedModel":
            summary["pushed"] = pushed_record(artifact)
        elif type_name == "Model":
            summary["model"] = model_record(artifact)
        elif type_name == DataDrift.TYPE_NAME:
            summary["drift"] = drift_record(artifact)
        elif type_name == TFLiteModel.TYPE_NAME:
            props = custom_properties(artifact)
            summary.setdefault("edge_variants", {})[props["variant"]] = {
                "uri": artifact.uri, **{k: props[k] for k in EDGE_VARIANT_PROPERTIES}}
        elif type_name == EdgeBundle.TYPE_NAME:
            props = custom_properties(artifact)
            summary["edge_push"] = {
                "pushed": bool(props.get("pushed", 0)), "variant": props.get("variant"),
                "reason": props.get("reason"), "version": props.get("pushed_version"),
                "destination": props.get("pushed_destination"), "artifact_id": artifact.id}
    return summary


def _how_it_started_and_ended(run: metadata_store_pb2.Context,
                              components: list[dict[str, Any]]) -> dict[str, Any]:
    """start (resumed or new, and why), trigger (a scheduled run's span), failure and
    interruption: the summary's facts about the run itself rather than its outputs."""
    facts: dict[str, Any] = {}
    attempts = run_record.attempts(run)
    if attempts:  # how the run started: resumed or new, and why
        facts["start"] = {"resumed": attempts[-1]["resumed"], "note": attempts[-1]["note"],
                          "attempts": len(attempts)}
    trigger = run_status.property_of(run, run_status.TRIGGER)
    if trigger:  # a scheduled run (--when-new-span): the span and why it ran
        facts["trigger"] = {"span": int(run_status.property_of(run, run_status.SPAN)),
                            "reason": trigger}
    failed = [c for c in components if c["status"] == "failed"]
    if failed:
        facts["failure"] = {"component": failed[0]["component"], "error": failed[0]["error"]}
    elif run_status.property_of(run, run_status.ERROR):
        facts["failure"] = {"component": None,
                            "error": run_status.property_of(run, run_status.ERROR)}
    interrupted = [c for c in components if c["status"] == "interrupted"]
    if interrupted:
        facts["interruption"] = {"component": interrupted[-1]["component"],
                                 "reason": interrupted[-1]["reason"]}
    return facts


def _component(
    store: metadata_store.MetadataStore, execution: metadata_store_pb2.Execution,
    live: bool = True,
) -> dict[str, Any]:
    """One execution: its node, status, seconds; why it failed or stopped.

    Args:
      live: whether the run's process is alive; if not, an execution still NEW or RUNNING
        was interrupted (the next ``sightline run`` marks it CANCELED).
    """
    record = {
        "component": run_record.node_of(store, execution.id) or str(execution.id),
        "status": run_status.EXECUTION_STATES[execution.last_known_state],
        "seconds": round(
            (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000, 1
        ),
        "execution_id": execution.id,
    }
    stopped = run_status.property_of(execution, run_status.INTERRUPTED)
    if record["status"] == "failed":
        record["error"] = _execution_error(execution)
    elif record["status"] == "canceled" or (record["status"] in ("new", "running") and not live):
        record["status"] = "interrupted"
        record["reason"] = stopped or "its process is no longer running"
    elif stopped:  # retried after an interruption, e.g. a resumed Trainer
        record["interrupted_before"] = stopped
    return record


def _execution_error(execution: metadata_store_pb2.Execution) -> str:
    """The failure message TFX stored with a failed execution."""
    raw = custom_properties(execution).get("__execution_result__", "")
    try:
        return json.loads(raw).get("resultMessage", raw)
    except (json.JSONDecodeError, AttributeError):
        return str(raw)


def custom_properties(item: Any) -> dict[str, Any]:
    """An artifact's or execution's custom properties as plain Python values."""
    values = {}
    for key, value in item.custom_properties.items():
        kind = value.WhichOneof("value")
        values[key] = (
            json.loads(json.dumps(dict(value.struct_value)))
            if kind == "struct_value" else getattr(value, kind)
        )
    return values


def _output_artifacts(
    store: metadata_store.MetadataStore, execution_ids: list[int]
) -> list[tuple[metadata_store_pb2.Artifact, str]]:
    events = store.get_events_by_execution_ids(execution_ids)
    ids = [e.artifact_id for e in events if e.type in OUTPUT_EVENTS]
    return _with_type_names(store, store.get_artifacts_by_id(ids)) if ids else []


def _with_type_names(
    store: metadata_store.MetadataStore, artifacts: list[metadata_store_pb2.Artifact]
) -> list[tuple[metadata_store_pb2.Artifact, str]]:
    types = {t.id: t.name for t in store.get_artifact_types_by_id({a.type_id for a in artifacts})}
    return [(a, types[a.type_id]) for a in artifacts]


def span_of(artifact: metadata_store_pb2.Artifact) -> int | None:
    """An artifact's span: a property of its type, or (ExampleGen's driver) a custom one."""
    for props in (artifact.properties, artifact.custom_properties):
        if "span" in props:
            return props["span"].int_value
    return None


def examples_record(artifact: metadata_store_pb2.Artifact) -> dict[str, Any]:
    """Per-split counts and content hashes, and the quarantine, of an Examples artifact."""
    props = custom_properties(artifact)
    return {
        "artifact_id": artifact.id,
        "uri": artifact.uri,
        "span": span_of(artifact),
        "splits": release.dataset_record(artifact),
        "quarantined": props.get(coco_executor.QUARANTINED_PROPERTY, 0),
        "quarantine_reasons": json.loads(
            props.get(coco_executor.QUARANTINE_REASONS_PROPERTY, "{}")
        ),
        "quarantine_report": os.path.join(artifact.uri, coco_executor.QUARANTINE_FILE),
        "listed_images": props.get(coco_executor.LISTED_IMAGES_PROPERTY),
        "quarantined_images": props.get(coco_executor.QUARANTINED_IMAGES_PROPERTY),
    }


def evaluation_record(uri: str) -> dict[str, Any]:
    """Scalar metrics per slice for the candidate (and baseline), and why gates failed.

    Slices the metric flags as too small (``enough_images`` 0) keep only their size: a
    number from a handful of images would be read as a finding.
    """
    import tensorflow_model_analysis as tfma  # slow import: only when there is an evaluation

    loaded = eval_results.load_metrics(uri)
    candidate = {name: _enough_or_size(name, _scalars(metrics))
                 for name, metrics in loaded[eval_results.CANDIDATE].items()}
    validation = tfma.load_validation_result(uri)
    failures = sorted((
        _failure(eval_results.slice_name(per_slice.slice_key), failure)
        for per_slice in validation.metric_validations_per_slice
        for failure in per_slice.failures
    ), key=lambda f: (f["slice"] != eval_results.OVERALL, f["slice"]))
    record = {
        "overall": candidate.get(eval_results.OVERALL, {}),
        "slices": {k: v for k, v in sorted(candidate.items()) if k != eval_results.OVERALL},
        "validation_ok": validation.validation_ok,
        "failed_thresholds": failures,
    }
    # No blessed model yet: TFX skips the change gates ("rubber stamp"; TFMA's own
    # ValidationResult.rubber_stamp stays false under TFX, so it is derived here).
    baseline = loaded[eval_results.BASELINE].get(eval_results.OVERALL)
    record["rubber_stamp"] = not baseline
    if baseline:
        record["baseline_overall"] = _scalars(baseline)
    if failures:
        record["blocked_because"] = "; ".join(f"{f['slice']}: {f['message']}" for f in failures)
    return record


_TOO_FEW = "too_few_examples"


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in sorted(metrics.items()) if isinstance(v, float)}


def _enough_or_size(name: str, metrics: dict[str, float]) -> dict[str, Any]:
    if name == eval_results.OVERALL or metrics.get(coco_metric.ENOUGH_IMAGES, 1):
        return metrics
    return {"example_count": metrics.get("example_count"), _TOO_FEW: True}


def _failure(slice_name: str, failure: Any) -> dict[str, Any]:
    """One failed threshold in words: which metric, on which slice, by how much."""
    name = failure.metric_key.name
    value = failure.metric_value.double_value.value
    threshold = failure.metric_threshold
    if failure.message:  # TFMA's own text, e.g. "Metric not found."
        message = f"{name}: {failure.message.strip()}"
    elif threshold.HasField("change_threshold"):
        allowed = threshold.change_threshold.absolute.value
        message = (f"{name} changed by {value:+.4f} versus the blessed baseline; "
                   f"the gate allows {allowed:+.4f}")
    else:
        bound = threshold.value_threshold.lower_bound.value
        message = f"{name} = {value:.4f} is below the floor {bound:.4f}"
    return {"slice": slice_name, "metric": name, "change": failure.metric_key.is_diff,
            "value": round(value, 4), "message": message}


def drift_record(artifact: metadata_store_pb2.Artifact) -> dict[str, Any]:
    """DriftCheck's findings: what moved versus the previous span, and annotation issues."""
    with open(os.path.join(artifact.uri, drift_executor.DRIFT_FILE)) as f:
        report = json.load(f)
    return {
        "artifact_id": artifact.id,
        "baseline_span": (report["baseline"] or {}).get("span"),
        "drifted_features": report["drifted_features"],
        "box_fit_changes": report["box_fit_changes"],
        "features": {f["feature"]: {k: round(v, 4) for k, v in f["measurements"].items()}
                     for f in report["features"]},
        "duplicate_boxes": report["duplicate_boxes"],
        "tiny_boxes": report["tiny_boxes"],
    }


def model_record(artifact: metadata_store_pb2.Artifact) -> dict[str, Any]:
    """A Model artifact and the hyperparameters its Trainer recorded (``hparam_<key>``)."""
    prefix = trainer_executor.HPARAM_PREFIX
    hparams = {
        key.removeprefix(prefix): value
        for key, value in sorted(custom_properties(artifact).items()) if key.startswith(prefix)
    }
    return {"uri": artifact.uri, "artifact_id": artifact.id, "hparams": hparams}


def pushed_record(artifact: metadata_store_pb2.Artifact) -> dict[str, Any]:
    props = custom_properties(artifact)
    return {
        "pushed": bool(props.get("pushed", 0)),
        "version": props.get("pushed_version"),
        "destination": props.get("pushed_destination"),
        "artifact_id": artifact.id,
    }


def lineage(store: metadata_store.MetadataStore, pushed_version: str,
            run_id: str | None = None) -> dict[str, Any]:
    """Walks MLMD back from a pushed model version to the Examples it came from.

    Returns the pushed model, every execution and artifact on the way (the lineage
    edges), and the Examples artifacts reached with their content hashes.

    Args:
      run_id: the run that pushed it, where runs of several homes share the store and
        more than one pushed this version (versions are push times in seconds).
    """
    pushed = _pushed_artifact(store, pushed_version, run_id)
    seen_artifacts: set[int] = set()
    type_names: dict[int, str] = {}
    edges, examples = [], []
    frontier = [pushed.id]
    while frontier:
        artifact_ids = [a for a in frontier if a not in seen_artifacts]
        seen_artifacts.update(artifact_ids)
        frontier = []
        if not artifact_ids:
            break
        for artifact, type_name in _with_type_names(store, store.get_artifacts_by_id(artifact_ids)):
            type_names[artifact.id] = type_name
            if type_name == "Examples":
                examples.append(examples_record(artifact))
        producing = [e for e in store.get_events_by_artifact_ids(artifact_ids)
                     if e.type in OUTPUT_EVENTS]
        for event in producing:
            execution = store.get_executions_by_id([event.execution_id])[0]
            node = _component(store, execution)["component"]
            for inp in store.get_events_by_execution_ids([execution.id]):
                key = inp.path.steps[0].key if inp.path.steps else ""
                if inp.type in INPUT_EVENTS and key not in _NOT_LINEAGE_INPUTS:
                    edges.append({"from_artifact": inp.artifact_id, "execution": node,
                                  "input": key, "to_artifact": event.artifact_id})
                    frontier.append(inp.artifact_id)
    for edge in edges:
        edge["from_type"] = type_names[edge["from_artifact"]]
        edge["to_type"] = type_names[edge["to_artifact"]]
    return {
        "pushed_model": pushed_record(pushed),
        "edges": edges,
        "examples": sorted(examples, key=lambda e: e["artifact_id"]),
    }


def _pushed_artifact(store: metadata_store.MetadataStore, pushed_version: str,
                     run_id: str | None) -> metadata_store_pb2.Artifact:
    pushed = [
        a for a in store.get_artifacts_by_type("PushedModel")
        if custom_properties(a).get("pushed_version") == str(pushed_version)
        and custom_properties(a).get("pushed")
    ]
    if run_id is not None:
        run = find_run(store, run_id)
        ids = {a.id for a in store.get_artifacts_by_context(run.id)}
        pushed = [a for a in pushed if a.id in ids]
    if not pushed:
        within = f" in run {run_id}" if run_id else ""
        raise NoRunsError(f"no pushed model with version {pushed_version!r}{within}")
    if len(pushed) > 1:
        where = ", ".join(custom_properties(a).get("pushed_destination", "?") for a in pushed)
        raise NoRunsError(f"version {pushed_version!r} was pushed {len(pushed)} times ({where}): "
                          "name the run with --run")
    return pushed[0]
