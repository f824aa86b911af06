"""A local run's record in ML Metadata: its own run id, how it started, how it ended.

LocalDagRunner makes up the run id when it starts (``datetime.now()``), records only
executions, never says whether a run ended, and stores no message when an executor
raises. Around it, with the home's lock held (``pipelines.run_control``):

* ``begin`` marks executions that a dead process left NEW or RUNNING as CANCELED, saying
  why (in the home's own SQLite store the lock proves no live process owns them; in a
  store other homes share, only runs whose process this host sees dead); decides
  whether to resume the pipeline's newest run from the same pipeline root (interrupted,
  and neither the compiled pipeline nor the data changed since: a fingerprint on the
  run's context) or to start a new one; registers
  the run's context with that decision; and prepares the IR: run id substituted,
  completed nodes skipped.
* ``recorded`` records how the run ended, and gives a failed execution that TFX left
  without a reason the exception's type and message, in TFX's ``__execution_result__``.

A resumed run keeps its run id: TFX then retries the interrupted execution as its own
(same execution, same output URIs), so the Trainer finds its BackupAndRestore state in
its ModelRun again. The execution's other outputs are cleared first, as TFX clears a
failed execution's, so no half-written shard is read as data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import socket
from collections.abc import Iterator, Mapping

import psutil
from absl import logging
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.compiler import constants
from tfx.dsl.io import fileio
from tfx.orchestration import metadata
from tfx.orchestration.portable import outputs_utils, runtime_parameter_utils
from tfx.orchestration.portable.mlmd import context_lib, execution_lib
from tfx.proto.orchestration import execution_result_pb2, pipeline_pb2

from pipelines import run_control
from pipelines.run_status import (
    ATTEMPTS,
    ERROR,
    FAILED,
    FINGERPRINT,
    INTERRUPTED,
    INTERRUPTED_OUTCOME,
    OUTCOME,
    RUNNING,
    SUCCEEDED,
    property_of,
)

_ACTIVE = (metadata_store_pb2.Execution.NEW, metadata_store_pb2.Execution.RUNNING)
_UNKNOWN = 2  # google.rpc.Code UNKNOWN: an exception, no code of its own
# Training state a retry resumes from (BackupAndRestore), kept when outputs are cleared.
_KEPT_ON_RETRY = {"ModelRun"}


@dataclasses.dataclass(frozen=True)
class RunStart:
    """How a run starts: resumed or new, and why, in words."""

    run_id: str
    resumed: bool
    note: str
    reused: tuple[str, ...] = ()  # nodes that completed before the interruption

    @property
    def message(self) -> str:
        verb = "Resuming" if self.resumed else "Starting new"
        return f"{verb} run {self.run_id}" + (f": {self.note}" if self.note else "")


def new_run_id() -> str:
    """A run id in the format LocalDagRunner uses (local time, ISO 8601)."""
    return datetime.datetime.now().isoformat()


def fingerprint(ir: pipeline_pb2.Pipeline, data_root: str) -> str | None:
    """What must not change for a run to be resumed: the compiled pipeline and its data.

    Call before the run id is substituted. Data off the local filesystem is not walked
    (None): a run on it is never resumed, rather than resumed on changed data.
    """
    if "://" in data_root:
        return None
    digest = hashlib.sha256(ir.SerializeToString(deterministic=True))
    for folder, dirs, files in os.walk(data_root):
        dirs.sort()
        for name in sorted(files):
            stat = os.stat(os.path.join(folder, name))
            relative = os.path.relpath(os.path.join(folder, name), data_root)
            digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def begin(connection: metadata_store_pb2.ConnectionConfig, ir: pipeline_pb2.Pipeline,
          run_fingerprint: str | None, labels: Mapping[str, str] | None = None,
          shared: bool = False) -> RunStart:
    """Recovers interrupted runs, resumes or starts this one, and prepares ``ir`` for it.

    Only call with the home's run lock held. ``ir`` is changed in place: its run id
    substituted and, when resuming, the nodes completed before marked to be skipped.
    ``labels`` become string custom properties of the run's context (e.g. why a scheduled
    run ran: ``run_status.TRIGGER``).

    Args:
      shared: other homes may write to the store (MySQL), so the lock does not prove
        that other runs' processes are dead (``recover_interrupted``).
    """
    pipeline = ir.pipeline_info.id
    with metadata.Metadata(connection) as m:
        recover_interrupted(m.store, shared)
        start = _plan(m.store, pipeline, _root_of(ir), run_fingerprint)
        run = _register(m, pipeline, _root_of(ir), start, run_fingerprint, labels or {})
        if start.resumed:
            _reopen_interrupted(m.store, run, ir)
    runtime_parameter_utils.substitute_runtime_parameter(
        ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: start.run_id})
    for node in ir.nodes:
        if node.pipeline_node.node_info.id in start.reused:
            node.pipeline_node.execution_options.skip.SetInParent()
    return start


@contextlib.contextmanager
def recorded(connection: metadata_store_pb2.ConnectionConfig, run_id: str) -> Iterator[None]:
    """Records how the run in the block ends; an exception is re-raised as RunFailed.

    The traceback goes to the log (absl); ML Metadata and the console get one line.
    """
    try:
        yield
    except Exception as e:
        reason = run_control.describe_error(e)
        logging.error("Run %s failed: %s", run_id, reason, exc_info=e)
        with metadata.Metadata(connection) as m:
            _record_failure(m.store, _run_context(m.store, run_id), reason)
        raise run_control.RunFailed(run_id, reason) from e
    except BaseException as e:  # Ctrl-C, SystemExit: resumable, like a killed run
        with metadata.Metadata(connection) as m:
            run = _run_context(m.store, run_id)
            _cancel_active(m.store, run, f"interrupted by {type(e).__name__}")
            _set_outcome(m.store, run, INTERRUPTED_OUTCOME)
        raise
    with metadata.Metadata(connection) as m:
        _set_outcome(m.store, _run_context(m.store, run_id), SUCCEEDED)


def recover_interrupted(store: metadata_store.MetadataStore, shared: bool = False) -> None:
    """Marks runs and executions that a dead process left unfinished as interrupted.

    In the home's own store, with the home's lock held, no live process runs any of them.
    In a shared store another home's run may be running: only runs whose last attempt ran
    on this host in a process that is gone are touched (another host's stay as they are).
    """
    for run in store.get_contexts_by_type(constants.PIPELINE_RUN_CONTEXT_TYPE_NAME):
        if shared and attempt_alive(run) is not False:
            continue
        canceled = _cancel_active(store, run, _why_stopped(run))
        outcome = property_of(run, OUTCOME)
        if outcome == RUNNING or (outcome is None and canceled):  # None: before Sightline's
            _set_outcome(store, run, INTERRUPTED_OUTCOME)


def attempts(run: metadata_store_pb2.Context) -> list[dict[str, object]]:
    """The processes that ran ``run``: pid, start time, resumed or new, and why."""
    return json.loads(property_of(run, ATTEMPTS) or "[]")


def attempt_alive(run: metadata_store_pb2.Context) -> bool | None:
    """Whether the process of the run's last attempt still runs; None: on another host.

    A live pid that started after the attempt did is another process reusing the pid.
    Runs recorded before attempts named their host count as this host's.
    """
    last = (attempts(run) or [{}])[-1]
    if last.get("host", socket.gethostname()) != socket.gethostname():
        return None
    try:
        started = psutil.Process(int(last["pid"])).create_time()
    except (KeyError, ValueError, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.Error:  # e.g. AccessDenied: a process runs under that pid
        return True
    recorded = last.get("started")
    return not recorded or started <= datetime.datetime.fromisoformat(recorded).timestamp() + 1


def node_of(store: metadata_store.MetadataStore, execution_id: int) -> str | None:
    """The pipeline node an execution ran (its ``node`` context, pipeline name dropped)."""
    return next((c.name.split(".", 1)[-1] for c in store.get_contexts_by_execution(execution_id)
                 if c.type == constants.NODE_CONTEXT_TYPE_NAME), None)


# --- begin: plan, register, reopen -----------------------------------------------------


def _plan(store: metadata_store.MetadataStore, pipeline: str, root: str,
          run_fingerprint: str | None) -> RunStart:
    last = _newest_run(store, pipeline, root)
    if last is None or property_of(last, OUTCOME) != INTERRUPTED_OUTCOME:
        return RunStart(new_run_id(), resumed=False, note="")
    executions = store.get_executions_by_context(last.id)
    stopped = [node_of(store, e.id) for e in executions
               if e.last_known_state == metadata_store_pb2.Execution.CANCELED]
    where = f" during {', '.join(stopped)}" if stopped else ""
    if run_fingerprint is None or run_fingerprint != property_of(last, FINGERPRINT):
        why = ("its data is not on this machine, so it cannot be checked for changes"
               if run_fingerprint is None else "the settings or the data changed since")
        return RunStart(new_run_id(), resumed=False,
                        note=f"run {last.name} was interrupted{where} but is not resumed: {why}")
    reused = tuple(node for node in (node_of(store, e.id) for e in executions
                                     if execution_lib.is_execution_successful(e)) if node)
    return RunStart(last.name, resumed=True, reused=reused,
                    note=f"it was interrupted{where}; keeping its {len(reused)} completed "
                         f"step{'s' * (len(reused) != 1)}, running the rest")


def _register(m: metadata.Metadata, pipeline: str, root: str, start: RunStart,
              run_fingerprint: str | None,
              labels: Mapping[str, str]) -> metadata_store_pb2.Context:
    """The run's context (TFX reuses it), with this attempt and its fingerprint."""
    pipeline_context = context_lib.register_context_if_not_exists(
        m, constants.PIPELINE_CONTEXT_TYPE_NAME, pipeline)
    run = context_lib.register_context_if_not_exists(
        m, constants.PIPELINE_RUN_CONTEXT_TYPE_NAME, start.run_id,
        parent_contexts=[pipeline_context])
    attempt = {"pid": os.getpid(), "host": socket.gethostname(), "root": root,
               "started": run_control.utc_now(), "resumed": start.resumed, "note": start.note}
    run.custom_properties[ATTEMPTS].string_value = json.dumps([*attempts(run), attempt])
    run.custom_properties[FINGERPRINT].string_value = run_fingerprint or ""
    run.custom_properties[OUTCOME].string_value = RUNNING
    for name, value in labels.items():
        run.custom_properties[name].string_value = value
    m.store.put_contexts([run])
    return run


def _reopen_interrupted(store: metadata_store.MetadataStore,
                        run: metadata_store_pb2.Context, ir: pipeline_pb2.Pipeline) -> None:
    """Readies the run's interrupted executions for TFX to retry: outputs cleared, RUNNING."""
    nodes = {n.pipeline_node.node_info.id: n.pipeline_node for n in ir.nodes}
    for execution in store.get_executions_by_context(run.id):
        if execution.last_known_state != metadata_store_pb2.Execution.CANCELED:
            continue
        node = nodes.get(node_of(store, execution.id))
        if node is not None:
            _clear_outputs(node, ir, execution.id)
        execution.last_known_state = metadata_store_pb2.Execution.RUNNING
        store.put_executions([execution])


def _clear_outputs(node: pipeline_pb2.PipelineNode, ir: pipeline_pb2.Pipeline,
                   execution_id: int) -> None:
    outputs = outputs_utils.OutputsResolver(
        node, ir.pipeline_info, ir.runtime_spec).generate_output_artifacts(execution_id)
    for artifacts in outputs.values():
        for artifact in artifacts:
            if artifact.type_name in _KEPT_ON_RETRY or not fileio.exists(artifact.uri):
                continue
            if fileio.isdir(artifact.uri):
                fileio.rmtree(artifact.uri)
            else:
                fileio.remove(artifact.uri)


# --- outcomes ----------------------------------------------------------------------------


def _record_failure(store: metadata_store.MetadataStore, run: metadata_store_pb2.Context,
                    reason: str) -> None:
    """Gives the newest failed execution TFX left without a reason this one; else the run."""
    failed = [e for e in store.get_executions_by_context(run.id)
              if e.last_known_state == metadata_store_pb2.Execution.FAILED]
    silent = [e for e in failed if execution_lib.get_execution_result(e, True) is None]
    if silent:
        newest = max(silent, key=lambda e: (e.last_update_time_since_epoch, e.id))
        execution_lib.set_execution_result(execution_result_pb2.ExecutionResult(
            code=_UNKNOWN, result_message=reason), newest)
        store.put_executions([newest])
    elif not failed:
        run.custom_properties[ERROR].string_value = reason
    _set_outcome(store, run, FAILED)


def _cancel_active(store: metadata_store.MetadataStore, run: metadata_store_pb2.Context,
                   reason: str) -> int:
    """Marks the run's NEW and RUNNING executions CANCELED with ``reason``; how many."""
    active = [e for e in store.get_executions_by_context(run.id)
              if execution_lib.is_execution_active(e)]
    for execution in active:
        execution.last_known_state = metadata_store_pb2.Execution.CANCELED
        execution.custom_properties[INTERRUPTED].string_value = reason
    if active:
        store.put_executions(active)
    return len(active)


def _set_outcome(store: metadata_store.MetadataStore, run: metadata_store_pb2.Context,
                 outcome: str) -> None:
    run.custom_properties[OUTCOME].string_value = outcome
    store.put_contexts([run])


def _why_stopped(run: metadata_store_pb2.Context) -> str:
    pid = (attempts(run) or [{}])[-1].get("pid")
    process = f"process {pid}" if pid else "the process running it"
    return f"{process} stopped before it finished (noticed {run_control.utc_now()})"


def _newest_run(store: metadata_store.MetadataStore, pipeline: str,
                root: str) -> metadata_store_pb2.Context | None:
    """The pipeline's newest run that wrote to ``root``: in a shared store other homes'
    runs of the same pipeline are not this home's to resume."""
    parent = store.get_context_by_type_and_name(constants.PIPELINE_CONTEXT_TYPE_NAME, pipeline)
    if parent is None:
        return None
    runs = [c for c in store.get_children_contexts_by_context(parent.id)
            if c.type == constants.PIPELINE_RUN_CONTEXT_TYPE_NAME
            and (attempts(c) or [{}])[-1].get("root", root) == root]
    return max(runs, key=lambda c: (c.create_time_since_epoch, c.id), default=None)


def _root_of(ir: pipeline_pb2.Pipeline) -> str:
    return ir.runtime_spec.pipeline_root.field_value.string_value


def _run_context(store: metadata_store.MetadataStore,
                 run_id: str) -> metadata_store_pb2.Context:
    return store.get_context_by_type_and_name(constants.PIPELINE_RUN_CONTEXT_TYPE_NAME, run_id)
