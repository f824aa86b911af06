"""ML Metadata on MySQL: URL parsing, one-line errors, schema creation, recovery in a
shared store. Against the MariaDB server the suite starts (``tests/mariadb.py``); the
two concurrent pipeline runs are in ``test_metadata_mysql.py`` (slow).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from pipelines import configs, metadata_store, run_status
from tests.mariadb import PASSWORD, USER

# --- URLs ----------------------------------------------------------------------------------


def test_a_tcp_url_becomes_a_mysql_connection_without_database_creation():
    config = metadata_store.connection_config("mysql://ana:p%40ss%3Aw@db.internal:3307/mlmd",
                                              "/home")
    mysql = config.mysql
    assert (mysql.host, mysql.port, mysql.user, mysql.password, mysql.database) == (
        "db.internal", 3307, "ana", "p@ss:w", "mlmd")
    assert not mysql.socket and mysql.skip_db_creation
    assert metadata_store.is_shared(config)
    assert metadata_store.describe(config) == "MySQL ana@db.internal:3307 database mlmd"


def test_a_socket_url_sets_no_host_and_the_default_port_is_3306():
    mysql = metadata_store.connection_config("mysql://ana@/mlmd?socket=/run/mysqld/m.sock",
                                             "/home").mysql
    assert (mysql.socket, mysql.host, mysql.password) == ("/run/mysqld/m.sock", "", "")
    assert metadata_store.parse_url("mysql://ana@db/mlmd").port == 3306


def test_no_url_is_the_homes_sqlite_file():
    config = metadata_store.connection_config(None, "/srv/home")
    assert config.sqlite.filename_uri == "/srv/home/metadata.sqlite"
    assert not metadata_store.is_shared(config)


@pytest.mark.parametrize("url, words", [
    ("postgres://a:b@h/db", "use mysql://user:password@host:port/database"),
    ("mysql://a:b@h/", "no database"),
    ("mysql://h/db", "no user"),
    ("mysql://a:b@h:99999/db", "a port outside 1-65535"),
    ("mysql://a:b@/db", "neither a host nor ?socket=PATH"),
    ("mysql://a:b@h/db?socket=/s", "a host and a socket: give one"),
    ("mysql://a:b@h/db?ssl=1", "unknown parameter ssl"),
])
def test_bad_urls_say_what_is_wrong_without_the_password(url, words):
    with pytest.raises(ValueError) as error:
        metadata_store.parse_url(url)
    assert words in str(error.value)
    assert ":b@" not in str(error.value)


def test_the_config_key_is_checked_at_load_and_redacted_when_listed():
    config = configs.load("tiny", ["metadata=mysql://ana:hunter2@db/mlmd"])
    assert config.metadata == "mysql://ana:hunter2@db/mlmd"
    assert configs.flat_settings(config)["metadata"] == "mysql://ana:***@db/mlmd"
    assert "metadata" in configs.setting_keys()
    with pytest.raises(ValueError, match="no database"):
        configs.load("tiny", ["metadata=mysql://ana:hunter2@db"])


def test_passwords_are_hidden_in_log_records(caplog):
    metadata_store.RedactSecrets.hide("hunter2")
    with caplog.at_level(logging.INFO, logger="absl"):
        logging.getLogger("absl").info("connection config:\n %s", 'password: "hunter2"')
        logging.getLogger("absl").info("url mysql://ana:other@db/mlmd")
    assert "hunter2" not in caplog.text and "other" not in caplog.text
    assert 'password: "***"' in caplog.text and "mysql://ana:***@db/mlmd" in caplog.text


# --- what failed, in one line (no server needed) ----------------------------------------------


def _error(url: str) -> str:
    with pytest.raises(metadata_store.MetadataStoreError) as error:
        metadata_store.open_store(metadata_store.connection_config(url, "/unused"))
    return str(error.value)


def test_an_unknown_host_is_named():
    assert _error("mysql://a:b@no-such-host.invalid/db").startswith(
        "unknown MySQL host 'no-such-host.invalid'")


def test_a_closed_port_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    assert _error(f"mysql://a:b@127.0.0.1:{port}/db") == (
        f"cannot reach MySQL at 127.0.0.1:{port}: Connection refused")


def test_a_missing_socket_is_named(tmp_path):
    path = tmp_path / "none.sock"
    assert _error(f"mysql://a@/db?socket={path}") == (
        f"cannot reach MySQL at socket {path}: No such file or directory")


def test_a_server_that_is_not_mysql_is_named():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        threading.Thread(target=lambda: _answer_http(listener), daemon=True).start()
        assert _error(f"mysql://a:b@127.0.0.1:{port}/db") == (
            f"127.0.0.1:{port} answered, but not as a MySQL server")


def _answer_http(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")


# --- against the server ------------------------------------------------------------------


def test_a_wrong_password_is_named_not_left_empty(mariadb, mysql_url):
    message = _error(mariadb.url(mysql_url.rsplit("/", 1)[1], password="wrong"))
    assert message == (f"MySQL at 127.0.0.1:{mariadb.port} refused the login of user "
                       f"'{USER}': wrong password, or that user may not connect from this host")


def test_a_missing_database_is_named_with_how_to_create_it(mariadb):
    message = _error(mariadb.url("no_such_db"))
    assert message.startswith(f"no database 'no_such_db' at 127.0.0.1:{mariadb.port} that "
                              f"user '{USER}' may use: create it with `CREATE DATABASE "
                              "no_such_db CHARACTER SET latin1 COLLATE latin1_nopad_bin`")


def test_the_socket_reaches_the_same_store_as_tcp(mariadb, mysql_url):
    from ml_metadata.proto import metadata_store_pb2

    tcp = metadata_store.open_store(metadata_store.connection_config(mysql_url, "/unused"))
    tcp.put_artifact_type(metadata_store_pb2.ArtifactType(name="Examples"))
    by_socket = metadata_store.open_store(metadata_store.connection_config(
        mariadb.url(mysql_url.rsplit("/", 1)[1], via_socket=True), "/unused"))
    assert [t.name for t in by_socket.get_artifact_types()] == ["Examples"]


def test_names_compare_case_sensitively_as_in_sqlite(mysql_url):
    from ml_metadata.proto import metadata_store_pb2

    store = metadata_store.open_store(metadata_store.connection_config(mysql_url, "/unused"))
    type_id = store.put_context_type(metadata_store_pb2.ContextType(name="pipeline_run"))
    store.put_contexts([metadata_store_pb2.Context(type_id=type_id, name=n)
                        for n in ("run-A", "run-a")])
    assert sorted(c.name for c in store.get_contexts()) == ["run-A", "run-a"]


_FIRST = """
import sys
from pipelines import metadata_store
store = metadata_store.open_store(metadata_store.connection_config(sys.argv[1], "/unused"))
print(len(store.get_artifact_types()))
"""


def test_concurrent_first_connections_create_the_schema_once(mysql_url):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    processes = [subprocess.Popen([sys.executable, "-c", _FIRST, mysql_url], cwd=repo,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    results = [(p.wait(120), *p.communicate()) for p in processes]
    assert [(code, out.strip()) for code, out, _ in results] == [(0, "0")] * 4, results


def test_cli_readers_take_the_url_and_say_what_failed(mariadb, mysql_url, tmp_path):
    home = str(tmp_path / "home")
    result = CliRunner().invoke(main_cli(), ["runs", "list", "--home", home,
                                             "--metadata", mysql_url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    bad = mariadb.url(mysql_url.rsplit("/", 1)[1], password="wrong")
    result = CliRunner(env={metadata_store.ENV: bad}).invoke(
        main_cli(), ["lineage", "1", "--home", home])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: MySQL at 127.0.0.1:{mariadb.port} refused the login of user '{USER}': "
        "wrong password, or that user may not connect from this host")
    assert PASSWORD not in result.output


def main_cli():
    from pipelines.cli import main

    return main


# --- recovery in a shared store ----------------------------------------------------------


def _recorded_run(store, name: str, attempt: dict) -> int:
    """A pipeline_run as a Sightline process leaves it while running: one RUNNING execution."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    run_type = store.put_context_type(pb.ContextType(name="pipeline_run"))
    execution_type = store.put_execution_type(pb.ExecutionType(name="Trainer"))
    run = pb.Context(type_id=run_type, name=name)
    run.custom_properties[run_status.ATTEMPTS].string_value = json.dumps([attempt])
    run.custom_properties[run_status.OUTCOME].string_value = run_status.RUNNING
    [run_id] = store.put_contexts([run])
    [execution_id] = store.put_executions([pb.Execution(
        type_id=execution_type, last_known_state=pb.Execution.RUNNING)])
    store.put_attributions_and_associations(
        [], [pb.Association(context_id=run_id, execution_id=execution_id)])
    return execution_id


