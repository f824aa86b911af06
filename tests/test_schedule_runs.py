"""Scheduled runs on the real DAG: three spans dropped one after another give exactly three
runs, a call with nothing new is skipped, a call during a run exits "already running", and
a span landing during a run waits for the next call.

Each call is a ``sightline run --when-new-span`` process, as a cron line starts it. The
oracle trainer keeps each DAG run short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from data import synth
from pipelines import configs, run_control
from pipelines.cli.scheduled import EXIT_ALREADY_RUNNING
from pipelines.reports import runs
from tests.oracle_trainer import ORACLE

pytestmark = pytest.mark.slow  # three DAG runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATTERN = "span-{SPAN}/annotations.json"


def _drop_span(data, span: int) -> None:
    synth.generate(data / f"span-{span}", 48, seed=7 + span, first_image_id=1 + 48 * (span - 1))


def _call(home: str, data, wait: bool = True):
    """One scheduler tick: ``sightline run --when-new-span`` (48-image spans are noisy:
    drift warns rather than stops)."""
    sets = [arg for item in (*ORACLE, "drift.on_drift=warn") for arg in ("--set", item)]
    command = [sys.executable, "-m", "pipelines.cli", "run", "--config", "tiny", "--home", home,
               "--data", str(data), "--pattern", PATTERN, "--when-new-span", "--json", *sets]
    if not wait:
        return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)


def _wait_until_running(home: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while (holder := run_control.running_run(home)) is None or holder.run_id is None:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.fixture(scope="module")
def ticks(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("scheduled")
    home, data = str(root / "home"), root / "data"
    results = {}
    _drop_span(data, 1)
    results["span 1"] = _call(home, data)
    results["again"] = _call(home, data)  # nothing new
    _drop_span(data, 2)
    second = _call(home, data, wait=False)
    _wait_until_running(home, second)
    results["during span 2"] = _call(home, data)
    _drop_span(data, 3)  # lands before span 2's CocoExampleGen: the run is pinned to span 2
    stdout, stderr = second.communicate(timeout=900)
    results["span 2"] = subprocess.CompletedProcess(second.args, second.returncode, stdout, stderr)
    results["span 3"] = _call(home, data)
    results["store"] = runs.connect(configs.Paths(home, "sightline-tiny").metadata)
    return results


def test_three_spans_give_exactly_three_runs_none_duplicated(ticks):
    for name in ("span 1", "span 2", "span 3"):
        assert ticks[name].returncode == 0, ticks[name].stderr[-3000:]
    summaries = [json.loads(ticks[name].stdout) for name in ("span 1", "span 2", "span 3")]
    assert [s["status"] for s in summaries] == ["succeeded"] * 3
    assert [s["examples"]["span"] for s in summaries] == [1, 2, 3]
    assert [s["trigger"] for s in summaries] == [
        {"span": n, "reason": f"new span {n}"} for n in (1, 2, 3)]
    recorded = runs.list_runs(ticks["store"])
    assert sorted(r["run_id"] for r in recorded) == sorted(s["run_id"] for s in summaries)


def test_a_call_with_nothing_new_is_skipped(ticks):
    skipped = ticks["again"]
    assert skipped.returncode == 0, skipped.stderr
    first = json.loads(ticks["span 1"].stdout)["run_id"]
    assert json.loads(skipped.stdout) == {
        "skipped": True, "span": 1, "run_id": first, "status": "succeeded",
        "message": f"nothing new: span 1 already succeeded in run {first}"}


def test_a_call_during_a_run_exits_already_running(ticks):
    refused = ticks["during span 2"]
    assert refused.returncode == EXIT_ALREADY_RUNNING, refused.stderr
    assert refused.stderr.startswith("already running: another sightline run is using the home")
    assert json.loads(ticks["span 2"].stdout)["run_id"] in refused.stderr
