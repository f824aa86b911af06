"""``sightline run --when-new-span`` without the DAG: the latest span, the decision from
ML Metadata, the quick "nothing new", "already running" and a killed holder's lock.

Three real scheduled runs over three spans are in ``test_schedule_runs.py`` (slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

from pipelines import configs, run_status, schedule
from pipelines.cli.scheduled import EXIT_ALREADY_RUNNING
from tests.test_run_control import _HOLD  # holds a home's lock until killed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATTERN = "span-{SPAN}/annotations.json"
PIPELINE = "sightline-tiny"
# The CLI in a process of its own, saying at exit whether TensorFlow was ever imported.
_CLI = """
import atexit, sys
atexit.register(lambda: print("tensorflow imported:", "tensorflow" in sys.modules,
                              file=sys.stderr))
from pipelines.cli import main
main()
"""


def _spans(root, *names: str) -> str:
    for name in names:
        os.makedirs(root / name, exist_ok=True)
        (root / name / "annotations.json").write_text("{}")
    return str(root)


# --- the latest span ------------------------------------------------------------------------


def test_the_latest_span_is_the_highest_number_not_the_last_name(tmp_path):
    data = _spans(tmp_path, "span-1", "span-2", "span-10", "span-x", "other-11")
    assert schedule.latest_span(data, PATTERN) == 10
    assert schedule.latest_span(data + "/", PATTERN) == 10


def test_span_width_versions_and_wildcards_follow_tfx_patterns(tmp_path):
    data = _spans(tmp_path, "s-03/v-1", "s-03/v-2", "s-004/v-1", "s-05/v-1")
    assert schedule.latest_span(data, "s-{SPAN:2}/v-{VERSION}/annotations.json") == 5
    assert schedule.latest_span(data, "s-{SPAN}/*/annotations.json") == 5
    assert schedule.latest_span(data, "s-{SPAN:3}/v-{VERSION}/annotations.json") == 4


@pytest.mark.parametrize("pattern, words", [
    ("annotations.json", "has no '{SPAN}', so there is never a new span"),
    ("{YYYY}-{MM}-{DD}/annotations.json", "works with '{SPAN}' patterns"),
    ("missing-{SPAN}/annotations.json", "no file matches"),
])
def test_patterns_that_cannot_be_scheduled_say_why(tmp_path, pattern, words):
    with pytest.raises(schedule.ScheduleError, match=words.replace("{", r"\{")):
        schedule.latest_span(_spans(tmp_path, "span-1"), pattern)


# --- the decision, from ML Metadata -----------------------------------------------------------


class _Store:
    """A Sightline home's ML Metadata with hand-made runs (no DAG)."""

    def __init__(self, home: str):
        os.makedirs(home, exist_ok=True)
        self.path = configs.Paths(home, PIPELINE).metadata
        config = pb.ConnectionConfig()
        config.sqlite.filename_uri = self.path
        self.store = metadata_store.MetadataStore(config)
        self._types = {name: self.store.put_context_type(pb.ContextType(name=name))
                       for name in (run_status.PIPELINE_CONTEXT, run_status.RUN_CONTEXT)}
        [self._pipeline] = self.store.put_contexts(
            [pb.Context(type_id=self._types[run_status.PIPELINE_CONTEXT], name=PIPELINE)])

    def add_run(self, name: str, outcome: str, span: int | None = None,
                examples_span: int | None = None) -> None:
        run = pb.Context(type_id=self._types[run_status.RUN_CONTEXT], name=name)
        run.custom_properties[run_status.OUTCOME].string_value = outcome
        if span is not None:
            run.custom_properties[run_status.SPAN].string_value = str(span)
        [run_id] = self.store.put_contexts([run])
        self.store.put_parent_contexts([pb.ParentContext(child_id=run_id,
                                                         parent_id=self._pipeline)])
        if examples_span is not None:  # CocoExampleGen's output, as TFX records it
            self._add_examples(run_id, examples_span)

    def _add_examples(self, run_id: int, span: int) -> None:
        examples = self.store.put_artifact_type(pb.ArtifactType(
            name="Examples", properties={"span": pb.INT}))
        execution_type = self.store.put_execution_type(pb.ExecutionType(name="CocoExampleGen"))
        artifact = pb.Artifact(type_id=examples, uri="/x")
        artifact.custom_properties["span"].int_value = span  # set by ExampleGen's driver
        self.store.put_execution(
            pb.Execution(type_id=execution_type, last_known_state=pb.Execution.COMPLETE),
            [(artifact, pb.Event(type=pb.Event.OUTPUT))], self.store.get_contexts_by_id([run_id]))


@pytest.fixture
def store(tmp_path) -> _Store:
    return _Store(str(tmp_path / "home"))


def test_a_span_never_run_runs_and_says_it_is_new(store):
    assert schedule.decide(None, PIPELINE, 3).message == "new span 3"
    store.add_run("r2", run_status.SUCCEEDED, span=2)
    decision = schedule.decide(store.store, PIPELINE, 3)
    assert decision.run and decision.labels() == {run_status.SPAN: "3",
                                                   run_status.TRIGGER: "new span 3"}


