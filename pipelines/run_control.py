"""One run per Sightline home at a time, a home the run can write, failures in words.

Why this exists: ML Metadata on SQLite knows nothing of processes. Two runs on one home
interleave their writes and each reads the other's records; a run that cannot write its
home fails with a traceback from deep inside TFX. So ``sightline run`` first checks that
it can write the home (``check_writable``), then holds the home's lock for the whole run
(``lock_home``): ``fcntl.flock`` on ``<home>/run.lock``, which the kernel drops when the
holder dies, SIGKILL included, so a killed run never leaves a stale lock. The lock file
says who holds it (pid, run id, start time) so a refused run can name it.

Nothing here imports TensorFlow, TFX or ML Metadata: the CLI uses it before those load,
and ``sightline runs list`` uses ``running_run`` to tell a live run from an interrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator

from pipelines import configs

LOCK_FILE = "run.lock"
# `runs list` takes the lock shared for microseconds to probe it; a run holds it for minutes.
# A starting run retries this long so a probe never makes it refuse.
_LOCK_PATIENCE_SECONDS = 1.0
_PROBE_BYTES = 1 << 20  # a home that cannot take 1 MiB cannot take a run
_MESSAGE_LIMIT = 2000  # characters of an error message kept in ML Metadata
# What a home's OSErrors mean, in words; the errno's name follows in brackets.
_HOME_ERRORS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}


class HomeError(RuntimeError):
    """The home cannot host a run now; the message is one line for the console."""


class RunInProgress(HomeError):
    """Another process holds the home's run lock."""


class RunFailed(RuntimeError):
    """A run failed; ``run_id`` names its record in ML Metadata (None: none was made)."""

    def __init__(self, run_id: str | None, reason: str):
        super().__init__(reason)
        self.run_id = run_id
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a home's lock, as written in the lock file."""

    pid: int
    started: str  # ISO 8601, UTC
    run_id: str | None = None
    pipeline: str | None = None

    def describe(self) -> str:
        run = f"run {self.run_id}" if self.run_id else "a run that is starting"
        if self.pipeline:
            run += f" of {self.pipeline}"
        alive = "" if _alive(self.pid) else " (now gone; a process it started holds the lock)"
        return f"{run}, pid {self.pid}{alive}, started {self.started}"


class HomeLock:
    """The held lock of one home; released on ``release`` or when the process dies."""

    def __init__(self, home: str, fd: int):
        self.home = home
        self._fd = fd
        self._holder = Holder(pid=os.getpid(), started=utc_now())
        self._write()

    def announce(self, run_id: str, pipeline: str) -> None:
        """Names the run in the lock file, for a run refused meanwhile to quote."""
        self._holder = dataclasses.replace(self._holder, run_id=run_id, pipeline=pipeline)
        self._write()

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = -1

    def __enter__(self) -> HomeLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _write(self) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(dataclasses.asdict(self._holder)).encode(), 0)


def claim_home(paths: configs.Paths) -> HomeLock:
    """The home, checked writable and locked for one run.

    Raises:
      HomeError: the home cannot be written (the path and the cause, in one line).
      RunInProgress: another run holds the home (its run id, pid and start time).
    """
    written = (paths.logs, paths.pipeline_root, paths.serving_model_dir, paths.edge_bundle_dir)
    check_writable([paths.home, *(d for d in written if os.path.isdir(d))], [paths.metadata])
    return lock_home(paths.home)


def lock_home(home: str) -> HomeLock:
    """Takes the home's run lock, or raises RunInProgress naming the run that holds it."""
    os.makedirs(home, exist_ok=True)
    fd = os.open(os.path.join(home, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + _LOCK_PATIENCE_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return HomeLock(home, fd)
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            holder = _read_holder(fd)
            os.close(fd)
            who = holder.describe() if holder else "a run that is starting"
            raise RunInProgress(
                f"another sightline run is using the home {home}: {who}. Wait for it to "
                "finish or stop it; one run per home at a time") from None


@contextlib.contextmanager
def holding(paths: configs.Paths, lock: HomeLock | None) -> Iterator[HomeLock]:
    """``lock`` if the caller holds it already, else the home claimed for the block."""
    if lock is not None:
        yield lock
        return
    with claim_home(paths) as taken:
        yield taken


def running_run(home: str) -> Holder | None:
    """The run holding the home's lock now, or None; never blocks, never writes."""
    path = os.path.join(home, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd) or Holder(pid=0, started="")
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_writable(directories: Iterable[str], files: Iterable[str] = ()) -> None:
    """Raises HomeError (one line: the path and the cause) unless a run can write here.

    Each directory is created if missing and must take a 1 MiB file (a full disk fails
    the write, not the create); each existing file must open for writing.
    """
    try:
        for directory in directories:
            _probe_directory(directory)
        for path in files:
            if os.path.exists(path):
                with open(path, "r+b"):
                    pass
    except OSError as e:
        raise HomeError(describe_os_error(e)) from e


def describe_error(error: BaseException) -> str:
    """An exception as one line for a person: its type and message, no traceback.

    A home's OSError anywhere in the cause chain (Beam and TFX wrap them) becomes
    "cannot write <path>: <cause> (<ERRNO>)".
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in _HOME_ERRORS:
            return describe_os_error(cause)
        cause = cause.__cause__ or cause.__context__
    message = str(error).strip()
    traceback_at = message.find("Traceback (most recent call last)")
    if traceback_at >= 0:  # Beam puts the worker's traceback in the message
        lines = [line for line in message[traceback_at:].splitlines() if line.strip()]
        message = (message[:traceback_at].strip() + " " + lines[-1].strip()).strip()
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + " …"


def describe_os_error(error: OSError) -> str:
    """'cannot write /x: read-only file system (EROFS)' and the like."""
    name = errno.errorcode.get(error.errno, str(error.errno))
    cause = _HOME_ERRORS.get(error.errno, error.strerror or str(error))
    where = error.filename or "the Sightline home"
    return f"cannot write {where}: {cause} ({name})"


def _probe_directory(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
    except OSError as e:  # name the directory, not the probe file
        raise OSError(e.errno, e.strerror, directory) from e
    try:
        remaining = memoryview(b"\0" * _PROBE_BYTES)
        while remaining:  # a nearly full disk takes part of a write, then refuses the rest
            remaining = remaining[os.write(fd, remaining):]
        os.fsync(fd)
    except OSError as e:
        raise OSError(e.errno, e.strerror, directory) from e
    finally:
        os.close(fd)
        os.unlink(probe)


def _read_holder(fd: int) -> Holder | None:
    try:
        return Holder(**json.loads(os.pread(fd, 4096, 0) or b"null"))
    except (TypeError, ValueError):
        return None  # written a moment from now


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def utc_now() -> str:
    """Now, UTC, ISO 8601 to the second: how run records and the lock file say when."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
