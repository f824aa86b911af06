"""Real ``sightline run`` processes on the tiny config: failures say why, a run killed at
any point is shown as interrupted and resumed by the next, two runs never share a home.

Every test here runs the real DAG (slow). The same logic on a toy pipeline, and the
home's lock and write checks, are tested fast in ``test_run_control.py``.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from pipelines import configs, run_control
from pipelines.cli import main
from pipelines.reports import runs

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = "sightline-tiny"
NO_EDGE = ("--set", "edge.enabled=false")  # where the edge branch is not the subject
# Where each run of the chain is killed, in the DAG's order (each run resumes the last):
# the component's "is running" line, then a line from inside it.
KILL_POINTS = (
    ("CocoExampleGen", "Going to run a new execution"),
    ("Trainer", "Training on "),
    ("Evaluator", "Going to run a new execution"),
    ("EdgePusher", "PAUSED "),  # staged, not yet renamed into place (tests/paused_push.py)
    ("Pusher", "PAUSED "),
)


class Run:
    """A ``sightline run --config tiny`` process in the background, its log followed."""

    def __init__(self, home: str, *args: str, pause_in: str | None = None):
        """``pause_in``: "serving" or "edge" stops the run inside that push for good."""
        self.home = home
        beside = os.path.join(os.path.dirname(home), f"console-{time.monotonic_ns()}")
        self._out = open(beside + ".stdout", "w+")  # noqa: SIM115 (open while it runs)
        self._err = open(beside + ".stderr", "w+")  # noqa: SIM115
        command = ["tests.paused_push", pause_in] if pause_in else ["pipelines.cli"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", *command, "run", "--config", "tiny", "--home", home, *args],
            cwd=REPO, stdout=self._out, stderr=self._err, text=True)

    @property
    def log(self) -> str:
        paths = glob.glob(os.path.join(self.home, "logs", f"run-*-{self.process.pid}.log"))
        if not paths:
            return ""
        with open(paths[0]) as f:
            return f.read()

    def wait_for(self, *lines: str, timeout: float = 900) -> None:
        """Until the log shows ``lines`` in this order (fails if the process ends first)."""
        deadline = time.monotonic() + timeout
        while True:
            at, text = 0, self.log
            for line in lines:
                at = text.find(line, at)
                if at < 0:
                    break
            if at >= 0:
                return
            assert self.process.poll() is None, f"ended before {lines}:\n{self.console}"
            assert time.monotonic() < deadline, f"no {lines} in {timeout} s"
            time.sleep(0.2)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def finish(self, timeout: float = 1200) -> int:
        return self.process.wait(timeout)

    @property
    def console(self) -> str:
        self._err.seek(0)
        return self._err.read()

    @property
    def stdout(self) -> str:
        self._out.seek(0)
        return self._out.read()


def _cli(home: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--home", home])
    return result.exit_code, result.output


def _summary(home: str, run_id: str = "latest") -> dict:
    code, output = _cli(home, "runs", "show", run_id, "--json")
    assert code == 0, output
    return json.loads(output)


def _versions_missing_their_model(home: str) -> list[str]:
    """All-digit version directories a server or an edge sync would load, without a model."""
    paths = configs.Paths(home, PIPELINE)
    missing = []
    for base, model in ((paths.serving_model_dir, "saved_model.pb"),
                        (paths.edge_bundle_dir, "model.tflite")):
        for name in os.listdir(base) if os.path.isdir(base) else ():
            if name.isdigit() and not os.path.isfile(os.path.join(base, name, model)):
                missing.append(os.path.join(base, name))
    return missing


# --- failures say why -------------------------------------------------------------------


def test_a_failing_trainer_says_why_on_the_console_in_mlmd_and_in_the_report(tmp_path):
    home = str(tmp_path / "home")
    run = Run(home, "--set", "train.batch_size=1000", *NO_EDGE)  # only the Trainer can tell
    assert run.finish() == 1, run.console
    reason = re.compile(r"ValueError: batch_size=1000 exceeds the \d+ training examples")
    assert re.search(r"Trainer failed: " + reason.pattern, run.console), run.console
    assert "Traceback" not in run.console
    assert "Traceback" in run.log  # the traceback is for the log
    summary = _summary(home)
    assert summary["status"] == "failed" and summary["failure"]["component"] == "Trainer"
    assert reason.fullmatch(summary["failure"]["error"].split("; ")[0]), summary["failure"]
    code, shown = _cli(home, "runs", "show")
    assert code == 0 and reason.search(shown.replace("\n", "")), shown
    code, output = _cli(home, "report")
    assert code == 1 and "stopped at Trainer: ValueError: batch_size=1000" in output


def test_a_failing_example_gen_says_why(tmp_path):
    data = tmp_path / "coco"
    data.mkdir()
    (data / "annotations.json").write_text('{"images": [')  # cut off mid-write
    home = str(tmp_path / "home")
    run = Run(home, "--data", str(data), *NO_EDGE)
    assert run.finish() == 1, run.console
    failure = _summary(home)["failure"]
    assert failure["component"] == "CocoExampleGen"
    assert failure["error"].startswith(f"CocoFormatError: {data}/annotations.json: not valid "
                                       "JSON"), failure
    assert f"CocoExampleGen failed: {failure['error']}" in run.console


# --- one run per home ---------------------------------------------------------------------


def test_a_second_run_on_a_home_is_refused_at_once_naming_the_first(tmp_path):
    home = str(tmp_path / "home")
    first = Run(home, *NO_EDGE)
    try:
        first.wait_for("Component CocoExampleGen is running.")
        [running] = json.loads(_cli(home, "runs", "list", "--json")[1])
        assert running["status"] == "running"
        started = time.monotonic()
        second = Run(home, *NO_EDGE)
        assert second.finish(timeout=60) == 1
        assert time.monotonic() - started < 30  # before TensorFlow is even imported
        refusal = second.console
        assert "another sightline run is using the home" in refusal
        assert f"run {running['run_id']} of {PIPELINE}, pid {first.process.pid}, started " \
            in refusal
        assert "Traceback" not in refusal
        store = runs.connect(configs.Paths(home, PIPELINE).metadata)
        assert [r["run_id"] for r in runs.list_runs(store)] == [running["run_id"]]
    finally:
        first.kill()
    assert run_control.running_run(home) is None  # SIGKILL left no stale lock
    [killed] = json.loads(_cli(home, "runs", "list", "--json")[1])
    assert killed["status"] == "interrupted"


# --- kill points ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed_chain(tmp_path_factory) -> dict:
    """One tiny run killed at each of KILL_POINTS in turn, each resuming the run before;
    then a run to the end. What each kill left behind, and each run's console."""
    home = str(tmp_path_factory.mktemp("killed") / "home")
    kills = []
    for component, inside in KILL_POINTS:
        run = Run(home, pause_in={"Pusher": "serving", "EdgePusher": "edge"}.get(component))
        run.wait_for(f"Component {component} is running.", inside)
        run.kill()
        kills.append({
            "component": component,
            "console": run.console,
            "runs": json.loads(_cli(home, "runs", "list", "--json")[1]),
            "summary": _summary(home),
            "unloadable": _versions_missing_their_model(home),
            "stages": glob.glob(os.path.join(home, "*", PIPELINE, ".*.incomplete")),
        })
    last = Run(home)
    code = last.finish()
    return {"home": home, "kills": kills, "last": last, "code": code}


