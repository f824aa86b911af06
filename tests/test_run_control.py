"""Run control without the real DAG: the home's lock, a home that cannot be written, and
the run record (failures, interruptions, resume or a clean start) on a toy pipeline.

The real DAG's kill points, concurrent runs and failures are in ``test_faults.py`` (slow).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from pipelines import configs, run_control, run_status

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HOLD = """
import sys, time
from pipelines import run_control
lock = run_control.lock_home(sys.argv[1])
lock.announce("2026-12-02T01:00:00.000001", "sightline-tiny")
print("locked", flush=True)
time.sleep(600)
"""


# --- the home's lock ---------------------------------------------------------------------


def test_a_second_run_is_refused_naming_the_first(tmp_path):
    with run_control.lock_home(str(tmp_path)) as lock:
        lock.announce("2026-12-02T01:00:00.000001", "sightline-tiny")
        with pytest.raises(run_control.RunInProgress) as refused:
            run_control.lock_home(str(tmp_path))
    message = str(refused.value)
    assert str(tmp_path) in message
    assert "run 2026-12-02T01:00:00.000001 of sightline-tiny" in message
    assert f"pid {os.getpid()}," in message and "started 20" in message
    run_control.lock_home(str(tmp_path)).release()  # released with the block


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    home = str(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, home], cwd=REPO, text=True,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked"
        running = run_control.running_run(home)
        assert (running.pid, running.run_id) == (holder.pid, "2026-12-02T01:00:00.000001")
        with pytest.raises(run_control.RunInProgress, match=f"pid {holder.pid},"):
            run_control.lock_home(home)
    finally:
        holder.kill()
        holder.wait()
    assert run_control.running_run(home) is None
    run_control.lock_home(home).release()


# --- a home that cannot be written ---------------------------------------------------------


@pytest.mark.parametrize("code, words", [
    (errno.EROFS, "read-only file system (EROFS)"),
    (errno.EACCES, "permission denied (EACCES)"),
    (errno.ENOSPC, "no space left on device (ENOSPC)"),
])
def test_home_errors_name_the_path_and_the_cause(code, words):
    error = OSError(code, os.strerror(code), "/srv/home/pipelines/Trainer")
    expected = f"cannot write /srv/home/pipelines/Trainer: {words}"
    assert run_control.describe_error(error) == expected
    wrapped = RuntimeError("Beam stage failed")  # how Beam and TFX hand them on
    wrapped.__cause__ = error
    assert run_control.describe_error(wrapped) == expected


def test_other_errors_keep_their_type_and_message_but_no_traceback():
    error = ValueError("bad record [while running 'ToExample']\nTraceback (most recent call "
                       "last):\n  File \"x.py\", line 1, in f\nKeyError: 'bbox'")
    assert run_control.describe_error(error) == (
        "ValueError: bad record [while running 'ToExample'] KeyError: 'bbox'")


def _cli_run(home: str, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipelines.cli", "run", "--config", "tiny", "--home", home]
    return subprocess.run([*prefix, *command], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def _private_mount(setup: str) -> list[str]:
    """A command prefix: a mount namespace of the test's own where ``setup`` (sh) ran."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a mount of the test's own")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'{setup} && exec "$@"', "sh"]


def _assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot write "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_read_only_home_is_refused_in_one_line(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    prefix = _private_mount(f"mount --bind {home} {home} && mount -o remount,bind,ro {home}")
    _assert_one_line_error(_cli_run(str(home), prefix), str(home), "(EROFS)")


