"""The registry in ML Metadata: its types, one context per model, its records.

Types (registered on first write, fields may be added later):

- ``sightline.StageTransition``: one version changing stage. Properties ``model``,
  ``version``, ``from_stage``, ``to_stage``, ``action`` (promote, replace, rollback,
  retire), ``actor``, ``reason``, ``evidence`` (JSON: the facts the rules were checked
  against: blessing, approval, comparison, or why a rule did not apply).
- ``sightline.Approval``: a person's sign-off on a version (``actor``, ``reason``,
  ``evidence``: the blessing it was given after).
- ``sightline.ModelComparison``: ``sightline models compare``'s report over request logs
  (``baseline_version``, ``candidate_version``, ``mode``, ``report`` as JSON, ``passed``).

Each is linked by INPUT events to the PushedModel artifact(s) it concerns (event path
``pushed_model``, or ``baseline``/``candidate`` for a comparison) and associated with a
``sightline.RegisteredModel`` context named after the pipeline, to which the PushedModels
are attributed. Records are only ever added: the history is append-only, ordered by
execution id (SQLite ids increase), and the current stage of a version is the
``to_stage`` of its newest transition (``candidate`` without one).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

TRANSITION = "sightline.StageTransition"
APPROVAL = "sightline.Approval"
COMPARISON = "sightline.ModelComparison"
REGISTERED_MODEL = "sightline.RegisteredModel"
PUSHED_MODEL = "PushedModel"
PIPELINE_CONTEXT = "pipeline"
PIPELINE_RUN_CONTEXT = "pipeline_run"

_S, _I = pb.STRING, pb.INT
_EXECUTION_TYPES = {
    TRANSITION: {"model": _S, "version": _S, "from_stage": _S, "to_stage": _S, "action": _S,
                 "actor": _S, "reason": _S, "evidence": _S},
    APPROVAL: {"model": _S, "version": _S, "actor": _S, "reason": _S, "evidence": _S},
    COMPARISON: {"model": _S, "baseline_version": _S, "candidate_version": _S, "mode": _S,
                 "actor": _S, "reason": _S, "report": _S, "passed": _I},
}
_KINDS = {TRANSITION: "transition", APPROVAL: "approval", COMPARISON: "comparison"}


class UnknownModelError(LookupError):
    """No pipeline of that name pushed anything in this home."""


def connect(
    metadata: str | pb.ConnectionConfig,
) -> metadata_store.MetadataStore:
    """A writable connection to a Sightline home's SQLite store (which must exist) or to a
    shared MySQL store."""
    from pipelines.reports.runs import connect as open_store

    return open_store(metadata, writable=True)


@dataclasses.dataclass(frozen=True)
class Record:
    """One registry execution, as plain values."""

    id: int
    kind: str  # transition | approval | comparison
    time: float  # seconds since the epoch (MLMD's create time)
    version: str  # a comparison's candidate
    actor: str
    reason: str
    from_stage: str = ""
    to_stage: str = ""
    action: str = ""
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)
    baseline: str = ""  # a comparison's baseline version
    mode: str = ""
    passed: bool | None = None
    report: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        keep = {"transition": ("from_stage", "to_stage", "action", "evidence"),
                "approval": ("evidence",),
                "comparison": ("baseline", "mode", "passed")}[self.kind]
        record = {"id": self.id, "kind": self.kind, "time": self.time, "version": self.version,
                  "actor": self.actor, "reason": self.reason}
        record.update({k: getattr(self, k) for k in keep})
        if self.kind == "comparison":
            record["problems"] = self.report.get("problems", [])
        return record


@dataclasses.dataclass(frozen=True)
class NewRecord:
    """A record to write: its type's properties, and the versions it is linked to."""

    type_name: str
    properties: dict[str, str | int]
    links: tuple[tuple[str, int], ...]  # (event path, PushedModel artifact id)


