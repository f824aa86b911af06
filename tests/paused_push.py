"""``python -m tests.paused_push serving|edge <sightline arguments>``: stop inside a push.

``sightline`` itself, except that a push to the TF Serving directory (``serving``) or of an
edge bundle (``edge``) writes its staged version, prints ``PAUSED <staging dir>`` (into
the run's log) and sleeps until the test kills it: the moment at which a push written in
place would leave a half version for a server to load. The Pusher and EdgePusher are too
quick to catch from outside.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from components import versions
from pipelines.cli import main

_push_version = versions.push_version


def _pausing_in(destination: str) -> Callable[..., tuple[str, str]]:
    def push_version(base_directory: str, write: Callable[[str, str], None]) -> tuple[str, str]:
        if f"{os.sep}{destination}{os.sep}" not in base_directory:
            return _push_version(base_directory, write)

        def write_then_stop(staging: str, version: str) -> None:
            write(staging, version)
            print(f"PAUSED {staging}", file=sys.stderr, flush=True)
            time.sleep(3600)

        return _push_version(base_directory, write_then_stop)

    return push_version


if __name__ == "__main__":
    versions.push_version = _pausing_in(sys.argv.pop(1))
    main(prog_name="sightline")