@pytest.mark.parametrize("point", range(len(KILL_POINTS)), ids=[c for c, _ in KILL_POINTS])
def test_a_killed_run_is_shown_interrupted_never_complete(killed_chain, point):
    kill = killed_chain["kills"][point]
    [run] = kill["runs"]  # every run of the chain resumed the first
    assert run["status"] == "interrupted"
    summary = kill["summary"]
    assert summary["status"] == "interrupted"
    states = {c["component"]: c["status"] for c in summary["components"]}
    assert states[kill["component"]] == "interrupted"
    assert set(states.values()) <= {"complete", "interrupted"}
    assert summary["interruption"]["component"] == kill["component"]


@pytest.mark.parametrize("point", range(len(KILL_POINTS)), ids=[c for c, _ in KILL_POINTS])
def test_no_half_pushed_version_is_ever_loadable(killed_chain, point):
    kill = killed_chain["kills"][point]
    assert kill["unloadable"] == []
    if kill["component"] in ("Pusher", "EdgePusher"):
        assert len(kill["stages"]) == 1  # killed inside the push: only its stage exists


def test_each_next_run_resumes_the_killed_one_and_says_so(killed_chain):
    kills, last = killed_chain["kills"], killed_chain["last"]
    run_id = kills[0]["runs"][0]["run_id"]
    assert f"Starting new run {run_id}" in kills[0]["console"]
    for before, kill in itertools.pairwise(kills):
        assert f"Resuming run {run_id}: it was interrupted during {before['component']}; " \
            in kill["console"], kill["console"]
    assert killed_chain["code"] == 0, last.console
    assert f"Resuming run {run_id}: it was interrupted during Pusher; " in last.console
    summary = _summary(killed_chain["home"], run_id)
    assert summary["status"] == "succeeded"
    assert summary["start"]["resumed"] and summary["start"]["attempts"] == len(KILL_POINTS) + 1
    assert all(c["status"] == "complete" for c in summary["components"])
    # Components completed before a kill were kept, not run again; a killed one was
    # retried as the same execution (so the Trainer could resume from its backup).
    for kill in kills:
        for component in kill["summary"]["components"]:
            assert component["execution_id"] in {c["execution_id"] for c in
                                                  summary["components"]}
    resumed = {c["component"] for c in summary["components"] if "interrupted_before" in c}
    assert resumed == {component for component, _ in KILL_POINTS}


def test_the_resumed_run_pushes_whole_versions_and_no_stage_is_left(killed_chain):
    home = killed_chain["home"]
    summary = _summary(home)
    assert summary["pushed"]["pushed"] and summary["edge_push"]["pushed"]
    assert _versions_missing_their_model(home) == []
    assert glob.glob(os.path.join(home, "*", PIPELINE, ".*.incomplete")) == []
    assert "Removed an unfinished push" in killed_chain["last"].console