class RegistryStore:
    """One model's pushed versions and registry records in an ML Metadata store."""

    def __init__(self, store: metadata_store.MetadataStore, model: str):
        self.store = store
        self.model = model

    # ------------------------------------------------------------------------- pushes

    def pushed(self) -> dict[str, pb.Artifact]:
        """{version: PushedModel} of every push of the pipeline named ``model``."""
        pipeline = self.store.get_context_by_type_and_name(PIPELINE_CONTEXT, self.model)
        if pipeline is None:
            known = sorted(c.name for c in self.store.get_contexts_by_type(PIPELINE_CONTEXT))
            raise UnknownModelError(
                f"no pipeline {self.model!r} in this home's ML Metadata; known: "
                f"{', '.join(known) or 'none (run `sightline run` first)'}")
        type_id = self.store.get_artifact_type(PUSHED_MODEL).id
        found = {}
        for artifact in self.store.get_artifacts_by_context(pipeline.id):
            props = artifact.custom_properties
            if (artifact.type_id == type_id and props["pushed"].int_value == 1
                    and props["pushed_version"].string_value):
                found[props["pushed_version"].string_value] = artifact
        return dict(sorted(found.items(), key=lambda kv: int(kv[0])))

    def push_inputs(self, pushed: pb.Artifact) -> dict[str, pb.Artifact]:
        """The Pusher's inputs for a PushedModel: model, model_blessing, evaluation, ..."""
        producers = [e.execution_id for e in self.store.get_events_by_artifact_ids([pushed.id])
                     if e.type == pb.Event.OUTPUT]
        if not producers:
            return {}
        inputs = {e.path.steps[0].key: e.artifact_id
                  for e in self.store.get_events_by_execution_ids(producers[:1])
                  if e.type == pb.Event.INPUT and e.path.steps}
        artifacts = {a.id: a for a in self.store.get_artifacts_by_id(list(inputs.values()))}
        return {key: artifacts[i] for key, i in inputs.items()}

    def latest_blessing(self, model_artifact_id: int) -> pb.Artifact | None:
        """The newest ModelBlessing the Evaluator wrote for this Model artifact.

        A model evaluated again (a later run, another baseline) has several; the newest
        is what a release must go by, and an approval must postdate it.
        """
        query = (f"type = 'ModelBlessing' AND "
                 f"custom_properties.current_model_id.int_value = {int(model_artifact_id)}")
        found = self.store.get_artifacts(
            list_options=metadata_store.ListOptions(filter_query=query))
        return max(found, key=lambda a: (a.create_time_since_epoch, a.id), default=None)

    def run_id(self, pushed: pb.Artifact) -> str:
        """The pipeline run that pushed it."""
        for context in self.store.get_contexts_by_artifact(pushed.id):
            if self.store.get_context_types_by_id([context.type_id])[0].name == \
                    PIPELINE_RUN_CONTEXT:
                return context.name
        return ""

    # ------------------------------------------------------------------------ records

    def _context(self, create: bool) -> pb.Context | None:
        context = self.store.get_context_by_type_and_name(REGISTERED_MODEL, self.model)
        if context is None and create:
            type_id = self.store.put_context_type(pb.ContextType(name=REGISTERED_MODEL))
            [context_id] = self.store.put_contexts([pb.Context(type_id=type_id,
                                                               name=self.model)])
            context = self.store.get_contexts_by_id([context_id])[0]
        return context

    def records(self) -> list[Record]:
        """Every completed registry record of this model, oldest first."""
        context = self._context(create=False)
        if context is None:
            return []
        executions = self.store.get_executions_by_context(context.id)
        types = {t.id: t.name for t in self.store.get_execution_types_by_id(
            list({e.type_id for e in executions}))} if executions else {}
        records = [_record(e, types[e.type_id]) for e in executions
                   if types.get(e.type_id) in _KINDS
                   and e.last_known_state == pb.Execution.COMPLETE]
        return sorted(records, key=lambda r: r.id)

    def put(self, new: list[NewRecord]) -> list[int]:
        """Writes ``new`` in one transaction (all or nothing); returns their ids in order."""
        context = self._context(create=True)
        type_ids = {name: self._execution_type(name) for name in {r.type_name for r in new}}
        attributions = [pb.Attribution(artifact_id=artifact_id, context_id=context.id)
                        for r in new for _, artifact_id in r.links]
        self.store.put_attributions_and_associations(attributions, [])
        executions, edges = [], []
        for index, record in enumerate(new):
            execution = pb.Execution(type_id=type_ids[record.type_name],
                                     last_known_state=pb.Execution.COMPLETE)
            for key, value in record.properties.items():
                if isinstance(value, int):
                    execution.properties[key].int_value = value
                else:
                    execution.properties[key].string_value = value
            executions.append(execution)
            for path, artifact_id in record.links:
                event = pb.Event(artifact_id=artifact_id, type=pb.Event.INPUT)
                event.path.steps.add().key = path
                edges.append((index, None, event))
        ids, _, _ = self.store.put_lineage_subgraph(executions, [], [context], edges)
        return list(ids)

    def _execution_type(self, name: str) -> int:
        execution_type = pb.ExecutionType(name=name)
        for key, kind in _EXECUTION_TYPES[name].items():
            execution_type.properties[key] = kind
        return self.store.put_execution_type(execution_type, can_add_fields=True)


def _record(execution: pb.Execution, type_name: str) -> Record:
    props = {k: v.string_value if v.WhichOneof("value") == "string_value" else v.int_value
             for k, v in execution.properties.items()}
    kind = _KINDS[type_name]
    common = {"id": execution.id, "kind": kind, "time": execution.create_time_since_epoch / 1000,
              "actor": props.get("actor", ""), "reason": props.get("reason", "")}
    if kind == "comparison":
        report = json.loads(props.get("report") or "{}")
        return Record(**common, version=props.get("candidate_version", ""),
                      baseline=props.get("baseline_version", ""), mode=props.get("mode", ""),
                      passed=bool(props.get("passed", 0)), report=report)
    return Record(**common, version=props.get("version", ""),
                  from_stage=props.get("from_stage", ""), to_stage=props.get("to_stage", ""),
                  action=props.get("action", ""),
                  evidence=json.loads(props.get("evidence") or "{}"))
