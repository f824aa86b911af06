"""Per-component progress for local runs.

LocalDagRunner logs "Component X is running/finished." through absl; this turns those
lines into a status line per component with its wall time, and keeps TFX's INFO chatter
off the terminal unless asked for.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator

from absl import logging as absl_logging
from rich.console import Console

_EVENT = re.compile(r"^Component (?P<node>\S+) is (?P<event>running|finished)\.$")


class _ComponentProgress(logging.Handler):
    def __init__(self, console: Console):
        super().__init__(level=logging.INFO)
        self._console = console
        self._started: dict[str, float] = {}
        self._status = None

    def emit(self, record: logging.LogRecord) -> None:
        match = _EVENT.match(record.getMessage())
        if not match:
            return
        node = match["node"]
        if match["event"] == "running":
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
def component_progress(console: Console, verbose: bool = False) -> Iterator[None]:
    """Shows one line per component while a LocalDagRunner run is under way."""
    absl_logger = logging.getLogger("absl")
    handler = _ComponentProgress(console)
    # TFX logs through absl and Beam through the root logger: quiet both terminals.
    quieted = [] if verbose else [absl_logging.get_absl_handler(), *logging.getLogger().handlers]
    previous_levels = [h.level for h in quieted]
    previous_verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    for h in quieted:
        h.setLevel(max(h.level, logging.WARNING))
    absl_logger.addHandler(handler)
    try:
        yield
    except BaseException:
        handler.fail_running()
        raise
    finally:
        absl_logger.removeHandler(handler)
        for h, level in zip(quieted, previous_levels, strict=True):
            h.setLevel(level)
        absl_logging.set_verbosity(previous_verbosity)
