"""Where ML Metadata lives: the home's SQLite file, or a MySQL/MariaDB database a team shares.

    --metadata mysql://user:password@host:3306/mlmd
    --metadata 'mysql://user@/mlmd?socket=/run/mysqld/mysqld.sock'

``connection_config(url, home)`` is the one way every command turns the setting into an
``ml_metadata`` ConnectionConfig (None: ``<home>/metadata.sqlite``). ``open_store`` checks
a MySQL server itself before MLMD sees it, because MLMD reports a refused login, an
unknown host and a closed port alike with an empty error, and it creates the schema
under a retry, because processes making the first connection to an empty database race
on it. Passwords never reach a message: ``redact`` and ``RedactSecrets`` hide them.

Nothing here imports ML Metadata at module level: configs parse URLs with it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
import socket
import struct
import time
import urllib.parse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

ENV = "SIGHTLINE_METADATA"  # the --metadata default, so one export serves every command
SQLITE_NAME = "metadata.sqlite"
DEFAULT_PORT = 3306
CREATE_DATABASE = "CREATE DATABASE {db} CHARACTER SET latin1 COLLATE latin1_nopad_bin"
_SCHEMA_ATTEMPTS = 8
_TIMEOUT_S = 5.0
_MAX_GREETING = 4096
_REFUSED_LOGIN = "mysql_real_connect failed: errno: , error:"  # MLMD's whole message
_NO_DATABASE = "Changing to database"  # MLMD's USE failed: no such database, or no access


class MetadataStoreError(RuntimeError):
    """The store cannot be used; the message says in one line what failed (no password)."""


@dataclasses.dataclass(frozen=True)
class MySQLAddress:
    """A parsed ``mysql://`` URL: a host and port, or a socket, never both."""

    user: str
    password: str | None
    database: str
    host: str | None = None
    port: int = DEFAULT_PORT
    socket: str | None = None

    @property
    def where(self) -> str:
        """Where the server is, for messages: ``host:port`` or the socket path."""
        return f"{self.host}:{self.port}" if self.host else f"socket {self.socket}"


