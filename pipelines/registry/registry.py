"""One model's release registry: read its versions and history, check and record changes.

Writers are serialized by an exclusive ``fcntl.flock`` on ``<home>/.registry.lock`` held
around the whole read-check-write: the state is read again under the lock, so of two
concurrent promotions the second is checked against the first's result (it cannot also
win: e.g. "already stable", or "not canary" once the canary moved on).

Write order, and why. A change is recorded in ML Metadata first (all its executions in
one transaction), then ``models.config`` is replaced (``os.replace`` of a fully written
temporary file). ML Metadata is the registry's source of truth and the config file is
derived from it, so:

- dying before the ML Metadata transaction changes nothing (a staged temporary file is
  left, never read by a server);
- dying between the transaction and the rename leaves the previous labels in force in
  the file and on every server reading it, while the registry already records the
  change; ``models list``/``show`` then report the file as behind, and the next registry
  write (or ``sightline models sync``) writes the file from the records.

The opposite order could leave servers on labels the registry never recorded, with no
record of who moved them or why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

from pipelines.registry import rules, serving_config
from pipelines.registry.rules import CANARY, CANDIDATE, RETIRED, STABLE, RefusedError
from pipelines.registry.store import (
    APPROVAL,
    COMPARISON,
    TRANSITION,
    NewRecord,
    Record,
    RegistryStore,
    connect,
)
from pipelines.settings import ReleaseSettings

LOCK_FILE = ".registry.lock"
LOCK_TIMEOUT_SECONDS = 60.0
SAVED_MODEL_FILE = "saved_model.pb"
RELEASE_FILE = os.path.join("assets.extra", "release.json")
HPARAMS_FILE = os.path.join("assets.extra", "hparams.json")


class RegistryBusyError(RuntimeError):
    """Another registry command held the lock for longer than the timeout."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The registry as of one read: pushed versions, records, stages derived from them."""

    pushed: dict[str, pb.Artifact]
    records: list[Record]
    stages: dict[str, str]

    def holder(self, stage: str) -> str | None:
        """The version currently in ``stage`` (stable and canary have at most one)."""
        holders = [r.version for r in self.records
                   if r.kind == "transition" and self.stages.get(r.version) == stage
                   and r.to_stage == stage]
        return holders[-1] if holders else None

    @property
    def stable(self) -> str | None:
        return self.holder(STABLE)

    @property
    def canary(self) -> str | None:
        return self.holder(CANARY)


def derive_stages(versions: list[str], records: list[Record]) -> dict[str, str]:
    """Each version's stage: its newest transition's ``to_stage``, else candidate."""
    stages = dict.fromkeys(versions, CANDIDATE)
    for record in records:
        if record.kind == "transition" and record.version in stages:
            stages[record.version] = record.to_stage
    return stages