@pytest.mark.parametrize("outcome", [run_status.SUCCEEDED, run_status.FAILED])
def test_a_span_that_succeeded_or_failed_is_final(store, outcome):
    store.add_run("r3", outcome, span=3)
    decision = schedule.decide(store.store, PIPELINE, 3)
    assert not decision.run
    assert decision.message == f"nothing new: span 3 already {outcome} in run r3"


@pytest.mark.parametrize("outcome", [run_status.INTERRUPTED_OUTCOME, run_status.RUNNING])
def test_an_interrupted_span_runs_again(store, outcome):
    """"running" with the lock held means its process died: interrupted too."""
    store.add_run("r3", outcome, span=3)
    decision = schedule.decide(store.store, PIPELINE, 3)
    assert decision.run
    assert decision.message == "span 3 again: its run r3 was interrupted"


def test_the_newest_run_of_the_span_decides(store):
    store.add_run("r3-failed", run_status.FAILED, span=3)
    store.add_run("r3-interrupted", run_status.INTERRUPTED_OUTCOME, span=3)
    assert schedule.decide(store.store, PIPELINE, 3).run


def test_a_run_started_by_hand_counts_by_the_span_it_ingested(store):
    """No scheduler label, or a label overtaken by a newer span: the Examples decide."""
    store.add_run("by-hand", run_status.SUCCEEDED, examples_span=3)
    store.add_run("overtaken", run_status.SUCCEEDED, span=3, examples_span=4)
    assert schedule.decide(store.store, PIPELINE, 3).last_run == "by-hand"
    assert schedule.decide(store.store, PIPELINE, 4).last_run == "overtaken"


# --- the command, in processes of its own -------------------------------------------------------


def _when_new_span(home: str, data: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", _CLI, "run", "--config", "tiny", "--home", home,
               "--data", data, "--pattern", PATTERN, "--when-new-span"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def _holder(home: str) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, home], cwd=REPO, text=True,
                              stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_nothing_new_exits_0_at_once_without_tensorflow(store, tmp_path):
    store.add_run("r3", run_status.SUCCEEDED, span=3)
    started = time.monotonic()
    result = _when_new_span(os.path.dirname(store.path), _spans(tmp_path / "d", "span-3"))
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "nothing new: span 3 already succeeded in run r3" in result.stderr
    assert "tensorflow imported: False" in result.stderr
    assert seconds < 10, seconds  # ~1 s: Python, click and ML Metadata's client
    assert not os.path.exists(os.path.join(os.path.dirname(store.path), "logs"))


def test_a_call_while_a_run_holds_the_home_exits_75_already_running(store, tmp_path):
    home = os.path.dirname(store.path)
    holder = _holder(home)
    try:
        result = _when_new_span(home, _spans(tmp_path / "d", "span-3"))
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == EXIT_ALREADY_RUNNING, result.stderr
    assert result.stderr.startswith("already running: another sightline run is using the home")
    assert f"run 2026-12-02T01:00:00.000001 of sightline-tiny, pid {holder.pid}," in result.stderr
    assert "Traceback" not in result.stderr


def test_a_killed_holder_leaves_no_stale_lock_for_the_scheduler(store, tmp_path):
    """SIGKILL gives no chance to clean up; the kernel drops the flock with the process."""
    store.add_run("r3", run_status.SUCCEEDED, span=3)
    home = os.path.dirname(store.path)
    holder = _holder(home)
    holder.kill()
    holder.wait()
    assert os.path.exists(os.path.join(home, "run.lock"))  # the file stays; the lock did not
    result = _when_new_span(home, _spans(tmp_path / "d", "span-3"))
    assert result.returncode == 0, result.stderr
    assert "nothing new: span 3 already succeeded in run r3" in result.stderr


def test_a_pattern_without_a_span_is_one_line(tmp_path):
    command = [sys.executable, "-m", "pipelines.cli", "run", "--home", str(tmp_path),
               "--data", _spans(tmp_path, "span-1"), "--when-new-span"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == ("Error: pattern 'annotations.json' has no '{SPAN}', so "
                                     "there is never a new span; use e.g. --pattern "
                                     "'span-{SPAN}/annotations.json'")


# --- pinning the span -------------------------------------------------------------------------


def test_data_span_pins_coco_example_gen_to_one_span():
    """What --when-new-span sets: a span landing during the run waits for the next call."""
    from components.coco_example_gen import CocoExampleGen

    config = configs.load("tiny", [f"data.annotations_pattern={PATTERN}", "data.span=3"])
    assert config.data.span == 3
    assert configs.load("tiny", ["data.span=none"]).data.span is None
    gen = CocoExampleGen(input_base="/data", annotations_pattern=PATTERN, span=config.data.span)
    assert json.loads(gen.exec_properties["range_config"]) == {
        "static_range": {"start_span_number": 3, "end_span_number": 3}}
    assert "range_config" not in CocoExampleGen(input_base="/d").exec_properties


def test_data_span_needs_a_span_pattern():
    with pytest.raises(ValueError, match=r"span=3; needs a span >= 0 and an annotations_pattern"):
        configs.load("tiny", ["data.span=3"])
