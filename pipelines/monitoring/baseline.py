"""What served traffic is compared with, found through ML Metadata from the served version.

served version -> its ``PushedModel`` (the registry's lookup) -> the Pusher's inputs (the
``Model``, the Evaluator's ``ModelEvaluation``, the ``Examples``) -> the Trainer that
produced the model and its input ``Examples`` and ``Schema`` -> the ``StatisticsGen``
execution that read those Examples and its ``ExampleStatistics``. Per-class score
thresholds are the PushedModel's ``score_thresholds`` custom property (the Evaluator's
max-F1 thresholds, as the Pusher recorded them).
"""

from __future__ import annotations

import dataclasses
import json
import os

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

from components.model_pusher.executor import THRESHOLDS_PROPERTY
from pipelines.registry.registry import HPARAMS_FILE, read_json
from pipelines.registry.store import RegistryStore

STATISTICS_TYPE = "ExampleStatistics"
STATISTICS_FILE = "FeatureStats.pb"
SCHEMA_FILE = "schema.pbtxt"


class BaselineError(LookupError):
    """The served model, or what it was trained and evaluated on, is not in ML Metadata."""


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A served version's training data, schema, evaluation and thresholds."""

    model: str
    version: str
    pushed: pb.Artifact
    serving_dir: str  # the pushed version's directory
    class_names: list[str]  # label i+1 is class_names[i]
    thresholds: dict[str, float]  # class name -> max-F1 score threshold
    schema_path: str
    examples_uri: str  # the Trainer's input Examples (train and eval splits)
    statistics: pb.Artifact  # StatisticsGen's statistics of those Examples
    evaluation: pb.Artifact | None  # the Evaluator's ModelEvaluation the Pusher read

    @property
    def training_statistics_path(self) -> str:
        return os.path.join(split_uri(self.statistics.uri, "train"), STATISTICS_FILE)

    def to_json(self) -> dict:
        return {"model": self.model, "version": self.version,
                "pushed_model_artifact_id": self.pushed.id, "serving_dir": self.serving_dir,
                "class_names": self.class_names, "score_thresholds": self.thresholds,
                "schema": self.schema_path, "training_examples": self.examples_uri,
                "training_statistics": self.training_statistics_path,
                "statistics_artifact_id": self.statistics.id,
                "evaluation_artifact_id": self.evaluation.id if self.evaluation else None}


def split_uri(artifact_uri: str, split: str) -> str:
    """Where TFX keeps one split of an artifact (``Split-<name>``)."""
    return os.path.join(artifact_uri, f"Split-{split}")


def find(store: metadata_store.MetadataStore, model: str, version: str) -> Baseline:
    """The baseline of ``model`` version ``version``; BaselineError naming the missing link."""
    mlmd = RegistryStore(store, model)
    pushed_versions = mlmd.pushed()
    if str(version) not in pushed_versions:
        known = ", ".join(pushed_versions) or "none"
        raise BaselineError(f"version {version} of model {model!r} was never pushed according "
                            f"to ML Metadata (pushed versions: {known})")
    pushed = pushed_versions[str(version)]
    inputs = mlmd.push_inputs(pushed)
    if "model" not in inputs:
        raise BaselineError(f"the push of version {version} has no Model input in ML Metadata")
    trainer_inputs = _producer_inputs(store, inputs["model"].id)
    examples, schema = trainer_inputs.get("examples"), trainer_inputs.get("schema")
    if examples is None or schema is None:
        raise BaselineError(f"the Trainer of version {version} has no examples/schema inputs "
                            "in ML Metadata")
    statistics = _statistics_of(store, examples.id)
    if statistics is None:
        raise BaselineError(f"no StatisticsGen output for the training Examples (artifact "
                            f"{examples.id}, {examples.uri}) of version {version}")
    serving_dir = pushed.custom_properties["pushed_destination"].string_value
    thresholds = pushed.custom_properties.get(THRESHOLDS_PROPERTY)
    return Baseline(
        model=model, version=str(version), pushed=pushed, serving_dir=serving_dir,
        class_names=list(read_json(os.path.join(serving_dir, HPARAMS_FILE))
                         .get("class_names", [])),
        thresholds=json.loads(thresholds.string_value) if thresholds else {},
        schema_path=os.path.join(schema.uri, SCHEMA_FILE), examples_uri=examples.uri,
        statistics=statistics, evaluation=inputs.get("evaluation"))


def _producer_inputs(store: metadata_store.MetadataStore, artifact_id: int
                     ) -> dict[str, pb.Artifact]:
    """{input key: artifact} of the execution that output ``artifact_id``."""
    producers = [e.execution_id for e in store.get_events_by_artifact_ids([artifact_id])
                 if e.type == pb.Event.OUTPUT]
    if not producers:
        return {}
    ids = {e.path.steps[0].key: e.artifact_id
           for e in store.get_events_by_execution_ids(producers[:1])
           if e.type == pb.Event.INPUT and e.path.steps}
    artifacts = {a.id: a for a in store.get_artifacts_by_id(list(ids.values()))}
    return {key: artifacts[i] for key, i in ids.items()}


def _statistics_of(store: metadata_store.MetadataStore, examples_id: int) -> pb.Artifact | None:
    """The newest ExampleStatistics output by an execution that read ``examples_id``."""
    readers = [e.execution_id for e in store.get_events_by_artifact_ids([examples_id])
               if e.type == pb.Event.INPUT]
    if not readers:
        return None
    outputs = [e.artifact_id for e in store.get_events_by_execution_ids(readers)
               if e.type == pb.Event.OUTPUT]
    type_id = store.get_artifact_type(STATISTICS_TYPE).id
    found = [a for a in store.get_artifacts_by_id(outputs) if a.type_id == type_id]
    return max(found, key=lambda a: a.id, default=None)
