"""A throwaway MariaDB (or MySQL) server for the tests that use ML Metadata on MySQL.

The suite starts it itself (the ``mariadb`` fixture in conftest.py): a data directory in
a temp folder, ``--no-defaults`` so no system config leaks in, a free TCP port on
127.0.0.1 and a socket beside the data; stopped when the session ends. Each test asks
for a database of its own, created as ML Metadata on MySQL needs it: ``latin1`` with a
binary, no-pad collation, or artifact names would compare case-insensitively (unlike
SQLite). ``.ci/run`` installs Debian's ``mariadb-server`` when no server is found.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.parse

from pipelines import metadata_store

_SEARCH = ("mariadbd", "mysqld")
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/usr/local/mysql/bin")
USER, PASSWORD = "sightline", "s3cret-Pw%d"  # a '%' tests the URL's decoding


class ServerUnavailable(RuntimeError):
    """No server binary here, or it would not start: the reason, for a skip."""


def find_server() -> tuple[str, str]:
    """(mariadbd or mysqld, mariadb-install-db) on PATH or in the usual sbin folders."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    server = next((found for name in _SEARCH if (found := shutil.which(name, path=path))), None)
    install = shutil.which("mariadb-install-db", path=path) or shutil.which(
        "mysql_install_db", path=path)
    if not server or not install:
        raise ServerUnavailable("no mariadbd/mysqld with mariadb-install-db: install Debian's "
                                "mariadb-server (`.ci/run` does when it may use apt-get)")
    return server, install


class MariaDB:
    """One server process; ``url(database)`` for a database created for the caller."""

    def __init__(self, root: str):
        self.root = root
        self.data = os.path.join(root, "data")
        self.socket = os.path.join(root, "mysqld.sock")
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self.started_in_s = 0.0

    def start(self, timeout: float = 60) -> MariaDB:
        """Initializes the data directory and starts the server; raises ServerUnavailable."""
        server, install = find_server()
        began = time.monotonic()
        self._call([install, "--no-defaults", "--auth-root-authentication-method=normal",
                    f"--datadir={self.data}", *self._as_user()], "initialize")
        log = open(os.path.join(self.root, "server.log"), "w")  # noqa: SIM115 (server's life)
        self.process = subprocess.Popen(
            [server, "--no-defaults", f"--datadir={self.data}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-log-bin",
             f"--pid-file={os.path.join(self.root, 'mysqld.pid')}", *self._as_user()],
            stdout=log, stderr=subprocess.STDOUT)
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() - began > timeout:
                self.stop()
                raise ServerUnavailable(f"{server} did not start; see {log.name}")
            time.sleep(0.1)
        # mariadb-install-db adds anonymous users, which shadow 'sightline'@'%' on localhost.
        self.sql("DELETE FROM mysql.global_priv WHERE User=''; FLUSH PRIVILEGES;"
                 f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}';")
        self.started_in_s = time.monotonic() - began
        return self

    def create_database(self, name: str) -> str:
        """A new database the test user owns; its ``mysql://`` URL over TCP."""
        self.sql(f"{metadata_store.CREATE_DATABASE.format(db=name)};"
                 f"GRANT ALL ON {name}.* TO '{USER}'@'%';")
        return self.url(name)

    def url(self, database: str, password: str = PASSWORD, via_socket: bool = False) -> str:
        secret = urllib.parse.quote(password, safe="")
        if via_socket:
            return f"mysql://{USER}:{secret}@/{database}?socket={self.socket}"
        return f"mysql://{USER}:{secret}@127.0.0.1:{self.port}/{database}"

    def sql(self, statements: str) -> str:
        """Runs SQL as root over the socket; its output."""
        client = shutil.which("mariadb") or shutil.which("mysql")
        result = subprocess.run(
            [client, "--no-defaults", "-uroot", f"--socket={self.socket}", "-N", "-e",
             statements], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _answers(self) -> bool:
        try:
            metadata_store.check_server(metadata_store.parse_url(self.url("mysql")), 1.0)
        except metadata_store.MetadataStoreError:
            return False
        return os.path.exists(self.socket)

    def _call(self, command: list[str], what: str) -> None:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode:
            raise ServerUnavailable(f"could not {what} MariaDB: {result.stderr.strip()[-500:]}")

    @staticmethod
    def _as_user() -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []  # mariadbd refuses root otherwise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
