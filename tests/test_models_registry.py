"""The release registry on a real ML Metadata store: refusals, locking, crash order, history.

Every test works on its own copy of a home where two tiny oracle runs pushed two versions.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.registry import serving_config, store
from pipelines.registry.registry import Registry
from pipelines.registry.rules import RefusedError
from pipelines.settings import ReleaseSettings

MODEL = "sightline-tiny"
SETTINGS = ReleaseSettings(min_compare_requests=20)


@pytest.fixture
def home(two_pushes, tmp_path) -> tuple[str, list[str]]:
    source, versions = two_pushes
    copy = tmp_path / "home"
    shutil.copytree(source, copy)
    return str(copy), versions


def models(home: str, *args: str):
    return CliRunner().invoke(main, ["models", *args, "--home", home, "--config", "tiny",
                                     "--set", "release.min_compare_requests=20"])


def refused(result) -> str:
    assert result.exit_code == 1, result.output
    return result.output


def rebless(home: str, version: str, blessed: bool) -> None:
    """A later Evaluator verdict on the version's model (a re-evaluation)."""
    time.sleep(0.01)  # after everything recorded so far, to the millisecond
    registry = Registry(home, MODEL, SETTINGS)
    pushed = registry.snapshot().pushed[version]
    model = registry.mlmd.push_inputs(pushed)["model"]
    mlmd = registry.mlmd.store
    from ml_metadata.proto import metadata_store_pb2 as pb

    blessing = pb.Artifact(type_id=mlmd.get_artifact_type("ModelBlessing").id,
                           uri=f"/tmp/reevaluation-{version}", state=pb.Artifact.LIVE)
    blessing.custom_properties["current_model_id"].int_value = model.id
    blessing.custom_properties["blessed"].int_value = int(blessed)
    mlmd.put_artifacts([blessing])


PASSING = {"mode": "shadow", "requests": {"paired": 25, "candidate": 25, "baseline": 25,
                                          "candidate_shadow": 25, "candidate_primary": 0},
           "images_paired": 25, "agreement": 1.0, "classes": {}, "latency_ratio": 1.0}


def stable_then_canary(registry: Registry, v1: str, v2: str) -> None:
    """v1 stable through canary; v2 canary, approved, with passing shadow evidence."""
    registry.promote(v1, "canary", "bob", "try it")
    registry.approve(v1, "alice", "reviewed")
    registry.promote(v1, "stable", "bob", "first")
    registry.promote(v2, "canary", "bob", "next")
    registry.approve(v2, "alice", "reviewed")
    registry.record_comparison({**PASSING, "baseline": v1, "candidate": v2}, "carol")


def test_every_refusal_says_why(home):
    home, (v1, v2) = home
    assert "unknown version 123 of model sightline-tiny (pushed versions: " \
        f"{v1}, {v2})" in refused(models(home, "promote", "123", "--to", "canary"))
    assert "has no stable version to roll back from" in refused(models(home, "rollback"))
    out = refused(models(home, "promote", v1, "--to", "stable"))
    assert "is candidate, not canary: promote it to canary first" in out
    assert f"has no approval: record one with `sightline models approve {v1}" in out
    assert models(home, "promote", v1, "--to", "canary", "--as", "bob").exit_code == 0
    assert "has no approval" in refused(models(home, "promote", v1, "--to", "stable"))
    assert models(home, "approve", v1, "--reason", "report read", "--as", "alice") \
        .exit_code == 0
    rebless(home, v1, True)  # evaluated again after the approval
    assert "is older than its blessing" in refused(models(home, "promote", v1, "--to",
                                                          "stable"))
    assert models(home, "approve", v1, "--reason", "new evaluation read").exit_code == 0
    # The first stable version has nothing to be compared with.
    result = models(home, "promote", v1, "--to", "stable", "--reason", "first release")
    assert result.exit_code == 0, result.output
    assert "there is no previous stable version" in refused(models(home, "rollback"))
    assert f"version {v1} is already stable" in refused(
        models(home, "promote", v1, "--to", "canary"))
    assert models(home, "promote", v2, "--to", "canary").exit_code == 0
    assert models(home, "approve", v2, "--reason", "ok").exit_code == 0
    out = refused(models(home, "promote", v2, "--to", "stable"))
    assert f"no canary or shadow comparison of version {v2} with stable version {v1} " \
           "recorded since it became canary" in out
    rebless(home, v2, False)  # a later evaluation of the model failed its gates
    out = refused(models(home, "promote", v2, "--to", "stable"))
    assert f"version {v2} is not blessed: the Evaluator's latest evaluation" in out
    assert "no canary or shadow comparison" in out  # every broken rule, not the first
    assert "is not blessed" in refused(models(home, "approve", v2, "--reason", "x"))
    assert "has never been stable" in refused(models(home, "rollback", "--to", v2))
    assert "--reason" in refused_usage(models(home, "approve", v2))


def refused_usage(result) -> str:
    assert result.exit_code == 2, result.output
    return result.output