def test_recovery_in_a_shared_store_touches_only_runs_proven_dead(mysql_url):
    from ml_metadata.proto import metadata_store_pb2 as pb

    from pipelines import run_control, run_record
    from pipelines.reports import runs

    store = metadata_store.open_store(metadata_store.connection_config(mysql_url, "/unused"))
    here, now = socket.gethostname(), run_control.utc_now()
    finished = subprocess.Popen(["true"])
    finished.wait()
    alive = subprocess.Popen(["sleep", "300"])
    try:
        executions = {
            "other-home-live": _recorded_run(store, "r1", {"pid": alive.pid, "host": here,
                                                           "started": now}),
            "other-host": _recorded_run(store, "r2", {"pid": 1, "host": "elsewhere",
                                                      "started": now}),
            "dead": _recorded_run(store, "r3", {"pid": finished.pid, "host": here,
                                                "started": now}),
            "pid-reused": _recorded_run(store, "r4", {"pid": alive.pid, "host": here,
                                                      "started": "2020-01-01T00:00:00+00:00"}),
        }
        run_record.recover_interrupted(store, shared=True)
        states = {k: store.get_executions_by_id([v])[0].last_known_state
                  for k, v in executions.items()}
        listed = {r["run_id"]: r["status"] for r in runs.list_runs(store)}
    finally:
        alive.kill()
        alive.wait()
    assert states == {"other-home-live": pb.Execution.RUNNING, "other-host": pb.Execution.RUNNING,
                      "dead": pb.Execution.CANCELED, "pid-reused": pb.Execution.CANCELED}
    assert listed == {"r1": "running", "r2": "running", "r3": "interrupted",
                      "r4": "interrupted"}
