"""A run's console shows Sightline's lines; library output, C++ included, goes to the log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from rich.console import Console

from pipelines.console import _ComponentProgress, library_output_to

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_RUN = """
import os, subprocess, sys
from pipelines.console import library_output_to
with library_output_to(sys.argv[1]) as terminal:
    terminal.write("sightline: component done\\n")
    print("keras progress bar")
    print("absl INFO line", file=sys.stderr)
    os.write(2, b"E0000 cuda_dnn.cc] Unable to register cuDNN factory\\n")
    subprocess.run([sys.executable, "-c", "print('beam worker')"], check=True)
print("summary on stdout")
"""


def test_library_output_goes_to_the_log_and_own_lines_to_the_terminal(tmp_path):
    log = tmp_path / "logs" / "run.log"
    # A process of its own: its stdout and stderr are real file descriptors, as in a shell.
    result = subprocess.run([sys.executable, "-c", _RUN, str(log)], capture_output=True,
                            text=True, check=True, cwd=REPO)
    assert result.stderr == "sightline: component done\n"
    assert result.stdout == "summary on stdout\n"
    text = log.read_text()
    for line in ("keras progress bar", "absl INFO line", "cuDNN factory", "beam worker"):
        assert line in text
    assert "sightline: component done" not in text


def test_verbose_keeps_everything_on_the_terminal(capfd):
    with library_output_to(None) as terminal:
        terminal.write("own line\n")
        os.write(2, b"library line\n")
    _, err = capfd.readouterr()
    assert err == "own line\nlibrary line\n"


def test_progress_shows_components_and_the_trainers_epochs(tmp_path):
    lines = tmp_path / "console.txt"
    with open(lines, "w") as f:
        console = Console(file=f, width=100)
        progress = _ComponentProgress(console)
        for message in ("Component Trainer is running.", "Epoch 3/32: loss 1.2345",
                        "unrelated INFO line", "Component Trainer is finished."):
            progress.emit(logging.LogRecord("absl", logging.INFO, "", 0, message, None, None))
    text = lines.read_text()
    assert "✓ Trainer" in text and "unrelated" not in text