def test_the_history_is_append_only_in_ml_metadata_and_derives_the_stages(home):
    home, (v1, v2) = home
    registry = Registry(home, MODEL, SETTINGS)
    stable_then_canary(registry, v1, v2)
    registry.promote(v2, "stable", "bob", "better")
    registry.rollback("dave", "regression in the field")
    assert {r["version"]: r["stage"] for r in registry.versions()} == {v1: "stable",
                                                                       v2: "retired"}
    mlmd = registry.mlmd.store
    context = mlmd.get_context_by_type_and_name(store.REGISTERED_MODEL, MODEL)
    executions = sorted(mlmd.get_executions_by_context(context.id), key=lambda e: e.id)
    types = {t.id: t.name for t in mlmd.get_execution_types()}
    steps = [(types[e.type_id], e.properties["version"].string_value
              or e.properties["candidate_version"].string_value,
              e.properties["to_stage"].string_value, e.properties["actor"].string_value)
             for e in executions]
    assert steps == [
        (store.TRANSITION, v1, "canary", "bob"), (store.APPROVAL, v1, "", "alice"),
        (store.TRANSITION, v1, "stable", "bob"), (store.TRANSITION, v2, "canary", "bob"),
        (store.APPROVAL, v2, "", "alice"), (store.COMPARISON, v2, "", "carol"),
        (store.TRANSITION, v1, "retired", "bob"), (store.TRANSITION, v2, "stable", "bob"),
        (store.TRANSITION, v2, "retired", "dave"), (store.TRANSITION, v1, "stable", "dave")]
    pushed = registry.snapshot().pushed
    for execution in executions:  # each linked to the PushedModel(s) it concerns
        events = mlmd.get_events_by_execution_ids([execution.id])
        assert events and {e.artifact_id for e in events} <= {a.id for a in pushed.values()}
        assert all(e.type == e.INPUT for e in events)
    evidence = json.loads(executions[7].properties["evidence"].string_value)
    assert evidence["approval"]["actor"] == "alice"
    assert evidence["comparison"]["agreement"] == 1.0
    assert evidence["blessing"]["blessed"] is True
    # The pipeline's own lineage walk is unaffected by the registry's executions.
    from pipelines.reports import runs

    assert runs.lineage(mlmd, v2)["examples"]


def test_concurrent_promotions_cannot_both_win(home, monkeypatch):
    home, (v1, _) = home
    registry = Registry(home, MODEL, SETTINGS)
    registry.promote(v1, "canary", "bob", "")
    registry.approve(v1, "alice", "")
    snapshot = Registry.snapshot

    def slow_snapshot(self):  # widen the read-check-write window
        snap = snapshot(self)
        time.sleep(0.3)
        return snap

    monkeypatch.setattr(Registry, "snapshot", slow_snapshot)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def promote(actor: str) -> None:
        own = Registry(home, MODEL, SETTINGS)  # own connection, own lock descriptor
        barrier.wait()
        try:
            own.promote(v1, "stable", actor, "")
            outcomes.append("won")
        except RefusedError as e:
            outcomes.append(str(e))

    threads = [threading.Thread(target=promote, args=(a,)) for a in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes)[1] == "won"
    assert f"version {v1} is already stable" in sorted(outcomes)[0]
    monkeypatch.undo()
    transitions = [r for r in registry.snapshot().records if r.to_stage == "stable"]
    assert len(transitions) == 1


def test_a_crash_between_the_record_and_the_config_keeps_the_previous_labels(home, monkeypatch):
    home, (v1, v2) = home
    registry = Registry(home, MODEL, SETTINGS)
    stable_then_canary(registry, v1, v2)
    path = serving_config.path_for(home)
    before = open(path).read()

    def killed(self):
        raise SystemExit("killed between the ML Metadata record and the rename")

    monkeypatch.setattr(serving_config.StagedConfig, "commit", killed)
    with pytest.raises(SystemExit):
        registry.promote(v2, "stable", "bob", "")
    monkeypatch.undo()
    assert open(path).read() == before  # servers keep the previous labels
    assert serving_config.labels(serving_config.read(path), MODEL) == {
        "stable": int(v1), "canary": int(v2)}
    status = registry.config_status()
    assert not status["in_sync"] and status["registry"] == {"stable": int(v2)}
    listed = models(home, "list")
    assert "is behind the registry" in listed.output and "sightline models sync" in listed.output
    synced = models(home, "sync", "--json")
    assert synced.exit_code == 0, synced.output
    assert json.loads(synced.output)["in_sync"]
    assert serving_config.labels(serving_config.read(path), MODEL) == {"stable": int(v2)}
    assert not [p for p in os.listdir(f"{home}/serving") if p.endswith(".tmp")]


def test_list_and_show_json(home):
    home, (v1, v2) = home
    models(home, "promote", v1, "--to", "canary", "--as", "bob", "--reason", "try")
    listed = json.loads(models(home, "list", "--json").output)
    assert [(r["version"], r["stage"], r["blessed"]) for r in listed["versions"]] == [
        (v1, "canary", True), (v2, "candidate", True)]
    assert listed["models_config"]["in_sync"]
    shown = json.loads(models(home, "show", v1, "--json", "--no-card").output)
    assert shown["stage"] == "canary" and shown["metrics"]["mAP"] > 0
    [step] = shown["history"]
    assert (step["from_stage"], step["to_stage"], step["actor"], step["reason"]) == (
        "candidate", "canary", "bob", "try")
