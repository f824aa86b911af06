"""Pushing a directory as a new numbered version, the way a model server expects it.

Versions are unique and increase monotonically: the Unix time, or one more than the
highest version (or staging directory) already in the base directory, whichever is
larger, so two pushes in one second get two versions. A version is staged as
``.<version>.incomplete`` (servers ignore names that are not numbers) and renamed into
place when complete, so a server never sees half of one.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from tfx.dsl.io import fileio

_VERSION_NAME = re.compile(r"^\.?(?P<version>\d+)(\.incomplete)?$")
_STAGE_NAME = re.compile(r"^\.\d+\.incomplete$")


def _reserve(base_directory: str) -> tuple[str, str]:
    """A new version and its staging directory, created (so reserved) here."""
    fileio.makedirs(base_directory)
    while True:
        taken = [int(m["version"]) for m in map(_VERSION_NAME.match,
                                                 fileio.listdir(base_directory)) if m]
        version = str(max([int(time.time()), *(v + 1 for v in taken)]))
        staging = os.path.join(base_directory, f".{version}.incomplete")
        if not _make_exclusive(staging):
            continue  # another pusher is staging this version
        if fileio.exists(os.path.join(base_directory, version)):
            # Another pusher staged and renamed it between our listing and our mkdir.
            fileio.rmtree(staging)
            continue
        return version, staging


def _make_exclusive(path: str) -> bool:
    """Creates ``path``; False if it exists (another pusher took that version meanwhile).

    Object stores (``gs://``...) have no atomic directory creation: there two pushers
    racing in the same second could still share a version.
    """
    if "://" in path:
        fileio.makedirs(path)
        return True
    try:
        os.mkdir(path)
    except FileExistsError:
        return False
    return True


def discard_stages(base_directory: str) -> list[str]:
    """Removes the staging directories that killed pushes left; returns their names.

    Only while no pusher writes to ``base_directory`` (``sightline run`` holds its home's
    lock): a live push's stage looks the same.
    """
    if not fileio.exists(base_directory):
        return []
    stages = sorted(name for name in fileio.listdir(base_directory) if _STAGE_NAME.match(name))
    for name in stages:
        fileio.rmtree(os.path.join(base_directory, name))
    return stages


def push_version(base_directory: str, write: Callable[[str, str], None]) -> tuple[str, str]:
    """Reserves a version, lets ``write(staging_dir, version)`` fill it, renames it into place.

    Returns:
      (version, destination directory). A failure in ``write`` leaves only the staging
      directory behind, which no server loads.
    """
    version, staging = _reserve(base_directory)
    write(staging, version)
    destination = os.path.join(base_directory, version)
    fileio.rename(staging, destination)
    return version, destination
