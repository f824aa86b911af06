"""What to serve: TF Serving's ``ModelServerConfig`` text proto, or the single-model flags.

The same ``models.config`` (``model_config_list { config { name base_path
model_version_policy version_labels logging_config } }``) and batching parameters file
work with the real ``tensorflow_model_server``, so a deployment can switch binaries
without rewriting its configuration.

``BatchingParameters`` is not in the ``tensorflow-serving-api`` wheel, so its message
class is built at runtime from a descriptor mirroring ``session_bundle_config.proto``
(same field numbers and ``google.protobuf`` wrapper types); TF Serving's text files parse
exactly, and a misspelt field fails as it would there.
"""

from __future__ import annotations

import dataclasses
import os
import re

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

DEFAULT_POLL_SECONDS = 1  # TF Serving's --file_system_poll_wait_seconds default
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ------------------------------------------------------------------ BatchingParameters


def _batching_parameters_class() -> type:
    """``tensorflow.serving.BatchingParameters`` from session_bundle_config.proto."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="sightline/session_bundle_config_batching.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name="BatchingParameters")
    fdp = descriptor_pb2.FieldDescriptorProto
    for name, number, wrapper in (
        ("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
        ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
        ("thread_pool_name", 5, "StringValue"), ("enable_large_batch_splitting", 8, "BoolValue"),
        ("max_execution_batch_size", 9, "Int64Value"),
    ):
        message.field.add(name=name, number=number, label=fdp.LABEL_OPTIONAL,
                          type=fdp.TYPE_MESSAGE, type_name=f".google.protobuf.{wrapper}")
    message.field.add(name="allowed_batch_sizes", number=6, label=fdp.LABEL_REPEATED,
                      type=fdp.TYPE_INT64)
    message.field.add(name="pad_variable_length_inputs", number=7, label=fdp.LABEL_OPTIONAL,
                      type=fdp.TYPE_BOOL)
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParametersProto = _batching_parameters_class()


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """SharedBatchScheduler queue options with TF Serving's defaults (QueueOptions)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"batching parameter {name} must be >= 1, "
                                 f"got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError("batching parameter batch_timeout_micros must be >= 0")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes entries must be monotonically increasing")
            if sizes[-1] != self.max_batch_size:  # bundle_factory_util.cc's check and text
                raise ValueError(
                    "Last entry in allowed_batch_sizes must match max_batch_size; last "
                    f"entry was {sizes[-1]}; expected {self.max_batch_size}")

    @classmethod
    def from_proto(cls, proto) -> BatchingConfig:
        if proto.HasField("enable_large_batch_splitting") and \
                proto.enable_large_batch_splitting.value:
            raise ValueError("enable_large_batch_splitting is not supported by sightline serve; "
                             "send requests no larger than max_batch_size instead")
        values = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                     "num_batch_threads"):
            if proto.HasField(name):
                values[name] = getattr(proto, name).value
        return cls(**values, allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
                   pad_variable_length_inputs=proto.pad_variable_length_inputs)


def parse_batching_parameters(text: str) -> BatchingConfig:
    """A ``--batching_parameters_file``'s contents (TF Serving's text format)."""
    proto = BatchingParametersProto()
    text_format.Parse(text, proto)
    return BatchingConfig.from_proto(proto)


def read_batching_parameters(path: str) -> BatchingConfig:
    with open(path) as f:
        try:
            return parse_batching_parameters(f.read())
        except (text_format.ParseError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None


# ------------------------------------------------------------------------ model configs


@dataclasses.dataclass(frozen=True)
class LoggingSettings:
    """A model's request logging: TF Serving's LoggingConfig plus the server-wide flags."""

    filename_prefix: str
    sampling_rate: float
    max_bytes: int = 64 << 20
    include_images: bool = False


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """One ModelConfig entry."""

    name: str
    base_path: str
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1  # for latest
    specific_versions: tuple[int, ...] = ()
    labels: tuple[tuple[str, int], ...] = ()
    logging: LoggingSettings | None = None

    def label_map(self) -> dict[str, int]:
        return dict(self.labels)


def check_model_name(name: str) -> str:
    """Model names become URL path segments and log file names: no slashes or dots-only."""
    if not _NAME.match(name) or ".." in name:
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit")
    return name


def settings_from_proto(config: model_server_config_pb2.ModelConfig,
                        max_bytes: int, include_images: bool) -> ModelSettings:
    check_model_name(config.name)
    if not config.base_path:
        raise ValueError(f"model {config.name!r}: base_path is empty")
    if config.model_platform not in ("", "tensorflow", "tflite"):
        raise ValueError(f"model {config.name!r}: model_platform {config.model_platform!r} "
                         "is not served here (tensorflow or tflite)")
    policy = config.model_version_policy
    kind = policy.WhichOneof("policy_choice") or "latest"
    num_versions = (policy.latest.num_versions or 1) if kind == "latest" else 1
    specific = tuple(sorted(policy.specific.versions)) if kind == "specific" else ()
    if kind == "specific" and not specific:
        raise ValueError(f"model {config.name!r}: specific version policy lists no versions")
    logging = None
    if config.HasField("logging_config"):
        collector = config.logging_config.log_collector_config
        rate = config.logging_config.sampling_config.sampling_rate
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"model {config.name!r}: sampling_rate {rate} is outside [0, 1]")
        if collector.filename_prefix and rate > 0:
            logging = LoggingSettings(collector.filename_prefix, rate, max_bytes, include_images)
    return ModelSettings(
        name=config.name, base_path=config.base_path, policy=kind, num_versions=num_versions,
        specific_versions=specific,
        labels=tuple(sorted((k, int(v)) for k, v in config.version_labels.items())),
        logging=logging)


def parse_model_server_config(text: str, max_bytes: int = 64 << 20,
                              include_images: bool = False) -> list[ModelSettings]:
    """A ``--model_config_file``'s text -> one ModelSettings per model."""
    proto = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(text, proto)
    return settings_from_server_config(proto, max_bytes, include_images)


def settings_from_server_config(proto: model_server_config_pb2.ModelServerConfig,
                                max_bytes: int = 64 << 20,
                                include_images: bool = False) -> list[ModelSettings]:
    if proto.WhichOneof("config") == "custom_model_config":
        raise ValueError("custom_model_config is not supported; use model_config_list")
    models = [settings_from_proto(c, max_bytes, include_images)
              for c in proto.model_config_list.config]
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
    return models


def read_model_server_config(path: str, max_bytes: int = 64 << 20,
                             include_images: bool = False) -> list[ModelSettings]:
    with open(path) as f:
        try:
            return parse_model_server_config(f.read(), max_bytes, include_images)
        except (text_format.ParseError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None


def to_server_config(models: list[ModelSettings]) -> model_server_config_pb2.ModelServerConfig:
    """The text-proto form of ``models`` (what a deployment hands tensorflow_model_server)."""
    proto = model_server_config_pb2.ModelServerConfig()
    for model in models:
        config = proto.model_config_list.config.add(
            name=model.name, base_path=model.base_path, model_platform="tensorflow")
        policy = config.model_version_policy
        if model.policy == "all":
            policy.all.SetInParent()
        elif model.policy == "specific":
            policy.specific.versions.extend(model.specific_versions)
        else:
            policy.latest.num_versions = model.num_versions
        for label, version in model.labels:
            config.version_labels[label] = version
        if model.logging:
            config.logging_config.log_collector_config.filename_prefix = \
                model.logging.filename_prefix
            config.logging_config.sampling_config.sampling_rate = model.logging.sampling_rate
    return proto
