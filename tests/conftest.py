import json
import os
import pathlib

import pytest

# Before any test imports TensorFlow: tfmot and TFMA need Keras 2.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.coco_fixture import make_bad_coco  # noqa: E402

# Fixtures that run a real DAG, train a detector or start worker processes (tens of
# seconds to minutes each): a test using one is slow, so `make test-fast` skips it.
SLOW_FIXTURES = {"tiny_run", "gated_runs", "drift_runs", "data_runs", "spans", "edge",
                 "trained", "launch", "tfma_run", "two_pushes"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def bad_coco(tmp_path: pathlib.Path) -> pathlib.Path:
    """A COCO dataset with good images and one record of every bad kind."""
    return make_bad_coco(tmp_path / "coco")


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    """A MariaDB server for ML Metadata on MySQL, started once, stopped after the session."""
    from tests.mariadb import MariaDB, ServerUnavailable

    server = MariaDB(str(tmp_path_factory.mktemp("mariadb")))
    try:
        server.start()
    except ServerUnavailable as e:
        pytest.skip(str(e))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mysql_url(mariadb, request) -> str:
    """A new, empty database on the test server: its mysql:// URL (TCP, with password)."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50]
    return mariadb.create_database(name)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[str, dict]:
    """One full run of the tiny config (CLI, --json), shared by every test that inspects one."""
    from click.testing import CliRunner

    from pipelines.cli import main

    home = str(tmp_path_factory.mktemp("home"))
    result = CliRunner().invoke(main, ["run", "--config", "tiny", "--home", home, "--json"])
    assert result.exit_code == 0, result.stderr[-3000:]
    return home, json.loads(result.stdout)  # the summary alone: training logs go to stderr


@pytest.fixture(scope="session")
def two_pushes(tmp_path_factory) -> tuple[str, list[str]]:
    """A home where two tiny oracle runs pushed two versions (the registry's tests copy it)."""
    from tests.oracle_trainer import run_tiny

    home = str(tmp_path_factory.mktemp("two-pushes"))
    versions = []
    for _ in range(2):
        summary = run_tiny(home)
        assert summary.get("pushed", {}).get("pushed"), summary.get("failure")
        versions.append(summary["pushed"]["version"])
    return home, versions
