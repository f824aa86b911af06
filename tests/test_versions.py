"""Pushed versions are unique and increasing, and a half-written one is never visible."""

from __future__ import annotations

import os
import threading

import pytest

from components import versions


def _write(content: str):
    def write(staging: str, version: str) -> None:
        assert os.path.basename(staging) == f".{version}.incomplete"
        with open(os.path.join(staging, "file.txt"), "w") as f:
            f.write(content)
    return write


def test_two_pushes_in_one_second_get_two_increasing_versions(tmp_path, monkeypatch):
    monkeypatch.setattr(versions.time, "time", lambda: 1_700_000_000.5)
    first, _ = versions.push_version(str(tmp_path), _write("a"))
    second, path = versions.push_version(str(tmp_path), _write("b"))
    assert (first, second) == ("1700000000", "1700000001")
    assert sorted(os.listdir(tmp_path)) == [first, second]
    with open(os.path.join(path, "file.txt")) as f:
        assert f.read() == "b"


def test_versions_never_go_back_when_the_clock_does(tmp_path, monkeypatch):
    (tmp_path / "1800000000").mkdir()  # pushed by a machine whose clock ran ahead
    monkeypatch.setattr(versions.time, "time", lambda: 1_700_000_000.0)
    version, _ = versions.push_version(str(tmp_path), _write("a"))
    assert version == "1800000001"


def test_a_failed_write_leaves_no_loadable_version(tmp_path):
    def broken(staging: str, version: str) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        versions.push_version(str(tmp_path), broken)
    names = os.listdir(tmp_path)
    assert len(names) == 1 and names[0].startswith(".") and names[0].endswith(".incomplete")
    # The abandoned stage still counts as taken: the next push does not reuse its version.
    version, _ = versions.push_version(str(tmp_path), _write("a"))
    assert int(version) > int(names[0][1:].split(".")[0])


def test_concurrent_pushers_never_share_a_version(tmp_path, monkeypatch):
    monkeypatch.setattr(versions.time, "time", lambda: 1_700_000_000.0)
    pushed: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def push() -> None:
        barrier.wait()
        try:
            pushed.append(versions.push_version(str(tmp_path), _write("x"))[0])
        except BaseException as e:  # noqa: BLE001 (reported below, not lost in the thread)
            errors.append(e)

    threads = [threading.Thread(target=push) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(pushed) == [str(1_700_000_000 + i) for i in range(16)]
    assert sorted(os.listdir(tmp_path)) == sorted(pushed)  # no stage left behind


def test_stages_of_killed_pushes_are_discarded_and_versions_kept(tmp_path):
    versions.push_version(str(tmp_path), _write("a"))
    (tmp_path / ".1900000000.incomplete").mkdir()  # a push killed before its rename
    (tmp_path / ".1900000000.incomplete" / "variables").mkdir()
    assert versions.discard_stages(str(tmp_path)) == [".1900000000.incomplete"]
    assert [name for name in os.listdir(tmp_path) if not name.isdigit()] == []
    assert len(os.listdir(tmp_path)) == 1
    assert versions.discard_stages(str(tmp_path / "never-pushed")) == []
