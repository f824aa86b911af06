"""The TF Serving ``models.config`` the registry writes: the ``stable`` and ``canary`` labels.

One file per Sightline home, ``<home>/serving/models.config``, with one ``ModelConfig``
per registered model that has a stable or canary version: the version policy
``specific`` keeps exactly those loaded, and ``version_labels`` name them. ``sightline
serve --model_config_file <it> --model_config_file_poll_wait_seconds N`` (or
``tensorflow_model_server`` with the same flags) applies a change without a restart.

The registry owns, per model it writes: ``base_path``, ``model_platform``, the version
policy and the labels. Everything else in the file is kept: other models, and a model's
``logging_config`` once there (the registry adds one only to a new entry).

Writes are atomic: the new text goes to a temporary file in the same directory, is
flushed to disk, and ``os.replace`` swaps it in, so a server polling the file reads the
old config or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pipelines.registry.rules import CANARY, STABLE

CONFIG_FILE = "models.config"
HEADER = ("# TF Serving ModelServerConfig written by `sightline models` (the release registry).\n"
          "# Labels and version policies follow ML Metadata; edit them with `sightline models`.\n")
ServerConfig = model_server_config_pb2.ModelServerConfig


def path_for(home: str) -> str:
    return os.path.join(home, "serving", CONFIG_FILE)


def read(path: str) -> ServerConfig:
    """The file's config, or an empty one if there is no file."""
    config = ServerConfig()
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return config
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ValueError(f"{path} is not a ModelServerConfig text proto: {e}") from None
    return config


def labels(config: ServerConfig, model: str) -> dict[str, int]:
    """The registry's labels (stable, canary) of ``model`` in a config."""
    for entry in config.model_config_list.config:
        if entry.name == model:
            return {k: int(v) for k, v in entry.version_labels.items() if k in (STABLE, CANARY)}
    return {}


def entry(config: ServerConfig, model: str) -> model_server_config_pb2.ModelConfig | None:
    return next((e for e in config.model_config_list.config if e.name == model), None)


def with_model(config: ServerConfig, model: str, base_path: str, stable: int | None,
               canary: int | None, log_prefix: str, sampling_rate: float) -> ServerConfig:
    """A copy of ``config`` with ``model`` serving ``stable`` and ``canary`` (or absent when
    it has neither)."""
    updated = ServerConfig()
    updated.CopyFrom(config)
    entries = updated.model_config_list.config
    index = next((i for i, e in enumerate(entries) if e.name == model), None)
    if stable is None and canary is None:
        if index is not None:
            del entries[index]
        return updated
    current = entries[index] if index is not None else entries.add(name=model)
    if index is None and sampling_rate > 0:
        current.logging_config.log_collector_config.filename_prefix = log_prefix
        current.logging_config.sampling_config.sampling_rate = sampling_rate
    current.base_path = base_path
    current.model_platform = "tensorflow"
    current.model_version_policy.Clear()
    versions = sorted({v for v in (stable, canary) if v is not None})
    current.model_version_policy.specific.versions.extend(versions)
    current.version_labels.clear()
    for label, version in ((STABLE, stable), (CANARY, canary)):
        if version is not None:
            current.version_labels[label] = version
    return updated


class StagedConfig:
    """A new config written beside the file, not yet in place: ``commit`` or ``discard``.

    Callers hold the registry lock, so temporary files found here are a dead writer's.
    """

    def __init__(self, path: str, config: ServerConfig):
        self.path = path
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):  # left by a writer that died (callers hold the lock)
            if name.startswith(f".{CONFIG_FILE}.") and name.endswith(".tmp"):
                os.remove(os.path.join(directory, name))
        fd, self.temp_path = tempfile.mkstemp(prefix=f".{CONFIG_FILE}.", suffix=".tmp",
                                              dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(HEADER + text_format.MessageToString(config))
            f.flush()
            os.fsync(f.fileno())

    def commit(self) -> None:
        """Puts the new config in place in one rename, and makes the rename durable."""
        os.replace(self.temp_path, self.path)
        directory = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def discard(self) -> None:
        try:
            os.remove(self.temp_path)
        except FileNotFoundError:
            pass
