"""Acceptance tests for ``trainer.train`` in real processes (``tests.train_worker``).

Multi-worker training, SIGKILL + resume and seed determinism each need a fresh TF
runtime (TF_CONFIG is read once; collectives must be configured before any op runs), so
every run is a subprocess and the tests compare what the workers report.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.trainer_fixture import make_example, write_split

REPO = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 300  # per worker; a healthy run takes ~20-35 s on the 2-core dev box
POLL_S = 0.5


@dataclasses.dataclass
class Worker:
    """One ``tests.train_worker`` process; its report and log files sit in ``tmp_path``."""

    process: subprocess.Popen
    report: pathlib.Path
    log: pathlib.Path
    started: float

    def time_left(self) -> float:
        return self.started + TIMEOUT_S - time.monotonic()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text().splitlines()[-lines:])


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(train, eval) globs: 24 and 8 examples, one GZIP file each as ExampleGen writes."""
    root = tmp_path_factory.mktemp("splits")
    rng = np.random.default_rng(0)
    examples = [make_example(rng, i) for i in range(32)]
    return (write_split(str(root / "Split-train"), examples[:24]),
            write_split(str(root / "Split-eval"), examples[24:]))


@pytest.fixture
def launch(splits: tuple[str, str], tmp_path: pathlib.Path
           ) -> collections.abc.Iterator[collections.abc.Callable[..., Worker]]:
    """Starts workers by name; any still running at teardown (a failed test) is killed."""
    workers: list[Worker] = []

    def start(name: str, *args: str, run_dir: str | None = None,
              tf_config: dict | None = None) -> Worker:
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env.update(TF_CPP_MIN_LOG_LEVEL="2")  # train_worker selects Keras 2 itself
        if tf_config:
            env["TF_CONFIG"] = json.dumps(tf_config)
        report, log = tmp_path / f"{name}.json", tmp_path / f"{name}.log"
        command = [sys.executable, "-m", "tests.train_worker", "--train", splits[0],
                   "--eval", splits[1], "--run-dir", run_dir or str(tmp_path / name),
                   "--report", str(report), *args]
        with open(log, "w") as out:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                                       stderr=subprocess.STDOUT)
        workers.append(Worker(process, report, log, time.monotonic()))
        return workers[-1]

    yield start
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def finish(*workers: Worker) -> list[dict]:
    """Waits for all workers to exit 0 and returns their reports.

    Fails as soon as one worker fails: its multi-worker peer would otherwise hang in a
    collective until the timeout.
    """
    while any(w.process.poll() is None for w in workers):
        for w in workers:
            code = w.process.poll()
            assert code in (None, 0), f"{w.log.name} exited {code}:\n{w.tail()}"
            assert code == 0 or w.time_left() > 0, f"{w.log.name} timed out:\n{w.tail()}"
        time.sleep(POLL_S)
    for w in workers:
        assert w.process.returncode == 0, \
            f"{w.log.name} exited {w.process.returncode}:\n{w.tail()}"
    return [json.loads(w.report.read_text()) for w in workers]


def free_ports(count: int) -> list[int]:
    """Ports the OS just handed out; all held open together so they are distinct."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_multi_worker_mirrored_workers_end_with_identical_weights(launch, tmp_path):
    steps = 6
    hosts = [f"localhost:{port}" for port in free_ports(2)]
    # Worker 0 is the chief (no "chief" entry); both share one run dir, as in TFX.
    workers = [
        launch(f"worker{i}", "--strategy", "multi_worker", "--epochs", "2",
               "--train-steps", str(steps), run_dir=str(tmp_path / "run"),
               tf_config={"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})
        for i in range(2)
    ]
    chief, other = finish(*workers)
    # 2 replicas proves a real cluster: two independent seeded runs would also agree.
    assert chief["replicas"] == other["replicas"] == 2
    assert chief["final_step"] == other["final_step"] == steps
    assert chief["initial_hash"] == other["initial_hash"] != chief["final_hash"]
    assert chief["final_hash"] == other["final_hash"]


def test_killed_trainer_resumes_mid_epoch_from_its_backup(launch, tmp_path):
    epochs, steps, backup_every, kill_after = 3, 30, 4, 14
    last_backup = kill_after // backup_every * backup_every  # 12: epoch 2, batch 2 of 10
    assert last_backup % (steps // epochs), "the backup under test must be mid-epoch"
    args = ("--epochs", str(epochs), "--train-steps", str(steps),
            "--backup-every", str(backup_every))
    run_dir = str(tmp_path / "run")

    first = launch("first", *args, "--pause-after-step", str(kill_after), run_dir=run_dir)
    paused = pathlib.Path(f"{first.report}.paused")
    while not paused.exists():
        assert first.process.poll() is None, f"first run exited early:\n{first.tail()}"
        assert first.time_left() > 0, f"first run never reached step {kill_after}"
        time.sleep(POLL_S)
    assert json.loads(paused.read_text())["step"] == kill_after
    assert (tmp_path / "run" / "backup" / "chief" / "checkpoint").exists()
    first.process.send_signal(signal.SIGKILL)
    assert first.process.wait(timeout=30) == -signal.SIGKILL

    (resumed,) = finish(launch("resumed", *args, run_dir=run_dir))
    # Continues from the last backup, not from 0 or the epoch boundary at step 10.
    assert resumed["start_step"] == last_backup
    assert resumed["steps_run"] == steps - last_backup
    assert resumed["final_step"] == steps


def test_same_seed_gives_identical_weights_and_another_seed_does_not(launch):
    steps = 8  # crosses the 6-step pass over the data: reshuffle and new augmentations
    args = ("--epochs", "2", "--train-steps", str(steps))
    first, again, other = finish(launch("seed42", *args, "--seed", "42"),
                                 launch("seed42-again", *args, "--seed", "42"),
                                 launch("seed43", *args, "--seed", "43"))
    assert first["final_step"] == steps and first["initial_hash"] != first["final_hash"]
    assert first["final_hash"] == again["final_hash"]
    assert first["final_hash"] != other["final_hash"]
