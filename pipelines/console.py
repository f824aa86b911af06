"""What a person sees during a local run: Sightline's own lines, library output in a log.

TensorFlow's C++ start-up errors, absl/TFX INFO lines, Beam's warnings and Keras progress
bars all write to the process's stdout/stderr file descriptors, several of them from C++.
``library_output_to`` points both descriptors at a log file under the Sightline home and
hands back a stream on the real terminal, so the console shows only the run's progress:
one line per component with its seconds, and the Trainer's epochs (``component_progress``).
``--verbose`` keeps everything on the terminal instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from absl import logging as absl_logging
from rich.console import Console
from rich.markup import escape

_COMPONENT_EVENT = re.compile(r"^Component (?P<node>\S+) is (?P<event>running|finished)\.$")
# trainer.train.EpochLog's line; shown beside the running Trainer.
_EPOCH = re.compile(r"^Epoch (?P<epoch>\d+)/(?P<epochs>\d+): (?P<losses>.*)$")


@contextlib.contextmanager
def library_output_to(log_path: str | None) -> Iterator[TextIO]:
    """Sends fd 1 and 2 (and so every library's output) to ``log_path``, appending.

    Yields a text stream on the original terminal (stderr) for Sightline's own lines; with
    ``log_path`` None nothing is redirected and the stream is ``sys.stderr``.
    """
    if log_path is None:
        yield sys.stderr
        return
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for fd in (1, 2):
            os.dup2(log_fd, fd)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in saved.items():
            os.dup2(original, fd)
            os.close(original)
        os.close(log_fd)
        terminal.close()


class _ComponentProgress(logging.Handler):
    """Turns LocalDagRunner's and the Trainer's log lines into console lines."""

    def __init__(self, console: Console):
        super().__init__(level=logging.INFO)
        self._console = console
        self._started: dict[str, float] = {}
        self._status = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        event = _COMPONENT_EVENT.match(message)
        if event:
            self._component(event["node"], event["event"])
            return
        epoch = _EPOCH.match(message)
        if epoch and self._status is not None:
            node = next(reversed(self._started), "Trainer")
            self._status.update(f"[bold]{node}[/] epoch {epoch['epoch']}/{epoch['epochs']} "
                                f"· {escape(epoch['losses'])}")

    def _component(self, node: str, event: str) -> None:
        if event == "running":
            self._stop_status()
            self._started[node] = time.monotonic()
            self._status = self._console.status(f"[bold]{node}[/] running…")
            self._status.start()
        else:
            self._stop_status()
            seconds = time.monotonic() - self._started.pop(node, time.monotonic())
            self._console.print(f"[green]✓[/] {node:<32} {seconds:7.1f} s")

    def fail_running(self) -> None:
        self._stop_status()
        for node, started in self._started.items():
            self._console.print(f"[red]✗[/] {node:<32} {time.monotonic() - started:7.1f} s")

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


@contextlib.contextmanager
def component_progress(console: Console) -> Iterator[None]:
    """Shows one line per component (and the Trainer's epochs) while a run is under way.

    Needs absl at INFO: that is where LocalDagRunner announces components. Where that
    output goes (log file or terminal) is ``library_output_to``'s business.
    """
    absl_logger = logging.getLogger("absl")
    handler = _ComponentProgress(console)
    previous_verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logger.addHandler(handler)
    try:
        yield
    except BaseException:
        handler.fail_running()
        raise
    finally:
        absl_logger.removeHandler(handler)
        absl_logging.set_verbosity(previous_verbosity)