class Registry:
    """The release registry of one model (a pipeline's pushes) in a Sightline home."""

    def __init__(self, home: str, model: str, settings: ReleaseSettings | None = None,
                 store: metadata_store.MetadataStore | None = None,
                 metadata: str | None = None):
        """``metadata``: the store's URL (``RunConfig.metadata``); None for the home's."""
        from pipelines import metadata_store as stores

        self.home = home
        self.model = model
        self.settings = settings or ReleaseSettings()
        self.config_path = serving_config.path_for(home)
        self.lock_path = os.path.join(home, LOCK_FILE)
        self.mlmd = RegistryStore(store or connect(stores.connection_config(metadata, home)),
                                  model)

    # -------------------------------------------------------------------------- reading

    def snapshot(self) -> Snapshot:
        pushed = self.mlmd.pushed()
        records = self.mlmd.records()
        return Snapshot(pushed, records, derive_stages(list(pushed), records))

    def require(self, snap: Snapshot, version: str, action: str) -> pb.Artifact:
        """The PushedModel of ``version``, or a refusal naming the known versions."""
        version = str(version)
        if version not in snap.pushed:
            known = ", ".join(snap.pushed) or "none yet"
            raise RefusedError(action, [f"unknown version {version} of model {self.model} "
                                        f"(pushed versions: {known})"])
        return snap.pushed[version]

    def facts(self, snap: Snapshot, version: str) -> rules.VersionFacts:
        pushed = snap.pushed[version]
        path = pushed.custom_properties["pushed_destination"].string_value
        inputs = self.mlmd.push_inputs(pushed)
        blessing = None
        if "model" in inputs:
            blessing = self.mlmd.latest_blessing(inputs["model"].id)
        blessing = blessing or inputs.get("model_blessing")
        approvals = [r for r in snap.records if r.kind == "approval" and r.version == version]
        to_canary = [r for r in snap.records if r.kind == "transition"
                     and r.version == version and r.to_stage == CANARY]
        stage = snap.stages[version]
        return rules.VersionFacts(
            version=version, stage=stage, path=path,
            on_disk=os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)),
            blessed=bool(blessing and blessing.custom_properties["blessed"].int_value == 1),
            blessing_id=blessing.id if blessing else None,
            blessing_time=blessing.create_time_since_epoch / 1000 if blessing else None,
            approval=approvals[-1] if approvals else None,
            canary_record=to_canary[-1] if to_canary and stage == CANARY else None)

    def versions(self) -> list[dict[str, Any]]:
        """Every pushed version, oldest first, with its stage and headline facts."""
        snap = self.snapshot()
        return [self._version_row(snap, v) for v in snap.pushed]

    def version(self, version: str) -> dict[str, Any]:
        """One version's row plus its history (``show``)."""
        snap = self.snapshot()
        self.require(snap, version, f"show version {version}")
        row = self._version_row(snap, str(version))
        row["history"] = [r.to_json() for r in self.history(snap, str(version))]
        return row

    def _version_row(self, snap: Snapshot, version: str) -> dict[str, Any]:
        facts = self.facts(snap, version)
        pushed = snap.pushed[version]
        release = read_json(os.path.join(facts.path, RELEASE_FILE))
        approval = facts.approval
        return {
            "model": self.model,
            "version": version,
            "stage": facts.stage,
            "blessed": facts.blessed,
            "pushed_at": pushed.create_time_since_epoch / 1000,
            "run_id": self.mlmd.run_id(pushed),
            "path": facts.path,
            "on_disk": facts.on_disk,
            "metrics": release.get("metrics", {}),
            "approved": bool(approval and (facts.blessing_time is None
                                           or approval.time > facts.blessing_time)),
            "approval": approval.to_json() if approval else None,
            "pushed_model_artifact_id": pushed.id,
        }

    @staticmethod
    def history(snap: Snapshot, version: str | None = None) -> list[Record]:
        """Records of ``version`` (as either side of a comparison), or all, oldest first."""
        return [r for r in snap.records
                if version is None or r.version == version or r.baseline == version]

    def config_status(self, snap: Snapshot | None = None) -> dict[str, Any]:
        """Whether ``models.config`` carries the labels the registry records."""
        snap = snap or self.snapshot()
        wanted = {label: int(v) for label, v in ((STABLE, snap.stable), (CANARY, snap.canary))
                  if v is not None}
        try:
            found = serving_config.labels(serving_config.read(self.config_path), self.model)
        except ValueError as e:
            return {"path": self.config_path, "in_sync": False, "error": str(e),
                    "registry": wanted}
        return {"path": self.config_path, "in_sync": found == wanted, "registry": wanted,
                "file": found}

    def class_names(self, version: str) -> list[str]:
        """The version's class names (label i+1 is names[i]), from its hparams.json."""
        path = self.snapshot().pushed[str(version)].custom_properties[
            "pushed_destination"].string_value
        return list(read_json(os.path.join(path, HPARAMS_FILE)).get("class_names", []))

    def log_prefix(self) -> str:
        """Where this model's request logs go: models.config's logging_config, or the
        default the registry writes into a new entry."""
        try:
            current = serving_config.entry(serving_config.read(self.config_path), self.model)
        except ValueError:
            current = None
        if current is not None and current.logging_config.log_collector_config.filename_prefix:
            return current.logging_config.log_collector_config.filename_prefix
        return os.path.join(self.home, "logs", "requests", self.model)

    # -------------------------------------------------------------------------- writing

    def approve(self, version: str, actor: str, reason: str) -> list[int]:
        """Records an approval of ``version`` (it must be blessed)."""
        version = str(version)
        action = f"approve version {version}"

        def plan(snap: Snapshot) -> list[NewRecord]:
            pushed = self.require(snap, version, action)
            facts = self.facts(snap, str(version))
            _refuse_if(action, rules.for_approval(facts))
            return [NewRecord(APPROVAL, {
                "model": self.model, "version": facts.version, "actor": actor, "reason": reason,
                "evidence": json.dumps(_blessing_evidence(facts))},
                (("pushed_model", pushed.id),))]

        return self._change(plan)

    def promote(self, version: str, to: str, actor: str, reason: str) -> list[int]:
        """``version`` to canary or stable, if the rules allow; the displaced version moves
        too (a replaced canary back to candidate, a replaced stable to retired)."""
        version = str(version)
        if to not in rules.PROMOTION_TARGETS:
            raise ValueError(f"promote to one of {rules.PROMOTION_TARGETS}, not {to!r}")
        action = f"promote version {version} to {to}"

        def plan(snap: Snapshot) -> list[NewRecord]:
            pushed = self.require(snap, version, action)
            facts = self.facts(snap, str(version))
            evidence = _blessing_evidence(facts)
            records = []
            if to == CANARY:
                _refuse_if(action, rules.for_canary(facts))
                displaced, displaced_to = snap.canary, CANDIDATE
            else:
                stable = snap.stable
                comparison = self._latest_comparison(snap, stable, facts.version)
                _refuse_if(action, rules.for_stable(facts, stable, comparison, self.settings))
                if facts.approval is not None:
                    evidence["approval"] = facts.approval.to_json()
                if stable is None:
                    evidence["comparison"] = "not required: no stable version to compare with"
                else:
                    evidence["comparison"] = {"id": comparison.id, **_report_summary(
                        comparison.report)}
                evidence["settings"] = dataclasses.asdict(self.settings)
                displaced, displaced_to = stable, RETIRED
            if displaced is not None and displaced != facts.version:
                records.append(self._transition(
                    snap, displaced, displaced_to, "replace", actor,
                    f"replaced as {to} by version {facts.version}",
                    {"replaced_by": facts.version}))
            records.append(self._transition(snap, facts.version, to, "promote", actor, reason,
                                            evidence, pushed))
            return records

        return self._change(plan)

    def rollback(self, actor: str, reason: str, to: str | None = None) -> list[int]:
        """Puts the previous stable version (or ``to``) back; the current one is retired."""
        action = "roll back" + (f" to version {to}" if to else "")

        def plan(snap: Snapshot) -> list[NewRecord]:
            current = snap.stable
            if current is None:
                raise RefusedError(action, [f"model {self.model} has no stable version to "
                                            "roll back from"])
            target = str(to) if to is not None else self._previous_stable(snap, current)
            if to is not None:
                self.require(snap, target, action)
                problems = []
                if target == current:
                    problems.append(f"version {target} is the stable version already")
                elif not any(r.kind == "transition" and r.version == target
                             and r.to_stage == STABLE for r in snap.records):
                    problems.append(f"version {target} has never been stable: promote it "
                                    "through canary instead")
                _refuse_if(action, problems)
            elif target is None:
                raise RefusedError(action, [
                    f"there is no previous stable version of model {self.model} to roll back "
                    f"to (version {current} is the only one that has been stable)"])
            facts = self.facts(snap, target)
            _refuse_if(action, rules.disk_problems(facts))
            evidence = {"rolled_back": current, **_blessing_evidence(facts)}
            return [
                self._transition(snap, current, RETIRED, "rollback", actor, reason,
                                 {"replaced_by": target}),
                self._transition(snap, target, STABLE, "rollback", actor, reason, evidence),
            ]

        return self._change(plan)

    def retire(self, version: str, actor: str, reason: str) -> list[int]:
        """Takes a candidate or canary out of consideration (and a canary out of serving)."""
        version = str(version)
        action = f"retire version {version}"

        def plan(snap: Snapshot) -> list[NewRecord]:
            self.require(snap, version, action)
            stage = snap.stages[str(version)]
            if stage == STABLE:
                raise RefusedError(action, [
                    f"version {version} is stable: roll back (`sightline models rollback`) "
                    "or promote another version instead"])
            if stage == RETIRED:
                raise RefusedError(action, [f"version {version} is already retired"])
            return [self._transition(snap, str(version), RETIRED, "retire", actor, reason, {})]

        return self._change(plan)

    def record_comparison(self, report: dict[str, Any], actor: str, reason: str = ""
                          ) -> list[int]:
        """Stores a ``compare`` report as evidence, checked against today's settings."""
        baseline, candidate = str(report["baseline"]), str(report["candidate"])
        action = f"record the comparison of versions {baseline} and {candidate}"

        def plan(snap: Snapshot) -> list[NewRecord]:
            base = self.require(snap, baseline, action)
            cand = self.require(snap, candidate, action)
            problems = rules.check_report(report, self.settings)
            stored = {**report, "problems": problems}
            return [NewRecord(COMPARISON, {
                "model": self.model, "baseline_version": baseline,
                "candidate_version": candidate, "mode": report["mode"], "actor": actor,
                "reason": reason, "report": json.dumps(stored, sort_keys=True),
                "passed": int(not problems)},
                (("baseline", base.id), ("candidate", cand.id)))]

        return self._change(plan)

    def sync(self) -> dict[str, Any]:
        """Writes models.config from the records (after a crash between the two)."""
        self._change(lambda snap: [])
        return self.config_status()

    # -------------------------------------------------------------------------- helpers

    @staticmethod
    def _latest_comparison(snap: Snapshot, baseline: str | None, candidate: str
                           ) -> Record | None:
        found = [r for r in snap.records if r.kind == "comparison" and r.version == candidate
                 and r.baseline == baseline]
        return found[-1] if found else None

    @staticmethod
    def _previous_stable(snap: Snapshot, current: str) -> str | None:
        """The newest version stable before the current one's stint, not since rolled back."""
        transitions = [r for r in snap.records if r.kind == "transition"]
        rolled_back = {r.version for r in transitions
                       if r.action == "rollback" and r.from_stage == STABLE}
        stints = [r for r in transitions if r.to_stage == STABLE]
        last = max((i for i, r in enumerate(stints) if r.version == current), default=None)
        earlier = stints[:last] if last is not None else stints
        for record in reversed(earlier):
            if record.version != current and record.version not in rolled_back \
                    and record.version in snap.pushed:
                return record.version
        return None

    def _transition(self, snap: Snapshot, version: str, to: str, action: str, actor: str,
                    reason: str, evidence: dict[str, Any],
                    pushed: pb.Artifact | None = None) -> NewRecord:
        pushed = pushed or snap.pushed[version]
        return NewRecord(TRANSITION, {
            "model": self.model, "version": version, "from_stage": snap.stages[version],
            "to_stage": to, "action": action, "actor": actor, "reason": reason,
            "evidence": json.dumps(evidence, sort_keys=True, default=str)},
            (("pushed_model", pushed.id),))

    def _change(self, plan: Callable[[Snapshot], list[NewRecord]]) -> list[int]:
        """Under the lock: read, plan (which raises RefusedError), record, write the config."""
        with self._locked():
            snap = self.snapshot()
            new = plan(snap)
            after = self._apply(snap, new)
            current = serving_config.read(self.config_path)
            wanted = self._config_for(after, current)
            staged = None
            missing = not os.path.exists(self.config_path)
            if wanted != current or (missing and wanted.model_config_list.config):
                staged = serving_config.StagedConfig(self.config_path, wanted)
            try:
                ids = self.mlmd.put(new) if new else []
            except BaseException:
                if staged is not None:
                    staged.discard()
                raise
            if staged is not None:
                staged.commit()
            return ids

    def _apply(self, snap: Snapshot, new: list[NewRecord]) -> Snapshot:
        """The snapshot as it will be once ``new`` is recorded (ids past every record)."""
        records = list(snap.records)
        next_id = (records[-1].id if records else 0) + 1
        for offset, record in enumerate(new):
            if record.type_name == TRANSITION:
                p = record.properties
                records.append(Record(id=next_id + offset, kind="transition",
                                      time=time.time(), version=str(p["version"]),
                                      actor=str(p["actor"]), reason=str(p["reason"]),
                                      from_stage=str(p["from_stage"]),
                                      to_stage=str(p["to_stage"]), action=str(p["action"])))
        return Snapshot(snap.pushed, records, derive_stages(list(snap.pushed), records))

    def _config_for(self, snap: Snapshot, current: serving_config.ServerConfig
                    ) -> serving_config.ServerConfig:
        stable, canary = snap.stable, snap.canary
        holder = stable or canary
        base_path = os.path.dirname(snap.pushed[holder].custom_properties[
            "pushed_destination"].string_value) if holder else ""
        return serving_config.with_model(
            current, self.model, base_path, int(stable) if stable else None,
            int(canary) if canary else None, self.log_prefix(),
            self.settings.request_log_sampling_rate)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.home, exist_ok=True)
        with open(self.lock_path, "a+") as f:
            deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        f.seek(0)
                        holder = f.read().strip() or "unknown"
                        raise RegistryBusyError(
                            f"another `sightline models` command (pid {holder}) has held "
                            f"{self.lock_path} for {LOCK_TIMEOUT_SECONDS:.0f} s; try again "
                            "when it has finished") from None
                    time.sleep(0.05)
            try:
                f.seek(0)
                f.truncate()
                f.write(str(os.getpid()))
                f.flush()
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _refuse_if(action: str, problems: list[str]) -> None:
    if problems:
        raise RefusedError(action, problems)


def _blessing_evidence(facts: rules.VersionFacts) -> dict[str, Any]:
    return {"blessing": {"artifact_id": facts.blessing_id, "blessed": facts.blessed,
                         "time": facts.blessing_time}}


def _report_summary(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("mode", "requests", "images_paired", "agreement", "latency_ratio")
    return {k: report.get(k) for k in keep}


def read_json(path: str) -> dict[str, Any]:
    """A JSON file's object, or {} when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