def test_a_full_home_is_refused_in_one_line(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    prefix = _private_mount(f"mount -t tmpfs -o size=256k tmpfs {home}")
    _assert_one_line_error(_cli_run(str(home), prefix), str(home), "(ENOSPC)")


def test_a_home_without_permission_is_refused_in_one_line(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o555)
    prefix = []
    if os.geteuid() == 0:
        # Root writes anyway. In a user namespace of its own (no uid mapped) the process
        # keeps its files' owner but loses the capability to override their mode bits.
        if not shutil.which("unshare"):
            pytest.skip("needs unshare to drop root's override of file modes")
        prefix = ["unshare", "--user"]
    _assert_one_line_error(_cli_run(str(home), prefix), str(home), "(EACCES)")


# --- the run record, on a toy pipeline ----------------------------------------------------


@pytest.fixture
def toy(tmp_path) -> tuple[str, str]:
    """(home, data root) for toy runs."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.txt").write_text("three examples")
    return str(tmp_path / "home"), str(data)


def _store(home: str):
    from pipelines.reports import runs

    return runs.connect(configs.Paths(home, "toy").metadata)


def _killed_in_train(home: str, data: str) -> None:
    from tests import toy_pipeline

    result = subprocess.run([sys.executable, "-m", "tests.toy_pipeline", home, data], cwd=REPO,
                            env={**os.environ, toy_pipeline.KILL_ENV: "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


def test_a_failed_execution_records_its_exception(toy):
    from pipelines.reports import runs
    from tests import toy_pipeline

    with pytest.raises(run_control.RunFailed) as failed:
        toy_pipeline.run(*toy, "raise")
    reason = "ValueError: toy trainer: batch_size=1000 exceeds the 3 training examples"
    assert failed.value.reason == reason
    summary = runs.summarize(_store(toy[0]), failed.value.run_id)
    assert summary["status"] == "failed"
    assert summary["failure"] == {"component": "Train", "error": reason}


def test_a_killed_run_shows_interrupted_and_the_next_run_resumes_it(toy):
    from pipelines.reports import runs
    from tests import toy_pipeline

    home, data = toy
    _killed_in_train(home, data)
    [killed] = runs.list_runs(_store(home), running=None)
    assert killed["status"] == "interrupted"
    shown = runs.summarize(_store(home), killed["run_id"])
    assert [(c["component"], c["status"]) for c in shown["components"]] == [
        ("Ingest", "complete"), ("Train", "interrupted")]
    before = {c["component"]: c["execution_id"] for c in shown["components"]}

    start = toy_pipeline.run(home, data)
    assert (start.resumed, start.run_id, start.reused) == (True, killed["run_id"], ("Ingest",))
    assert start.message == (f"Resuming run {start.run_id}: it was interrupted during Train; "
                             "keeping its 1 completed step, running the rest")
    summary = runs.summarize(_store(home), start.run_id)
    assert summary["status"] == "succeeded"
    assert summary["start"] == {"resumed": True, "note": start.note, "attempts": 2}
    ids = {c["component"]: c["execution_id"] for c in summary["components"]}
    assert ids.keys() == {"Ingest", "Train", "Push"} and ids.items() >= before.items()
    train = next(c for c in summary["components"] if c["component"] == "Train")
    assert train["status"] == "complete" and "stopped before it finished" in \
        train["interrupted_before"]
    model = os.listdir(summary["model"]["uri"])  # the same execution's output, retried
    assert toy_pipeline.RETRY_FILE in model  # its ModelRun (the training backup) was kept
    assert toy_pipeline.PARTIAL_FILE not in model  # and its half-written model cleared


def test_a_run_on_changed_data_starts_afresh_and_says_why(toy):
    from ml_metadata.proto import metadata_store_pb2

    from pipelines.reports import runs
    from tests import toy_pipeline

    home, data = toy
    _killed_in_train(home, data)
    [killed] = runs.list_runs(_store(home))
    with open(os.path.join(data, "data.txt"), "a") as f:
        f.write(", and one more")
    start = toy_pipeline.run(home, data)
    assert not start.resumed and start.run_id != killed["run_id"]
    assert start.message == (
        f"Starting new run {start.run_id}: run {killed['run_id']} was interrupted during Train "
        "but is not resumed: the settings or the data changed since")
    statuses = {r["run_id"]: r["status"] for r in runs.list_runs(_store(home))}
    assert statuses == {killed["run_id"]: "interrupted", start.run_id: "succeeded"}
    store = _store(home)
    [train] = [e for e in store.get_executions_by_context(
        runs.find_run(store, killed["run_id"]).id) if run_status.INTERRUPTED in
        e.custom_properties]
    assert train.last_known_state == metadata_store_pb2.Execution.CANCELED  # not left RUNNING


def test_the_fingerprint_covers_the_pipeline_and_its_data(toy, tmp_path):
    from tfx.dsl.compiler import compiler

    from pipelines import run_record
    from tests import toy_pipeline

    home, data = toy
    paths = configs.Paths(home, "toy")

    def fingerprint(behaviour: str = "ok") -> str:
        ir = compiler.Compiler().compile(toy_pipeline.create(paths, data, behaviour))
        return run_record.fingerprint(ir, data)

    first = fingerprint()
    assert fingerprint() == first
    assert fingerprint("raise") != first
    (tmp_path / "data" / "more.txt").write_text("x")
    assert fingerprint() != first
    ir = compiler.Compiler().compile(toy_pipeline.create(paths, "gs://bucket/data"))
    assert run_record.fingerprint(ir, "gs://bucket/data") is None  # never resumed


def test_sightline_run_prints_its_own_run_even_when_another_is_newer(toy, monkeypatch):
    """It printed the newest run in ML Metadata, whichever process made it."""
    from click.testing import CliRunner
    from tfx import v1 as tfx
    from tfx.orchestration import metadata
    from tfx.orchestration.portable.mlmd import context_lib

    from pipelines import local_runner
    from pipelines.cli import main
    from tests import toy_pipeline

    home, data = toy
    monkeypatch.setattr(local_runner, "build",
                        lambda config, paths, data_root: toy_pipeline.create(paths, data_root))
    real_run = tfx.orchestration.LocalDagRunner.run_with_ir

    def run_while_another_starts(self, ir, *args, **kwargs):
        real_run(self, ir, *args, **kwargs)
        connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
            configs.Paths(home, "toy").metadata)
        with metadata.Metadata(connection) as m:  # as another process's run would
            pipeline = context_lib.register_context_if_not_exists(m, "pipeline", "toy")
            context_lib.register_context_if_not_exists(m, "pipeline_run", "another-run",
                                                       parent_contexts=[pipeline])

    monkeypatch.setattr(tfx.orchestration.LocalDagRunner, "run_with_ir", run_while_another_starts)
    result = CliRunner().invoke(main, ["run", "--config", "tiny", "--data", data, "--home", home,
                                       "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run_id"] != "another-run"
    assert [c["component"] for c in summary["components"]] == ["Ingest", "Train", "Push"]
