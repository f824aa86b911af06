"""The teacher a distilling Trainer learns from, as the node feeding its ``base_model``.

``train.teacher=<model size>`` resolves, from ML Metadata, the latest Model of this
pipeline that was trained at that size on the same input size and classes, so a teacher
trained once (``sightline run --set train.model_size=medium``) serves every later run;
``train.teacher=<path>`` imports that export. Either way the Trainer's MLMD execution
records the teacher Model as an input, so the student's lineage names its teacher.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx import v1 as tfx
from tfx.dsl.components.common import importer, resolver
from tfx.types import artifact_utils

from trainer.config import TrainConfig, is_teacher_path
from trainer.distill import missing_teacher_message
from trainer.executor import HPARAM_PREFIX

MODEL_KEY = "model"  # the resolver's channel, and so its output key
RESOLVER_ID = "teacher_resolver"
PIPELINE_CONTEXT = "pipeline"  # TFX's context type for every run of a pipeline


class LatestModelOfSizeStrategy(resolver.ResolverStrategy):
    """The latest Model whose recorded hparams (``hparam_<key>`` custom properties, set by
    ``trainer.executor``) match a model size, input size and class list.

    None yet resolves to an empty list rather than failing the resolver (as
    ``LatestIfAnyStrategy`` does for a first run), which would say nothing useful:
    ``sightline run`` checks first (``check_teacher``), and the Trainer, whose
    ``base_model`` is optional, fails before training; both say how to train a teacher.
    """

    def __init__(self, model_size: str, input_size: int, class_names: Sequence[str]):
        self._wanted = {"model_size": model_size, "input_size": input_size,
                        "class_names": list(class_names)}

    def matches(self, model: types.Artifact) -> bool:
        """True if every wanted hparam is recorded on ``model`` with the wanted value."""
        for key, value in self._wanted.items():
            recorded = model.get_custom_property(HPARAM_PREFIX + key)
            if isinstance(value, list) and isinstance(recorded, str):
                recorded = json.loads(recorded)  # lists are recorded as JSON strings
            if recorded != value:
                return False
        return True

    def resolve_artifacts(
        self, store, input_dict: dict[str, list[types.Artifact]]
    ) -> dict[str, list[types.Artifact]]:
        return {key: sorted(filter(self.matches, artifacts), key=lambda a: a.id)[-1:]
                for key, artifacts in input_dict.items()}


def teacher_node(hparams: dict[str, Any], class_names: Sequence[str]) -> Any:
    """The Resolver or Importer that gives the Trainer its teacher, or None without one.

    Args:
      hparams: ``train.hparams`` (``TrainConfig`` fields; the defaults fill the rest).
      class_names: the pipeline's label space, which the teacher must share.
    """
    teacher = hparams.get("teacher") or ""
    if not teacher:
        return None
    if is_teacher_path(teacher):
        local = "://" not in teacher
        return tfx.dsl.Importer(source_uri=os.path.abspath(teacher) if local else teacher,
                                artifact_type=tfx.types.standard_artifacts.Model,
                                ).with_id("teacher_importer")
    input_size = hparams.get("input_size", TrainConfig.__dataclass_fields__["input_size"].default)
    return tfx.dsl.Resolver(
        strategy_class=LatestModelOfSizeStrategy,
        config={"model_size": teacher, "input_size": input_size,
                "class_names": list(class_names)},
        **{MODEL_KEY: tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model)},
    ).with_id(RESOLVER_ID)


def teacher_channel(node: Any) -> types.BaseChannel:
    """The node's Model output, for the Trainer's ``base_model``."""
    key = MODEL_KEY if isinstance(node, tfx.dsl.Resolver) else importer.IMPORT_RESULT_KEY
    return node.outputs[key]


def check_teacher(pipeline: tfx.dsl.Pipeline, store) -> None:
    """Fails before any component runs when the pipeline's teacher resolver would find
    no Model (the Trainer would fail with the same message, after the data stage).

    Raises:
      ValueError: what to run once to record a teacher.
    """
    nodes = [c for c in pipeline.components if c.id == RESOLVER_ID]
    if not nodes:
        return
    wanted = nodes[0].exec_properties[resolver.RESOLVER_CONFIG]
    models = recorded_models(store, pipeline.pipeline_info.pipeline_name)
    strategy = LatestModelOfSizeStrategy(**wanted)
    if not strategy.resolve_artifacts(store, {MODEL_KEY: models})[MODEL_KEY]:
        raise ValueError(missing_teacher_message(wanted["model_size"]))


def recorded_models(store, pipeline_name: str) -> list[types.Artifact]:
    """The live Model artifacts of a pipeline's runs: what the resolver's channel holds."""
    context = store.get_context_by_type_and_name(PIPELINE_CONTEXT, pipeline_name)
    if context is None:
        return []
    types_by_id = {t.id: t for t in store.get_artifact_types()}
    return [artifact_utils.deserialize_artifact(types_by_id[a.type_id], a)
            for a in store.get_artifacts_by_context(context.id)
            if types_by_id[a.type_id].name == tfx.types.standard_artifacts.Model.TYPE_NAME
            and a.state == metadata_store_pb2.Artifact.LIVE]