def parse_url(url: str) -> MySQLAddress:
    """A ``mysql://user[:password]@host[:port]/db`` or ``mysql://user@/db?socket=PATH`` URL.

    Raises:
      ValueError: what is wrong with the URL (its password hidden).
    """
    shown = redact(url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "mysql":
        raise ValueError(f"metadata={shown!r}: use mysql://user:password@host:port/database "
                         "(or leave it unset for the home's SQLite store)")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"socket"})
    database = urllib.parse.unquote(parts.path.lstrip("/"))
    sock = query.get("socket", [None])[-1]
    try:
        port = parts.port
    except ValueError:
        port = -1
    problems = [
        f"unknown parameter {', '.join(unknown)} (only ?socket=PATH)" if unknown else "",
        "no user (mysql://USER:password@host/db)" if not parts.username else "",
        "no database (mysql://user@host/DATABASE)" if not database or "/" in database else "",
        "a host and a socket: give one (ML Metadata aborts the process when both are set)"
        if parts.hostname and sock is not None else "",
        "neither a host nor ?socket=PATH" if not parts.hostname and not sock else "",
        "a port outside 1-65535" if port is not None and not 0 < port < 65536 else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError(f"metadata={shown!r}: " + "; ".join(problems))
    return MySQLAddress(
        user=urllib.parse.unquote(parts.username),
        password=urllib.parse.unquote(parts.password) if parts.password is not None else None,
        database=database, host=parts.hostname, port=port or DEFAULT_PORT, socket=sock)


def redact(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ``***``."""
    return re.sub(r"(\w+://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def connection_config(url: str | None, home: str) -> metadata_store_pb2.ConnectionConfig:
    """The ML Metadata connection for a ``metadata`` setting: a mysql:// URL, or None for
    the home's own SQLite file (``<home>/metadata.sqlite``)."""
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    if not url:
        config.sqlite.filename_uri = os.path.join(home, SQLITE_NAME)
        config.sqlite.connection_mode = (
            metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
        return config
    address = parse_url(url)
    mysql = config.mysql
    mysql.database, mysql.user = address.database, address.user
    if address.password is not None:
        mysql.password = address.password
    if address.socket:
        mysql.socket = address.socket
    else:
        mysql.host, mysql.port = address.host, address.port
    mysql.skip_db_creation = True  # MLMD's own would get a case-insensitive collation
    return config


def is_shared(config: metadata_store_pb2.ConnectionConfig) -> bool:
    """Whether other homes may write to the store: the home's lock does not cover it."""
    return config.WhichOneof("config") != "sqlite"


def describe(config: metadata_store_pb2.ConnectionConfig) -> str:
    """The store in words, without its password: ``MySQL user@host:port/db`` or a path."""
    if config.HasField("sqlite"):
        return f"SQLite {config.sqlite.filename_uri}"
    address = _address(config)
    return f"MySQL {address.user}@{address.where} database {address.database}"


def open_store(config: metadata_store_pb2.ConnectionConfig) -> metadata_store.MetadataStore:
    """The store, its schema created if it is new; a MySQL server is checked first.

    Raises:
      MetadataStoreError: what failed, in one line (unknown host, nothing listening,
        refused login, no such database, ...).
    """
    from ml_metadata.metadata_store import metadata_store

    if config.HasField("mysql"):
        RedactSecrets.hide(config.mysql.password)
        check_server(_address(config))
    error = None
    for attempt in range(_SCHEMA_ATTEMPTS):
        try:
            return metadata_store.MetadataStore(config)
        except RuntimeError as e:  # e.g. Aborted: another process is creating the schema
            error = e
            if config.HasField("sqlite") or _is_final(str(e)):
                break
            time.sleep(random.uniform(0.2, 0.5) * (attempt + 1))
    raise MetadataStoreError(_explain(config, str(error))) from error


def open_existing(metadata: str | metadata_store_pb2.ConnectionConfig,
                  writable: bool = False) -> metadata_store.MetadataStore | None:
    """A store that runs have written: None if its SQLite file (a path, or a SQLite
    config) does not exist yet; SQLite is opened read-only unless ``writable``."""
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    if isinstance(metadata, str):
        config.sqlite.filename_uri = metadata
    else:
        config.CopyFrom(metadata)
    if config.HasField("sqlite"):
        if not os.path.exists(config.sqlite.filename_uri):
            return None
        sqlite = metadata_store_pb2.SqliteMetadataSourceConfig
        config.sqlite.connection_mode = sqlite.READWRITE_OPENCREATE if writable else sqlite.READONLY
    return open_store(config)


def check_server(address: MySQLAddress, timeout: float = _TIMEOUT_S) -> None:
    """Reads the server's greeting; raises MetadataStoreError saying what is not there."""
    try:
        if address.socket:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(timeout)
            conn.connect(address.socket)
        else:
            conn = socket.create_connection((address.host, address.port), timeout=timeout)
    except socket.gaierror as e:
        raise MetadataStoreError(f"unknown MySQL host {address.host!r}: {e.strerror}") from e
    except TimeoutError as e:
        raise MetadataStoreError(f"no answer from MySQL at {address.where} within "
                                 f"{timeout:g} s") from e
    except OSError as e:
        raise MetadataStoreError(f"cannot reach MySQL at {address.where}: "
                                 f"{e.strerror or e}") from e
    with conn:
        try:
            payload = _read_greeting(conn)
        except OSError as e:
            raise MetadataStoreError(f"{address.where} accepted a connection but sent no "
                                     f"MySQL greeting: {e}") from e
    if payload is None or payload[:1] not in (b"\x0a", b"\xff"):
        raise MetadataStoreError(f"{address.where} answered, but not as a MySQL server")
    if payload[:1] == b"\xff":  # an error packet: e.g. this host may not connect
        message = payload[3:].decode(errors="replace")
        message = message[6:] if message.startswith("#") else message  # a SQLSTATE first
        raise MetadataStoreError(f"MySQL at {address.where} refused this client: {message}")


class RedactSecrets(logging.Filter):
    """Hides known passwords in log records: TFX logs its whole connection config."""

    _secrets: set[str] = set()

    @classmethod
    def hide(cls, secret: str) -> None:
        """Redacts ``secret`` from now on in this process's absl (TFX, MLMD) log lines."""
        if not secret:
            return
        cls._secrets.add(secret)
        logger = logging.getLogger("absl")
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        hidden = redact(text)
        for secret in self._secrets:
            hidden = hidden.replace(secret, "***")
        if hidden != text:
            record.msg, record.args = hidden, None
        return True


# --- private ---------------------------------------------------------------------------


def _address(config: metadata_store_pb2.ConnectionConfig) -> MySQLAddress:
    mysql = config.mysql
    return MySQLAddress(user=mysql.user, password=None, database=mysql.database,
                        host=mysql.host or None, port=mysql.port or DEFAULT_PORT,
                        socket=mysql.socket or None)


def _is_final(error: str) -> bool:
    """Errors a retry cannot mend: the login or the database, not a schema race."""
    return error.strip() == _REFUSED_LOGIN or _NO_DATABASE in error


def _explain(config: metadata_store_pb2.ConnectionConfig, error: str) -> str:
    if config.HasField("sqlite"):
        return f"cannot open ML Metadata at {config.sqlite.filename_uri}: {error}"
    address = _address(config)
    if error.strip() == _REFUSED_LOGIN:
        return (f"MySQL at {address.where} refused the login of user {address.user!r}: "
                "wrong password, or that user may not connect from this host")
    if _NO_DATABASE in error:
        return (f"no database {address.database!r} at {address.where} that user "
                f"{address.user!r} may use: create it with "
                f"`{CREATE_DATABASE.format(db=address.database)}` and grant the user all "
                "privileges on it")
    return f"ML Metadata on MySQL at {address.where} failed: {redact(error)}"


def _read_greeting(conn: socket.socket) -> bytes | None:
    """The server's first packet; None if its length is not a greeting's (~100 bytes)."""
    header = _read_exactly(conn, 4)
    (length,) = struct.unpack("<I", header[:3] + b"\0")
    return _read_exactly(conn, length) if 0 < length <= _MAX_GREETING else None


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the connection closed")
        data += chunk
    return data
