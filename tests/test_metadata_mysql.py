"""Two ``sightline run`` processes, two homes, one ML Metadata store on MySQL, at once;
then a third process reads both back (runs list, runs show, lineage).

Two team members running the same pipeline against the team's store is the realistic
case: the same pipeline name, each home its own lock, outputs and pushes. Neither run
may take the other's live executions for interrupted ones (``run_record.begin``).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import pytest

from tests.mariadb import PASSWORD
from tests.oracle_trainer import ORACLE

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sightline(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _read(*args: str) -> tuple[str, str]:
    process = _sightline(*args)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return out, err


def test_two_homes_run_concurrently_into_one_store_and_a_third_reads_both(mysql_url, tmp_path):
    homes = [str(tmp_path / name) for name in ("ana", "ben")]
    began = time.monotonic()
    run = ("run", "--config", "tiny", "--metadata", mysql_url, "--json",
           *(f"--set={o}" for o in ORACLE))
    first = _sightline(*run, "--home", homes[0])
    # The second begins while the first has an execution running in the shared store.
    _wait_for_log(homes[0], first, "Going to run a new execution")
    running = [first, _sightline(*run, "--home", homes[1])]
    outputs = [p.communicate(timeout=1500) for p in running]
    took = time.monotonic() - began
    for process, (_, err) in zip(running, outputs, strict=True):
        assert process.returncode == 0, err[-4000:]
        assert "ML Metadata: MySQL sightline@127.0.0.1:" in err
    summaries = [json.loads(out) for out, _ in outputs]
    assert [s["status"] for s in summaries] == ["succeeded", "succeeded"]
    assert summaries[0]["run_id"] != summaries[1]["run_id"]
    # The second's begin left the first's live executions alone, and resumed nothing.
    assert all(s["start"] == {"resumed": False, "note": "", "attempts": 1} for s in summaries)
    assert all("interruption" not in s for s in summaries)

    reader = str(tmp_path / "reader")  # a third home: nothing of its own, the shared store
    listed, _ = _read("runs", "list", "--json", "--home", reader, "--metadata", mysql_url)
    assert sorted((r["run_id"], r["pipeline"], r["status"]) for r in json.loads(listed)) == (
        sorted((s["run_id"], "sightline-tiny", "succeeded") for s in summaries))
    for summary in summaries:
        shown, _ = _read("runs", "show", summary["run_id"], "--json", "--home", reader,
                         "--metadata", mysql_url)
        assert json.loads(shown)["components"] == summary["components"]
        lineage, _ = _read("lineage", summary["pushed"]["version"], "--run", summary["run_id"],
                           "--json", "--home", reader, "--metadata", mysql_url)
        examples = json.loads(lineage)["examples"]
        assert [e["uri"] for e in examples] == [summary["examples"]["uri"]]
        assert [e["splits"] for e in examples] == [summary["examples"]["splits"]]
    _assert_no_password(homes, [err for _, err in outputs])
    print(f"two concurrent tiny runs on MySQL: {took:.0f} s")


def _wait_for_log(home: str, process: subprocess.Popen, line: str) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for path in glob.glob(os.path.join(home, "logs", f"run-*-{process.pid}.log")):
            with open(path) as f:
                if line in f.read():
                    return
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no {line!r} in the run's log in 600 s")


def _assert_no_password(homes: list[str], consoles: list[str]) -> None:
    """TFX logs its connection config: the run logs and the consoles must not show it."""
    logs = [path for home in homes for path in glob.glob(os.path.join(home, "logs", "*.log"))]
    assert logs
    for path in logs:
        with open(path) as f:
            text = f.read()
        assert PASSWORD not in text, path
        assert "password" not in text or 'password: "***"' in text, path
    for console in consoles:
        assert PASSWORD not in console
